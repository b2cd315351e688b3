-- The Llama-family composition of tests/spec/llama_ref.lua (the independent
-- network the fused engine's specs compare against) against PyTorch: for each
-- variant (GQA, MQA, head_dim given, Llama's attention and mlp biases,
-- Mistral, Qwen2's biases, Qwen3's q/k norms, tied and untied, linear and
-- llama3 rope scaling) its logps, counts and every parameter's gradient equal
-- what tests/ref/llama_torch.py computes with Hugging Face's math in torch.
-- Its committed output is tests/fixtures/llama/reference.json; where PyTorch
-- is installed the script runs again here and must agree with it.
local h = dofile("tests/spec/helper.lua")
local ref = dofile("tests/spec/llama_ref.lua")
local cjson = require "cjson"

local FIXTURE = "tests/fixtures/llama/reference.json"
local SCRIPT = "tests/ref/llama_torch.py"

local function load_fixture(path) return cjson.decode(h.read(path)) end

-- |got - want| <= atol + rtol * |want|, with a message naming what differs
local function near(what, got, want, atol, rtol)
   local d = math.abs(got - want)
   assert(d <= atol + rtol * math.abs(want),
          ("%s: got %.9g, PyTorch %.9g (difference %.3g)"):format(what, got, want, d))
   return d
end

local function check_case(c)
   local P = ref.lcg_params(c.config)
   local ids, mask = dpo.tensor(c.ids, "int32"), dpo.tensor(c.mask, "int32")
   local logps, counts = ref.logps(c.config, P, ids, mask)
   local worst = 0
   assert.are.same(#c.logps, logps:numel())
   for n = 1, #c.logps do
      worst = math.max(worst, near(c.name .. ": logps[" .. n .. "]", logps[n], c.logps[n], 2e-5, 2e-6))
      assert.are.equal(c.counts[n], counts[n], c.name .. ": counts[" .. n .. "]")
   end
   assert.are.equal("float32", counts:dtype())
   local loss = (logps * dpo.tensor(c.w)):sum()
   loss:backward()
   local seen = 0
   for _, g in ipairs(c.grads) do
      local grad = assert(P[g.name].grad, c.name .. ": no gradient for " .. g.name)
      local flat = grad:reshape(-1):totable()
      local r = ref.lcg(ref.name_seed(g.name) + 17, #flat)
      local dot, abs = 0, 0
      for k = 1, #flat do
         dot = dot + flat[k] * r[k]
         abs = abs + math.abs(flat[k])
      end
      -- sums over the whole tensor: an absolute tolerance relative to their size
      near(c.name .. ": " .. g.name .. " gradient . r", dot, g.dot, 1e-5 * (1 + g.abs_sum), 0)
      near(c.name .. ": |" .. g.name .. " gradient|", abs, g.abs_sum, 1e-5 * (1 + g.abs_sum), 0)
      for _, pk in ipairs(g.picks) do
         near(("%s: %s gradient[%d]"):format(c.name, g.name, pk[1]), flat[pk[1]], pk[2], 2e-5, 1e-4)
      end
      seen = seen + 1
   end
   local n = 0
   for _ in pairs(P) do n = n + 1 end
   assert.are.equal(n, seen, c.name .. ": the fixture covers every parameter")
   return worst
end

describe("llama_ref, the Llama family from autograd ops", function()
   local fx = load_fixture(FIXTURE)

   it("has a case for every variant the engine supports", function()
      local want = { "llama GQA untied", "llama MQA tied, linear rope", "llama3 rope scaling",
                     "llama head_dim given, attention and mlp biases", "mistral", "qwen2 biases",
                     "qwen3 qk-norm, head_dim given", "qwen3 untied, MHA" }
      local got = {}
      for i, c in ipairs(fx.cases) do got[i] = c.name end
      assert.are.same(want, got)
   end)

   for _, c in ipairs(fx.cases) do
      it("equals PyTorch on " .. c.name .. ": logps, counts, every gradient", function()
         check_case(c)
      end)
   end

   it("draws the parameters PyTorch drew (the generator's first values, by hand)", function()
      -- seed 8: 8*48271 = 386168; 386168*48271 mod (2^31 - 1) = 1460846352
      local u = ref.lcg(8, 2)
      h.near(u, { 386168 / 2147483647 * 2 - 1, 1460846352 / 2147483647 * 2 - 1 }, 1e-15)
      -- "a": (7*31 + 97) % 1000003 + 1
      assert.are.equal(315, ref.name_seed("a"))
   end)

   it("computes llama3 and linear rope frequencies as Hugging Face does (by hand)", function()
      local cfg = { rope_theta = 100, rope_scaling = { rope_type = "llama3", factor = 8,
         low_freq_factor = 1, high_freq_factor = 4, original_max_position_embeddings = 32 } }
      -- theta^(-2i/8) = 1, 0.316..., 0.1, 0.0316...; wavelengths 2 pi / f = 6.3 (high: kept),
      -- 19.9 (medium: s = (32/19.87 - 1)/3 = 0.2035, (1-s) f/8 + s f), 62.8 and 199 (low: f/8)
      h.near(ref.inv_freq(cfg, 8), { 1, 0.09583998588296266, 0.0125, 0.003952847075210474 }, 1e-12)
      cfg.rope_scaling = { type = "linear", factor = 2 }
      h.near(ref.inv_freq(cfg, 4), { 0.5, 0.05 }, 1e-12)
      cfg.rope_scaling = cjson.null
      h.near(ref.inv_freq(cfg, 4), { 1, 0.1 }, 1e-12)
      h.near(ref.inv_freq({}, 4), { 1, 0.01 }, 1e-12)
   end)

   it("takes each model type's own defaults and bias rules (Hugging Face's config classes)", function()
      local function shapes(extra)
         local c = { vocab_size = 5, hidden_size = 16, intermediate_size = 8, num_hidden_layers = 1,
                     num_attention_heads = 8 }
         for k, v in pairs(extra) do c[k] = v end
         local m = {}
         for _, ns in ipairs(ref.parameter_shapes(c)) do m[ns[1]] = ns[2] end
         return m
      end
      local q, k, o = "model.layers.0.self_attn.q_proj.", "model.layers.0.self_attn.k_proj.",
         "model.layers.0.self_attn.o_proj."
      local s = shapes { model_type = "llama" } -- KV = H, D = C / H, no biases
      assert.are.same({ 16, 16 }, s[k .. "weight"])
      assert.is_nil(s[q .. "bias"])
      s = shapes { model_type = "llama", attention_bias = true, mlp_bias = true }
      assert.are.same({ 16 }, s[o .. "bias"])
      assert.are.same({ 8 }, s["model.layers.0.mlp.gate_proj.bias"])
      s = shapes { model_type = "mistral", attention_bias = true, mlp_bias = true } -- KV 8, no biases
      assert.are.same({ 16, 16 }, s[k .. "weight"])
      assert.is_nil(s[q .. "bias"])
      assert.is_nil(s["model.layers.0.mlp.up_proj.bias"])
      s = shapes { model_type = "qwen2", num_key_value_heads = 2 } -- q/k/v biases, none on o
      assert.are.same({ 16 }, s[q .. "bias"])
      assert.are.same({ 4 }, s[k .. "bias"])
      assert.is_nil(s[o .. "bias"])
      s = shapes { model_type = "qwen3", num_key_value_heads = 8 } -- head_dim 128
      assert.are.same({ 1024, 16 }, s[q .. "weight"])
      assert.are.same({ 16, 1024 }, s[o .. "weight"])
      assert.are.same({ 128 }, s["model.layers.0.self_attn.q_norm.weight"])
      assert.are.same({ 5, 16 }, s["lm_head.weight"]) -- untied by default
      assert.is_nil(shapes({ tie_word_embeddings = true })["lm_head.weight"])
      h.errors(function() shapes { model_type = "gemma" } end, "model_type 'gemma' is not one of", true)
   end)

   it("matches finite differences through the whole composition", function()
      local cfg = fx.cases[7].config -- qwen3: q/k norms, GQA, head_dim given
      local P = ref.lcg_params(cfg)
      local ids = dpo.tensor({ { 1, 5, 9, 2, 7 }, { 3, 10, 4, 0, 0 } }, "int32")
      local mask = dpo.tensor({ { 0, 1, 1, 0, 1 }, { 0, 0, 1, 0, 0 } }, "int32")
      for _, name in ipairs { "model.layers.1.self_attn.k_norm.weight",
                              "model.layers.0.input_layernorm.weight" } do
         local x = P[name]
         local ok, msg = dpo.gradcheck(function() return (ref.logps(cfg, P, ids, mask)) end, { x },
                                       { eps = 1e-2, atol = 2e-3, rtol = 2e-2 })
         assert(ok, msg)
      end
   end)

   it("rejects what it does not compute, naming it", function()
      local base = fx.cases[1].config
      local function cfg(extra)
         local c = {}
         for k, v in pairs(base) do c[k] = v end
         for k, v in pairs(extra) do c[k] = v end
         return c
      end
      local ids, mask = dpo.tensor({ { 1, 2, 3 } }, "int32"), dpo.tensor({ { 0, 1, 1 } }, "int32")
      local P = ref.lcg_params(base)
      h.errors(function() ref.logps(cfg { rope_scaling = { rope_type = "yarn", factor = 2 } }, P, ids, mask) end,
               "rope_scaling type 'yarn' is not supported", true)
      h.errors(function() ref.logps(cfg { hidden_act = "gelu" }, P, ids, mask) end,
               "hidden_act 'gelu' is not supported", true)
      h.errors(function() ref.logps(cfg { use_sliding_window = true }, P, ids, mask) end,
               "use_sliding_window true", true)
      h.errors(function() ref.logps(cfg { sliding_window = 1 }, P, ids, mask) end,
               "more than sliding_window 1", true)
      h.errors(function() ref.logps(cfg { tie_word_embeddings = true }, P, ids, mask) end,
               "parameter lm_head.weight is not part of this network", true)
      local Q = ref.lcg_params(base)
      Q["model.norm.weight"] = nil
      h.errors(function() ref.logps(base, Q, ids, mask) end, "parameter model.norm.weight is missing", true)
      Q["model.norm.weight"] = dpo.ones(3)
      h.errors(function() ref.logps(base, Q, ids, mask) end,
               "parameter model.norm.weight has shape [3], expected [16]", true)
      h.errors(function() ref.logps(base, P, ids, dpo.ones(1, 2)) end, "mask must be", true)
   end)

   it("agrees with the script that made its fixture, where PyTorch is installed", function()
      local probe = io.popen("/usr/bin/python3 -c 'import torch' 2>/dev/null && echo yes")
      local has = probe and probe:read("a") or ""
      if probe then probe:close() end
      if not has:match("yes") then
         pending("PyTorch is not installed (Debian: python3-torch): " .. SCRIPT .. " not rerun")
         return
      end
      local dir = h.tmpdir()
      local out = dir .. "/reference.json"
      assert(os.execute("/usr/bin/python3 " .. SCRIPT .. " " .. h.quote(out)), SCRIPT .. " failed")
      local new, old = load_fixture(out), fx
      assert.are.equal(#old.cases, #new.cases)
      for i, c in ipairs(new.cases) do
         local o = old.cases[i]
         assert.are.same(o.config, c.config)
         assert.are.same(o.ids, c.ids)
         assert.are.same(o.mask, c.mask)
         assert.are.same(o.counts, c.counts)
         h.near(c.logps, o.logps, 1e-5)
         for j, g in ipairs(c.grads) do
            assert.are.equal(o.grads[j].name, g.name)
            near(g.name .. " gradient . r", g.dot, o.grads[j].dot, 1e-5 * (1 + g.abs_sum), 0)
         end
      end
      h.cleanup()
   end)
end)
