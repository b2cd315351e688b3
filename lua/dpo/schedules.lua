-- dpo.schedules: learning-rate and beta schedules as functions of the step.
--
-- A schedule is any function s(step, metrics) -> number. step counts
-- optimizer steps from 1 (step 1 is the first update); metrics is the table
-- the last loss returned (may be nil) and only adaptive reads it. The
-- trainer asks for the value before each update: lr = s(step), beta =
-- b(step, metrics). These constructors build such functions; a plain Lua
-- function with the same signature works wherever they do.
--
-- Learning rate (dpo.schedules.lr.*; also dpo.schedules.<name>):
--   constant(lr)                     lr
--   linear_warmup(lr, warmup)        lr * step / warmup for step <= warmup,
--                                    then lr
--   warmup_linear(lr, warmup, total) the warmup above, then
--                                    lr * (total - step) / (total - warmup),
--                                    reaching 0 at step = total (0 after)
--   cosine(lr, warmup, total, {min_lr = 0})
--                                    the warmup above, then with
--                                    p = (step - warmup) / (total - warmup):
--                                    min_lr + (lr - min_lr) (1 + cos(pi p)) / 2,
--                                    min_lr at step = total and after
-- These are Hugging Face's get_constant_schedule_with_warmup,
-- get_linear_schedule_with_warmup and get_cosine_with_min_lr_schedule_with_
-- warmup (the default of TRL) evaluated at `step`: HF's factor for step s is
-- s / warmup during warmup, so here the first update runs at lr / warmup and
-- update number `warmup` at the full lr. HF's Trainer calls its scheduler
-- after each update, so its k-th update uses the factor of s = k - 1 (its
-- first update runs at lr 0): s(step - 1) reproduces its sequence exactly.
-- eric-mitchell's DPO warmup, min(1, (k + 1) / (warmup + 1)) for the 0-based
-- update k, is linear_warmup(lr, warmup + 1). After `total` the cosine holds
-- min_lr (HF's would rise again).
--
-- Beta (dpo.schedules.beta.*; linear, step and adaptive also as
-- dpo.schedules.<name>):
--   constant(b)                      b
--   linear(b0, b1, total)            b0 + (b1 - b0) p with p = (step - 1) / (total - 1)
--                                    clamped to [0, 1]: b0 at step 1, b1 at
--                                    step = total and after
--   cosine(b0, b1, total)            b1 + (b0 - b1) (1 + cos(pi p)) / 2, same p
--   step(b0, {at = {s1, s2, ..}, values = {v1, v2, ..}})
--                                    b0 before step s1, v1 from step s1 on, v2
--                                    from s2 on, ... (at ascending)
--   adaptive(b0, {target_margin =, rate = 0.5, min = b0 / 10, max = 10 b0})
--                                    from the last loss's mean reward margin
--                                    m = metrics["rewards/margins"]:
--                                    clamp(b0 (1 + rate (m - target_margin)), min, max);
--                                    b0 while there is no margin yet (metrics
--                                    nil, e.g. at step 1). A margin above the
--                                    target raises beta (a tighter hold on the
--                                    reference), one below lowers it. This is
--                                    the batch-level rule of beta-DPO (Wu et
--                                    al., "beta-DPO: Direct Preference
--                                    Optimization with Dynamic beta",
--                                    arXiv:2407.08639) with a fixed threshold;
--                                    it keeps no state, so a resumed run gets
--                                    the same values.
-- (dpo.schedules.constant serves both; dpo.schedules.cosine is the
-- learning-rate one, the beta cosine is dpo.schedules.beta.cosine.)
--
-- Bad arguments raise naming the schedule and the argument; so does calling
-- a schedule with a step that is not a number.
local schedules = { lr = {}, beta = {} }

local function show(v)
   if v ~= v then return "nan" end
   if type(v) == "number" then return string.format("%.6g", v) end
   if type(v) == "string" then return string.format("%q", v) end
   return tostring(v)
end

-- level 3 when called by a constructor, 4 by the checks below
local function bad(name, arg, want, v, level)
   error(("dpo.schedules.%s: '%s' must be %s (got %s)"):format(name, arg, want, show(v)),
         level or 3)
end

local function number(name, arg, v)
   if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
      bad(name, arg, "a finite number", v, 4)
   end
   return v
end

local function nonneg(name, arg, v)
   if type(v) ~= "number" or not (v >= 0 and v < math.huge) then
      bad(name, arg, "a number >= 0", v, 4)
   end
   return v
end

local function count(name, arg, v, least)
   local whole = type(v) == "number" and v == math.floor(v) and v < 2 ^ 53
   if math.type(v) ~= "integer" and not whole then
      bad(name, arg, ("an integer >= %d"):format(least), v, 4)
   end
   if v < least then bad(name, arg, ("an integer >= %d"):format(least), v, 4) end
   return v
end

-- Reject options a schedule does not know, naming them.
local function options(name, opts, known)
   if opts == nil then return {} end
   if type(opts) ~= "table" then
      error(("dpo.schedules.%s: options must be a table (got %s)"):format(name, type(opts)), 3)
   end
   for k in pairs(opts) do
      if not known[k] then
         local list = {}
         for n in pairs(known) do list[#list + 1] = n end
         table.sort(list)
         error(("dpo.schedules.%s: unknown option '%s' (known: %s)"):format(
            name, tostring(k), table.concat(list, ", ")), 3)
      end
   end
   return opts
end

-- The step a schedule was called with, checked.
local function checkstep(name, step)
   if type(step) ~= "number" or step ~= step then
      error(("dpo.schedules.%s: step must be a number (got %s)"):format(name, show(step)), 3)
   end
   return step
end

local function clamp01(x)
   if x < 0 then return 0 end
   if x > 1 then return 1 end
   return x
end

-- the warmup factor: step / warmup for step <= warmup, then 1
local function warm(step, warmup)
   if step >= warmup then return 1 end
   return math.max(step, 0) / warmup
end

-- ---- learning rate ---------------------------------------------------------------

-- constant(v) -> s: s(step) = v (a learning rate or a beta)
function schedules.lr.constant(lr)
   number("constant", "value", lr)
   return function(step)
      checkstep("constant", step)
      return lr
   end
end

-- linear_warmup(lr, warmup) -> s: lr * step / warmup up to warmup, then lr
function schedules.lr.linear_warmup(lr, warmup)
   nonneg("linear_warmup", "lr", lr)
   count("linear_warmup", "warmup", warmup, 0)
   return function(step)
      return lr * warm(checkstep("linear_warmup", step), warmup)
   end
end

-- warmup_linear(lr, warmup, total) -> s: warmup, then a linear decay to 0 at total
function schedules.lr.warmup_linear(lr, warmup, total)
   nonneg("warmup_linear", "lr", lr)
   count("warmup_linear", "warmup", warmup, 0)
   count("warmup_linear", "total", total, 1)
   if warmup >= total then
      bad("warmup_linear", "total", "greater than warmup (" .. warmup .. ")", total)
   end
   return function(step)
      step = checkstep("warmup_linear", step)
      if step < warmup then return lr * warm(step, warmup) end
      return lr * math.max(0, (total - step) / (total - warmup))
   end
end

-- cosine(lr, warmup, total, {min_lr = 0}) -> s: warmup, then a half cosine
-- from lr to min_lr at total
function schedules.lr.cosine(lr, warmup, total, opts)
   nonneg("cosine", "lr", lr)
   count("cosine", "warmup", warmup, 0)
   count("cosine", "total", total, 1)
   if warmup >= total then
      bad("cosine", "total", "greater than warmup (" .. warmup .. ")", total)
   end
   opts = options("cosine", opts, { min_lr = true })
   local min_lr = opts.min_lr
   if min_lr == nil then min_lr = 0 end
   nonneg("cosine", "min_lr", min_lr)
   if min_lr > lr then bad("cosine", "min_lr", "at most lr (" .. show(lr) .. ")", min_lr) end
   return function(step)
      step = checkstep("cosine", step)
      if step < warmup then return lr * warm(step, warmup) end
      local p = clamp01((step - warmup) / (total - warmup))
      return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * p))
   end
end

-- ---- beta -------------------------------------------------------------------------

schedules.beta.constant = schedules.lr.constant

-- progress p = (step - 1) / (total - 1) in [0, 1]; 1 from step total on
local function progress(step, total)
   if total == 1 then return step >= 1 and 1 or 0 end
   return clamp01((step - 1) / (total - 1))
end

-- linear(b0, b1, total) -> s: b0 at step 1 to b1 at step total, b1 after
function schedules.beta.linear(b0, b1, total)
   number("linear", "b0", b0)
   number("linear", "b1", b1)
   count("linear", "total", total, 1)
   return function(step)
      return b0 + (b1 - b0) * progress(checkstep("linear", step), total)
   end
end

-- cosine(b0, b1, total) -> s: a half cosine from b0 at step 1 to b1 at step total
function schedules.beta.cosine(b0, b1, total)
   number("beta.cosine", "b0", b0)
   number("beta.cosine", "b1", b1)
   count("beta.cosine", "total", total, 1)
   return function(step)
      local p = progress(checkstep("beta.cosine", step), total)
      return b1 + (b0 - b1) * 0.5 * (1 + math.cos(math.pi * p))
   end
end

-- step(b0, {at = {..}, values = {..}}) -> s: piecewise constant
function schedules.beta.step(b0, opts)
   number("step", "b0", b0)
   opts = options("step", opts, { at = true, values = true })
   local at, values = opts.at, opts.values
   if type(at) ~= "table" then bad("step", "at", "a list of steps", at) end
   if type(values) ~= "table" then bad("step", "values", "a list of numbers", values) end
   if #at ~= #values then
      error(("dpo.schedules.step: 'values' must be as long as 'at' (got %d values for %d steps)")
         :format(#values, #at), 2)
   end
   for i = 1, #at do
      count("step", "at[" .. i .. "]", at[i], 1)
      if i > 1 and at[i] <= at[i - 1] then
         bad("step", "at[" .. i .. "]", ("greater than at[%d] (%d)"):format(i - 1, at[i - 1]),
             at[i])
      end
      number("step", "values[" .. i .. "]", values[i])
   end
   at, values = table.move(at, 1, #at, 1, {}), table.move(values, 1, #values, 1, {})
   return function(step)
      step = checkstep("step", step)
      local v = b0
      for i = 1, #at do
         if step >= at[i] then v = values[i] else break end
      end
      return v
   end
end

-- adaptive(b0, {target_margin =, rate = 0.5, min = b0/10, max = 10*b0}) -> s(step, metrics)
function schedules.beta.adaptive(b0, opts)
   number("adaptive", "b0", b0)
   if not (b0 > 0) then bad("adaptive", "b0", "a positive number", b0) end
   opts = options("adaptive", opts, { target_margin = true, rate = true, min = true, max = true })
   local target = number("adaptive", "target_margin", opts.target_margin)
   local rate = nonneg("adaptive", "rate", opts.rate == nil and 0.5 or opts.rate)
   local lo = nonneg("adaptive", "min", opts.min == nil and b0 / 10 or opts.min)
   local hi = nonneg("adaptive", "max", opts.max == nil and b0 * 10 or opts.max)
   if lo > hi then bad("adaptive", "max", "at least min (" .. show(lo) .. ")", hi) end
   return function(step, metrics)
      checkstep("adaptive", step)
      local m = type(metrics) == "table" and metrics["rewards/margins"] or nil
      if type(m) ~= "number" or m ~= m then return b0 end
      local b = b0 * (1 + rate * (m - target))
      return math.min(hi, math.max(lo, b))
   end
end

-- ---- the flat names -------------------------------------------------------------------

schedules.constant = schedules.lr.constant
schedules.linear_warmup = schedules.lr.linear_warmup
schedules.warmup_linear = schedules.lr.warmup_linear
schedules.cosine = schedules.lr.cosine
schedules.linear = schedules.beta.linear
schedules.step = schedules.beta.step
schedules.adaptive = schedules.beta.adaptive

return schedules
