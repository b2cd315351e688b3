-- LoRA adapters in the GPT-2 engine against independent computations: the
-- adapted network written here from tensor ops (autograd does its gradients),
-- finite differences, the base network, and PEFT's documented file layout
-- (read back with Python's json, not our reader).
local h = dofile("tests/spec/helper.lua")

local cfg = { vocab_size = 37, n_ctx = 12, n_layer = 2, n_head = 2, n_embd = 8, seed = 3 }

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

-- ---- the adapted network, from tensor ops -------------------------------------

local function layernorm(x, w, b, eps)
   local mu = x:mean(2, true)
   local xc = x - mu
   local var = (xc * xc):mean(2, true)
   return xc / (var + eps):sqrt() * w + b
end

-- x W + b, plus s * (x A^T) B^T when the module has an adapter (PEFT's Linear.forward)
local function linear(P, name, x, s)
   local y = x:mm(P[name .. ".weight"]) + P[name .. ".bias"]
   local A, B = P[name .. ".lora_A.weight"], P[name .. ".lora_B.weight"]
   if A then y = y + x:mm(A:t()):mm(B:t()) * s end
   return y
end

local function reference_row(P, c, s, ids, mask)
   local last = 0
   for t = 2, #ids do if mask[t] ~= 0 then last = t end end
   if last == 0 then return dpo.zeros(1):sum() end
   local T, C, NH = last - 1, c.n_embd, c.n_head
   local HS = C // NH
   local inp, tgt, m = {}, {}, {}
   for t = 1, T do
      inp[t] = ids[t] + 1
      tgt[t] = { ids[t + 1] + 1 }
      m[t] = mask[t + 1] ~= 0 and 1 or 0
   end
   local causal = {}
   for i = 1, T do
      causal[i] = {}
      for j = 1, T do causal[i][j] = j <= i and 1 or 0 end
   end
   causal = dpo.tensor(causal, "int32")
   local x = P["transformer.wte.weight"]:index_select(1, inp) + P["transformer.wpe.weight"]:narrow(1, 1, T)
   for l = 0, c.n_layer - 1 do
      local pre = "transformer.h." .. l .. "."
      local a = layernorm(x, P[pre .. "ln_1.weight"], P[pre .. "ln_1.bias"], c.layer_norm_epsilon)
      local qkv = linear(P, pre .. "attn.c_attn", a, s)
      local heads = {}
      for hd = 0, NH - 1 do
         local q = qkv:narrow(2, hd * HS + 1, HS)
         local k = qkv:narrow(2, C + hd * HS + 1, HS)
         local v = qkv:narrow(2, 2 * C + hd * HS + 1, HS)
         local att = dpo.where(causal, q:mm(k:t()) * (1 / math.sqrt(HS)), -1e30):softmax(2)
         heads[#heads + 1] = att:mm(v)
      end
      x = x + linear(P, pre .. "attn.c_proj", dpo.cat(heads, 2), s)
      local b = layernorm(x, P[pre .. "ln_2.weight"], P[pre .. "ln_2.bias"], c.layer_norm_epsilon)
      local f = linear(P, pre .. "mlp.c_fc", b, s):gelu()
      x = x + linear(P, pre .. "mlp.c_proj", f, s)
   end
   x = layernorm(x, P["transformer.ln_f.weight"], P["transformer.ln_f.bias"], c.layer_norm_epsilon)
   local logits = x:mm(P["transformer.wte.weight"]:t())
   local lp = logits:log_softmax(2):gather(2, ids_tensor(tgt)):reshape(T)
   return (lp * dpo.tensor(m)):sum()
end

-- The reference's logps [N] and its leaf tensors (by name; all require grad).
local function reference(model, ids, mask)
   local P = {}
   for _, np in ipairs(model:named_parameters(true)) do
      P[np[1]] = np[2]:detach():clone():requires_grad()
   end
   local info = model:lora()
   local s = info and info.enabled and info.scale or 0
   if info and not info.enabled then
      for k in pairs(P) do if k:match("%.lora_") then P[k] = nil end end
   end
   local rows, it, mt = {}, ids:totable(), mask:totable()
   for n = 1, #it do rows[n] = reference_row(P, model:config(), s, it[n], mt[n]):reshape(1) end
   return dpo.cat(rows, 1), P
end

-- Weights large enough that the residual stream is O(1) (as gpt_spec does),
-- and adapters with B non-zero, so every adapter matters.
local function scramble(m, seed, lora_std, lora_only)
   dpo.manual_seed(seed)
   dpo.no_grad(function()
      for _, np in ipairs(m:named_parameters(true)) do
         local name, t = np[1], np[2]
         if lora_only and not name:match("lora_") then
            -- the base stays
         elseif name:match("ln_") and name:match("weight$") then
            t:copy(dpo.randn(t:shape()) * 0.1 + 1)
         elseif name:match("lora_") then
            t:copy(dpo.randn(t:shape()) * (lora_std or 0.5))
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

describe("dpo.lora", function()
   teardown(function() h.cleanup() end)

   it("adds PEFT's adapters: names, shapes, initialisation, a frozen base", function()
      local m = dpo.gpt.new{ vocab_size = 50, n_ctx = 16, n_layer = 2, n_head = 4, n_embd = 64, seed = 1 }
      local before = nolp(m, IDS, MASK)
      assert.are.equal(m, dpo.lora.apply(m, { r = 4, alpha = 16, target_modules = { "c_attn", "c_fc" } }))
      local named = m:named_parameters()
      local want = {}
      for l = 0, 1 do
         local pre = "transformer.h." .. l .. "."
         want[#want + 1] = { pre .. "attn.c_attn.lora_A.weight", { 4, 64 } }
         want[#want + 1] = { pre .. "attn.c_attn.lora_B.weight", { 192, 4 } }
         want[#want + 1] = { pre .. "mlp.c_fc.lora_A.weight", { 4, 64 } }
         want[#want + 1] = { pre .. "mlp.c_fc.lora_B.weight", { 256, 4 } }
      end
      assert.are.equal(#want, #named)
      assert.are.equal(#want, #m:parameters())
      for i, w in ipairs(want) do
         assert.are.equal(w[1], named[i][1])
         assert.are.same(w[2], named[i][2]:shape())
         assert.is_true(named[i][2].grad ~= nil)
         if w[1]:match("lora_A") then -- U(-1/sqrt(64), 1/sqrt(64)): std 1/sqrt(3*64)
            local t = named[i][2]
            assert.is_true(t:abs():max():item() <= 1 / 8)
            local std = t:pow(2):mean():sqrt():item()
            assert.is_true(math.abs(std - 1 / math.sqrt(192)) < 0.01, "std " .. std)
         else
            assert.are.equal(0, named[i][2]:abs():sum():item())
         end
      end
      -- the base: listed on request, frozen, without gradients
      local all = m:named_parameters(true)
      assert.are.equal(2 + 12 * 2 + 2 + #want, #all)
      for _, np in ipairs(all) do
         assert.are.equal(np[1]:match("lora_") == nil, np[3])
         assert.are.equal(np[3], np[2].grad == nil)
      end
      local info = dpo.lora.config(m)
      assert.are.equal(4, info.r)
      assert.are.equal(4, info.scale) -- alpha / r
      assert.are.same({ "c_attn", "c_fc" }, info.target_modules)
      assert.are.equal(4 * (4 * 64 + 192 * 4 + 4 * 64 + 256 * 4) / 2, info.num_params)
      -- a new adapter changes nothing: B = 0 gives the base's logps exactly
      assert.is_true(same_bits(nolp(m, IDS, MASK), before))
      assert.matches("LoRA", tostring(m), 1, true)
      -- rsLoRA scales by alpha / sqrt(r)
      local m2 = dpo.lora.apply(dpo.gpt.new(cfg), { r = 4, alpha = 6, use_rslora = true })
      assert.are.equal(3, m2:lora().scale)
      assert.are.same({ "transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn" }, m2:lora().modules)
   end)

   it("computes logps and the adapters' gradients as the network written from tensor ops", function()
      for _, opts in ipairs{
         { r = 3, alpha = 6, target_modules = "all-linear" },
         { r = 2, alpha = 5, use_rslora = true, target_modules = { "attn.c_proj", "c_fc" } },
         { r = 1, alpha = 1, target_modules = { "h.1.mlp.c_proj" } },
      } do
         local m = dpo.lora.apply(dpo.gpt.new(cfg), opts)
         scramble(m, 5)
         local lp = m:logps(IDS, MASK)
         local ref, P = reference(m, IDS, MASK)
         local ok, d = close(lp, ref:detach(), 1e-4, 1e-5)
         assert(ok, "logps differ by " .. d)
         local r = dpo.tensor{ 0.7, -1.3, 2.1 }
         m:zero_grad()
         ;(lp * r):sum():backward()
         ;(ref * r):sum():backward()
         local n = 0
         for _, np in ipairs(m:named_parameters()) do
            local good, diff = close(np[2].grad, P[np[1]].grad, 1e-5, 1e-3)
            assert(good, ("gradient of %s differs by %g"):format(np[1], diff))
            assert.is_true(np[2].grad:abs():max():item() > 0)
            n = n + 1
         end
         assert.is_true(n >= 2)
      end
   end)

   it("passes a finite-difference check on samples of every adapter tensor", function()
      local m = scramble(dpo.lora.apply(dpo.gpt.new(cfg), { r = 3, alpha = 2, target_modules = "all-linear" }), 6, 0.3)
      local r = dpo.tensor{ 0.5, -1, 1.5 }
      local function L() return (nolp(m) * r):sum():item() end
      m:zero_grad()
      ;(m:logps(IDS, MASK) * r):sum():backward()
      dpo.manual_seed(11)
      h.fd_check(m:named_parameters(), L, h.samples(3))
   end)

   it("drops the adapters' input in train mode only, reproducibly, with a matching backward", function()
      local m = scramble(dpo.lora.apply(dpo.gpt.new(cfg),
         { r = 3, alpha = 4, dropout = 0.3, target_modules = "all-linear" }), 7)
      m:eval()
      local ref = reference(m, IDS, MASK)
      assert(close(nolp(m), ref:detach(), 1e-4, 1e-5))
      m:train()
      m:seed_dropout(3)
      local a = nolp(m)
      m:seed_dropout(3)
      assert.is_true(same_bits(nolp(m), a))
      assert.is_false(a:allclose(ref:detach(), 1e-3, 1e-3))
      local r = dpo.tensor{ 0.5, -1, 1.5 }
      local function L()
         m:seed_dropout(3)
         return (nolp(m) * r):sum():item()
      end
      m:zero_grad()
      m:seed_dropout(3)
      ;(m:logps(IDS, MASK) * r):sum():backward()
      dpo.manual_seed(13)
      h.fd_check(m:named_parameters(), L, h.samples(2))
   end)

   it("trains only the adapters: the base is bit-identical after AdamW steps", function()
      local m = dpo.gpt.new(cfg)
      local base = {}
      for _, np in ipairs(m:named_parameters()) do base[np[1]] = np[2]:clone() end
      local base_lp = nolp(m)
      dpo.lora.apply(m, { r = 4, alpha = 8, target_modules = "all-linear" })
      local opt = dpo.optim.adamw(m:parameters(), { lr = 1e-2, weight_decay = 0.1 })
      for _ = 1, 3 do
         opt:zero_grad()
         m:logps(IDS, MASK):sum():neg():backward()
         opt:step()
      end
      local trained = nolp(m)
      assert.is_true(trained:sum():item() > base_lp:sum():item())
      for _, np in ipairs(m:named_parameters(true)) do
         if base[np[1]] then
            assert(same_bits(np[2], base[np[1]]), np[1] .. " changed")
         end
      end
      -- the base's hash names the base, not the adapters
      local plain = dpo.gpt.new(cfg)
      assert.are.equal(plain:base_hash(), m:base_hash())
      assert.matches("^crc32:%x+%-adler32:%x+$", m:base_hash())
      dpo.no_grad(function() plain:parameters()[3]:reshape(-1)[5] = 0.5 end)
      assert.are_not.equal(plain:base_hash(), m:base_hash())
      -- disabled: the base's logps exactly; the adapters are back afterwards
      local off = dpo.lora.disabled(m, nolp, m)
      assert.is_true(same_bits(off, base_lp))
      assert.is_true(same_bits(nolp(m), trained))
      assert.is_true(m:lora().enabled)
      h.errors(function() dpo.lora.disabled(m, function() error("boom") end) end, "boom")
      assert.is_true(m:lora().enabled)
      -- the reference network without adapters agrees with the disabled model
      dpo.lora.disabled(m, function()
         assert(close(nolp(m), reference(m, IDS, MASK):detach(), 1e-4, 1e-5))
      end)
      -- a disabled model with a frozen base records nothing
      dpo.lora.disabled(m, function() assert.is_false(m:logps(IDS, MASK):needs_grad()) end)
   end)

   it("merges the adapters into the base weights", function()
      local m = scramble(dpo.lora.apply(dpo.gpt.new(cfg), { r = 3, alpha = 6, target_modules = "all-linear" }), 8)
      local adapted = nolp(m)
      local ref = reference(m, IDS, MASK):detach()
      assert.are.equal(m, dpo.lora.merge(m))
      assert.is_nil(m:lora())
      local merged = nolp(m)
      assert(close(merged, adapted, 1e-5, 0))
      assert(close(merged, ref, 1e-4, 1e-5))
      -- an ordinary model again: every weight trains, save writes a checkpoint
      assert.are.equal(2 + 12 * 2 + 2, #m:parameters())
      assert.is_true(m:parameters()[3].grad ~= nil)
      local dir = h.tmpdir()
      m:save(dir)
      assert(close(nolp(dpo.gpt.load(dir)), adapted, 1e-5, 0))
      h.errors(function() dpo.lora.merge(m) end, "no adapters")
   end)

   it("saves in PEFT's layout and loads back exactly", function()
      local dir = h.tmpdir()
      local basedir = h.tmpdir()
      dpo.gpt.new(cfg):save(basedir)
      local m = dpo.gpt.load(basedir)
      dpo.lora.apply(m, { r = 2, alpha = 3, dropout = 0.1, target_modules = { "c_attn", "c_proj" }, seed = 4 })
      scramble(m, 9, 0.5, true)
      assert.is_true(dpo.lora.save(m, dir))
      assert.are.same({ "adapter_config.json", "adapter_model.safetensors" }, h.listing(dir))
      -- read back by Python's json, not by our reader
      local py = [==[
import json, struct, sys
d = sys.argv[1]
c = json.load(open(d + "/adapter_config.json"))
f = open(d + "/adapter_model.safetensors", "rb")
n = struct.unpack("<Q", f.read(8))[0]
hdr = json.loads(f.read(n))
out = {"config": c, "meta": hdr.pop("__metadata__", None),
       "tensors": {k: [v["dtype"], v["shape"]] for k, v in hdr.items()}}
print(json.dumps(out))
]==]
      local f = assert(io.popen("python3 -c " .. h.quote(py) .. " " .. h.quote(dir)))
      local got = require("cjson").decode(f:read("a"))
      f:close()
      local c = got.config
      assert.are.equal("LORA", c.peft_type)
      assert.are.equal("CAUSAL_LM", c.task_type)
      assert.are.equal(2, c.r)
      assert.are.equal(3, c.lora_alpha)
      assert.are.equal(0.1, c.lora_dropout)
      assert.are.same({ "c_attn", "c_proj" }, c.target_modules)
      assert.are.equal(false, c.use_rslora)
      assert.are.equal("none", c.bias)
      assert.are.equal(true, c.fan_in_fan_out)
      assert.are.equal(basedir, c.base_model_name_or_path)
      assert.are.same({ format = "pt" }, got.meta)
      local n = 0
      for l = 0, 1 do
         for _, e in ipairs{ { "attn.c_attn", 8, 24 }, { "attn.c_proj", 8, 8 }, { "mlp.c_proj", 32, 8 } } do
            local pre = "base_model.model.transformer.h." .. l .. "." .. e[1]
            assert.are.same({ "F32", { 2, e[2] } }, got.tensors[pre .. ".lora_A.weight"])
            assert.are.same({ "F32", { e[3], 2 } }, got.tensors[pre .. ".lora_B.weight"])
            n = n + 2
         end
      end
      local count = 0
      for _ in pairs(got.tensors) do count = count + 1 end
      assert.are.equal(n, count)
      -- load: onto a fresh base, and over existing adapters
      local m2 = dpo.lora.load(dpo.gpt.load(basedir), dir)
      assert.are.same(m:lora().modules, m2:lora().modules)
      assert.are.equal(3 / 2, m2:lora().scale)
      local _, P = m:named_parameters()
      for _, np in ipairs(m2:named_parameters()) do assert(same_bits(np[2], P[np[1]]), np[1]) end
      assert.is_true(same_bits(nolp(m2), nolp(m)))
      h.errors(function() dpo.lora.load(dpo.lora.apply(dpo.gpt.load(basedir), { r = 2, target_modules = { "c_attn", "c_proj" } }), dir) end, "lora_alpha 3.0, the model.s adapters have 8.0")
      local m3 = dpo.lora.apply(dpo.gpt.load(basedir), { r = 2, alpha = 3, target_modules = { "c_attn", "c_proj" } })
      dpo.lora.load(m3, dir)
      assert.is_true(same_bits(nolp(m3), nolp(m)))
      h.errors(function() dpo.lora.load(dpo.lora.apply(dpo.gpt.load(basedir), { r = 3, target_modules = { "c_attn", "c_proj" } }), dir) end, "rank 2")
      h.errors(function() dpo.lora.load(dpo.lora.apply(dpo.gpt.load(basedir), { r = 2 }), dir) end, "no adapter on")
      -- a PEFT file for a module GPT-2 lacks
      local bad = h.tmpdir()
      h.write(bad .. "/adapter_config.json", '{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}')
      dpo.save(bad .. "/adapter_model.safetensors", {
         ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = dpo.zeros(2, 8),
         ["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"] = dpo.zeros(8, 2),
      })
      h.errors(function() dpo.lora.load(dpo.gpt.new(cfg), bad) end, "matches no linear module")
      h.write(bad .. "/adapter_config.json", '{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_dora": true}')
      h.errors(function() dpo.lora.load(dpo.gpt.new(cfg), bad) end, "use_dora is not supported")
      h.errors(function() m:save(h.tmpdir()) end, "has adapters")
   end)

   it("generates with the adapters, with and without the cache", function()
      local m = scramble(dpo.lora.apply(dpo.gpt.new(cfg), { r = 2, target_modules = "all-linear" }), 12)
      local a = m:generate({ 1, 2, 3 }, { max_new_tokens = 6 })
      local b = m:generate({ 1, 2, 3 }, { max_new_tokens = 6, use_cache = false })
      assert.are.same(a:totable(), b:totable())
      local ref = reference(m, ids_tensor{ { 1, 2, 3, 4 } }, ids_tensor{ { 0, 0, 0, 1 } })
      local logits = m:next_logits({ 1, 2, 3 })
      assert(close(logits:log_softmax(1):narrow(1, 5, 1), ref:detach(), 1e-4, 1e-5))
      local off = dpo.lora.disabled(m, function() return m:generate({ 1, 2, 3 }, { max_new_tokens = 6 }) end)
      local plain = dpo.gpt.new(cfg)
      dpo.no_grad(function()
         local _, P = m:named_parameters(true)
         for _, np in ipairs(plain:named_parameters()) do np[2]:copy(P[np[1]]) end
      end)
      assert.are.same(plain:generate({ 1, 2, 3 }, { max_new_tokens = 6 }):totable(), off:totable())
   end)

   it("clones with the adapters; a frozen clone records nothing", function()
      local m = scramble(dpo.lora.apply(dpo.gpt.new(cfg), { r = 2, target_modules = "all-linear" }), 13)
      local c, f = m:clone(), m:clone(true)
      assert.is_true(same_bits(nolp(c), nolp(m)))
      assert.is_true(same_bits(nolp(f), nolp(m)))
      assert.are.equal(#m:parameters(), #c:parameters())
      assert.is_false(f:logps(IDS, MASK):needs_grad())
      assert.is_true(c:logps(IDS, MASK):needs_grad())
   end)

   it("refuses misuse with messages naming it", function()
      local m = dpo.gpt.new(cfg)
      h.errors(function() dpo.lora.apply(m, { rank = 4 }) end, "unknown option 'rank'")
      h.errors(function() dpo.lora.apply(m, { r = 0 }) end, "r must be a positive integer")
      h.errors(function() dpo.lora.apply(m, { dropout = 1 }) end, "dropout must be in")
      h.errors(function() dpo.lora.apply(m, { target_modules = { "q_proj" } }) end, "'q_proj' matches no linear module")
      h.errors(function() dpo.lora.apply(m, { target_modules = {} }) end, "target_modules must be")
      h.errors(function() dpo.lora.apply(42) end, "expected a model")
      h.errors(function() dpo.lora.disabled(m, function() end) end, "has no adapters")
      h.errors(function() dpo.lora.save(m, h.tmpdir()) end, "has no adapters")
      dpo.lora.apply(m, {})
      h.errors(function() dpo.lora.apply(m, {}) end, "adapters already")
      h.errors(function() dpo.lora.disabled(m, 3) end, "expected a function")
      h.errors(function() dpo.lora.load(m, h.tmpdir()) end, "adapter_config.json")
      h.errors(function() m:lora_apply{ r = 2, target_modules = 7 } end, "target_modules")
   end)
end)

describe("dpo.train.dpo with adapters", function()
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
      return dpo.gpt.new{ vocab_size = tok:vocab_size(), n_ctx = 48, n_layer = 2, n_head = 2, n_embd = 16,
                          seed = seed or 1 }
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
   local function same_adapters(a, b)
      for k, t in pairs(a) do
         if not same_bits(t, b[k]) then return false, k end
      end
      return true
   end

   it("uses the base as the reference, keeps no copy, and trains as a frozen copy would", function()
      local m = adapted()
      local r = dpo.train.dpo(opts(m))
      assert.is_nil(r.ref) -- no reference model kept
      assert.are.equal(2 * 4 * 2, #r.optimizer.params)
      assert.is_true(r.eval["eval/rewards/accuracies"] > 0.5)
      -- the same run against an explicit frozen copy of the base goes through
      -- the same numbers
      local m2 = adapted()
      dpo.train.dpo(opts(m2, { ref = base():freeze() }))
      assert(same_adapters(adapters(m), adapters(m2)))
      -- (precomputed in batches of another size: the same to rounding)
      local m3 = adapted()
      dpo.train.dpo(opts(m3, { precompute_ref = true, ref_cache = h.tmpdir() }))
      local a, b = adapters(m), adapters(m3)
      for k, t in pairs(a) do assert(close(b[k], t, 1e-4, 1e-3), k) end
      -- the base never moved
      local _, P = m:named_parameters(true)
      for _, np in ipairs(base():named_parameters()) do assert(same_bits(np[2], P[np[1]]), np[1]) end
      h.errors(function() dpo.train.dpo(opts(base(), { ref = "base" })) end, "has none")
   end)

   it("runs TR-DPO on the merged weights", function()
      local m = adapted()
      local r = dpo.train.dpo(opts(m, { sync_ref = { tau = 2, alpha = 0.5 } }))
      assert.is_nil(r.ref:lora())
      -- after the last sync (step 6), ref = 0.5 * merged policy + 0.5 * the ref of step 4: not the base
      assert.are_not.equal(base():base_hash(), r.ref:base_hash())
      h.errors(function() dpo.train.dpo(opts(adapted(), { ref = "base", sync_ref = { tau = 2 } })) end,
         "sync_ref")
   end)

   it("checkpoints the adapters and their optimizer state only, and resumes exactly", function()
      local out = h.tmpdir() .. "/run"
      local m = adapted()
      dpo.train.dpo(opts(m, { out = out, save_every = 2, tokenizer = tok, ref_source = "the/base" }))
      local ck = out .. "/checkpoint-2"
      assert.are.same({ "adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
                        "tokenizer.json", "trainer_state.json" }, h.listing(ck))
      local st = require("cjson").decode(h.read(ck .. "/trainer_state.json"))
      assert.are.equal(m:base_hash(), st.lora.base_hash)
      assert.are.equal("the/base", st.lora.base)
      local c = dpo.train.load_checkpoint(ck)
      assert.is_nil(c.model)
      assert.are.equal(ck, c.adapters)
      -- a fresh base goes on from step 2 to the same adapters
      local m2 = base()
      dpo.train.dpo(opts(m2, { resume = ck, tokenizer = tok, ref_source = "the/base" }))
      assert(same_adapters(adapters(m), adapters(m2)))
      -- another base is refused
      h.errors(function() dpo.train.dpo(opts(base(7), { resume = ck })) end, "another base model")
   end)
end)


describe("recipes/hh.lua --lora.r", function()
   teardown(function() h.cleanup() end)
   local function run(args)
      local out = os.tmpname()
      local parts = { "env -u LUA_INIT -u LUA_INIT_5_4", h.quote(h.DPOLUA), "recipes/hh.lua" }
      for _, a in ipairs(args) do parts[#parts + 1] = h.quote(a) end
      local _, _, code = os.execute(table.concat(parts, " ") .. " </dev/null >" .. out .. " 2>&1")
      local text = h.read(out)
      os.remove(out)
      return code, text
   end

   it("trains adapters in the DPO phase, saves them in PEFT's layout, merges, and resumes exactly", function()
      local dir = h.tmpdir() .. "/run"
      local args = { "--out=" .. dir, "--sft.steps=4", "--dpo.steps=4", "--eval_pairs=16", "--samples=1",
                     "--max_new_tokens=4", "--eval_every=0", "--save_every=2", "--progress=off",
                     "--lora.r=4", "--lora.targets=c_attn,c_fc", "--lora.merge" }
      local code, text = run(args)
      assert.are.equal(0, code, text)
      assert.matches("LoRA: rank 4, alpha 16 on 4 modules", text, 1, true)
      assert.are.same({ "adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
                        "tokenizer.json", "trainer_state.json" }, h.listing(dir .. "/checkpoint-8"))
      assert.are.same({ "config.json", "model.safetensors", "tokenizer.json" }, h.listing(dir .. "/merged"))
      local conf = require("cjson").decode(h.read(dir .. "/checkpoint-8/adapter_config.json"))
      assert.are.same({ "c_attn", "c_fc" }, conf.target_modules)
      assert.are.equal(dir .. "/checkpoint-4", conf.base_model_name_or_path) -- the SFT model
      -- the merged model is the SFT checkpoint with the adapters folded in
      local m = dpo.lora.load(dpo.gpt.load(dir .. "/checkpoint-4"), dir .. "/checkpoint-8")
      local merged = dpo.gpt.load(dir .. "/merged")
      local ids = dpo.tensor({ { 5, 9, 1, 30, 2, 7, 7, 14 } }, "int32")
      local mask = dpo.tensor({ { 0, 0, 1, 1, 1, 1, 1, 1 } }, "int32")
      assert(close(nolp(merged, ids, mask), nolp(m, ids, mask), 1e-5, 0))
      -- resuming from the DPO phase's middle ends with the same adapters
      local want = h.read(dir .. "/checkpoint-8/adapter_model.safetensors")
      require("dpo.log").rmtree(dir .. "/checkpoint-8")
      code, text = run({ "--resume=" .. dir, "--progress=off" })
      assert.are.equal(0, code, text)
      assert.matches("resuming dpo at step 2 of 4", text, 1, true)
      assert.are.equal(want, h.read(dir .. "/checkpoint-8/adapter_model.safetensors"))
   end)
end)
