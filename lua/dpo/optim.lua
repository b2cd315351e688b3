-- dpo.optim: optimizers with torch.optim's update rules and option names.
--
--   local opt = dpo.optim.adamw(params, {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8,
--                                        weight_decay = 1e-2, amsgrad = false,
--                                        maximize = false})
--   dpo.optim.sgd(params, {lr = 1e-3, momentum = 0, dampening = 0, weight_decay = 0,
--                          nesterov = false, maximize = false})
--   dpo.optim.rmsprop(params, {lr = 1e-2, alpha = 0.99, eps = 1e-8, weight_decay = 0,
--                              momentum = 0, centered = false, maximize = false})
--
--   opt:zero_grad([set_to_none])  zero every parameter's .grad in place (or drop it)
--   opt:step([closure])           one update of every parameter that has a .grad;
--                                 closure() (run with grad mode on) gives the loss
--                                 returned
--   opt.lr = v, opt:set_lr(v), opt:get_lr()
--                                 every option is a field, read at each step
--   opt:state_dict()              plain table: options, step counts, state tensors
--                                 (cloned), enough to resume bit for bit
--   opt:load_state_dict(sd)       restore one (its tensors are cloned)
--   tostring(opt)                 "dpo.optim.adamw(lr=0.001, ..., 3 tensors, 1234 params)"
--
--   dpo.optim.clip_grad_norm(params, max_norm [, norm_type = 2]) -> the total norm
--     before clipping; as torch.nn.utils.clip_grad_norm_, the grads are scaled by
--     max_norm / (norm + 1e-6) when that is below 1 (a NaN or infinite norm is
--     returned with the grads untouched)
--   dpo.optim.grad_norm(params [, norm_type = 2]) -> the total norm, grads untouched
--
-- params is a non-empty list of float32 leaf tensors that require grad. The
-- numbers move in C (core/model/optim.c), one fused loop per parameter tensor; this
-- file holds the policy: defaults, validation, lazy state and step counts.
-- State is created on the first step that sees a parameter's grad, named as
-- torch names it (step, exp_avg, exp_avg_sq, max_exp_avg_sq, square_avg,
-- grad_avg, momentum_buffer) and kept in opt.state[i] for params[i].
local core = require "dpo.core"

local optim = {}

local is_tensor = core.is_tensor

-- ---- formatting --------------------------------------------------------------

-- A number as Python's repr would write it: 0.001, 1e-08, 0.9.
local function num(x)
   if math.type(x) == "integer" then return tostring(x) end
   if x ~= x then return "nan" end
   if x == math.huge then return "inf" end
   if x == -math.huge then return "-inf" end
   for digits = 15, 17 do
      local s = string.format("%." .. digits .. "g", x)
      if tonumber(s) == x or digits == 17 then return s end
   end
end

local function show(v)
   if type(v) == "number" then return num(v) end
   if type(v) == "table" then
      local parts = {}
      for i, x in ipairs(v) do parts[i] = show(x) end
      return "(" .. table.concat(parts, ", ") .. ")"
   end
   return tostring(v)
end

local function keyname(k)
   if type(k) == "string" then return "'" .. k .. "'" end
   return "[" .. tostring(k) .. "]"
end

-- ---- option rules: each returns nil, or what is wrong ---------------------------

local function number_rule(test, range)
   return function(v, name)
      if type(v) ~= "number" then
         return string.format("option '%s' must be a number (got %s)", name, type(v))
      end
      if v ~= v or v == math.huge or v == -math.huge then
         return string.format("option '%s' must be finite (got %s)", name, num(v))
      end
      if not test(v) then
         return string.format("option '%s' must be %s (got %s)", name, range, num(v))
      end
   end
end

local nonneg = number_rule(function(v) return v >= 0 end, ">= 0")
local unit_closed = number_rule(function(v) return v >= 0 and v <= 1 end, "in [0, 1]")
local unit_open = number_rule(function(v) return v >= 0 and v < 1 end, "in [0, 1)")

local function boolean(v, name)
   if type(v) ~= "boolean" then
      return string.format("option '%s' must be a boolean (got %s)", name, type(v))
   end
end

local function betas(v, name)
   if type(v) ~= "table" or #v ~= 2 or type(v[1]) ~= "number" or type(v[2]) ~= "number" then
      return string.format("option '%s' must be a list of two numbers (got %s)", name,
                           type(v) == "table" and "a table of " .. #v or type(v))
   end
   return unit_open(v[1], name .. "[1]") or unit_open(v[2], name .. "[2]")
end

-- ---- the three algorithms ------------------------------------------------------

local function zeros_like(p) return core.zeros(p:shape()) end

-- Each kind: its options in order (with rules and defaults), those tostring
-- always shows (the others only when true), the names its state may hold
-- (`step` a count, the others tensors; `required` ones present in every state
-- entry), a cross-option check, and the update of one parameter p with
-- gradient g and state table st.
local KINDS = {}

KINDS.sgd = {
   options = { "lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize" },
   rules = { lr = nonneg, momentum = nonneg, dampening = unit_closed, weight_decay = nonneg,
             nesterov = boolean, maximize = boolean },
   defaults = { lr = 1e-3, momentum = 0, dampening = 0, weight_decay = 0, nesterov = false,
                maximize = false },
   shown = { lr = true, momentum = true, dampening = true, weight_decay = true,
             nesterov = true },
   state = { "momentum_buffer" },
   required = {},
   check = function(o)
      if o.nesterov and (o.momentum <= 0 or o.dampening ~= 0) then
         return "Nesterov momentum requires a momentum and zero dampening (got momentum=" ..
            num(o.momentum) .. ", dampening=" .. num(o.dampening) .. ")"
      end
   end,
   update = function(o, p, g, st)
      local buf, first = nil, false
      if o.momentum ~= 0 then
         buf = st.momentum_buffer
         if buf == nil then buf, first = zeros_like(p), true end
      end
      core.optim_sgd_step(p, g, buf, first, o.lr, o.momentum, o.dampening, o.weight_decay,
                          o.nesterov, o.maximize)
      if buf then st.momentum_buffer = buf end
   end,
}

KINDS.adamw = {
   options = { "lr", "betas", "eps", "weight_decay", "amsgrad", "maximize" },
   rules = { lr = nonneg, betas = betas, eps = nonneg, weight_decay = nonneg, amsgrad = boolean,
             maximize = boolean },
   defaults = { lr = 1e-3, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 1e-2,
                amsgrad = false, maximize = false },
   shown = { lr = true, betas = true, eps = true, weight_decay = true },
   state = { "step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq" },
   required = { "step", "exp_avg", "exp_avg_sq" },
   update = function(o, p, g, st)
      local m, v, vmax = st.exp_avg or zeros_like(p), st.exp_avg_sq or zeros_like(p), nil
      local step = (st.step or 0) + 1
      if o.amsgrad then vmax = st.max_exp_avg_sq or zeros_like(p) end
      core.optim_adamw_step(p, g, m, v, vmax, step, o.lr, o.betas[1], o.betas[2], o.eps,
                            o.weight_decay, o.amsgrad, o.maximize)
      st.step, st.exp_avg, st.exp_avg_sq = step, m, v
      if vmax then st.max_exp_avg_sq = vmax end
   end,
}

KINDS.rmsprop = {
   options = { "lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize" },
   rules = { lr = nonneg, alpha = unit_closed, eps = nonneg, weight_decay = nonneg,
             momentum = nonneg, centered = boolean, maximize = boolean },
   defaults = { lr = 1e-2, alpha = 0.99, eps = 1e-8, weight_decay = 0, momentum = 0,
                centered = false, maximize = false },
   shown = { lr = true, alpha = true, eps = true, weight_decay = true, momentum = true,
             centered = true },
   state = { "step", "square_avg", "grad_avg", "momentum_buffer" },
   required = { "step", "square_avg" },
   update = function(o, p, g, st)
      local sq, ga, buf = st.square_avg or zeros_like(p), nil, nil
      local step = (st.step or 0) + 1
      if o.centered then ga = st.grad_avg or zeros_like(p) end
      if o.momentum > 0 then buf = st.momentum_buffer or zeros_like(p) end
      core.optim_rmsprop_step(p, g, sq, ga, buf, o.lr, o.alpha, o.eps, o.weight_decay,
                              o.momentum, o.centered, o.maximize)
      st.step, st.square_avg = step, sq
      if ga then st.grad_avg = ga end
      if buf then st.momentum_buffer = buf end
   end,
}

local function option_list(spec) return table.concat(spec.options, ", ") end

-- nil, or what is wrong with the options held in o (an optimizer or a table).
local function check_options(spec, o)
   for _, name in ipairs(spec.options) do
      local msg = spec.rules[name](o[name], name)
      if msg then return msg end
   end
   return spec.check and spec.check(o)
end

local function copy_option(v)
   if type(v) ~= "table" then return v end
   local c = {}
   for i, x in ipairs(v) do c[i] = x end
   return c
end

-- ---- parameters -----------------------------------------------------------------

local function shape_str(t)
   local s = t:size()
   if #s == 0 then return "scalar" end
   for i, n in ipairs(s) do s[i] = tostring(n) end
   return table.concat(s, "x")
end

-- The list of tensors in `params`, checked (each a float32 leaf requiring grad
-- when `trainable`), or nil and what is wrong.
local function check_params(who, params, trainable)
   if is_tensor(params) then
      return nil, who .. ": params must be a list of tensors (got one dpo.Tensor; wrap it: {t})"
   end
   if type(params) ~= "table" then
      return nil, who .. ": params must be a list of tensors (got " .. type(params) .. ")"
   end
   local n = #params
   for k in pairs(params) do
      if math.type(k) ~= "integer" or k < 1 or k > n then
         return nil, string.format("%s: params must be a list of tensors (it has the key %s)",
                                   who, keyname(k))
      end
   end
   if n == 0 then return nil, who .. ": params must be a non-empty list of tensors" end
   local list, seen = {}, {}
   for i = 1, n do
      local p = params[i]
      local what = string.format("%s: params[%d]", who, i)
      if not is_tensor(p) then
         return nil, string.format("%s is a %s, expected a dpo.Tensor", what, type(p))
      end
      if seen[p] then
         return nil, string.format("%s is the same tensor as params[%d]", what, seen[p])
      end
      seen[p] = i
      if trainable then
         if p:dtype() ~= "float32" then
            return nil, string.format("%s is %s, expected float32", what, p:dtype())
         end
         if not p:is_leaf() then
            return nil, what .. " is not a leaf tensor (an optimizer updates leaves)"
         end
         if not p:needs_grad() then
            return nil, what .. " does not require grad (call :requires_grad() on it)"
         end
         if not p:is_contiguous() then return nil, what .. " is not contiguous" end
      end
      list[i] = p
   end
   return list
end

-- ---- the optimizer object --------------------------------------------------------

local Optimizer = {}
local meta = { __name = "dpo.Optimizer", __index = Optimizer }

-- Options may be set as fields; any other new field is a mistake.
function meta.__newindex(self, k, v)
   local spec = KINDS[rawget(self, "kind")]
   if spec and type(k) == "string" and spec.rules[k] then
      rawset(self, k, v)
      return
   end
   error(string.format("dpo.optim.%s: no option %s (options: %s)", rawget(self, "kind"),
                       keyname(k), spec and option_list(spec) or ""), 2)
end

function meta.__tostring(self)
   local spec = KINDS[self.kind]
   local parts, total = {}, 0
   for _, name in ipairs(spec.options) do
      local v = rawget(self, name)
      if spec.shown[name] or v == true then parts[#parts + 1] = name .. "=" .. show(v) end
   end
   for _, p in ipairs(self.params) do total = total + p:numel() end
   local n = #self.params
   return string.format("dpo.optim.%s(%s, %d tensor%s, %d param%s)", self.kind,
                        table.concat(parts, ", "), n, n == 1 and "" or "s", total,
                        total == 1 and "" or "s")
end

local function new(kind, params, opts)
   local spec, who = KINDS[kind], "dpo.optim." .. kind
   local list, msg = check_params(who, params, true)
   if not list then error(msg, 3) end
   if opts == nil then opts = {} end
   if type(opts) ~= "table" then
      error(string.format("%s: options must be a table (got %s)", who, type(opts)), 3)
   end
   for k in pairs(opts) do
      if type(k) ~= "string" or not spec.rules[k] then
         error(string.format("%s: unknown option %s (options: %s)", who, keyname(k),
                             option_list(spec)), 3)
      end
   end
   local self = { kind = kind, params = list, state = {} }
   for _, name in ipairs(spec.options) do
      local v = opts[name]
      if v == nil then v = spec.defaults[name] end
      self[name] = copy_option(v)
   end
   msg = check_options(spec, self)
   if msg then error(who .. ": " .. msg, 3) end
   return setmetatable(self, meta)
end

-- (not tail calls: error levels count the frame of these wrappers)
function optim.sgd(params, opts)
   local o = new("sgd", params, opts)
   return o
end

function optim.adamw(params, opts)
   local o = new("adamw", params, opts)
   return o
end

function optim.rmsprop(params, opts)
   local o = new("rmsprop", params, opts)
   return o
end

-- opt:zero_grad([set_to_none]): zero each .grad in place, or drop it
function Optimizer:zero_grad(set_to_none)
   for _, p in ipairs(self.params) do
      if set_to_none then p.grad = nil else p:zero_grad() end
   end
end

-- opt:step([closure]) -> closure's result: update every parameter that has a grad
function Optimizer:step(closure)
   local spec, loss = KINDS[self.kind], nil
   if closure ~= nil then
      if type(closure) ~= "function" then
         error(string.format("dpo.optim.%s: step's closure must be a function (got %s)",
                             self.kind, type(closure)), 2)
      end
      loss = core.enable_grad(closure)
   end
   local msg = check_options(spec, self)
   if msg then error("dpo.optim." .. self.kind .. ": " .. msg, 2) end
   local update, state = spec.update, self.state
   for i, p in ipairs(self.params) do
      local g = p.grad
      if g ~= nil then
         local st = state[i] or {}
         update(self, p, g, st)
         state[i] = st -- kept once a step succeeded
      end
   end
   return loss
end

function Optimizer:get_lr() return self.lr end

function Optimizer:set_lr(lr)
   local msg = KINDS[self.kind].rules.lr(lr, "lr")
   if msg then error("dpo.optim." .. self.kind .. ": " .. msg, 2) end
   self.lr = lr
end

-- ---- state dicts --------------------------------------------------------------------

-- {optimizer = kind, param_groups = {{<options>, params = {1..n}}},
--  param_shapes = {{sizes}, ...}, state = {[i] = {step = n, exp_avg = t, ...}}}
function Optimizer:state_dict()
   local spec = KINDS[self.kind]
   local group, ids, shapes, state = {}, {}, {}, {}
   for _, name in ipairs(spec.options) do group[name] = copy_option(self[name]) end
   for i, p in ipairs(self.params) do
      ids[i] = i
      shapes[i] = p:size()
   end
   group.params = ids
   for i, st in pairs(self.state) do
      local s = {}
      for k, v in pairs(st) do
         if is_tensor(v) then v = v:clone() end
         s[k] = v
      end
      state[i] = s
   end
   return { optimizer = self.kind, param_groups = { group }, param_shapes = shapes,
            state = state }
end

local function same_sizes(a, b)
   if #a ~= #b then return false end
   for i = 1, #a do
      if a[i] ~= b[i] then return false end
   end
   return true
end

-- The state entry st of parameter i (tensor p), checked and cloned; or nil
-- and what is wrong.
local function read_state(spec, i, p, st)
   if type(st) ~= "table" then
      return nil, string.format("the state dict's state[%d] is not a table", i)
   end
   local known = {}
   for _, k in ipairs(spec.state) do known[k] = true end
   for k in pairs(st) do
      if not known[k] then
         return nil, string.format("the state dict's state[%d] has an unknown entry %s", i,
                                   keyname(k))
      end
   end
   local s = {}
   for _, k in ipairs(spec.state) do
      local v, what = st[k], string.format("the state dict's state[%d].%s", i, k)
      if v == nil then
         -- absent: fine unless required
      elseif k == "step" then
         local c = math.tointeger(v)
         if not c or c < 0 then
            return nil, what .. " must be an integer >= 0 (got " .. tostring(v) .. ")"
         end
         s[k] = c
      else
         if not is_tensor(v) then
            return nil, what .. " must be a dpo.Tensor (got " .. type(v) .. ")"
         end
         if v:dtype() ~= "float32" or not same_sizes(v:size(), p:size()) then
            return nil, string.format("%s is %s of size %s, params[%d] is float32 of size %s",
                                      what, v:dtype(), shape_str(v), i, shape_str(p))
         end
         s[k] = v:clone()
      end
   end
   for _, k in ipairs(spec.required) do
      if s[k] == nil then return nil, string.format("the state dict's state[%d] lacks %s", i, k) end
   end
   return s
end

-- The options and state of sd checked against this optimizer, as new tables;
-- or nil and what is wrong.
local function read_state_dict(self, sd)
   local spec, params = KINDS[self.kind], self.params
   local n = #params
   if type(sd) ~= "table" then
      return nil, nil, "state dict must be a table (got " .. type(sd) .. ")"
   end
   if sd.optimizer ~= self.kind then
      return nil, nil, string.format("the state dict is for dpo.optim.%s, not dpo.optim.%s",
                                     tostring(sd.optimizer), self.kind)
   end
   local groups = sd.param_groups
   if type(groups) ~= "table" or #groups ~= 1 or type(groups[1]) ~= "table" then
      return nil, nil, "the state dict must hold param_groups, a list of one table"
   end
   local group = groups[1]
   if type(group.params) ~= "table" or #group.params ~= n then
      local held = type(group.params) == "table" and tostring(#group.params) or "no"
      return nil, nil, string.format(
         "the state dict holds %s parameter tensors, this optimizer has %d", held, n)
   end
   local opts = {}
   for k, v in pairs(group) do
      if k ~= "params" then
         if type(k) ~= "string" or not spec.rules[k] then
            return nil, nil, "the state dict has an unknown option " .. keyname(k)
         end
         opts[k] = copy_option(v)
      end
   end
   for _, name in ipairs(spec.options) do
      if opts[name] == nil then opts[name] = copy_option(self[name]) end
   end
   local msg = check_options(spec, opts)
   if msg then return nil, nil, "the state dict's " .. msg end
   if sd.param_shapes ~= nil then
      if type(sd.param_shapes) ~= "table" or #sd.param_shapes ~= n then
         return nil, nil, "the state dict's param_shapes must list one size per parameter"
      end
      for i, p in ipairs(params) do
         local s = sd.param_shapes[i]
         if type(s) ~= "table" or not same_sizes(s, p:size()) then
            return nil, nil, string.format(
               "params[%d] has size %s, the state dict's has size %s", i, shape_str(p),
               type(s) == "table" and table.concat(s, "x") or tostring(s))
         end
      end
   end
   local state = {}
   if type(sd.state) ~= "table" then return nil, nil, "the state dict has no state table" end
   for i in pairs(sd.state) do
      if math.type(i) ~= "integer" or i < 1 or i > n then
         return nil, nil, "the state dict has state for parameter " .. keyname(i) ..
            string.format(" (this optimizer has %d)", n)
      end
   end
   for i = 1, n do
      local st = sd.state[i]
      if st ~= nil then
         local s, err = read_state(spec, i, params[i], st)
         if not s then return nil, nil, err end
         state[i] = s
      end
   end
   return opts, state
end

-- opt:load_state_dict(sd): options and state from sd; nothing changes on error
function Optimizer:load_state_dict(sd)
   local opts, state, msg = read_state_dict(self, sd)
   if not opts then error("dpo.optim." .. self.kind .. ":load_state_dict: " .. msg, 2) end
   for k, v in pairs(opts) do rawset(self, k, v) end
   self.state = state
end

-- ---- gradient norms ---------------------------------------------------------------

local function norm_args(who, params, norm_type)
   local list, msg
   if is_tensor(params) then
      list = { params }
   else
      list, msg = check_params(who, params, false)
      if not list then error(msg, 3) end
   end
   if norm_type == nil then norm_type = 2 end
   if norm_type == "inf" then norm_type = math.huge end
   if type(norm_type) ~= "number" or not (norm_type > 0) then
      error(string.format("%s: norm_type must be a number > 0 or math.huge (got %s)", who,
                          type(norm_type) == "number" and num(norm_type) or type(norm_type)), 3)
   end
   return list, norm_type
end

-- dpo.optim.grad_norm(params [, norm_type = 2]) -> the norm of all .grad together
function optim.grad_norm(params, norm_type)
   local list, nt = norm_args("dpo.optim.grad_norm", params, norm_type)
   return core.optim_grad_norm(list, nt)
end

-- dpo.optim.clip_grad_norm(params, max_norm [, norm_type = 2]) -> the norm before clipping
function optim.clip_grad_norm(params, max_norm, norm_type)
   local who = "dpo.optim.clip_grad_norm"
   local list, nt = norm_args(who, params, norm_type)
   if type(max_norm) ~= "number" or not (max_norm >= 0) then
      error(string.format("%s: max_norm must be a number >= 0 (got %s)", who,
                          type(max_norm) == "number" and num(max_norm) or type(max_norm)), 2)
   end
   local total = core.optim_grad_norm(list, nt)
   -- a NaN or infinite norm is reported as it is, the gradients left alone: the
   -- caller skips such a step (scaling by max_norm / inf would not mend them)
   if total ~= total or total == math.huge then return total end
   local coef = core.optim_clip_coef(total, max_norm)
   if coef ~= 1 then core.optim_grad_scale(list, coef) end
   return total
end

return optim
