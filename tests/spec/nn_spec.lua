-- dpo.nn: modules, their parameters, state dicts, printing and training.
--
-- Expected values are computed here in plain Lua (loops over tables from
-- :totable()), never with the module under test.
local h = dofile("tests/spec/helper.lua")
local nn = dpo.nn

-- ---- plain-Lua references ----------------------------------------------------

-- y[i][j] = sum_k x[i][k] * w[j][k] + b[j]   (x: rows of in; w: out x in)
local function linear_ref(x, w, b)
   local y = {}
   for i, row in ipairs(x) do
      y[i] = {}
      for j, wrow in ipairs(w) do
         local s = b and b[j] or 0
         for k = 1, #row do s = s + row[k] * wrow[k] end
         y[i][j] = s
      end
   end
   return y
end

-- (v - mean) / sqrt(biased var + eps) * w + b over one row
local function layernorm_ref(row, w, b, eps)
   local n, mean, var = #row, 0, 0
   for _, v in ipairs(row) do mean = mean + v end
   mean = mean / n
   for _, v in ipairs(row) do var = var + (v - mean) ^ 2 end
   var = var / n
   local out = {}
   for k, v in ipairs(row) do out[k] = (v - mean) / math.sqrt(var + eps) * w[k] + b[k] end
   return out
end

local function shape(t) return table.concat(t:shape(), "x") end

local function flat(t) return t:reshape(-1):totable() end

local function names(m)
   local out = {}
   for i, p in ipairs(m:named_parameters()) do out[i] = p[1] end
   return out
end

-- ---- Linear -----------------------------------------------------------------

describe("dpo.nn.Linear", function()
   it("computes x W^T + b, as a hand loop does", function()
      dpo.manual_seed(1)
      local lin = nn.Linear(4, 3)
      local x = dpo.randn(5, 4)
      local y = lin(x)
      assert.are.equal("5x3", shape(y))
      h.near(y, linear_ref(x:totable(), lin.weight:totable(), lin.bias:totable()), 1e-5)
      h.near(lin:forward(x), y:totable())
   end)

   it("has weight [out, in] and bias [out] uniform in [-1/sqrt(in), 1/sqrt(in)]", function()
      dpo.manual_seed(2)
      local lin = nn.Linear(100, 40)
      assert.are.equal("40x100", shape(lin.weight))
      assert.are.equal("40", shape(lin.bias))
      local bound = 1 / math.sqrt(100)
      for _, t in ipairs { lin.weight, lin.bias } do
         local lo, hi, sum = math.huge, -math.huge, 0
         local v = flat(t)
         for _, x in ipairs(v) do
            lo, hi, sum = math.min(lo, x), math.max(hi, x), sum + x
         end
         assert.is_true(lo >= -bound and hi <= bound, ("range [%g, %g]"):format(lo, hi))
         assert.is_true(lo < -0.8 * bound and hi > 0.8 * bound, "fills the range")
         assert.is_true(math.abs(sum / #v) < 0.3 * bound, "centred")
      end
      assert.is_true(lin.weight:needs_grad() and lin.bias:needs_grad())
   end)

   it("maps batched 3-D input [b, t, in] to [b, t, out], row by row", function()
      dpo.manual_seed(3)
      local lin = nn.Linear(4, 5)
      local x = dpo.randn(2, 3, 4)
      local y = lin(x)
      assert.are.equal("2x3x5", shape(y))
      local w, b, xt = lin.weight:totable(), lin.bias:totable(), x:totable()
      h.near(y, { linear_ref(xt[1], w, b), linear_ref(xt[2], w, b) }, 1e-5)
      assert.are.equal("5", shape(lin(dpo.randn(4))))
   end)

   it("has gradients dW = g^T x and db = sum of g", function()
      dpo.manual_seed(4)
      local lin = nn.Linear(3, 2)
      local x = dpo.randn(4, 3)
      lin(x):sum():backward()
      local xt, dw = x:totable(), {}
      for j = 1, 2 do
         dw[j] = {}
         for k = 1, 3 do
            local s = 0
            for i = 1, 4 do s = s + xt[i][k] end
            dw[j][k] = s
         end
      end
      h.near(lin.weight.grad, dw, 1e-5)
      h.near(lin.bias.grad, { 4, 4 })
   end)

   it("can leave out the bias", function()
      local lin = nn.Linear(3, 2, { bias = false })
      assert.is_nil(lin.bias)
      assert.are.same({ "weight" }, names(lin))
      local x = dpo.randn(2, 3)
      h.near(lin(x), linear_ref(x:totable(), lin.weight:totable()), 1e-5)
   end)

   it("rejects bad arguments and inputs with clear errors", function()
      h.errors(function() local m = nn.Linear(-3, 4); return m end,
         "nn_spec.lua:%d+: dpo.nn.Linear: in_features must be a positive integer %(got %-3%)")
      h.errors(function() local m = nn.Linear(3, 2.5); return m end,
         "dpo.nn.Linear: out_features must be a positive integer (got 2.5)", true)
      h.errors(function() local m = nn.Linear(3, 2, 7); return m end,
         "dpo.nn.Linear: options must be a table (got number)", true)
      local lin = nn.Linear(4, 2)
      h.errors(function() local y = lin(dpo.randn(3, 5)); return y end,
         "dpo.nn.Linear(4 -> 2): input of size 3x5, expected the last dim to be 4", true)
      h.errors(function() local y = lin({ 1, 2 }); return y end, "input must be a tensor")
   end)
end)

-- ---- Embedding --------------------------------------------------------------

describe("dpo.nn.Embedding", function()
   it("returns the rows of its weight for ids of any shape", function()
      dpo.manual_seed(5)
      local emb = nn.Embedding(6, 3)
      assert.are.equal("6x3", shape(emb.weight))
      local w = emb.weight:totable()
      local y = emb(dpo.tensor({ { 2, 5 }, { 1, 2 } }, "int32"))
      assert.are.equal("2x2x3", shape(y))
      h.near(y, { { w[2], w[5] }, { w[1], w[2] } })
      h.near(emb({ 6, 6 }), { w[6], w[6] })
      assert.are.equal("3", shape(emb(dpo.tensor(4, "int32"))))
   end)

   it("sends gradient only to the rows it used", function()
      dpo.manual_seed(6)
      local emb = nn.Embedding(5, 2)
      local y = emb(dpo.tensor({ { 2, 4 }, { 2, 2 } }, "int32"))
      local coef = dpo.tensor { { { 1, 2 }, { 3, 4 } }, { { 5, 6 }, { 7, 8 } } }
      local s = (y * coef):sum()
      s:backward()
      h.near(emb.weight.grad, { { 0, 0 }, { 1 + 5 + 7, 2 + 6 + 8 }, { 0, 0 }, { 3, 4 }, { 0, 0 } })
   end)

   it("starts from N(0, 1)", function()
      dpo.manual_seed(7)
      local v = flat(nn.Embedding(200, 50).weight)
      local mean, sq = 0, 0
      for _, x in ipairs(v) do mean, sq = mean + x, sq + x * x end
      mean = mean / #v
      local sd = math.sqrt(sq / #v - mean * mean)
      assert.is_true(math.abs(mean) < 0.03, "mean " .. mean)
      assert.is_true(math.abs(sd - 1) < 0.03, "sd " .. sd)
   end)

   it("rejects out-of-range and non-integer ids", function()
      local emb = nn.Embedding(5, 2)
      h.errors(function() local y = emb(dpo.tensor({ 1, 6 }, "int32")); return y end,
         "dpo.nn.Embedding(5, 2): id 6 out of range 1..5", true)
      h.errors(function() local y = emb(dpo.tensor({ 0 }, "int32")); return y end,
         "id 0 out of range 1..5", true)
      h.errors(function() local y = emb(dpo.tensor { 1, 2 }); return y end,
         "ids must be an int32 tensor (got float32)", true)
      h.errors(function() local m = nn.Embedding(0, 2); return m end,
         "dpo.nn.Embedding: num_embeddings must be a positive integer (got 0)", true)
   end)
end)

-- ---- LayerNorm --------------------------------------------------------------

describe("dpo.nn.LayerNorm", function()
   it("normalises the last dim with the biased variance and eps", function()
      dpo.manual_seed(8)
      local ln = nn.LayerNorm(5, { eps = 1e-3 })
      h.near(ln.weight, { 1, 1, 1, 1, 1 })
      h.near(ln.bias, { 0, 0, 0, 0, 0 })
      local w, b = { 0.5, 1, 1.5, -2, 3 }, { 0.1, -0.2, 0.3, 0, 1 }
      ln:load_state_dict { weight = dpo.tensor(w), bias = dpo.tensor(b) }
      local x = dpo.randn(2, 3, 5) * 2 + 1
      local want = {}
      for i, plane in ipairs(x:totable()) do
         want[i] = {}
         for j, row in ipairs(plane) do want[i][j] = layernorm_ref(row, w, b, 1e-3) end
      end
      h.near(ln(x), want, 1e-4)
      -- eps matters: a constant row gives bias exactly
      h.near(ln(dpo.full({ 1, 5 }, 7)), { b }, 1e-5)
   end)

   it("has gradients that match finite differences (dpo.gradcheck)", function()
      dpo.manual_seed(9)
      local ln = nn.LayerNorm(4)
      ln:load_state_dict { weight = dpo.tensor { 1.5, -0.5, 2, 1 }, bias = dpo.tensor { 0, 1, 2, 3 } }
      local x = dpo.randn(3, 4):requires_grad()
      local ok, msg = dpo.gradcheck(function(input) return ln(input) end,
         { x, ln.weight, ln.bias }, { eps = 1e-2, atol = 2e-3, rtol = 2e-2 })
      assert.is_true(ok, msg)
   end)

   it("checks its arguments and input size", function()
      h.errors(function() local m = nn.LayerNorm(-1); return m end,
         "dpo.nn.LayerNorm: normalized_shape must be a positive integer (got -1)", true)
      h.errors(function() local y = nn.LayerNorm(3)(dpo.randn(2, 4)); return y end,
         "dpo.nn.LayerNorm(3, eps=1e-05): input of size 2x4, expected the last dim to be 3", true)
      assert.are.same({}, names(nn.LayerNorm(3, { elementwise_affine = false })))
   end)
end)

-- ---- Dropout ----------------------------------------------------------------

describe("dpo.nn.Dropout", function()
   it("is the identity in eval mode", function()
      local d = nn.Dropout(0.5, { seed = 1 }):eval()
      assert.is_false(d.training)
      local x = dpo.randn(4, 5)
      h.near(d(x), x:totable(), 0)
   end)

   it("zeroes about a fraction p and scales the rest by 1/(1-p)", function()
      local p = 0.3
      local d = nn.Dropout(p, { seed = 2 })
      local v = flat(d(dpo.ones(200, 500)))
      local zeros, bad = 0, 0
      for _, x in ipairs(v) do
         if x == 0 then
            zeros = zeros + 1
         elseif math.abs(x - 1 / (1 - p)) > 1e-5 then
            bad = bad + 1
         end
      end
      assert.are.equal(0, bad)
      assert.is_true(math.abs(zeros / #v - p) < 0.01, "zero fraction " .. zeros / #v)
   end)

   it("gives the same masks for the same seed and new masks on each call", function()
      local x = dpo.randn(10, 10)
      local a, b = nn.Dropout(0.5, { seed = 42 }), nn.Dropout(0.5, { seed = 42 })
      local a1, b1 = a(x), b(x)
      assert.is_true(a1:equal(b1))
      local a2 = a(x)
      assert.is_false(a1:equal(a2))
      assert.is_true(a2:equal(b(x)))
      a:reseed(42)
      assert.is_true(a(x):equal(a1))
      assert.is_false(nn.Dropout(0.5, { seed = 43 })(x):equal(a1))
   end)

   it("leaves the global generator's sequence untouched", function()
      local d = nn.Dropout(0.5, { seed = 3 })
      dpo.manual_seed(11)
      local want = dpo.rand(5):totable()
      dpo.manual_seed(11)
      d(dpo.ones(100))
      h.near(dpo.rand(5), want, 0)
   end)

   it("passes gradient through the kept elements only, scaled", function()
      local d = nn.Dropout(0.25, { seed = 4 })
      local x = dpo.ones(50):requires_grad()
      local y = d(x)
      y:sum():backward()
      h.near(x.grad, flat(y), 1e-6)
   end)

   it("handles p = 0 and p = 1, and rejects p outside [0, 1]", function()
      local x = dpo.randn(3, 3)
      h.near(nn.Dropout(0)(x), x:totable(), 0)
      h.near(nn.Dropout(1)(x), { { 0, 0, 0 }, { 0, 0, 0 }, { 0, 0, 0 } }, 0)
      h.errors(function() local m = nn.Dropout(1.5); return m end,
         "dpo.nn.Dropout: p must be a number in [0, 1] (got 1.5)", true)
      h.errors(function() local m = nn.Dropout(0.1, { seed = 0.5 }); return m end,
         "dpo.nn.Dropout: seed must be an integer (got 0.5)", true)
   end)
end)

-- ---- activations ------------------------------------------------------------

describe("dpo.nn activations", function()
   it("apply the matching tensor function", function()
      local x = dpo.tensor { { -2, -0.5, 0.25, 3 } }
      local v = x:totable()[1]
      local function each(f)
         local r = {}
         for i, a in ipairs(v) do r[i] = f(a) end
         return { r }
      end
      local function sig(a) return 1 / (1 + math.exp(-a)) end
      h.near(nn.ReLU()(x), each(function(a) return math.max(a, 0) end))
      h.near(nn.Sigmoid()(x), each(sig))
      h.near(nn.LogSigmoid()(x), each(function(a) return math.log(sig(a)) end))
      h.near(nn.Tanh()(x), each(function(a) return (math.exp(2 * a) - 1) / (math.exp(2 * a) + 1) end))
      h.near(nn.GELU()(x), each(function(a)
         local u = math.sqrt(2 / math.pi) * (a + 0.044715 * a ^ 3)
         return 0.5 * a * (1 + (math.exp(2 * u) - 1) / (math.exp(2 * u) + 1))
      end), 1e-4)
      h.near(nn.Identity()(x), { v }, 0)
      local z = 0
      for _, a in ipairs(v) do z = z + math.exp(a) end
      h.near(nn.Softmax(2)(x), each(function(a) return math.exp(a) / z end))
      h.near(nn.LogSoftmax()(x), each(function(a) return a - math.log(z) end))
      h.near(nn.Softmax(1)(x), { { 1, 1, 1, 1 } })
   end)
end)

-- ---- containers -------------------------------------------------------------

describe("dpo.nn.Sequential and dpo.nn.MLP", function()
   it("Sequential applies its modules in order", function()
      dpo.manual_seed(12)
      local l1, l2 = nn.Linear(3, 4), nn.Linear(4, 2)
      local seq = nn.Sequential(l1, nn.ReLU(), l2)
      assert.are.equal(3, #seq)
      local x = dpo.randn(5, 3)
      local hid = linear_ref(x:totable(), l1.weight:totable(), l1.bias:totable())
      for _, row in ipairs(hid) do
         for k, v in ipairs(row) do row[k] = math.max(v, 0) end
      end
      h.near(seq(x), linear_ref(hid, l2.weight:totable(), l2.bias:totable()), 1e-5)
      assert.are.same({ "1.weight", "1.bias", "3.weight", "3.bias" }, names(seq))
      assert.are.equal(3 * 4 + 4 + 4 * 2 + 2, seq:num_parameters())
      local ps = seq:parameters()
      assert.are.equal(4, #ps)
      assert.are.equal(l1.weight, ps[1])
      assert.are.equal(l2.bias, ps[4])
   end)

   it("MLP puts the activation between Linear layers, not after the last", function()
      local mlp = nn.MLP({ 16, 64, 32, 10 }, { activation = "tanh", dropout = 0.1, seed = 5 })
      local kinds = {}
      for i, m in ipairs(mlp.layers.modules) do kinds[i] = getmetatable(m).__name end
      assert.are.same({ "dpo.nn.Linear", "dpo.nn.Tanh", "dpo.nn.Dropout", "dpo.nn.Linear",
         "dpo.nn.Tanh", "dpo.nn.Dropout", "dpo.nn.Linear" }, kinds)
      assert.are.same({ "layers.1.weight", "layers.1.bias", "layers.4.weight", "layers.4.bias",
         "layers.7.weight", "layers.7.bias" }, names(mlp))
      assert.are.equal(16 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10, mlp:num_parameters())
      local _, map = mlp:named_parameters()
      assert.are.equal(mlp.layers.modules[4].weight, map["layers.4.weight"])
      assert.are.equal("7x10", shape(mlp(dpo.randn(7, 16))))
      local plain = nn.MLP { 4, 3 }
      assert.are.equal(1, #plain.layers)
      assert.are.equal(4 * 3 + 3, plain:num_parameters())
   end)

   it("every parameter requires grad, and zero_grad clears them", function()
      local mlp = nn.MLP { 3, 5, 2 }
      for _, p in ipairs(mlp:parameters()) do assert.is_true(p:needs_grad()) end
      mlp(dpo.randn(4, 3)):sum():backward()
      assert.is_true(mlp.layers.modules[1].weight.grad:abs():sum():item() > 0)
      assert.are.equal(mlp, mlp:zero_grad())
      for _, p in ipairs(mlp:parameters()) do assert.are.equal(0, p.grad:abs():sum():item()) end
   end)

   it("train() and eval() reach every child and return the module", function()
      local mlp = nn.MLP({ 3, 5, 2 }, { dropout = 0.5 })
      assert.is_true(mlp.training)
      assert.are.equal(mlp, mlp:eval())
      for _, m in ipairs(mlp.layers.modules) do assert.is_false(m.training) end
      assert.is_false(mlp.layers.training)
      local x = dpo.randn(4, 3)
      assert.is_true(mlp(x):equal(mlp(x)))
      assert.are.equal(mlp, mlp:train())
      for _, m in ipairs(mlp.layers.modules) do assert.is_true(m.training) end
   end)

   it("validates its arguments", function()
      h.errors(function() local m = nn.MLP { 4 }; return m end,
         "dpo.nn.MLP: sizes must be a list of at least two positive integers (got 1 sizes)", true)
      h.errors(function() local m = nn.MLP { 4, 0 }; return m end,
         "dpo.nn.MLP: sizes[2] must be a positive integer (got 0)", true)
      h.errors(function() local m = nn.MLP({ 4, 2 }, { activation = "swish" }); return m end,
         "dpo.nn.MLP: activation must be one of 'relu', 'gelu', 'tanh', 'sigmoid' (got swish)", true)
      h.errors(function() local m = nn.Sequential(nn.ReLU(), 3); return m end,
         "dpo.nn.Sequential: argument #2 must be a module (got number)", true)
   end)

   it("lets a user define a module with nn.class", function()
      local Affine = nn.class("Affine")
      function Affine:__init(d)
         self:register_parameter("scale", dpo.ones(d))
         self:register_module("inner", nn.Linear(d, d))
      end
      function Affine:forward(x) return self.inner(x) * self.scale end
      local m = Affine(3)
      assert.are.same({ "scale", "inner.weight", "inner.bias" }, names(m))
      assert.are.equal("3x3", shape(m(dpo.randn(3, 3))))
      assert.are.equal("dpo.nn.Affine {\n  (inner): dpo.nn.Linear(3 -> 3)\n}", tostring(m))
   end)
end)

-- ---- state dicts ------------------------------------------------------------

describe("state_dict and load_state_dict", function()
   it("round-trip the values into a fresh module, in place", function()
      dpo.manual_seed(13)
      local a = nn.MLP { 4, 6, 3 }
      local b = nn.MLP { 4, 6, 3 }
      local x = dpo.randn(5, 4)
      assert.is_false(a(x):equal(b(x)))
      local sd = a:state_dict()
      local keys = {}
      for k in pairs(sd) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.are.same({ "layers.1.bias", "layers.1.weight", "layers.3.bias", "layers.3.weight" }, keys)
      local w_before = b.layers.modules[1].weight
      b:load_state_dict(sd)
      assert.are.equal(w_before, b.layers.modules[1].weight)
      assert.is_true(w_before:needs_grad())
      h.near(b(x), a(x):totable(), 0)
   end)

   it("returns clones outside the graph", function()
      local lin = nn.Linear(2, 2)
      local sd = lin:state_dict()
      assert.is_false(sd.weight:needs_grad())
      local before = lin.weight:totable()
      sd.weight:fill(9)
      h.near(lin.weight, before, 0)
   end)

   it("names a missing key, an unexpected key and a shape mismatch", function()
      local seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
      local sd = seq:state_dict()
      sd["3.bias"] = nil
      h.errors(function() seq:load_state_dict(sd) end,
         "dpo.nn.Sequential:load_state_dict: missing key '3.bias'", true)
      sd = seq:state_dict()
      sd.extra = dpo.zeros(1)
      h.errors(function() seq:load_state_dict(sd) end,
         "dpo.nn.Sequential:load_state_dict: unexpected key 'extra'", true)
      sd = seq:state_dict()
      sd["1.weight"] = dpo.zeros(4, 8)
      h.errors(function() seq:load_state_dict(sd) end,
         "size mismatch for '1.weight': the module has 8x4, the state_dict has 4x8", true)
      h.errors(function() seq:load_state_dict(5) end, "state_dict must be a table (got number)", true)
   end)

   it("with strict = false, loads what matches and reports the rest", function()
      local seq = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
      local missing, unexpected = seq:load_state_dict(
         { ["1.weight"] = dpo.ones(2, 2), other = dpo.zeros(1) }, { strict = false })
      assert.are.same({ "1.bias", "2.weight", "2.bias" }, missing)
      assert.are.same({ "other" }, unexpected)
      h.near(seq.modules[1].weight, { { 1, 1 }, { 1, 1 } })
   end)
end)

-- ---- printing ---------------------------------------------------------------

describe("tostring of modules", function()
   it("prints leaves on one line", function()
      assert.are.equal("dpo.nn.Linear(10 -> 5)", tostring(nn.Linear(10, 5)))
      assert.are.equal("dpo.nn.Linear(3 -> 1) without bias", tostring(nn.Linear(3, 1, { bias = false })))
      assert.are.equal("dpo.nn.Embedding(50, 16)", tostring(nn.Embedding(50, 16)))
      assert.are.equal("dpo.nn.LayerNorm(8, eps=1e-05)", tostring(nn.LayerNorm(8)))
      assert.are.equal("dpo.nn.Dropout(0.1)", tostring(nn.Dropout(0.1)))
      assert.are.equal("dpo.nn.Softmax(dim=-1)", tostring(nn.Softmax()))
      assert.are.equal("dpo.nn.LogSoftmax(dim=2)", tostring(nn.LogSoftmax(2)))
      assert.are.equal("dpo.nn.ReLU", tostring(nn.ReLU()))
      assert.are.equal("dpo.nn.Identity", tostring(nn.Identity()))
   end)

   it("prints containers with their children, nested and indented", function()
      local seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
      assert.are.equal(table.concat({
         "dpo.nn.Sequential {",
         "  (1): dpo.nn.Linear(4 -> 8)",
         "  (2): dpo.nn.ReLU",
         "  (3): dpo.nn.Linear(8 -> 2)",
         "}" }, "\n"), tostring(seq))
      assert.are.equal(table.concat({
         "dpo.nn.MLP(16 -> 32 -> 4, gelu, dropout=0.2) {",
         "  (layers): dpo.nn.Sequential {",
         "    (1): dpo.nn.Linear(16 -> 32)",
         "    (2): dpo.nn.GELU",
         "    (3): dpo.nn.Dropout(0.2)",
         "    (4): dpo.nn.Linear(32 -> 4)",
         "  }",
         "}" }, "\n"), tostring(nn.MLP({ 16, 32, 4 }, { activation = "gelu", dropout = 0.2 })))
   end)
end)

-- ---- training ---------------------------------------------------------------

describe("training a module", function()
   it("fits y = 3x + 1 with Linear and dpo.optim.sgd", function()
      dpo.manual_seed(14)
      local lin = nn.Linear(1, 1)
      local opt = dpo.optim.sgd(lin:parameters(), { lr = 0.1 })
      local x = dpo.rand(64, 1) * 2 - 1
      local y = x * 3 + 1
      local first, loss
      for _ = 1, 300 do
         loss = ((lin(x) - y) ^ 2):mean()
         first = first or loss:item()
         opt:zero_grad()
         loss:backward()
         opt:step()
      end
      assert.is_true(loss:item() < 1e-4 * first, ("loss %g -> %g"):format(first, loss:item()))
      h.near(lin.weight, { { 3 } }, 1e-2)
      h.near(lin.bias, { 1 }, 1e-2)
   end)
end)
