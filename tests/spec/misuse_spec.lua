-- Misuse of the tensor layer: every wrong call must raise (never crash) with a
-- message that names the function and the argument the way Lua does, plus the
-- shapes or values involved. Method calls do not count self, so `a:mm(b)`
-- with a bad b reports #1, while the metamethod `a + b` reports #2, and a bad
-- self reads "calling 'f' on bad self".
--
-- The whole file must also pass under AddressSanitizer (build-asan/dpolua).
local h = dofile("tests/spec/helper.lua")

-- fn must raise, and its message must contain each literal fragment; the
-- fragments are escaped into string.find patterns.
local function fails(fn, ...)
   local msg
   for i = 1, select("#", ...) do
      msg = h.errors(fn, h.escape((select(i, ...))))
   end
   return msg
end

local function bad(k, fname, detail)
   return string.format("bad argument #%d to '%s' (%s)", k, fname, detail)
end

-- The same without the closing parenthesis, for a detail that may go on.
local function badp(k, fname, detail)
   return string.format("bad argument #%d to '%s' (%s", k, fname, detail)
end

local function bad_self(fname, detail)
   return string.format("calling '%s' on bad self (%s)", fname, detail)
end

-- ---- constructors ---------------------------------------------------------------

describe("constructors reject", function()
   it("a size that is not a number", function()
      fails(function() dpo.zeros("two", 3) end, bad(1, "zeros", "number expected, got string"))
      fails(function() dpo.ones(2, {}) end, bad(2, "ones", "number expected, got table"))
   end)

   it("nil sizes", function()
      fails(function() dpo.ones(nil) end, bad(1, "ones", "number expected, got nil"))
      fails(function() dpo.zeros(2, nil, 3) end, bad(2, "zeros", "number expected, got nil"))
   end)

   it("boolean sizes", function()
      fails(function() dpo.zeros(2, true) end, bad(2, "zeros", "number expected, got boolean"))
      fails(function() dpo.rand(true) end, bad(1, "rand", "number expected, got boolean"))
      fails(function() dpo.randint(0, 3, false) end,
            bad(3, "randint", "number expected, got boolean"))
   end)

   it("non-integer entries of a size table", function()
      fails(function() dpo.randn { 2, "x" } end, bad(1, "randn", "size 2 is not an integer"))
      fails(function() dpo.empty { 2, 2.5 } end, bad(1, "empty", "size 2 is not an integer"))
   end)

   it("negative sizes, naming the value", function()
      fails(function() dpo.zeros(-1) end, bad(1, "zeros", "size is negative (-1)"))
      fails(function() dpo.ones(2, -3) end, bad(2, "ones", "size is negative (-3)"))
      fails(function() dpo.ones { 2, -3 } end, bad(1, "ones", "size 2 is negative (-3)"))
   end)

   it("more than 8 dimensions", function()
      fails(function() dpo.zeros(1, 1, 1, 1, 1, 1, 1, 1, 1) end,
            bad(1, "zeros", "9 dimensions (at most 8)"))
      fails(function() dpo.rand { 1, 1, 1, 1, 1, 1, 1, 1, 1 } end,
            bad(1, "rand", "9 dimensions (at most 8)"))
   end)

   it("sizes too large to allocate (2^40 x 2^40) with an argument error", function()
      local msg = h.errors(function() dpo.zeros(2 ^ 40, 2 ^ 40) end, "too large", true)
      assert.is_truthy(msg:find("bad argument #1 to 'zeros'", 1, true), msg)
      msg = h.errors(function() dpo.randn { 2 ^ 40, 2 ^ 40 } end, "too large", true)
      assert.is_truthy(msg:find("bad argument #1 to 'randn'", 1, true), msg)
   end)

   it("ragged nested tables, naming the position", function()
      fails(function() dpo.tensor { { 1, 2 }, { 3 } } end,
            bad(1, "tensor", "ragged table: [2] has 1 elements, expected 2"))
      fails(function() dpo.tensor { { { 1 }, { 2 } }, { { 3 }, { 4, 5 } } } end,
            bad(1, "tensor", "ragged table: [2][2] has 2 elements, expected 1"))
   end)

   it("ragged nested tables whose first row is empty", function()
      fails(function() dpo.tensor { {}, { 1 } } end, badp(1, "tensor", "ragged table: [2]"))
   end)

   it("non-numbers inside nested tables, naming the position", function()
      fails(function() dpo.tensor { { 1, 2 }, { "x", 3 } } end,
            bad(1, "tensor", "expected a number at [2][1], got string"))
      fails(function() dpo.tensor { { 1, 2 }, { 3, "4" } } end,
            bad(1, "tensor", "expected a number at [2][2], got string"))
      fails(function() dpo.tensor { true } end,
            bad(1, "tensor", "expected a number at [1], got boolean"))
   end)

   it("a mix of tables and numbers at one level", function()
      fails(function() dpo.tensor { { 1, 2 }, 3 } end,
            bad(1, "tensor", "expected a table at [2], got number"))
      fails(function() dpo.tensor { 1, { 2 } } end,
            bad(1, "tensor", "expected a number at [2], got table"))
   end)

   it("bad dtype names", function()
      fails(function() dpo.tensor({ 1, 2 }, "float64") end,
            bad(2, "tensor", "invalid option 'float64'"))
      fails(function() dpo.zeros(2, "double") end, bad(2, "zeros", "invalid option 'double'"))
      fails(function() dpo.ones(2, 2):to("int64") end, bad(1, "to", "invalid option 'int64'"))
   end)

   it("tensor of nil or a boolean", function()
      h.errors(function() dpo.tensor(nil) end, "bad argument #1 to 'tensor' %(.*got nil%)")
      h.errors(function() dpo.tensor(true) end, "bad argument #1 to 'tensor' %(.*got boolean%)")
   end)

   it("full without a size table or a number value", function()
      fails(function() dpo.full(2, 1) end, bad(1, "full", "table expected, got number"))
      fails(function() dpo.full({ 2 }, "x") end, bad(2, "full", "number expected, got string"))
   end)

   it("arange without numbers", function()
      fails(function() dpo.arange() end, bad(1, "arange", "number expected, got no value"))
   end)

   it("arange with step 0", function()
      fails(function() dpo.arange(0, 5, 0) end, bad(3, "arange", "step must be a nonzero number"))
   end)

   it("arange with an infinite stop, blaming the stop", function()
      local msg = fails(function() dpo.arange(0, math.huge) end, "finite")
      assert.is_truthy(msg:find("bad argument #2 to 'arange'", 1, true), msg)
   end)

   it("eye with a negative size", function()
      fails(function() dpo.eye(-1) end, badp(1, "eye", "size is negative"))
      fails(function() dpo.eye(2, -3) end, badp(2, "eye", "size is negative"))
   end)

   it("randint with hi <= lo", function()
      fails(function() dpo.randint(5, 5, 3) end, bad(2, "randint", "high must be greater than low"))
      fails(function() dpo.randint(5, 1, 3) end, bad(2, "randint", "high must be greater than low"))
      fails(function() dpo.randint(3) end, bad(2, "randint", "number expected, got no value"))
   end)
end)

-- ---- the generator and process knobs ---------------------------------------------

describe("generator and thread knobs reject", function()
   it("set_rng_state with garbage", function()
      fails(function() dpo.set_rng_state("garbage") end,
            bad(1, "set_rng_state", "not a state from dpo.rng_state()"))
      fails(function() dpo.set_rng_state() end,
            bad(1, "set_rng_state", "string expected, got no value"))
      fails(function() dpo.set_rng_state(42) end,
            bad(1, "set_rng_state", "not a state from dpo.rng_state()"))
   end)

   it("set_rng_state with an all-zero state of the right length", function()
      -- an all-zero xoshiro state yields only zeros, and randn then never returns
      local saved = dpo.rng_state()
      finally(function() dpo.set_rng_state(saved) end)
      fails(function() dpo.set_rng_state(string.rep("\0", #saved)) end,
            "bad argument #1 to 'set_rng_state'")
   end)

   it("manual_seed with a non-integer", function()
      fails(function() dpo.manual_seed("x") end,
            bad(1, "manual_seed", "number expected, got string"))
      fails(function() dpo.manual_seed(1.5) end,
            bad(1, "manual_seed", "number has no integer representation"))
   end)

   it("set_num_threads(0)", function()
      local n = dpo.get_num_threads()
      finally(function() dpo.set_num_threads(n) end)
      fails(function() dpo.set_num_threads(0) end,
            bad(1, "set_num_threads", "thread count must be in 1..1024"))
      fails(function() dpo.set_num_threads("x") end,
            bad(1, "set_num_threads", "number expected, got string"))
   end)
end)

-- ---- binary operations --------------------------------------------------------------

describe("binary operations reject shapes that do not broadcast", function()
   -- written out as real method calls: Lua only drops self from the count
   -- for the a:f(b) syntax
   local methods = {
      { "add", function(a, b) a:add(b) end },
      { "sub", function(a, b) a:sub(b) end },
      { "mul", function(a, b) a:mul(b) end },
      { "div", function(a, b) a:div(b) end },
      { "pow", function(a, b) a:pow(b) end },
      { "maximum", function(a, b) a:maximum(b) end },
      { "minimum", function(a, b) a:minimum(b) end },
      { "gt", function(a, b) a:gt(b) end },
      { "ge", function(a, b) a:ge(b) end },
      { "lt", function(a, b) a:lt(b) end },
      { "le", function(a, b) a:le(b) end },
      { "eq", function(a, b) a:eq(b) end },
      { "ne", function(a, b) a:ne(b) end },
   }
   for _, m in ipairs(methods) do
      local name, call = m[1], m[2]
      it("in a:" .. name .. "(b), as argument #1", function()
         local a, b = dpo.ones(2, 3), dpo.ones(4)
         fails(function() call(a, b) end, bad(1, name, "shapes 2x3 and 4 do not broadcast"))
         fails(function() call(dpo.ones(3, 1, 2), dpo.ones(4, 5)) end,
               bad(1, name, "shapes 3x1x2 and 4x5 do not broadcast"))
      end)
   end

   local operators = {
      { "+", "add", function(a, b) return a + b end },
      { "-", "sub", function(a, b) return a - b end },
      { "*", "mul", function(a, b) return a * b end },
      { "/", "div", function(a, b) return a / b end },
      { "^", "pow", function(a, b) return a ^ b end },
   }
   for _, op in ipairs(operators) do
      it("in a " .. op[1] .. " b, as argument #2", function()
         local a, b = dpo.ones(2, 3), dpo.ones(4)
         fails(function() op[3](a, b) end, bad(2, op[2], "shapes 2x3 and 4 do not broadcast"))
         fails(function() op[3](dpo.ones(3, 1, 2), dpo.ones(4, 5)) end,
               bad(2, op[2], "shapes 3x1x2 and 4x5 do not broadcast"))
      end)
   end

   it("in the function form dpo.add(a, b), as argument #2", function()
      fails(function() dpo.add(dpo.ones(2, 3), dpo.ones(4)) end,
            bad(2, "add", "shapes 2x3 and 4 do not broadcast"))
   end)
end)

describe("operations reject non-tensors", function()
   it("as an operand of an operator", function()
      local t = dpo.ones(3)
      fails(function() local _ = t + {} end,
            bad(2, "add", "dpo.Tensor or number expected, got table"))
      fails(function() local _ = t * true end,
            bad(2, "mul", "dpo.Tensor or number expected, got boolean"))
      fails(function() local _ = true - t end,
            bad(1, "sub", "dpo.Tensor or number expected, got boolean"))
   end)

   it("when a method is called on numbers", function()
      fails(function() dpo.Tensor.add(1, 2) end, bad(1, "add", "dpo.Tensor expected, got number"))
   end)

   it("when a function gets a string or a table", function()
      fails(function() dpo.exp("x") end, bad(1, "exp", "dpo.Tensor expected, got string"))
      fails(function() dpo.silu("x") end, bad(1, "silu", "dpo.Tensor expected, got string"))
      fails(function() dpo.rsqrt { 4 } end, bad(1, "rsqrt", "dpo.Tensor expected, got table"))
      fails(function() dpo.Tensor.silu(2) end, bad(1, "silu", "dpo.Tensor expected, got number"))
      fails(function() dpo.sum { 1, 2 } end, bad(1, "sum", "dpo.Tensor expected, got table"))
      fails(function() dpo.ones(2):fill("x") end, bad(1, "fill", "number expected, got string"))
   end)
end)

-- ---- products ---------------------------------------------------------------------------

describe("mm and matmul reject", function()
   it("mm with a non-2-D argument", function()
      fails(function() dpo.ones(2, 3):mm(dpo.ones(4)) end,
            bad(1, "mm", "expected a 2-D tensor (got size 4)"))
      fails(function() dpo.mm(dpo.ones(3), dpo.ones(3, 2)) end,
            bad(1, "mm", "expected a 2-D tensor (got size 3)"))
   end)

   it("mm on a non-2-D self", function()
      fails(function() dpo.ones(2, 2, 2):mm(dpo.ones(2, 2)) end,
            bad_self("mm", "expected a 2-D tensor (got size 2x2x2)"))
   end)

   it("mm with mismatched inner sizes", function()
      fails(function() dpo.ones(2, 3):mm(dpo.ones(4, 2)) end,
            bad(1, "mm", "shapes 2x3 and 4x2 cannot be multiplied (3 != 4)"))
      fails(function() dpo.mm(dpo.ones(2, 3), dpo.ones(2, 3)) end,
            bad(2, "mm", "shapes 2x3 and 2x3 cannot be multiplied (3 != 2)"))
   end)

   it("mm with a number", function()
      fails(function() dpo.ones(2, 3):mm(5) end, bad(1, "mm", "dpo.Tensor expected, got number"))
   end)

   it("matmul with scalars", function()
      fails(function() dpo.ones(2, 3):matmul(dpo.tensor(1)) end,
            bad(1, "matmul", "matmul needs tensors of at least 1 dimension, not a scalar"))
      fails(function() dpo.matmul(dpo.tensor(1), dpo.ones(2)) end,
            bad(1, "matmul", "matmul needs tensors of at least 1 dimension, not a scalar"))
   end)

   it("matmul with batch sizes that differ", function()
      fails(function() dpo.ones(2, 2, 3):matmul(dpo.ones(3, 3, 2)) end,
            bad(1, "matmul", "shapes 2x2x3 and 3x3x2 cannot be multiplied (batch sizes differ)"))
   end)

   it("matmul with mismatched vectors and matrices", function()
      fails(function() dpo.ones(3):matmul(dpo.ones(4)) end,
            bad(1, "matmul", "shapes 3 and 4 cannot be multiplied (3 != 4)"))
      fails(function() dpo.ones(2, 3):matmul(dpo.ones(4)) end,
            bad(1, "matmul", "shapes 2x3 and 4 cannot be multiplied (3 != 4)"))
   end)
end)

-- ---- dimensions --------------------------------------------------------------------------

describe("dimensions out of range (dim 0, dim 5 and -3 on a 2-D tensor) in", function()
   local calls = {
      { "transpose", function(t, d) t:transpose(d, 1) end },
      { "narrow", function(t, d) t:narrow(d, 1, 1) end },
      { "select", function(t, d) t:select(d, 1) end },
      { "sum", function(t, d) t:sum(d) end },
      { "mean", function(t, d) t:mean(d, true) end },
      { "max", function(t, d) t:max(d) end },
      { "argmin", function(t, d) t:argmin(d) end },
      { "softmax", function(t, d) t:softmax(d) end },
      { "log_softmax", function(t, d) t:log_softmax(d) end },
      { "logsumexp", function(t, d) t:logsumexp(d) end },
      { "size", function(t, d) t:size(d) end },
      { "squeeze", function(t, d) t:squeeze(d) end },
   }
   for _, c in ipairs(calls) do
      local name, call = c[1], c[2]
      it(name .. " (dims 0 and 5)", function()
         local t = dpo.ones(2, 3)
         fails(function() call(t, 0) end, bad(1, name, "dimension 0 out of range 1..2"))
         fails(function() call(t, 5) end, bad(1, name, "dimension 5 out of range 1..2"))
      end)
   end

   it("every one of them with -3, naming the -3 that was passed", function()
      -- one root cause, so one test: list every function whose message is wrong
      local wrong = {}
      for _, c in ipairs(calls) do
         local name, call = c[1], c[2]
         local ok, msg = pcall(call, dpo.ones(2, 3), -3)
         assert.is_false(ok, name .. "(-3) did not raise")
         if not msg:find(badp(1, name, "dimension -3 out of range"), 1, true) then
            wrong[#wrong + 1] = msg
         end
      end
      assert.are.same({}, wrong)
   end)

   it("transpose's second dim", function()
      fails(function() dpo.ones(2, 3):transpose(1, 5) end,
            bad(2, "transpose", "dimension 5 out of range 1..2"))
   end)

   it("unsqueeze (range 1..ndim+1)", function()
      local t = dpo.ones(2, 3)
      fails(function() t:unsqueeze(0) end, bad(1, "unsqueeze", "dimension 0 out of range 1..3"))
      fails(function() t:unsqueeze(5) end, bad(1, "unsqueeze", "dimension 5 out of range 1..3"))
      fails(function() t:unsqueeze(-4) end, badp(1, "unsqueeze", "dimension -4 out of range"))
   end)

   it("reductions and softmax of a scalar", function()
      fails(function() dpo.tensor(1):sum(1) end, "bad argument #1 to 'sum' (dimension",
            "(tensor is a scalar)")
      fails(function() dpo.tensor(1):softmax() end,
            bad_self("softmax", "expected a tensor with at least 1 dimension"))
   end)
end)

describe("ranges reject", function()
   it("narrow with a start out of range", function()
      fails(function() dpo.ones(2, 3):narrow(1, 0, 1) end,
            badp(2, "narrow", "start 0 out of range"))
      fails(function() dpo.ones(2, 3):narrow(2, 5, 0) end,
            badp(2, "narrow", "start 5 out of range"))
   end)

   it("narrow with a length out of range", function()
      fails(function() dpo.ones(2, 3):narrow(1, 2, 2) end,
            bad(3, "narrow", "length 2 from 2 exceeds size 2"))
      fails(function() dpo.ones(2, 3):narrow(2, 1, -1) end,
            bad(3, "narrow", "length -1 from 1 exceeds size 3"))
   end)

   it("select with an index out of range", function()
      fails(function() dpo.ones(2, 3):select(1, 3) end,
            bad(2, "select", "index 3 out of range 1..2"))
      fails(function() dpo.ones(2, 3):select(2, -4) end,
            bad(2, "select", "index -4 out of range 1..3"))
   end)
end)

-- ---- indexing -------------------------------------------------------------------------------

describe("indexing rejects", function()
   it("t[0] and t[4] on a 3-row tensor", function()
      local t = dpo.ones(3, 2)
      fails(function() local _ = t[0] end, "index 0 out of range 1..3")
      fails(function() local _ = t[4] end, "index 4 out of range 1..3")
      fails(function() local _ = t[-4] end, "index -4 out of range 1..3")
   end)

   it("assignments out of range", function()
      local t = dpo.ones(3)
      fails(function() t[0] = 1 end, "index 0 out of range 1..3")
      fails(function() t[4] = 1 end, "index 4 out of range 1..3")
   end)

   it("t[i] on a scalar", function()
      local s = dpo.tensor(1)
      fails(function() local _ = s[1] end, "cannot index a scalar tensor")
      fails(function() s[1] = 2 end, "cannot index a scalar tensor")
      fails(function() local _ = #s end, "a scalar tensor has no length")
   end)

   it("setting a string field", function()
      local t = dpo.ones(2)
      fails(function() t.foo = 1 end, "cannot set field 'foo' of a dpo.Tensor")
   end)

   it("assigning a wrong value to a row", function()
      local t = dpo.ones(3, 2)
      fails(function() t[2] = dpo.ones(4) end, "shapes 2 and 4 do not broadcast")
      fails(function() t[2] = "x" end, "dpo.Tensor or number expected, got string")
      local v = dpo.ones(3)
      fails(function() v[2] = "x" end, "number expected, got string")
   end)
end)

-- ---- shapes ----------------------------------------------------------------------------

describe("reshape and view reject", function()
   it("an incompatible size, blaming the size argument", function()
      fails(function() dpo.ones(2, 3):reshape(4) end,
            bad(1, "reshape", "cannot reshape a tensor of size 2x3 (6 elements) to 4"))
   end)

   it("two -1 sizes", function()
      fails(function() dpo.ones(2, 3):reshape(-1, -1) end,
            bad(1, "reshape", "only one size may be -1"))
   end)

   it("a negative size other than -1", function()
      fails(function() dpo.ones(2, 3):reshape(-2, 3) end, bad(1, "reshape", "negative size -2"))
   end)

   it("no sizes or a non-number size", function()
      fails(function() dpo.ones(2, 3):reshape() end, bad(1, "reshape", "expected sizes"))
      fails(function() dpo.ones(2, 3):view("x") end, bad(1, "view", "number expected, got string"))
   end)

   it("a view of a transposed tensor that needs a copy", function()
      fails(function() dpo.ones(2, 3):t():view(6) end,
            bad_self("view", "cannot view a non-contiguous tensor of size 3x2 as 6 (use reshape)"))
   end)

   it("t() of a 3-D tensor", function()
      fails(function() dpo.ones(2, 2, 2):t() end,
            bad_self("t", "t() expects a tensor of at most 2 dimensions (got size 2x2x2)"))
   end)
end)

describe("item rejects", function()
   it("a multi-element or empty tensor", function()
      fails(function() dpo.ones(2, 3):item() end,
            bad_self("item", "item() needs one element (got size 2x3)"))
      fails(function() dpo.zeros(0):item() end,
            bad_self("item", "item() needs one element (got size 0)"))
   end)

   it("max of an empty tensor", function()
      fails(function() dpo.zeros(0):max() end, bad_self("max", "max of an empty tensor"))
   end)
end)

-- ---- indexing ops ---------------------------------------------------------------------

describe("gather rejects", function()
   local t = dpo.ones(2, 3)

   it("a float index", function()
      fails(function() t:gather(1, dpo.ones(2, 3)) end,
            bad(2, "gather", "index must be int32 (got float32)"))
   end)

   it("an index out of range", function()
      fails(function() t:gather(1, dpo.tensor({ { 3 } }, "int32")) end,
            bad(2, "gather", "index 3 out of range 1..2"))
      fails(function() t:gather(2, dpo.tensor({ { 0 } }, "int32")) end,
            bad(2, "gather", "index 0 out of range 1..3"))
   end)

   it("an index of the wrong ndim", function()
      fails(function() t:gather(1, dpo.tensor({ 1 }, "int32")) end,
            bad(2, "gather",
                "index of size 1 and input of size 2x3 differ in number of dimensions"))
   end)

   it("an index larger than the input off the gathered dim", function()
      fails(function() t:gather(2, dpo.ones(3, 1, "int32")) end,
            bad(2, "gather", "index of size 3x1 exceeds input of size 2x3 in dimension 1"))
   end)

   it("an index that is neither a tensor nor a table", function()
      fails(function() t:gather(1, "x") end,
            bad(2, "gather", "dpo.Tensor or table of integers expected, got string"))
   end)
end)

describe("index_select rejects", function()
   local t = dpo.ones(2, 3)

   it("a 2-D index", function()
      fails(function() t:index_select(1, dpo.tensor({ { 1 } }, "int32")) end,
            bad(2, "index_select", "index must be 1-D (got size 1x1)"))
   end)

   it("out-of-range entries", function()
      fails(function() t:index_select(1, { 1, 5 }) end,
            bad(2, "index_select", "index 5 out of range 1..2"))
      fails(function() t:index_select(2, dpo.tensor({ 0 }, "int32")) end,
            bad(2, "index_select", "index 0 out of range 1..3"))
   end)

   it("a table with non-integers", function()
      fails(function() t:index_select(1, { 1, 1.5 }) end,
            bad(2, "index_select", "element 2 is not an int32"))
      fails(function() t:index_select(1, { "a" }) end,
            bad(2, "index_select", "element 1 is not an int32"))
   end)

   it("a float index tensor", function()
      fails(function() t:index_select(1, dpo.ones(2)) end,
            bad(2, "index_select", "index must be int32 (got float32)"))
   end)
end)

describe("cat and stack reject", function()
   it("an empty list", function()
      fails(function() dpo.cat {} end, bad(1, "cat", "expected a non-empty list of tensors"))
      fails(function() dpo.stack {} end, bad(1, "stack", "expected a non-empty list of tensors"))
   end)

   it("a list with a non-tensor element", function()
      fails(function() dpo.cat { dpo.ones(2), 3 } end,
            bad(1, "cat", "element 2 is a number, expected dpo.Tensor"))
      fails(function() dpo.stack { dpo.ones(2), "x" } end,
            bad(1, "stack", "element 2 is a string, expected dpo.Tensor"))
   end)

   it("a list that is not a table", function()
      fails(function() dpo.cat(nil) end, bad(1, "cat", "table expected, got nil"))
      fails(function() dpo.stack(dpo.ones(2)) end,
            bad(1, "stack", "table expected, got dpo.Tensor"))
   end)

   it("mismatched shapes", function()
      fails(function() dpo.cat { dpo.ones(2, 3), dpo.ones(3, 2) } end,
            bad(1, "cat", "shapes 2x3 and 3x2 (tensor 2) do not match except in dimension 1"))
      fails(function() dpo.cat({ dpo.ones(2, 3), dpo.ones(3, 2) }, 2) end,
            bad(1, "cat", "shapes 2x3 and 3x2 (tensor 2) do not match except in dimension 2"))
      fails(function() dpo.cat { dpo.ones(2, 3), dpo.ones(3) } end,
            bad(1, "cat", "shapes 2x3 and 3 (tensor 2) do not match except in dimension 1"))
      fails(function() dpo.stack { dpo.ones(2), dpo.ones(2), dpo.ones(3) } end,
            bad(1, "stack", "shapes 2 and 3 (tensor 3) differ"))
   end)

   it("a dim out of range", function()
      fails(function() dpo.cat({ dpo.ones(2, 3) }, 3) end,
            bad(2, "cat", "dimension 3 out of range 1..2"))
      fails(function() dpo.stack({ dpo.ones(2, 3) }, 4) end,
            bad(2, "stack", "dimension 4 out of range 1..3"))
   end)

   it("scalars in cat", function()
      fails(function() dpo.cat { dpo.tensor(1), dpo.tensor(2) } end,
            bad(1, "cat", "cannot concatenate scalar tensors"))
   end)
end)

describe("where rejects", function()
   it("a and b that do not broadcast", function()
      fails(function() dpo.where(dpo.ones(2), dpo.ones(2), dpo.ones(3)) end,
            bad(3, "where", "shapes 2 and 3 do not broadcast"))
   end)

   it("a mask that does not broadcast with a and b", function()
      h.errors(function() dpo.where(dpo.ones(2), dpo.ones(3), 0) end,
               "bad argument #[12] to 'where' %(shapes [23] and [23] do not broadcast%)")
   end)

   it("a mask or a value that is not a tensor", function()
      fails(function() dpo.where("x", 1, 2) end, bad(1, "where", "dpo.Tensor expected, got string"))
      fails(function() dpo.where(dpo.ones(2), "a", 1) end,
            bad(2, "where", "dpo.Tensor or number expected, got string"))
   end)
end)

describe("clamp, allclose and copy reject", function()
   it("clamp with no bounds", function()
      fails(function() dpo.ones(2):clamp() end,
            bad(1, "clamp", "at least one of min and max is required"))
   end)

   it("clamp with min > max", function()
      h.errors(function() dpo.ones(2):clamp(2, 1) end,
               "bad argument #[12] to 'clamp' %(min 2 is greater than max 1%)")
   end)

   it("clamp with a non-number bound", function()
      fails(function() dpo.ones(2):clamp("a") end, bad(1, "clamp", "number expected, got string"))
   end)

   it("allclose with a non-broadcasting shape", function()
      fails(function() dpo.ones(2):allclose(dpo.ones(3)) end,
            bad(1, "allclose", "shapes 2 and 3 do not broadcast"))
   end)

   it("allclose with a negative tolerance", function()
      fails(function() dpo.ones(2):allclose(dpo.ones(2), -1) end,
            bad(2, "allclose", "rtol must be >= 0"))
      fails(function() dpo.ones(2):allclose(dpo.ones(2), 0, -1) end,
            bad(3, "allclose", "atol must be >= 0"))
   end)

   it("copy with a non-broadcasting source", function()
      fails(function() dpo.ones(2):copy(dpo.ones(3)) end,
            bad(1, "copy", "shapes 2 and 3 do not broadcast"))
      fails(function() dpo.ones(2):copy(dpo.ones(2, 2)) end,
            bad(1, "copy", "cannot copy a tensor of size 2x2 into one of size 2"))
   end)

   it("copy from a non-tensor", function()
      fails(function() dpo.ones(2):copy(5) end, bad(1, "copy", "dpo.Tensor expected, got number"))
   end)
end)

-- ---- freed tensors ------------------------------------------------------------------------

describe("a freed tensor", function()
   local function freed(...)
      local t = dpo.tensor(...)
      t:free()
      return t
   end

   it("raises when used as self", function()
      local t = freed { 1, 2 }
      fails(function() t:sum() end, bad_self("sum", "attempt to use a freed dpo.Tensor"))
      fails(function() local _ = t[1] end, "attempt to use a freed dpo.Tensor")
      fails(function() local _ = #t end, "attempt to use a freed dpo.Tensor")
      fails(function() tostring(t) end, "attempt to use a freed dpo.Tensor")
   end)

   it("raises when used in an operator", function()
      local t = freed { 1, 2 }
      fails(function() local _ = t + 1 end, bad(1, "add", "attempt to use a freed dpo.Tensor"))
      fails(function() local _ = dpo.ones(2) * t end,
            bad(2, "mul", "attempt to use a freed dpo.Tensor"))
      fails(function() local _ = -t end, "attempt to use a freed dpo.Tensor")
   end)

   it("raises when passed as an argument", function()
      local t = freed { 1, 2 }
      fails(function() dpo.ones(2):add(t) end, bad(1, "add", "attempt to use a freed dpo.Tensor"))
      fails(function() dpo.ones(2, 2):mm(t) end, bad(1, "mm", "attempt to use a freed dpo.Tensor"))
      fails(function() dpo.where(t, 1, 2) end, bad(1, "where", "attempt to use a freed dpo.Tensor"))
   end)

   it("raises 'freed' inside a cat list", function()
      local t = freed { 1, 2 }
      fails(function() dpo.cat { dpo.ones(2), t } end, "bad argument #1 to 'cat'", "freed")
   end)

   it("raises 'freed' as a gather index", function()
      local t = freed({ 1 }, "int32")
      fails(function() dpo.ones(3):gather(1, t) end, "bad argument #2 to 'gather'", "freed")
   end)
end)
