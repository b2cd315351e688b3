-- LoRA adapters in the Llama-family engine (core/model/llama.c) against
-- independent computations: the network composed from autograd ops
-- (tests/spec/llama_ref.lua) with each adapter's term y += s (x A^T) B^T
-- added here, finite differences, the base network, PEFT's layout for a
-- Llama (read back with Python's json), DPO training with the base as the
-- reference, and recipes/hh.lua --lora.r on a Llama directory.
local h = dofile("tests/spec/helper.lua")
local ref = dofile("tests/spec/llama_ref.lua")
local cjson = require "cjson"

local function ids_tensor(rows) return dpo.tensor(rows, "int32") end

local IDS = ids_tensor{
   { 5, 9, 1, 30, 2, 7, 7, 14, 0, 0 },
   { 3, 3, 8, 0, 0, 0, 0, 0, 0, 0 },
   { 36, 1, 2, 3, 4, 5, 6, 7, 8, 9 },
}
local MASK = ids_tensor{
   { 0, 0, 0, 1, 1, 1, 1, 1, 0, 0 },
   { 0, 1, 1, 0, 0, 0, 0, 0, 0, 0 },
   { 0, 0, 1, 0, 1, 1, 0, 1, 1, 1 },
}

-- grouped-query heads, untied head; Qwen3: per-head q/k norms, head_dim apart from C / NH, tied
local LLAMA = { model_type = "llama", vocab_size = 40, hidden_size = 16, intermediate_size = 24,
                num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2,
                max_position_embeddings = 64, rms_norm_eps = 1e-5, seed = 3 }
local QWEN3 = { model_type = "qwen3", vocab_size = 40, hidden_size = 16, intermediate_size = 20,
                num_hidden_layers = 2, num_attention_heads = 2, num_key_value_heads = 1, head_dim = 6,
                max_position_embeddings = 64, rms_norm_eps = 1e-6, tie_word_embeddings = true, seed = 4 }
local MODULES = { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj" }

local function new(c) return dpo.model.new(c or LLAMA) end

-- Weights large enough that every path matters, adapters with B non-zero.
local function scramble(m, seed, lora_std, lora_only)
   dpo.manual_seed(seed)
   dpo.no_grad(function()
      for _, np in ipairs(m:named_parameters(true)) do
         local name, t = np[1], np[2]
         if lora_only and not name:match("lora_") then
            -- the base stays
         elseif name:match("norm%.weight$") then
            t:copy(dpo.randn(t:shape()) * 0.2 + 1)
         elseif name:match("lora_") then
            t:copy(dpo.randn(t:shape()) * (lora_std or 0.4))
         else
            t:copy(dpo.randn(t:shape()) * 0.3)
         end
      end
   end)
   return m
end

local close = h.close

local function nolp(m, ids, mask)
   return dpo.no_grad(function() return m:logps(ids or IDS, mask or MASK) end)
end

local same_bits = h.same_bits

-- The composed network's logps [N] and its leaves (base and adapters, by name).
local function reference(m, ids, mask)
   local base, P = {}, {}
   for _, np in ipairs(m:named_parameters(true)) do
      local leaf = np[2]:detach():clone():requires_grad()
      P[np[1]] = leaf
      if not np[1]:find(".lora_", 1, true) then base[np[1]] = leaf end
   end
   local info = m:lora()
   local hook
   if info and info.enabled then
      local s = info.scale
      hook = function(name, x, y)
         local A, B = P[name .. ".lora_A.weight"], P[name .. ".lora_B.weight"]
         if not A then return y end
         return y + x:mm(A:t()):mm(B:t()) * s
      end
   end
   return (ref.logps(dpo.model.hf_config(m), base, ids or IDS, mask or MASK, hook)), P
end

describe("dpo.lora on a Llama", function()
   teardown(function() h.cleanup() end)

   it("adds PEFT's adapters per module: names, shapes, initialisation, a frozen base", function()
      local m = new()
      local before = nolp(m)
      assert.are.equal(m, dpo.lora.apply(m, { r = 4, alpha = 16, target_modules = "all-linear" }))
      local named = m:named_parameters()
      local shapes = { q_proj = { 16, 16 }, k_proj = { 8, 16 }, v_proj = { 8, 16 }, o_proj = { 16, 16 },
                       gate_proj = { 24, 16 }, up_proj = { 24, 16 }, down_proj = { 16, 24 } }
      local i = 0
      for l = 0, 1 do
         for _, mod in ipairs(MODULES) do
            local name = "model.layers." .. l .. "." .. mod
            local s = shapes[mod:match("[^.]+$")]
            i = i + 1
            assert.are.equal(name .. ".lora_A.weight", named[i][1])
            assert.are.same({ 4, s[2] }, named[i][2]:shape())
            assert.is_true(named[i][2]:abs():max():item() <= 1 / math.sqrt(s[2]))
            assert.is_true(named[i][2]:abs():max():item() > 0)
            i = i + 1
            assert.are.equal(name .. ".lora_B.weight", named[i][1])
            assert.are.same({ s[1], 4 }, named[i][2]:shape())
            assert.are.equal(0, named[i][2]:abs():sum():item())
            assert.is_true(named[i][2].grad ~= nil)
         end
      end
      assert.are.equal(i, #named)
      assert.are.equal(i, #m:parameters())
      for _, np in ipairs(m:named_parameters(true)) do
         assert.are.equal(np[1]:match("lora_") == nil, np[3])
         assert.are.equal(np[3], np[2].grad == nil)
      end
      local info = dpo.lora.config(m)
      assert.are.equal(4, info.scale)
      assert.is_false(info.fan_in_fan_out)
      assert.are.same({ "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj" },
         info.target_modules)
      -- B = 0: the base's logps exactly
      assert.is_true(same_bits(nolp(m), before))
      assert.matches("LoRA", tostring(m), 1, true)
      -- PEFT's default for a Llama: q_proj and v_proj
      local m2 = dpo.lora.apply(new(), { r = 2 })
      assert.are.same({ "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                        "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj" }, m2:lora().modules)
      h.errors(function() dpo.lora.apply(new(), { target_modules = { "c_attn" } }) end,
         "'c_attn' matches no linear module")
      h.errors(function() m:save(h.tmpdir()) end, "has adapters")
   end)

   for _, case in ipairs{
      { "Llama", LLAMA, { r = 3, alpha = 6, target_modules = "all-linear" } },
      -- PEFT's default pair: one group, its A products batched, columns apart
      { "Llama", LLAMA, { r = 2, alpha = 4, target_modules = { "q_proj", "v_proj" } } },
      { "Llama", LLAMA, { r = 2, alpha = 5, use_rslora = true, target_modules = { "k_proj", "up_proj" } } },
      { "Llama", LLAMA, { r = 1, alpha = 1, target_modules = { "layers.1.mlp.down_proj" } } },
      { "Llama", LLAMA, { r = 2, alpha = 3, target_modules = { "layers.1.self_attn.v_proj", "layers.1.mlp.gate_proj" } } },
      { "Qwen3", QWEN3, { r = 3, alpha = 4, target_modules = "all-linear" } },
   } do
      it(case[1] .. " " .. cjson.encode(case[3].target_modules) .. ": logps and the adapters' gradients equal the composed network's", function()
         local m = scramble(dpo.lora.apply(new(case[2]), case[3]), 5)
         local lp = m:logps(IDS, MASK)
         local want, P = reference(m)
         local ok, d = close(lp, want:detach(), 1e-4, 1e-5)
         assert(ok, "logps differ by " .. d)
         local r = dpo.tensor{ 0.7, -1.3, 2.1 }
         m:zero_grad()
         ;(lp * r):sum():backward()
         ;(want * r):sum():backward()
         local n = 0
         for _, np in ipairs(m:named_parameters()) do
            local good, diff = close(np[2].grad, P[np[1]].grad, 1e-5, 1e-3)
            assert(good, ("gradient of %s differs by %g"):format(np[1], diff))
            assert.is_true(np[2].grad:abs():max():item() > 0, np[1])
            n = n + 1
         end
         assert.is_true(n >= 2)
      end)
   end

   for _, c in ipairs{ { "Llama", LLAMA }, { "Qwen3", QWEN3 } } do
      it(c[1] .. ": passes a finite-difference check on samples of every adapter tensor", function()
         local m = scramble(dpo.lora.apply(new(c[2]), { r = 2, alpha = 2, target_modules = "all-linear" }), 6, 0.3)
         local r = dpo.tensor{ 0.5, -1, 1.5 }
         local function L() return (nolp(m) * r):sum():item() end
         m:zero_grad()
         ;(m:logps(IDS, MASK) * r):sum():backward()
         dpo.manual_seed(11)
         h.fd_check(m:named_parameters(), L, h.samples(2))
      end)
   end

   it("drops the adapters' input in train mode only, with a matching backward", function()
      local m = scramble(dpo.lora.apply(new(), { r = 3, alpha = 4, dropout = 0.3, target_modules = "all-linear" }), 7)
      m:eval()
      assert(close(nolp(m), reference(m):detach(), 1e-4, 1e-5))
      m:train()
      m:seed_dropout(3)
      local a = nolp(m)
      m:seed_dropout(3)
      assert.is_true(same_bits(nolp(m), a))
      assert.is_false(a:allclose(reference(m):detach(), 1e-3, 1e-3))
      local r = dpo.tensor{ 0.5, -1, 1.5 }
      local function L()
         m:seed_dropout(3)
         return (nolp(m) * r):sum():item()
      end
      m:zero_grad()
      m:seed_dropout(3)
      ;(m:logps(IDS, MASK) * r):sum():backward()
      h.fd_check(m:named_parameters(), L, function(name, numel) return { 1 + (#name * 7) % numel } end)
   end)

   it("trains only the adapters: the base is bit-identical; disabled gives the base exactly", function()
      local m = scramble(new(), 8)
      local base = {}
      for _, np in ipairs(m:named_parameters()) do base[np[1]] = np[2]:clone() end
      local base_lp = nolp(m)
      local hash = m:base_hash()
      dpo.lora.apply(m, { r = 4, alpha = 8, target_modules = "all-linear" })
      assert.are.equal(hash, m:base_hash())
      local opt = dpo.optim.adamw(m:parameters(), { lr = 1e-2, weight_decay = 0.1 })
      for _ = 1, 3 do
         opt:zero_grad()
         m:logps(IDS, MASK):sum():neg():backward()
         opt:step()
      end
      local trained = nolp(m)
      assert.is_true(trained:sum():item() > base_lp:sum():item())
      for _, np in ipairs(m:named_parameters(true)) do
         if base[np[1]] then assert(same_bits(np[2], base[np[1]]), np[1] .. " changed") end
      end
      assert.are.equal(hash, m:base_hash())
      assert.matches("^crc32:%x+%-adler32:%x+$", hash)
      local other = scramble(new(), 8)
      assert.are.equal(hash, other:base_hash())
      dpo.no_grad(function() other:parameters()[3]:reshape(-1)[2] = 0.5 end)
      assert.are_not.equal(hash, other:base_hash())
      local off = dpo.lora.disabled(m, nolp, m)
      assert.is_true(same_bits(off, base_lp))
      assert.is_true(same_bits(nolp(m), trained))
      dpo.lora.disabled(m, function() assert.is_false(m:logps(IDS, MASK):needs_grad()) end)
   end)

   it("merges the adapters into the base weights", function()
      for _, c in ipairs{ LLAMA, QWEN3 } do
         local m = scramble(dpo.lora.apply(new(c), { r = 3, alpha = 6, target_modules = "all-linear" }), 9, 0.2)
         local adapted = nolp(m)
         local want = reference(m):detach()
         assert.are.equal(m, dpo.lora.merge(m))
         assert.is_nil(m:lora())
         local merged = nolp(m)
         local ok, d = close(merged, adapted, 1e-5, 0)
         assert(ok, "merged logps differ by " .. d)
         assert(close(merged, want, 1e-4, 1e-5))
         assert.is_true(m:parameters()[2].grad ~= nil)
         local dir = h.tmpdir()
         m:save(dir)
         assert(close(nolp(dpo.model.load(dir)), adapted, 1e-5, 0))
      end
   end)

   it("saves in PEFT's Llama layout and loads back exactly", function()
      local basedir, dir = h.tmpdir(), h.tmpdir()
      scramble(new(), 10):save(basedir)
      local m = dpo.model.load(basedir)
      dpo.lora.apply(m, { r = 2, alpha = 3, target_modules = { "q_proj", "v_proj", "down_proj" }, seed = 4 })
      scramble(m, 11, 0.5, true)
      assert.is_true(dpo.lora.save(m, dir))
      local py = [==[
import json, struct, sys
d = sys.argv[1]
c = json.load(open(d + "/adapter_config.json"))
f = open(d + "/adapter_model.safetensors", "rb")
n = struct.unpack("<Q", f.read(8))[0]
hdr = json.loads(f.read(n))
hdr.pop("__metadata__", None)
print(json.dumps({"config": c, "tensors": {k: [v["dtype"], v["shape"]] for k, v in hdr.items()}}))
]==]
      local f = assert(io.popen("python3 -c " .. h.quote(py) .. " " .. h.quote(dir)))
      local got = cjson.decode(f:read("a"))
      f:close()
      local c = got.config
      assert.are.equal("LORA", c.peft_type)
      assert.are.equal("CAUSAL_LM", c.task_type)
      assert.are.equal(2, c.r)
      assert.are.equal(3, c.lora_alpha)
      assert.are.same({ "down_proj", "q_proj", "v_proj" }, c.target_modules)
      assert.are.equal(false, c.fan_in_fan_out)
      assert.are.equal(basedir, c.base_model_name_or_path)
      local n = 0
      for l = 0, 1 do
         for _, e in ipairs{ { "self_attn.q_proj", 16, 16 }, { "self_attn.v_proj", 16, 8 }, { "mlp.down_proj", 24, 16 } } do
            local pre = "base_model.model.model.layers." .. l .. "." .. e[1]
            assert.are.same({ "F32", { 2, e[2] } }, got.tensors[pre .. ".lora_A.weight"])
            assert.are.same({ "F32", { e[3], 2 } }, got.tensors[pre .. ".lora_B.weight"])
            n = n + 2
         end
      end
      local count = 0
      for _ in pairs(got.tensors) do count = count + 1 end
      assert.are.equal(n, count)
      local m2 = dpo.lora.load(dpo.model.load(basedir), dir)
      assert.are.same(m:lora().modules, m2:lora().modules)
      local _, P = m:named_parameters()
      for _, np in ipairs(m2:named_parameters()) do assert(same_bits(np[2], P[np[1]]), np[1]) end
      assert.is_true(same_bits(nolp(m2), nolp(m)))
      h.errors(function() dpo.lora.load(dpo.gpt.new{ vocab_size = 40, n_ctx = 16, n_layer = 2, n_head = 2, n_embd = 16 }, dir) end,
         "matches no linear module")
   end)

   it("generates with the adapters, with and without the cache; clones keep them", function()
      local m = scramble(dpo.lora.apply(new(), { r = 2, target_modules = "all-linear" }), 12)
      local a = m:generate({ 1, 2, 3 }, { max_new_tokens = 6 })
      local b = m:generate({ 1, 2, 3 }, { max_new_tokens = 6, use_cache = false })
      assert.are.same(a:totable(), b:totable())
      local want = reference(m, ids_tensor{ { 1, 2, 3, 4 } }, ids_tensor{ { 0, 0, 0, 1 } })
      assert(close(m:next_logits({ 1, 2, 3 }):log_softmax(1):narrow(1, 5, 1), want:detach(), 1e-4, 1e-5))
      -- the adapters change the cached path: off, it is the base's
      local off = dpo.lora.disabled(m, function() return m:generate({ 1, 2, 3 }, { max_new_tokens = 6 }) end)
      local merged = dpo.lora.merge(m:clone(true))
      local plain = scramble(new(), 12)
      dpo.lora.apply(plain, { r = 2, target_modules = "all-linear" })
      scramble(plain, 12) -- the same draw: the same model
      assert.is_true(same_bits(nolp(plain), nolp(m)))
      local base_gen = dpo.lora.disabled(plain, function() return plain:generate({ 1, 2, 3 }, { max_new_tokens = 6, use_cache = false }) end)
      assert.are.same(base_gen:totable(), off:totable())
      assert.are.same(a:totable(), merged:generate({ 1, 2, 3 }, { max_new_tokens = 6 }):totable())
      local c, f = m:clone(), m:clone(true)
      assert.is_true(same_bits(nolp(c), nolp(m)))
      assert.is_true(same_bits(nolp(f), nolp(m)))
      assert.are.equal(#m:parameters(), #c:parameters())
      assert.is_false(f:logps(IDS, MASK):needs_grad())
      assert.is_true(c:logps(IDS, MASK):needs_grad())
   end)
end)

describe("dpo.train.dpo with adapters on a Llama", function()
   teardown(function() h.cleanup() end)
   local WORDS = { "red", "blue", "green", "cat", "dog", "sun", "moon", "tree" }
   local function pairs_list(n, offset)
      local list = {}
      for i = 1, n do
         local w = WORDS[(i + (offset or 0)) % #WORDS + 1]
         list[i] = { prompt = "\n\nHuman: say " .. w .. "\n\nAssistant:", chosen = " " .. w .. ".",
                     rejected = " no, go away!" }
      end
      return list
   end
   local tok = dpo.tokenizer.bytes()
   local TOKOPTS = { max_length = 48, max_prompt_length = 32 }
   local train_ds = dpo.data.dataset(pairs_list(32)):tokenize(tok, TOKOPTS)
   local test_ds = dpo.data.dataset(pairs_list(8, 3)):tokenize(tok, TOKOPTS)
   local function base(seed)
      return dpo.model.new{ model_type = "llama", vocab_size = tok:vocab_size(), hidden_size = 16,
                            intermediate_size = 32, num_hidden_layers = 2, num_attention_heads = 2,
                            num_key_value_heads = 1, max_position_embeddings = 48, seed = seed or 1 }
   end
   local function adapted(seed)
      return dpo.lora.apply(base(seed), { r = 4, alpha = 8, target_modules = "all-linear", seed = 2 })
   end
   local function opts(policy, extra)
      local o = { policy = policy, data = train_ds, eval_data = test_ds, batch_size = 4, max_steps = 6,
                  lr = 1e-2, beta = 0.5, quiet = true, eval_first = false }
      for k, v in pairs(extra or {}) do o[k] = v end
      return o
   end
   local function adapters(m)
      local out = {}
      for _, np in ipairs(m:named_parameters()) do out[np[1]] = np[2]:clone() end
      return out
   end

   it("uses the base as the reference, keeps no copy, trains as a frozen copy would", function()
      local m = adapted()
      local r = dpo.train.dpo(opts(m, { ref = "base" }))
      assert.is_nil(r.ref)
      assert.are.equal(2 * 7 * 2, #r.optimizer.params)
      assert.is_true(r.eval["eval/rewards/accuracies"] > 0.5)
      local m2 = adapted()
      dpo.train.dpo(opts(m2, { ref = base():freeze() }))
      local a, b = adapters(m), adapters(m2)
      for k, t in pairs(a) do assert(same_bits(t, b[k]), k) end
      local _, P = m:named_parameters(true)
      for _, np in ipairs(base():named_parameters()) do assert(same_bits(np[2], P[np[1]]), np[1]) end
   end)

   it("checkpoints the adapters only and resumes exactly; another base is refused", function()
      local out = h.tmpdir() .. "/run"
      local m = adapted()
      dpo.train.dpo(opts(m, { out = out, save_every = 2, tokenizer = tok }))
      local ck = out .. "/checkpoint-2"
      assert.are.same({ "adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
                        "tokenizer.json", "trainer_state.json" }, h.listing(ck))
      local st = cjson.decode(h.read(ck .. "/trainer_state.json"))
      assert.are.equal(m:base_hash(), st.lora.base_hash)
      local m2 = base()
      dpo.train.dpo(opts(m2, { resume = ck, tokenizer = tok }))
      local a, b = adapters(m), adapters(m2)
      for k, t in pairs(a) do assert(same_bits(t, b[k]), k) end
      h.errors(function() dpo.train.dpo(opts(base(7), { resume = ck })) end, "another base model")
   end)

   it("recipes/hh.lua --model=DIR --lora.r trains adapters on a Llama directory, merges, resumes exactly", function()
      local root = h.tmpdir()
      local mdir, dir = root .. "/model", root .. "/run"
      dpo.model.new{ model_type = "llama", vocab_size = tok:vocab_size(), hidden_size = 32,
                     intermediate_size = 48, num_hidden_layers = 2, num_attention_heads = 4,
                     num_key_value_heads = 2, max_position_embeddings = 128, seed = 1 }:save(mdir)
      tok:save(mdir .. "/tokenizer.json")
      local function hh(args)
         local cmd = ("env -u LUA_INIT -u LUA_INIT_5_4 OMP_WAIT_POLICY=PASSIVE %s recipes/hh.lua %s >%s 2>&1")
            :format(h.quote(h.DPOLUA), args, h.quote(root .. "/log"))
         local ok = os.execute(cmd)
         return ok, h.read(root .. "/log")
      end
      local ok, out = hh("--sft.steps=2 --dpo.steps=4 --save_every=2 --eval_pairs=4 --samples=1 " ..
         "--max_new_tokens=4 --batch_size=2 --grad_accum=1 --max_length=96 --max_prompt_length=48 " ..
         "--progress=off --dpo.lr=5e-3 --lora.r=4 --lora.alpha=8 --lora.targets=q_proj,v_proj,down_proj " ..
         "--lora.merge --model=" .. h.quote(mdir) .. " --out=" .. h.quote(dir))
      assert(ok, out)
      assert.matches("LoRA: rank 4, alpha 8 on 6 modules", out, 1, true)
      local ck = dir .. "/checkpoint-6"
      assert.are.same({ "adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
                        "tokenizer.json", "trainer_state.json" }, h.listing(ck))
      local conf = cjson.decode(h.read(ck .. "/adapter_config.json"))
      assert.are.same({ "down_proj", "q_proj", "v_proj" }, conf.target_modules)
      assert.is_false(conf.fan_in_fan_out)
      assert.are.equal(dir .. "/checkpoint-2", conf.base_model_name_or_path) -- the SFT model
      -- the merged model is the SFT checkpoint with the adapters folded in
      local sft = dpo.model.load(dir .. "/checkpoint-2")
      local before = nolp(sft)
      local m = dpo.lora.load(sft, ck)
      local merged = dpo.model.load(dir .. "/merged")
      assert.are.equal("dpo.Llama", getmetatable(merged).__name)
      local lp = nolp(m)
      assert(close(nolp(merged), lp, 1e-5, 0))
      assert.is_false(lp:allclose(before, 1e-4, 1e-4)) -- the adapters changed something
      -- resuming from the DPO phase's middle ends with the same adapters
      local want = h.read(ck .. "/adapter_model.safetensors")
      require("dpo.log").rmtree(ck)
      ok, out = hh("--progress=off --resume=" .. h.quote(dir))
      assert(ok, out)
      assert.matches("resuming dpo at step 2 of 4", out, 1, true)
      assert.are.equal(want, h.read(ck .. "/adapter_model.safetensors"))
   end)
end)
