-- The Llama-family engine (core/model/llama.c, dpo.model) against an
-- independent computation: PyTorch's float64 implementation of Hugging
-- Face's Llama / Mistral / Qwen2 / Qwen3 math (tests/ref/llama_engine_ref.py) on
-- the fixtures of tests/fixtures/llama_engine (tests/ref/make_llama_engine_ref.sh makes
-- them); a finite-difference check of the fused backward on every parameter
-- tensor; and the properties the model promises (packing, sharing, caching,
-- checkpoints, config errors, training through dpo.train).
local h = dofile("tests/spec/helper.lua")
local cjson = require "cjson"
local lfs = require "lfs"

local FIX = "tests/fixtures/llama_engine/"
local VARIANTS = { "llama_gqa", "llama_mqa_tied_bias", "llama3_rope_head_dim", "llama_linear_rope",
                   "mistral", "qwen2", "qwen3" }

local function batch_of(dir)
   local b = cjson.decode(h.read(dir .. "/batch.json"))
   return dpo.tensor(b.ids, "int32"), dpo.tensor(b.mask, "int32"), dpo.tensor(b.weights)
end

local close = h.close

local tiny = { model_type = "llama", vocab_size = 40, hidden_size = 16, intermediate_size = 24,
               num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2,
               max_position_embeddings = 64, rms_norm_eps = 1e-5 }

local function with(t, extra)
   local c = {}
   for k, v in pairs(t) do c[k] = v end
   for k, v in pairs(extra or {}) do c[k] = v end
   return c
end

local function scramble(m, seed)
   dpo.manual_seed(seed)
   dpo.no_grad(function()
      for _, np in ipairs(m:named_parameters()) do
         local t = np[2]
         if np[1]:match("norm%.weight$") then
            t:copy(dpo.randn(t:shape()) * 0.2 + 1)
         else
            t:copy(dpo.randn(t:shape()) * 0.3)
         end
      end
   end)
   return m
end

describe("dpo.model (Llama family)", function()
   teardown(function() h.cleanup() end)

   for _, name in ipairs(VARIANTS) do
      it(name .. ": logps and every gradient equal PyTorch's", function()
         local dir = FIX .. name
         local m = dpo.model.load(dir)
         assert.are.equal("dpo.Llama", getmetatable(m).__name)
         local ids, mask, w = batch_of(dir)
         local ref = cjson.decode(h.read(dir .. "/ref.json"))
         local grads = assert(dpo.load(dir .. "/ref_grads.safetensors"))
         m:zero_grad()
         local lp = m:logps(ids, mask)
         h.near(lp, ref.logps, 2e-5)
         ;(lp * w):sum():backward()
         local list, n = m:named_parameters(), 0
         for _, np in ipairs(list) do
            local g = grads[np[1]]
            assert(g, "no reference gradient for " .. np[1])
            local ok, d, s = close(np[2].grad, g, 1e-5, 2e-4)
            assert(ok, ("%s: gradient differs by %g (max %g)"):format(np[1], d, s))
            n = n + 1
         end
         local nref = 0
         for _ in pairs(grads) do nref = nref + 1 end
         assert.are.equal(nref, n)
      end)
   end

   -- the same network composed from dpo's autograd ops (tests/spec/llama_ref.lua)
   local ref = dofile("tests/spec/llama_ref.lua")
   for _, name in ipairs(VARIANTS) do
      it(name .. ": logps and every gradient equal the network composed from autograd ops", function()
         local dir = FIX .. name
         local m = dpo.model.load(dir)
         local ids, mask, w = batch_of(dir)
         local P = ref.leaves(m:named_parameters())
         local want, wcount = ref.logps(dpo.model.hf_config(m), P, ids, mask)
         ;(want * w):sum():backward()
         m:zero_grad()
         local lp, count = m:logps(ids, mask)
         ;(lp * w):sum():backward()
         h.near(lp, want:totable(), 1e-5)
         assert.are.same(wcount:totable(), count:totable())
         for _, np in ipairs(m:named_parameters()) do
            local ok, d, s = close(np[2].grad, P[np[1]].grad, 1e-5, 2e-4)
            assert(ok, ("%s: gradient differs by %g (max %g)"):format(np[1], d, s))
         end
      end)
   end

   it("has Hugging Face's names and shapes for each variant", function()
      local q3 = dpo.model.load(FIX .. "qwen3")
      local _, p = q3:named_parameters()
      assert.are.same({ 32, 16 }, p["model.layers.1.self_attn.q_proj.weight"]:shape())
      assert.are.same({ 8, 16 }, p["model.layers.1.self_attn.k_proj.weight"]:shape())
      assert.are.same({ 16, 32 }, p["model.layers.1.self_attn.o_proj.weight"]:shape())
      assert.are.same({ 8 }, p["model.layers.0.self_attn.q_norm.weight"]:shape())
      assert.are.same({ 32, 16 }, p["lm_head.weight"]:shape())
      assert.is_nil(p["model.layers.0.self_attn.q_proj.bias"])
      local q2 = dpo.model.load(FIX .. "qwen2")
      _, p = q2:named_parameters()
      assert.are.same({ 8 }, p["model.layers.0.self_attn.k_proj.bias"]:shape())
      assert.is_nil(p["model.layers.0.self_attn.o_proj.bias"])
      assert.is_nil(p["lm_head.weight"])
      local b = dpo.model.load(FIX .. "llama_mqa_tied_bias")
      _, p = b:named_parameters()
      assert.are.same({ 16 }, p["model.layers.0.self_attn.o_proj.bias"]:shape())
      assert.are.same({ 24 }, p["model.layers.0.mlp.up_proj.bias"]:shape())
      assert.are.same({ 4, 16 }, p["model.layers.0.self_attn.v_proj.weight"]:shape())
      -- the initialisation: N(0, initializer_range), norms 1, biases 0
      local m = dpo.model.new(with(tiny, { attention_bias = true, initializer_range = 0.05, seed = 3 }))
      _, p = m:named_parameters()
      local e = p["model.embed_tokens.weight"]
      assert.is_true(math.abs((e * e):mean():sqrt():item() - 0.05) < 0.005)
      h.near(p["model.norm.weight"], dpo.ones(16):totable(), 0)
      h.near(p["model.layers.0.self_attn.q_proj.bias"], dpo.zeros(16):totable(), 0)
      assert.are.equal(m:num_params(), (function()
         local s = 0
         for _, t in ipairs(m:parameters()) do s = s + t:numel() end
         return s
      end)())
      assert.is_truthy(tostring(m):match("^dpo.Llama%(layers=2, heads=4, kv_heads=2"))
      local c = m:config()
      assert.are.equal(64, c.n_ctx)
      assert.are.equal(16, c.n_embd)
      assert.are.equal(4, c.head_dim)
   end)

   for _, name in ipairs{ "llama3_rope_head_dim", "qwen3", "llama_mqa_tied_bias" } do
      it(name .. ": passes a finite-difference check on samples of every parameter tensor", function()
         local m = dpo.model.load(FIX .. name)
         local ids, mask = batch_of(FIX .. name)
         local r = dpo.tensor{ 0.5, -1, 1.5, 0.25 }
         local function L()
            return dpo.no_grad(function() return (m:logps(ids, mask) * r):sum():item() end)
         end
         m:zero_grad()
         ;(m:logps(ids, mask) * r):sum():backward()
         dpo.manual_seed(11)
         local eps = 1e-2
         for _, np in ipairs(m:named_parameters()) do
            local pname, t = np[1], np[2]
            local flat, grad = t:reshape(-1), t.grad:reshape(-1)
            for _ = 1, 3 do
               local k = dpo.randint(1, flat:numel() + 1, 1)[1]
               local v = flat[k]
               local function D(e) -- central difference at step e
                  dpo.no_grad(function() flat[k] = v + e end)
                  local fp = L()
                  dpo.no_grad(function() flat[k] = v - e end)
                  local fm = L()
                  dpo.no_grad(function() flat[k] = v end)
                  return (fp - fm) / (2 * e)
               end
               -- Richardson's extrapolation: O(eps^4), so the curvature of RMSNorm
               -- and softmax does not swamp a float32 difference
               local num, ana = (4 * D(eps / 2) - D(eps)) / 3, grad[k]
               assert(math.abs(num - ana) <= 5e-3 + 2e-2 * math.abs(num),
                  ("%s[%d]: analytic %g, numeric %g"):format(pname, k, ana, num))
            end
         end
      end)
   end

   it("scores each row of a mixed-length batch as it scores the row alone", function()
      local m = dpo.model.load(FIX .. "qwen3")
      local ids, mask = batch_of(FIX .. "qwen3")
      local lp = m:logps(ids, mask)
      for n = 1, 4 do
         local one = m:logps(ids:narrow(1, n, 1):contiguous(), mask:narrow(1, n, 1):contiguous())
         assert.is_true(math.abs(one[1] - lp[n]) <= 1e-5 * math.abs(lp[n]), ("row %d"):format(n))
      end
   end)

   it("computes a prompt shared by several rows once, with the same results", function()
      local m = scramble(dpo.model.new(with(tiny, { seed = 1 })), 8)
      dpo.manual_seed(3)
      local prompt = dpo.randint(0, 40, 1, 20)
      local rows = {}
      for k = 1, 3 do rows[k] = dpo.cat({ prompt, dpo.randint(0, 40, 1, 10) }, 2) end
      local ids = dpo.cat(rows, 1)
      local mask = dpo.zeros(3, 30, "int32")
      mask:narrow(2, 18, 13):fill(1)
      local r = dpo.tensor{ 0.3, -0.7, 1.1 }
      m:zero_grad()
      local lp = m:logps(ids, mask)
      ;(lp * r):sum():backward()
      local together = {}
      for i, p in ipairs(m:parameters()) do together[i] = p.grad:clone() end
      m:zero_grad()
      for n = 1, 3 do
         local one = m:logps(ids:narrow(1, n, 1):contiguous(), mask:narrow(1, n, 1):contiguous())
         assert.is_true(math.abs(one[1] - lp[n]) <= 1e-4 * math.abs(lp[n]))
         ;(one * r[n]):sum():backward()
      end
      for i, p in ipairs(m:parameters()) do
         local ok, d = close(p.grad, together[i], 1e-5, 1e-4)
         assert(ok, ("gradient %d differs by %g"):format(i, d))
      end
   end)

   it("generates greedily the same tokens with and without the KV cache", function()
      for _, extra in ipairs{ {}, { model_type = "qwen3", head_dim = 8, num_key_value_heads = 1 },
                              { attention_bias = true, rope_scaling = { rope_type = "llama3", factor = 4,
                                low_freq_factor = 1, high_freq_factor = 4, original_max_position_embeddings = 32 } } } do
         local m = scramble(dpo.model.new(with(tiny, extra)), 5)
         local prompt = { 3, 17, 22, 8 }
         local a = m:generate(prompt, { max_new_tokens = 20 })
         local b = m:generate(prompt, { max_new_tokens = 20, use_cache = false })
         assert.are.equal(20, a:numel())
         assert.are.same(b:totable(), a:totable())
         local seq = { table.unpack(prompt) }
         for k = 1, 5 do
            local _, i = m:next_logits(seq):max(1)
            assert.are.equal(i:item() - 1, a[k])
            seq[#seq + 1] = a[k]
         end
      end
      local m = dpo.model.new(tiny)
      local s1 = m:generate({ 1, 2 }, { max_new_tokens = 10, temperature = 1.0, top_k = 5, seed = 4 })
      local s2 = m:generate({ 1, 2 }, { max_new_tokens = 10, temperature = 1.0, top_k = 5, seed = 4 })
      assert.are.same(s1:totable(), s2:totable())
      h.errors(function() m:generate({ 1 }, { max_new_tokens = 64 }) end, "max_position_embeddings (64)", true)
   end)

   it("records nothing under no_grad or when frozen, and refuses a stale backward", function()
      local m = dpo.model.load(FIX .. "llama_gqa")
      local ids, mask = batch_of(FIX .. "llama_gqa")
      local lp = dpo.no_grad(function() return m:logps(ids, mask) end)
      assert.is_nil(lp:grad_fn())
      local ref = m:clone():freeze()
      assert.is_true(ref:is_frozen())
      assert.is_nil(ref:logps(ids, mask):grad_fn())
      h.near(ref:logps(ids, mask), lp:totable(), 0)
      assert.is_nil(ref:parameters()[1].grad)
      local a = m:logps(ids, mask)
      m:logps(ids, mask)
      h.errors(function() a:sum():backward() end, "ran another batch", true)
   end)

   it("saves and loads back exactly; bad checkpoints are named", function()
      local dir = h.tmpdir() .. "/ck"
      local m = dpo.model.load(FIX .. "qwen2")
      local ids, mask = batch_of(FIX .. "qwen2")
      m:save(dir)
      local conf = cjson.decode(h.read(dir .. "/config.json"))
      assert.are.equal("qwen2", conf.model_type)
      assert.are.equal(false, conf.use_sliding_window)
      assert.are.equal("float32", conf.torch_dtype)
      local back = dpo.model.load(dir)
      assert.are.same(m:logps(ids, mask):totable(), back:logps(ids, mask):totable())
      local tensors = assert(dpo.load(dir .. "/model.safetensors"))
      assert.is_nil(tensors["lm_head.weight"]) -- tied
      -- a tied lm_head.weight and rotary buffers are ignored
      tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
      tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = dpo.ones(2)
      assert(dpo.save(dir .. "/model.safetensors", tensors))
      assert.are.same(m:logps(ids, mask):totable(), dpo.model.load(dir):logps(ids, mask):totable())
      tensors["model.layers.1.mlp.up_proj.weight"] = nil
      assert(dpo.save(dir .. "/model.safetensors", tensors))
      h.errors(function() dpo.model.load(dir) end, "missing tensor 'model.layers.1.mlp.up_proj.weight'", true)
      tensors["model.layers.1.mlp.up_proj.weight"] = dpo.zeros(3, 16)
      assert(dpo.save(dir .. "/model.safetensors", tensors))
      h.errors(function() dpo.model.load(dir) end,
         "tensor 'model.layers.1.mlp.up_proj.weight' has shape 3x16, the model needs 24x16", true)
      tensors["model.layers.1.mlp.up_proj.weight"] = dpo.zeros(24, 16)
      tensors["model.layers.9.extra"] = dpo.zeros(2)
      assert(dpo.save(dir .. "/model.safetensors", tensors))
      h.errors(function() dpo.model.load(dir) end, "unexpected tensor 'model.layers.9.extra'", true)
      -- gpt2 directories load through dpo.gpt
      local g = dpo.gpt.new{ vocab_size = 20, n_ctx = 8, n_layer = 1, n_head = 2, n_embd = 8 }
      g:save(dir .. "2")
      assert.are.equal("dpo.GPT", getmetatable(dpo.model.load(dir .. "2")).__name)
   end)

   it("loads a BF16 checkpoint widened to float32 exactly", function()
      local dir = FIX .. "qwen2/bf16"
      local m = dpo.model.load(dir)
      local want = assert(dpo.load(dir .. "/rounded.safetensors"))
      for _, np in ipairs(m:named_parameters()) do
         assert.are.equal(0, (np[2] - want[np[1]]):abs():max():item(), np[1])
      end
      assert.are.equal("bfloat16", dpo.model.hf_config(m).torch_dtype)
      -- saved by default in the dtype it came in, to the same bits; sharded
      -- when asked, and loading back the same values
      local out = h.tmpdir() .. "/bf16"
      m:save(out)
      assert.are.equal("bfloat16", cjson.decode(h.read(out .. "/config.json")).torch_dtype)
      local st = assert(dpo.open_safetensors(out .. "/model.safetensors"))
      for _, e in ipairs(st:entries()) do assert.are.equal("BF16", e.dtype, e.name) end
      st:close()
      m:save(out .. "-f32", { dtype = "float32" })
      m:save(out .. "-shards", { max_shard_size = 4000 })
      assert.is_nil(lfs.attributes(out .. "-shards/model.safetensors"))
      local index = cjson.decode(h.read(out .. "-shards/model.safetensors.index.json"))
      local shards = {}
      for _, file in pairs(index.weight_map) do shards[file] = true end
      assert.is_true(next(shards, next(shards)) ~= nil, "more than one shard")
      for _, d in ipairs{ out, out .. "-f32", out .. "-shards" } do
         local back = dpo.model.load(d)
         for _, np in ipairs(back:named_parameters()) do
            assert.are.equal(0, (np[2] - want[np[1]]):abs():max():item(), d .. ": " .. np[1])
         end
      end
      -- not the float32 weights it was rounded from
      local f32 = dpo.model.load(FIX .. "qwen2")
      local ids, mask = batch_of(FIX .. "qwen2")
      assert.are_not.same(f32:logps(ids, mask):totable(), m:logps(ids, mask):totable())
   end)

   it("refuses config fields that change the math and are not supported, naming them", function()
      local function err(extra, pat)
         h.errors(function() dpo.model.new(with(tiny, extra)) end, pat, true)
      end
      err({ hidden_act = "gelu" }, "hidden_act is gelu")
      err({ rope_scaling = { rope_type = "dynamic", factor = 2 } }, "rope_scaling.rope_type is dynamic")
      err({ rope_scaling = { rope_type = "yarn", factor = 2 } }, "rope_scaling.rope_type is yarn")
      err({ attention_dropout = 0.1 }, "attention_dropout is 0.1")
      err({ model_type = "qwen2", use_sliding_window = true }, "use_sliding_window is true")
      err({ model_type = "gemma" }, "model_type is gemma")
      err({ num_key_value_heads = 3 }, "num_key_value_heads (3) must divide num_attention_heads (4)")
      h.errors(function() dpo.model.new{ vocab_size = 4 } end, "model_type is required", true)
      -- Mistral's window: fine while sequences fit in it, an error beyond
      local m = dpo.model.new(with(tiny, { model_type = "mistral", sliding_window = 8 }))
      local ids = dpo.tensor({ { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 } }, "int32")
      local ok = dpo.tensor({ { 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0 } }, "int32")
      assert.are.equal(1, m:logps(ids, ok):numel())
      h.errors(function() m:logps(ids, dpo.ones(1, 11, "int32")) end, "sliding_window is 8", true)
      -- defaults: Hugging Face's for the type
      local q = dpo.model.new{ model_type = "qwen3", vocab_size = 10, hidden_size = 8, intermediate_size = 8,
                               num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 1 }
      assert.are.equal(128, q:config().head_dim)
      assert.are.equal(32768, q:config().n_ctx)
   end)

   it("trains with dpo.train.dpo: a tiny random Llama and a tiny Qwen3", function()
      local tok = dpo.tokenizer.bytes()
      local list = {}
      for i = 1, 8 do
         list[i] = { prompt = "\n\nHuman: say " .. i .. "\n\nAssistant:", chosen = " " .. i .. ".",
                     rejected = " no!" }
      end
      local ds = dpo.data.dataset(list):tokenize(tok, { max_length = 40, max_prompt_length = 32 })
      for _, extra in ipairs{ {}, { model_type = "qwen3", head_dim = 8 } } do
         local policy = dpo.model.new(with(tiny, with({ vocab_size = tok:vocab_size() }, extra)))
         local before = policy:parameters()[2]:clone()
         local r = dpo.train.dpo{ policy = policy, data = ds, max_steps = 3, batch_size = 4, lr = 1e-2,
                                  quiet = true }
         assert.are.equal(3, r.step)
         assert.is_true((policy:parameters()[2] - before):abs():max():item() > 0)
         local e = dpo.eval.preferences(policy, policy:clone():freeze(), ds)
         assert.are.equal(8, e.pairs)
      end
   end)
   it("runs recipes/hh.lua --model=DIR on a Qwen3 directory, and resumes it exactly", function()
      local tok = dpo.tokenizer.bytes()
      local base = h.tmpdir()
      local mdir, a, b = base .. "/model", base .. "/a", base .. "/b"
      dpo.model.new{ model_type = "qwen3", vocab_size = tok:vocab_size(), hidden_size = 32,
                     intermediate_size = 48, num_hidden_layers = 1, num_attention_heads = 4,
                     num_key_value_heads = 2, head_dim = 8, max_position_embeddings = 128, seed = 1 }:save(mdir)
      tok:save(mdir .. "/tokenizer.json")
      local function hh(args)
         local cmd = ("env -u LUA_INIT -u LUA_INIT_5_4 OMP_WAIT_POLICY=PASSIVE %s recipes/hh.lua %s >%s 2>&1")
            :format(h.quote(h.DPOLUA), args, h.quote(base .. "/log"))
         local ok = os.execute(cmd)
         return ok, h.read(base .. "/log")
      end
      local common = "--sft.steps=4 --dpo.steps=4 --save_every=2 --eval_pairs=4 --samples=1 " ..
         "--max_new_tokens=4 --batch_size=2 --grad_accum=1 --max_length=96 --max_prompt_length=48 " ..
         "--progress=lines --model=" .. h.quote(mdir)
      local ok, out = hh(common .. " --out=" .. h.quote(a))
      assert(ok, out)
      local conf = cjson.decode(h.read(a .. "/checkpoint-8/config.json"))
      assert.are.equal("qwen3", conf.model_type)
      assert.are.equal("dpo.Llama", getmetatable(dpo.model.load(a .. "/checkpoint-8")).__name)
      -- the same run stopped after checkpoint-6 (mid-DPO), then resumed
      ok, out = hh(common .. " --out=" .. h.quote(b))
      assert(ok, out)
      os.remove(b .. "/checkpoint-8/model.safetensors")
      for name in require("lfs").dir(b .. "/checkpoint-8") do
         if name ~= "." and name ~= ".." then os.remove(b .. "/checkpoint-8/" .. name) end
      end
      assert(os.remove(b .. "/checkpoint-8"))
      ok, out = hh("--resume=" .. h.quote(b))
      assert(ok, out)
      assert.is_truthy(out:find("from " .. b .. "/checkpoint-6", 1, true), out)
      assert.are.equal(h.read(a .. "/checkpoint-8/model.safetensors"), h.read(b .. "/checkpoint-8/model.safetensors"))
   end)
end)
