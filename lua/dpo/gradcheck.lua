-- dpo.gradcheck: compare the gradients autograd computes with central
-- finite differences, for any function of tensors (a built-in op, a model, a
-- loss of your own).
--
-- ARGS
--   fn      function(...) -> tensor; called with the inputs, in order
--   inputs  list of tensors; those that require grad are checked (the
--           others are passed through unchanged); each must be contiguous
--   opts    { eps = 1e-3,  step of the central difference
--             atol = 1e-3, rtol = 1e-2,  |analytic - numeric| <= atol + rtol*|numeric|
--             seed = 0 }   the projection below is drawn from this seed
-- RETURNS
--   true, report              when every element agrees
--   false, message, report    otherwise; message names the input, the element
--                             and both values
--   report = { max_abs_err =, checked = number of elements }
--
-- A non-scalar output y is reduced to sum(y * r) with a fixed random r, so the
-- whole vector-Jacobian product is checked, broadcasting included. Everything
-- is float32, so keep eps around 1e-3 and inputs away from kinks (relu at 0,
-- abs at 0, clamp at its bounds, ties in max).
local core = require "dpo.core"

local M = {}

local function projection(y, seed)
   local saved = core.rng_state()
   core.manual_seed(seed)
   local r = core.randn(y:shape())
   core.set_rng_state(saved)
   return r
end

function M.gradcheck(fn, inputs, opts)
   assert(type(fn) == "function", "dpo.gradcheck: fn must be a function")
   assert(type(inputs) == "table", "dpo.gradcheck: inputs must be a list of tensors")
   assert(opts == nil or type(opts) == "table", "dpo.gradcheck: opts must be a table")
   opts = opts or {}
   local eps, atol, rtol = opts.eps or 1e-3, opts.atol or 1e-3, opts.rtol or 1e-2
   for name, v in pairs { eps = eps, atol = atol, rtol = rtol } do
      assert(type(v) == "number" and v >= 0 and v < math.huge and (name ~= "eps" or v > 0),
             ("dpo.gradcheck: %s must be a finite number %s 0, got %s"):format(name,
                name == "eps" and ">" or ">=", tostring(v)))
   end
   assert(opts.seed == nil or math.type(opts.seed) == "integer", "dpo.gradcheck: seed must be an integer")
   local checked = {}
   for i, x in ipairs(inputs) do
      assert(core.is_tensor(x), ("dpo.gradcheck: input %d is not a tensor"):format(i))
      if x:needs_grad() then
         assert(x:is_leaf(), ("dpo.gradcheck: input %d requires grad but is not a leaf "
            .. "(computed from another tensor); pass a leaf, e.g. (t * 3):detach():requires_grad()"):format(i))
         assert(x:is_contiguous(), ("dpo.gradcheck: input %d must be contiguous"):format(i))
         checked[#checked + 1] = i
      end
   end
   assert(#checked > 0, "dpo.gradcheck: no input requires grad")

   local y = fn(table.unpack(inputs, 1, #inputs))
   assert(core.is_tensor(y), "dpo.gradcheck: fn must return a tensor")
   local r = projection(y, opts.seed or 0)

   -- analytic: d(sum(y * r))/dx, read as the change backward makes to each
   -- input's .grad (so gradients a fused node writes in place count too);
   -- the inputs' grads are restored afterwards
   local before = {}
   for _, i in ipairs(checked) do
      local g = inputs[i].grad
      before[i] = g and g:clone() or false
   end
   (y * r):sum():backward()
   local analytic = {}
   for _, i in ipairs(checked) do
      local x, g0 = inputs[i], before[i]
      local g = x.grad
      if g then
         analytic[i] = (g0 and g - g0 or g):reshape(-1):totable()
         core.no_grad(function()
            if g0 then g:copy(g0) else x.grad = nil end
         end)
      else
         analytic[i] = {}
      end
   end

   -- numeric: central differences, one element at a time
   local function value()
      return core.no_grad(function()
         return (fn(table.unpack(inputs, 1, #inputs)) * r):sum():item()
      end)
   end
   local report = { max_abs_err = 0, checked = 0 }
   for _, i in ipairs(checked) do
      local flat = inputs[i]:detach():reshape(-1)
      for k = 1, flat:numel() do
         local v = flat[k]
         flat[k] = v + eps
         local fp = value()
         flat[k] = v - eps
         local fm = value()
         flat[k] = v
         local num = (fp - fm) / (2 * eps)
         local ana = analytic[i][k] or 0
         local err = math.abs(ana - num)
         report.checked = report.checked + 1
         if err > report.max_abs_err then report.max_abs_err = err end
         if not (err <= atol + rtol * math.abs(num)) then
            return false, ("dpo.gradcheck: input %d, element %d: analytic %.6g, numeric %.6g"):format(
               i, k, ana, num), report
         end
      end
   end
   return true, report
end

return M
