-- The GPT-2 engine against an independent computation: the same network
-- written here from tensor ops (autograd does its gradients), a finite-
-- difference check of the fused backward on every parameter tensor, and the
-- properties the model promises (packing, caching, checkpoints).
local h = dofile("tests/spec/helper.lua")

local cfg = { vocab_size = 37, n_ctx = 12, n_layer = 2, n_head = 2, n_embd = 8, seed = 3 }

local function ids_tensor(rows) return dpo.tensor(rows, "int32") end

-- A batch of rows of different lengths, right-padded with 0 (mask 0 there).
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

-- ---- the reference network, from tensor ops ---------------------------------

local function layernorm(x, w, b, eps)
   local mu = x:mean(2, true)
   local xc = x - mu
   local var = (xc * xc):mean(2, true)
   return xc / (var + eps):sqrt() * w + b
end

-- sum over scored t of log p(ids[t] | ids[<t]) for one row (tables of ids/mask)
local function reference_row(P, c, ids, mask)
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
      local function p(name) return P[pre .. name] end
      local a = layernorm(x, p("ln_1.weight"), p("ln_1.bias"), c.layer_norm_epsilon)
      local qkv = a:mm(p("attn.c_attn.weight")) + p("attn.c_attn.bias")
      local heads = {}
      for hd = 0, NH - 1 do
         local q = qkv:narrow(2, hd * HS + 1, HS)
         local k = qkv:narrow(2, C + hd * HS + 1, HS)
         local v = qkv:narrow(2, 2 * C + hd * HS + 1, HS)
         local att = dpo.where(causal, q:mm(k:t()) * (1 / math.sqrt(HS)), -1e30):softmax(2)
         heads[#heads + 1] = att:mm(v)
      end
      x = x + dpo.cat(heads, 2):mm(p("attn.c_proj.weight")) + p("attn.c_proj.bias")
      local b = layernorm(x, p("ln_2.weight"), p("ln_2.bias"), c.layer_norm_epsilon)
      local f = (b:mm(p("mlp.c_fc.weight")) + p("mlp.c_fc.bias")):gelu()
      x = x + f:mm(p("mlp.c_proj.weight")) + p("mlp.c_proj.bias")
   end
   x = layernorm(x, P["transformer.ln_f.weight"], P["transformer.ln_f.bias"], c.layer_norm_epsilon)
   local logits = x:mm(P["transformer.wte.weight"]:t())
   local lp = logits:log_softmax(2):gather(2, ids_tensor(tgt)):reshape(T)
   return (lp * dpo.tensor(m)):sum()
end

local function reference(model, ids, mask)
   local P = {}
   for _, np in ipairs(model:named_parameters()) do
      P[np[1]] = np[2]:detach():clone():requires_grad()
   end
   local rows, it, mt = {}, ids:totable(), mask:totable()
   for n = 1, #it do rows[n] = reference_row(P, model:config(), it[n], mt[n]):reshape(1) end
   return dpo.cat(rows, 1), P
end

-- Larger weights than GPT-2's init (std 0.02), so the residual stream is
-- O(1): finite differences of a near-zero LayerNorm input are too curved to
-- check, and larger weights exercise the kernels harder.
local function scramble(m, seed)
   dpo.manual_seed(seed)
   dpo.no_grad(function()
      for _, np in ipairs(m:named_parameters()) do
         local t = np[2]
         if np[1]:match("ln_") and np[1]:match("weight$") then
            t:copy(dpo.randn(t:shape()) * 0.1 + 1)
         else
            t:copy(dpo.randn(t:shape()) * 0.3)
         end
      end
   end)
   return m
end

local close = h.close

describe("dpo.gpt", function()
   it("has GPT-2's parameters, names, shapes and initialisation", function()
      local m = dpo.gpt.new{ vocab_size = 100, n_ctx = 64, n_layer = 3, n_head = 4, n_embd = 32, seed = 1 }
      local C, L = 32, 3
      local want = { { "transformer.wte.weight", { 100, C } }, { "transformer.wpe.weight", { 64, C } } }
      for l = 0, L - 1 do
         local pre = "transformer.h." .. l .. "."
         for _, e in ipairs{
            { "ln_1.weight", { C } }, { "ln_1.bias", { C } },
            { "attn.c_attn.weight", { C, 3 * C } }, { "attn.c_attn.bias", { 3 * C } },
            { "attn.c_proj.weight", { C, C } }, { "attn.c_proj.bias", { C } },
            { "ln_2.weight", { C } }, { "ln_2.bias", { C } },
            { "mlp.c_fc.weight", { C, 4 * C } }, { "mlp.c_fc.bias", { 4 * C } },
            { "mlp.c_proj.weight", { 4 * C, C } }, { "mlp.c_proj.bias", { C } },
         } do want[#want + 1] = { pre .. e[1], e[2] } end
      end
      want[#want + 1] = { "transformer.ln_f.weight", { C } }
      want[#want + 1] = { "transformer.ln_f.bias", { C } }
      local got, total = m:named_parameters(), 0
      assert.are.equal(#want, #got)
      for i, w in ipairs(want) do
         assert.are.equal(w[1], got[i][1])
         assert.are.same(w[2], got[i][2]:shape())
         total = total + got[i][2]:numel()
      end
      assert.are.equal(total, m:num_params())
      local _, P = m:named_parameters()
      local function std(t) return (t - t:mean()):pow(2):mean():sqrt():item() end
      assert.is_true(math.abs(std(P["transformer.wte.weight"]) - 0.02) < 0.002)
      assert.is_true(math.abs(std(P["transformer.h.1.mlp.c_proj.weight"]) - 0.02 / math.sqrt(2 * L)) < 0.001)
      assert.are.equal(0, P["transformer.h.0.attn.c_attn.bias"]:abs():sum():item())
      assert.are.equal(C, P["transformer.h.2.ln_2.weight"]:sum():item())
      assert.matches("dpo.GPT(layers=3, heads=4, d=32, vocab=100, ctx=64", tostring(m), 1, true)
   end)

   it("computes logps and every gradient as the network written from tensor ops", function()
      local m = scramble(dpo.gpt.new(cfg), 5)
      local lp, counts = m:logps(IDS, MASK)
      h.near(counts, { 5, 2, 6 })
      local ref, P = reference(m, IDS, MASK)
      local ok, d = close(lp, ref:detach(), 1e-4, 1e-5)
      assert(ok, "logps differ by " .. d)
      -- the same upstream gradient through both
      local r = dpo.tensor{ 0.7, -1.3, 2.1 }
      m:zero_grad()
      ;(lp * r):sum():backward()
      ;(ref * r):sum():backward()
      for _, np in ipairs(m:named_parameters()) do
         local name, t = np[1], np[2]
         local good, diff = close(t.grad, P[name].grad, 1e-5, 1e-3)
         assert(good, ("gradient of %s differs by %g"):format(name, diff))
      end
   end)

   it("agrees with the reference on rows longer than one attention block, sharing a prompt", function()
      local c = { vocab_size = 29, n_ctx = 160, n_layer = 1, n_head = 2, n_embd = 8, seed = 4 }
      local m = scramble(dpo.gpt.new(c), 9)
      dpo.manual_seed(12)
      local prompt = dpo.randint(0, 29, 1, 70)
      local ids = dpo.cat({ dpo.cat({ prompt, dpo.randint(0, 29, 1, 80) }, 2),
         dpo.cat({ prompt, dpo.randint(0, 29, 1, 80) }, 2) }, 1)
      local mask = dpo.zeros(2, 150, "int32")
      mask:narrow(2, 60, 91):fill(1)
      local lp = m:logps(ids, mask)
      local ref, P = reference(m, ids, mask)
      local ok, d = close(lp, ref:detach(), 1e-3, 1e-5)
      assert(ok, "logps differ by " .. d)
      local r = dpo.tensor{ 1.3, -0.4 }
      m:zero_grad()
      ;(lp * r):sum():backward()
      ;(ref * r):sum():backward()
      for _, np in ipairs(m:named_parameters()) do
         local good, diff = close(np[2].grad, P[np[1]].grad, 1e-4, 1e-3)
         assert(good, ("gradient of %s differs by %g"):format(np[1], diff))
      end
   end)

   it("passes a finite-difference check on samples of every parameter tensor", function()
      local m = scramble(dpo.gpt.new(cfg), 6)
      local r = dpo.tensor{ 0.5, -1, 1.5 }
      local function L() return dpo.no_grad(function() return (m:logps(IDS, MASK) * r):sum():item() end) end
      m:zero_grad()
      ;(m:logps(IDS, MASK) * r):sum():backward()
      dpo.manual_seed(11)
      local worst = h.fd_check(m:named_parameters(), L, h.samples(3))
      assert.is_true(worst < 2e-3)
   end)

   it("applies dropout in train mode only, reproducibly, with a matching backward", function()
      local c = { vocab_size = 37, n_ctx = 12, n_layer = 2, n_head = 2, n_embd = 8, seed = 3, dropout = 0.2 }
      local m = scramble(dpo.gpt.new(c), 10)
      m:eval()
      local ref = reference(m, IDS, MASK)
      local ok, d = close(m:logps(IDS, MASK), ref:detach(), 1e-4, 1e-5)
      assert(ok, "eval mode differs from the network without dropout by " .. d)
      m:train()
      m:seed_dropout(7)
      local a = m:logps(IDS, MASK)
      m:seed_dropout(7)
      local b = m:logps(IDS, MASK)
      assert.are.same(a:totable(), b:totable())
      assert.is_false(a:allclose(ref:detach(), 1e-3, 1e-3))
      -- the fused backward of the dropped network, against finite differences
      -- with the masks held fixed
      local r = dpo.tensor{ 0.5, -1, 1.5 }
      local function L()
         m:seed_dropout(7)
         return dpo.no_grad(function() return (m:logps(IDS, MASK) * r):sum():item() end)
      end
      m:zero_grad()
      m:seed_dropout(7)
      ;(m:logps(IDS, MASK) * r):sum():backward()
      dpo.manual_seed(13)
      h.fd_check(m:named_parameters(), L, h.samples(2))
   end)

   it("scores each row of a mixed-length batch as it scores the row alone", function()
      local m = dpo.gpt.new(cfg)
      local lp = m:logps(IDS, MASK)
      for n = 1, 3 do
         local one = m:logps(IDS:narrow(1, n, 1):contiguous(), MASK:narrow(1, n, 1):contiguous())
         assert.are.equal(lp[n], one[1])
      end
   end)

   it("computes a prompt shared by several rows once, with the same results", function()
      local m = scramble(dpo.gpt.new{ vocab_size = 40, n_ctx = 64, n_layer = 2, n_head = 2, n_embd = 8, seed = 1 }, 8)
      dpo.manual_seed(3)
      local prompt = dpo.randint(0, 40, 1, 20)
      local rows = {}
      for k = 1, 3 do rows[k] = dpo.cat({ prompt, dpo.randint(0, 40, 1, 10) }, 2) end
      local ids = dpo.cat(rows, 1)
      local mask = dpo.zeros(3, 30, "int32")
      mask:narrow(2, 18, 13):fill(1) -- also scores three prompt tokens
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

   it("records nothing under no_grad or when frozen, and accumulates gradients", function()
      local m = dpo.gpt.new(cfg)
      local lp = dpo.no_grad(function() return m:logps(IDS, MASK) end)
      assert.is_nil(lp:grad_fn())
      local ref = m:clone():freeze()
      assert.is_true(ref:is_frozen())
      assert.is_nil(ref:logps(IDS, MASK):grad_fn())
      h.near(ref:logps(IDS, MASK), lp:totable(), 0)
      assert.is_nil(ref:parameters()[1].grad)
      -- two backward passes add up
      local w = m:parameters()[1]
      m:zero_grad()
      m:logps(IDS, MASK):sum():backward()
      local once = w.grad:clone()
      m:logps(IDS, MASK):sum():backward()
      h.near(w.grad, (once * 2):totable(), 1e-6)
   end)

   it("refuses a backward after another forward overwrote the activations", function()
      local m = dpo.gpt.new(cfg)
      local a = m:logps(IDS, MASK)
      m:logps(IDS, MASK)
      h.errors(function() a:sum():backward() end, "ran another batch", true)
   end)

   it("rejects bad inputs with clear errors", function()
      local m = dpo.gpt.new(cfg)
      h.errors(function() m:logps(dpo.zeros(2, 3), dpo.zeros(2, 3)) end, "ids must be an int32 tensor", true)
      h.errors(function() m:logps(IDS, dpo.zeros(2, 2)) end, "mask of size 2x2 does not match ids of size 3x10", true)
      h.errors(function() m:logps(ids_tensor{ { 1, 99 } }, ids_tensor{ { 0, 1 } }) end,
         "token id 99 at row 1, position 2 is out of range 0..36", true)
      local long = {}
      for t = 1, 14 do long[t] = 1 end
      h.errors(function() m:logps(ids_tensor{ long }, ids_tensor{ long }) end, "n_ctx is 12", true)
      h.errors(function() dpo.gpt.new{ vocab_size = 10, n_ctx = 4, n_layer = 1, n_head = 3, n_embd = 8 } end,
         "n_head (3) must divide n_embd (8)", true)
      h.errors(function() dpo.gpt.new{ vocab_size = 10, n_ctx = 4, n_layer = 1, n_head = 1 } end,
         "option 'n_embd' is required", true)
      h.errors(function() dpo.gpt.new{ vocab_size = 10, n_ctx = 4, n_layer = 1, n_head = 1, n_embd = 4, n_emb = 3 } end,
         "unknown option 'n_emb'", true)
   end)

   it("generates greedily the same tokens with and without the KV cache", function()
      local m = dpo.gpt.new{ vocab_size = 50, n_ctx = 40, n_layer = 2, n_head = 2, n_embd = 16, seed = 9 }
      local prompt = { 3, 17, 42, 8 }
      local a = m:generate(prompt, { max_new_tokens = 20 })
      local b = m:generate(prompt, { max_new_tokens = 20, use_cache = false })
      assert.are.equal(20, a:numel())
      assert.are.same(b:totable(), a:totable())
      -- greedy means: each token is the argmax of the next-token logits
      local seq = { table.unpack(prompt) }
      for k = 1, 5 do
         local _, i = m:next_logits(seq):max(1)
         assert.are.equal(i:item() - 1, a[k])
         seq[#seq + 1] = a[k]
      end
      -- sampling is seeded; stop ids end generation
      local s1 = m:generate(prompt, { max_new_tokens = 10, temperature = 1.0, top_k = 5, seed = 4 })
      local s2 = m:generate(prompt, { max_new_tokens = 10, temperature = 1.0, top_k = 5, seed = 4 })
      assert.are.same(s1:totable(), s2:totable())
      local stop = m:generate(prompt, { max_new_tokens = 20, stop_ids = { a[3] } })
      assert.is_true(stop:numel() <= 3)
      h.errors(function() m:generate(prompt, { max_new_tokens = 40 }) end, "exceeds the model's n_ctx (40)", true)
   end)

   it("saves a Hugging Face checkpoint that loads back to identical logps", function()
      local dir = os.tmpname()
      os.remove(dir)
      local m = dpo.gpt.new(cfg)
      m:save(dir)
      local tensors, meta = dpo.load(dir .. "/model.safetensors")
      assert.are.equal("pt", meta.format)
      local n = 0
      for name, t in pairs(tensors) do
         n = n + 1
         assert.is_truthy(name:match("^transformer%."), name)
         assert.are.equal("float32", t:dtype())
      end
      assert.are.equal(#m:named_parameters(), n)
      local conf = require("cjson").decode(io.open(dir .. "/config.json"):read("a"))
      assert.are.equal("gpt2", conf.model_type)
      assert.are.equal(cfg.n_ctx, conf.n_positions)
      local back = dpo.gpt.load(dir)
      assert.are.same(m:logps(IDS, MASK):totable(), back:logps(IDS, MASK):totable())
      -- names without the prefix, and the buffers of older checkpoints, load too
      local renamed = {}
      for name, t in pairs(tensors) do renamed[name:gsub("^transformer%.", "")] = t end
      renamed["h.0.attn.bias"] = dpo.ones(1, 1, 12, 12)
      renamed["lm_head.weight"] = tensors["transformer.wte.weight"]
      assert(dpo.save(dir .. "/model.safetensors", renamed))
      assert.are.same(m:logps(IDS, MASK):totable(), dpo.gpt.load(dir):logps(IDS, MASK):totable())
      -- a missing or misshapen tensor is named
      renamed["h.1.mlp.c_fc.bias"] = nil
      assert(dpo.save(dir .. "/model.safetensors", renamed))
      h.errors(function() dpo.gpt.load(dir) end, "missing tensor 'transformer.h.1.mlp.c_fc.bias'", true)
      renamed["h.1.mlp.c_fc.bias"] = dpo.zeros(5)
      assert(dpo.save(dir .. "/model.safetensors", renamed))
      h.errors(function() dpo.gpt.load(dir) end, "tensor 'h.1.mlp.c_fc.bias' has shape 5, the model needs 32", true)
      os.remove(dir .. "/model.safetensors")
      os.remove(dir .. "/config.json")
      os.remove(dir)
   end)
end)
