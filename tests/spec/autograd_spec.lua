-- Autograd: a gradient check for every differentiable op (the list comes
-- from the C op table, so a new op without a case here fails), a DPO loss as
-- a composite, the semantics of the tape, and flat memory over a long loop.
local h = dofile("tests/spec/helper.lua")

dpo.manual_seed(7)

local function randn(...) return dpo.randn(...):requires_grad() end
local function scaled(k, ...) return (dpo.randn(...) * k):requires_grad() end
-- values at least 0.2 away from zero (for abs, relu, log, sqrt, pow bases)
local function away(...)
   local t = dpo.randn(...)
   return (t + dpo.where(t:ge(0), 0.2, -0.2)):requires_grad()
end
local function positive(...) return (dpo.rand(...) + 0.5):requires_grad() end
local function idx(t) return dpo.tensor(t, "int32") end

-- The model's log-probabilities: one fused node; its parameters are the inputs.
local function gpt_case()
   local m = dpo.gpt.new{ vocab_size = 11, n_ctx = 8, n_layer = 1, n_head = 2, n_embd = 4, seed = 2 }
   local _, P = m:named_parameters()
   dpo.no_grad(function()
      for _, p in ipairs(m:parameters()) do p:copy(dpo.randn(p:shape()) * 0.5) end
   end)
   local ids = idx{ { 1, 5, 9, 2, 7 }, { 3, 10, 0, 0, 0 } }
   local mask = idx{ { 0, 1, 1, 0, 1 }, { 0, 1, 0, 0, 0 } }
   return { function() return m:logps(ids, mask) end,
      { P["transformer.wte.weight"], P["transformer.h.0.attn.c_attn.weight"],
        P["transformer.h.0.mlp.c_fc.bias"], P["transformer.ln_f.weight"] },
      { eps = 1e-2, atol = 2e-3, rtol = 2e-2 } }
end

-- The Llama family's log-probabilities (Qwen3 with biases: every kind of parameter).
local function llama_case()
   local m = dpo.model.new{ model_type = "qwen3", vocab_size = 11, hidden_size = 8, intermediate_size = 6,
                            num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 1,
                            head_dim = 4, attention_bias = true, max_position_embeddings = 8, seed = 2 }
   local _, P = m:named_parameters()
   dpo.no_grad(function()
      for _, p in ipairs(m:parameters()) do p:copy(dpo.randn(p:shape()) * 0.5) end
   end)
   local ids = idx{ { 1, 5, 9, 2, 7 }, { 3, 10, 0, 0, 0 } }
   local mask = idx{ { 0, 1, 1, 0, 1 }, { 0, 1, 0, 0, 0 } }
   return { function() return m:logps(ids, mask) end,
      { P["model.embed_tokens.weight"], P["model.layers.0.self_attn.k_proj.weight"],
        P["model.layers.0.self_attn.q_norm.weight"], P["model.layers.0.self_attn.v_proj.bias"],
        P["model.layers.0.mlp.down_proj.weight"], P["lm_head.weight"] },
      { eps = 1e-2, atol = 2e-3, rtol = 2e-2 } }
end

-- name -> list of {fn, inputs, opts}; several cases per op for broadcasting
local cases = {
   gpt_logps = { gpt_case() },
   llama_logps = { llama_case() },
   add = {
      { function(a, b) return a + b end, { randn(2, 3), randn(2, 3) } },
      { function(a, b) return a + b end, { randn(2, 3), randn(3) } },
      { function(a, b) return a + b end, { randn(2, 1, 3), randn(4, 1) } },
      { function(a) return a + 2 end, { randn(3) } },
   },
   sub = {
      { function(a, b) return a - b end, { randn(2, 3), randn(1, 3) } },
      { function(a) return 1 - a end, { randn(4) } },
   },
   mul = {
      { function(a, b) return a * b end, { randn(2, 3), randn(2, 1) } },
      { function(a, b) return a * b end, { randn(3), randn(2, 3) } },
   },
   div = {
      { function(a, b) return a / b end, { randn(2, 3), positive(3) } },
      { function(a) return 2 / a end, { positive(2, 2) } },
   },
   pow = {
      { function(a) return a ^ 3 end, { randn(2, 3) } },
      { function(a, b) return a ^ b end, { positive(2, 3), randn(3) } },
      { function(b) return 2 ^ b end, { randn(3) } },
   },
   maximum = { { function(a, b) return a:maximum(b) end, { randn(3, 4), randn(4) } } },
   minimum = { { function(a, b) return a:minimum(b) end, { randn(3, 4), randn(3, 1) } } },
   neg = { { function(a) return -a end, { randn(2, 3) } } },
   exp = { { function(a) return a:exp() end, { randn(2, 3) } } },
   log = { { function(a) return a:log() end, { positive(2, 3) } } },
   sqrt = { { function(a) return a:sqrt() end, { positive(2, 3) } } },
   abs = { { function(a) return a:abs() end, { away(2, 3) } } },
   sigmoid = { { function(a) return a:sigmoid() end, { randn(2, 3) } } },
   tanh = { { function(a) return a:tanh() end, { randn(2, 3) } } },
   relu = { { function(a) return a:relu() end, { away(2, 3) } } },
   gelu = { { function(a) return a:gelu() end, { randn(2, 3) } } },
   logsigmoid = { { function(a) return a:logsigmoid() end, { scaled(3, 2, 3) } } },
   softplus = { { function(a) return a:softplus() end, { scaled(3, 2, 3) } } },
   silu = {
      { function(a) return a:silu() end, { scaled(3, 2, 3) } },
      { function(a, b) return (a * b):silu() end, { randn(2, 3), randn(3) } },
   },
   rsqrt = {
      { function(a) return a:rsqrt() end, { positive(2, 3) } },
      { function(a) return (a * a):mean(2, true):add(1e-2):rsqrt() end, { randn(3, 4) } },
   },
   clamp = {
      { function(a) return a:clamp(-0.5, 0.5) end, { randn(3, 3) } },
      { function(a) return a:clamp(0.1) end, { randn(3, 3) } },
      { function(a) return a:clamp(nil, -0.1) end, { randn(3, 3) } },
   },
   matmul = {
      { function(a, b) return a:mm(b) end, { randn(3, 4), randn(4, 2) } },
      { function(a, b) return a:matmul(b) end, { randn(2, 3, 4), randn(2, 4, 5) } },
      { function(a, b) return a:matmul(b) end, { randn(2, 3, 4), randn(4, 5) } },
      { function(a, b) return a:matmul(b) end, { randn(3, 4), randn(4) } },
      { function(a, b) return a:matmul(b) end, { randn(4), randn(4) } },
      { function(a, b) return a:t():mm(b) end, { randn(4, 3), randn(4, 2) } },
   },
   sum = {
      { function(a) return a:sum() end, { randn(2, 3) } },
      { function(a) return a:sum(2) end, { randn(2, 3, 4) } },
      { function(a) return a:sum(1, true) end, { randn(2, 3) } },
   },
   mean = {
      { function(a) return a:mean() end, { randn(2, 3) } },
      { function(a) return a:mean(3, true) end, { randn(2, 3, 4) } },
   },
   max = {
      { function(a) return a:max() end, { randn(2, 3) } },
      { function(a) return (a:max(2)) end, { randn(3, 4) } },
   },
   min = {
      { function(a) return a:min() end, { randn(2, 3) } },
      { function(a) return (a:min(1, true)) end, { randn(3, 4) } },
   },
   softmax = {
      { function(a) return a:softmax(2) end, { randn(3, 4) } },
      { function(a) return a:softmax(1) end, { randn(3, 4) } },
   },
   log_softmax = {
      { function(a) return a:log_softmax(2) end, { randn(3, 4) } },
      { function(a) return a:log_softmax(2) end, { randn(2, 3, 4) } },
   },
   logsumexp = {
      { function(a) return a:logsumexp(2) end, { randn(3, 4) } },
      { function(a) return a:logsumexp(1, true) end, { randn(3, 4) } },
   },
   gather = { { function(a) return a:gather(2, idx{ { 2, 1 }, { 4, 4 }, { 3, 1 } }) end, { randn(3, 4) } } },
   index_select = {
      { function(a) return a:index_select(1, idx{ 3, 1, 3 }) end, { randn(3, 4) } },
      { function(a) return a:index_select(2, { 2, 2, 4 }) end, { randn(3, 4) } },
   },
   cat = {
      { function(a, b) return dpo.cat({ a, b }, 1) end, { randn(2, 3), randn(1, 3) } },
      { function(a, b) return dpo.cat({ a, b }, 2) end, { randn(2, 3), randn(2, 2) } },
   },
   stack = { { function(a, b) return dpo.stack({ a, b }, 2) end, { randn(2, 3), randn(2, 3) } } },
   where = {
      { function(a, b) return dpo.where(idx{ 1, 0, 1 }, a, b) end, { randn(2, 3), randn(3) } },
      { function(a) return dpo.where(idx{ { 0 }, { 1 } }, a, 0) end, { randn(2, 3) } },
   },
   narrow = {
      { function(a) return a:narrow(2, 2, 2) end, { randn(3, 4) } },
      { function(a) return a:narrow(1, 1, 1) * 2 end, { randn(3, 4) } },
   },
   reshape = {
      { function(a) return a:reshape(4, 3) end, { randn(3, 4) } },
      { function(a) return a:view(-1) end, { randn(3, 4) } },
      { function(a) return a:unsqueeze(2):squeeze() end, { randn(3, 4) } },
   },
   transpose = {
      { function(a) return a:transpose(1, 2) end, { randn(3, 4) } },
      { function(a) return a:t() * 3 end, { randn(3, 4) } },
   },
   select = {
      { function(a) return a:select(2, 3) end, { randn(3, 4) } },
      { function(a) return a[2] end, { randn(3, 4) } },
   },
   copy = {
      { function(a) return a:clone() end, { randn(3, 4) } },
      { function(a) return a:t():contiguous() end, { randn(3, 4) } },
   },
}

describe("gradcheck", function()
   it("has a case for every differentiable op of the C op table", function()
      local ops, missing, n = dpo.autograd_ops(), {}, 0
      for _, op in ipairs(ops) do
         if op.differentiable then
            n = n + 1
            if not cases[op.name] then missing[#missing + 1] = op.name end
         end
      end
      assert.is_true(n >= 35)
      assert.are.same({}, missing)
   end)

   local names = {}
   for name in pairs(cases) do names[#names + 1] = name end
   table.sort(names)
   for _, name in ipairs(names) do
      for k, case in ipairs(cases[name]) do
         it(("agrees with finite differences for %s (case %d)"):format(name, k), function()
            local ok, report = dpo.gradcheck(case[1], case[2], case[3])
            assert(ok, report)
            assert.is_true(report.checked > 0)
         end)
      end
   end

   it("checks a DPO loss over four log-prob tensors", function()
      local beta = 0.1
      local function dpo_loss(pi_c, pi_r, ref_c, ref_r)
         local logits = (pi_c - ref_c) - (pi_r - ref_r)
         return -(logits * beta):logsigmoid():mean()
      end
      local inputs = { scaled(5, 4), scaled(5, 4), scaled(5, 4), scaled(5, 4) }
      local ok, msg = dpo.gradcheck(dpo_loss, inputs, { eps = 1e-2 })
      assert(ok, msg)
      -- and against the derivative by hand: d/dpi_c = -beta * sigmoid(-beta*logits) / B
      local pc, pr, rc, rr = table.unpack(inputs)
      for _, t in ipairs(inputs) do t.grad = nil end
      dpo_loss(pc, pr, rc, rr):backward()
      local want = {}
      for i = 1, 4 do
         local z = beta * ((pc[i] - rc[i]) - (pr[i] - rr[i]))
         want[i] = -beta / (1 + math.exp(z)) / 4
      end
      h.near(pc.grad, want, 1e-5)
      h.near(rc.grad, (function() local w = {} for i = 1, 4 do w[i] = -want[i] end return w end)(), 1e-5)
   end)

   it("reports the element where a wrong gradient differs", function()
      -- a function whose autograd is right but whose numeric value is
      -- changed behind autograd's back: detach() hides x*x from the tape
      local x = randn(3)
      local ok, msg = dpo.gradcheck(function(a) return a * a:detach() end, { x })
      assert.is_false(ok)
      assert.matches("input 1, element 1: analytic", msg, 1, true)
   end)
end)

describe("the tape", function()
   it("accumulates across backward calls and zero_grad clears", function()
      local x = dpo.tensor{ 1, 2, 3 }:requires_grad()
      ;(x * x):sum():backward()
      h.near(x.grad, { 2, 4, 6 })
      ;(x * 3):sum():backward()
      h.near(x.grad, { 5, 7, 9 })
      x:zero_grad()
      h.near(x.grad, { 0, 0, 0 })
      x.grad = nil
      assert.is_nil(x.grad)
   end)

   it("frees the graph after backward", function()
      local x = dpo.tensor{ 1, 2 }:requires_grad()
      local y = (x:exp() * 2):sum()
      y:backward()
      h.errors(function() y:backward() end, "graph was freed", true)
   end)

   it("records nothing under no_grad, and enable_grad turns it back on", function()
      local x = dpo.ones(3):requires_grad()
      local y = dpo.no_grad(function() return x * 2 end)
      assert.is_false(y:needs_grad())
      assert.is_nil(y:grad_fn())
      local z = dpo.no_grad(function()
         return dpo.enable_grad(function() return x * 2 end)
      end)
      assert.are.equal("mul", z:grad_fn())
      assert.is_true(dpo.is_grad_enabled())
      -- the mode is restored when fn raises
      pcall(dpo.no_grad, function() error("boom") end)
      assert.is_true(dpo.is_grad_enabled())
   end)

   it("detach cuts the graph and shares the values", function()
      local x = dpo.ones(2):requires_grad()
      local y = x * 3
      local d = y:detach()
      assert.is_true(d:is_leaf())
      assert.is_false(d:needs_grad())
      h.near(d, { 3, 3 })
   end)

   it("needs a gradient for a non-scalar root, of the right shape", function()
      local x = dpo.ones(2, 2):requires_grad()
      local y = x * 2
      h.errors(function() y:backward() end, "needs a one-element tensor (got size 2x2)", true)
      h.errors(function() y:backward(dpo.ones(3)) end, "gradient of size 3 for a tensor of size 2x2", true)
      y:backward(dpo.tensor{ { 1, 2 }, { 3, 4 } })
      h.near(x.grad, { { 2, 4 }, { 6, 8 } })
   end)

   it("refuses misuse", function()
      local x = dpo.ones(2):requires_grad()
      h.errors(function() (x * 2):requires_grad(false) end, "only leaf tensors", true)
      h.errors(function() dpo.ones(2, "int32"):requires_grad() end, "only float32 tensors", true)
      h.errors(function() dpo.ones(2):backward() end, "does not require grad", true)
      h.errors(function() x:fill(0) end, "cannot modify a tensor that requires grad in place", true)
      h.errors(function() x[1] = 5 end, "in place", true)
      dpo.no_grad(function() x:fill(3) end) -- allowed outside recording
      h.near(x, { 3, 3 })
      h.errors(function() x.grad = dpo.ones(3) end, "grad must be a float32 tensor of size 2", true)
   end)

   it("keeps a gradient flowing through a view into the base", function()
      local x = dpo.zeros(2, 3):requires_grad()
      local y = (x:narrow(2, 2, 2) * dpo.tensor{ 10, 20 }):sum() + x[1]:sum()
      y:backward()
      h.near(x.grad, { { 1, 11, 21 }, { 0, 10, 20 } })
   end)

   it("handles a graph as deep as a long loop without recursion", function()
      local x = dpo.tensor{ 1 }:requires_grad()
      local y = x
      for _ = 1, 100000 do y = y + 0 end
      y:sum():backward()
      h.near(x.grad, { 1 })
   end)
end)

describe("memory", function()
   local function rss_kb()
      local f = assert(io.open("/proc/self/statm"))
      local pages = f:read("n") and f:read("n")
      f:close()
      return pages * 4
   end

   it("stays flat over 10,000 training iterations", function()
      dpo.manual_seed(1)
      local x, target = dpo.randn(64, 32), dpo.randn(64, 1)
      local w1, b1 = (dpo.randn(32, 64) * 0.1):requires_grad(), dpo.zeros(64):requires_grad()
      local w2 = (dpo.randn(64, 1) * 0.1):requires_grad()
      local params = { w1, b1, w2 }
      local function step()
         local pred = (x:mm(w1) + b1):tanh():mm(w2)
         local loss = ((pred - target) ^ 2):mean()
         loss:backward()
         dpo.no_grad(function()
            for _, p in ipairs(params) do
               p:copy(p - p.grad * 0.01)
               p:zero_grad()
            end
         end)
         return loss:item()
      end
      local first
      for _ = 1, 1000 do first = step() end
      local before = rss_kb()
      local last
      for _ = 1, 9000 do last = step() end
      local grown = rss_kb() - before
      assert.is_true(last < first, "the loop should be learning")
      assert.is_true(grown < 16 * 1024, ("resident memory grew by %d KiB"):format(grown))
   end)
end)
