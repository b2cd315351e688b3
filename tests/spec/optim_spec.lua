-- dpo.optim: SGD, AdamW and RMSprop against their published update rules,
-- gradient clipping, state dicts (bit-identical resume), settable learning
-- rates, and the errors for bad options and bad parameters.
--
-- Every expected value is computed here in plain Lua doubles from the rules
-- (torch.optim's documented algorithms), starting from the float32 values
-- the tensors hold; gradients are set by hand (`p.grad = dpo.tensor{...}`).
local h = dofile("tests/spec/helper.lua")

-- ---- plain-Lua helpers ---------------------------------------------------------

-- x rounded to float32, as a tensor stores it
local function f32(x) return (string.unpack("f", string.pack("f", x))) end

local function map(list, f)
   local r = {}
   for i, v in ipairs(list) do r[i] = f(v) end
   return r
end

local function flat(t, out)
   out = out or {}
   if type(t) ~= "table" then
      out[#out + 1] = t
      return out
   end
   for _, v in ipairs(t) do flat(v, out) end
   return out
end

-- got (a tensor or list) and want (a list of doubles) agree to 1e-6 relative,
-- with a tiny absolute floor for values near zero
local function close(got, want, what)
   if dpo.is_tensor(got) then got = flat(got:totable()) end
   assert.are.equal(#want, #got, (what or "value") .. ": element count")
   for i = 1, #want do
      local err = math.abs(got[i] - want[i])
      if not (err <= 1e-6 * math.abs(want[i]) + 1e-9) then
         assert.is_true(false, string.format("%s[%d]: got %.9g, expected %.9g", what or "value",
                                             i, got[i], want[i]))
      end
   end
end

local function fails(fn, text)
   return h.errors(fn, text, true)
end

-- The parameters and per-step gradients used throughout: a 1-D tensor of 3 and
-- a 2x2 matrix, both taken flat by the references.
local P0 = { { 0.5, -1.25, 2.0 }, { { 0.75, -0.3 }, { 1.6, -2.2 } } }
local GRADS = {
   { { 0.3, -0.7, 1.1 }, { { -0.2, 0.45 }, { 0.05, -1.3 } } },
   { { 0.25, 0.4, -0.9 }, { { 0.6, -0.15 }, { 0.8, 0.35 } } },
   { { -0.5, 0.1, 0.7 }, { { 0.3, 0.2 }, { -0.65, 0.9 } } },
   { { 0.15, -0.35, 0.05 }, { { -0.4, 0.55 }, { 0.25, -0.1 } } },
}

local function new_params()
   return { dpo.tensor(P0[1]):requires_grad(), dpo.tensor(P0[2]):requires_grad() }
end

-- Run kind with opts over GRADS; returns the parameter values (flat lists)
-- after each step, and the optimizer.
local function run(kind, opts, nsteps)
   local params = new_params()
   local opt = dpo.optim[kind](params, opts)
   local traj = {}
   for s = 1, nsteps or #GRADS do
      for k, p in ipairs(params) do p.grad = dpo.tensor(GRADS[s][k]) end
      opt:step()
      traj[s] = { flat(params[1]:totable()), flat(params[2]:totable()) }
   end
   return traj, opt, params
end

-- ---- the references, one tensor at a time on flat lists of doubles ----------

local ref = {}

function ref.sgd(o, p, grads)
   local lr, mom, damp = o.lr or 1e-3, o.momentum or 0, o.dampening or 0
   local wd, buf, out = o.weight_decay or 0, nil, {}
   for s, gs in ipairs(grads) do
      local nb = {}
      for i = 1, #p do
         local g = o.maximize and -gs[i] or gs[i]
         g = g + wd * p[i]
         if mom ~= 0 then
            local b = buf and (mom * buf[i] + (1 - damp) * g) or g
            nb[i] = b
            if o.nesterov then g = g + mom * b else g = b end
         end
         p[i] = p[i] - lr * g
      end
      buf = nb
      out[s] = map(p, function(x) return x end)
   end
   return out
end

function ref.adamw(o, p, grads)
   local lr, eps, wd = o.lr or 1e-3, o.eps or 1e-8, o.weight_decay or 1e-2
   local b1, b2 = (o.betas or {})[1] or 0.9, (o.betas or {})[2] or 0.999
   local m, v, vmax, out = {}, {}, {}, {}
   for i = 1, #p do m[i], v[i], vmax[i] = 0, 0, 0 end
   for t, gs in ipairs(grads) do
      local bc1, bc2 = 1 - b1 ^ t, 1 - b2 ^ t
      for i = 1, #p do
         local g = o.maximize and -gs[i] or gs[i]
         p[i] = p[i] * (1 - lr * wd)
         m[i] = b1 * m[i] + (1 - b1) * g
         v[i] = b2 * v[i] + (1 - b2) * g * g
         local vv = v[i]
         if o.amsgrad then
            vmax[i] = math.max(vmax[i], v[i])
            vv = vmax[i]
         end
         p[i] = p[i] - lr / bc1 * m[i] / (math.sqrt(vv) / math.sqrt(bc2) + eps)
      end
      out[t] = map(p, function(x) return x end)
   end
   return out
end

function ref.rmsprop(o, p, grads)
   local lr, alpha, eps = o.lr or 1e-2, o.alpha or 0.99, o.eps or 1e-8
   local wd, mom = o.weight_decay or 0, o.momentum or 0
   local sq, ga, buf, out = {}, {}, {}, {}
   for i = 1, #p do sq[i], ga[i], buf[i] = 0, 0, 0 end
   for s, gs in ipairs(grads) do
      for i = 1, #p do
         local g = o.maximize and -gs[i] or gs[i]
         g = g + wd * p[i]
         sq[i] = alpha * sq[i] + (1 - alpha) * g * g
         local avg
         if o.centered then
            ga[i] = alpha * ga[i] + (1 - alpha) * g
            avg = math.sqrt(sq[i] - ga[i] * ga[i]) + eps
         else
            avg = math.sqrt(sq[i]) + eps
         end
         if mom > 0 then
            buf[i] = mom * buf[i] + g / avg
            p[i] = p[i] - lr * buf[i]
         else
            p[i] = p[i] - lr * g / avg
         end
      end
      out[s] = map(p, function(x) return x end)
   end
   return out
end

-- The reference trajectory of tensor k (1 or 2) over the first nsteps of GRADS.
local function expected(kind, opts, k, nsteps)
   local grads = {}
   for s = 1, nsteps or #GRADS do grads[s] = map(flat(GRADS[s][k]), f32) end
   return ref[kind](opts, map(flat(P0[k]), f32), grads)
end

local function check_against_reference(kind, opts)
   local traj = run(kind, opts)
   for k = 1, 2 do
      local want = expected(kind, opts, k)
      for s = 1, #GRADS do close(traj[s][k], want[s], string.format("step %d, tensor %d", s, k)) end
   end
end

-- ---- the update rules -------------------------------------------------------------

local CASES = {
   sgd = {
      { lr = 0.1 },
      { lr = 0.1, weight_decay = 0.05 },
      { lr = 0.1, momentum = 0.9 },
      { lr = 0.05, momentum = 0.9, dampening = 0.3 },
      { lr = 0.1, momentum = 0.8, weight_decay = 0.1, nesterov = true },
      { lr = 0.1, momentum = 0.5, nesterov = true, maximize = true },
      {},
   },
   adamw = {
      {},
      { lr = 1e-2, betas = { 0.8, 0.99 }, eps = 1e-6, weight_decay = 0 },
      { lr = 5e-2, weight_decay = 0.1 },
      { lr = 1e-2, betas = { 0.5, 0.9 }, amsgrad = true },
      { lr = 1e-2, weight_decay = 0.05, amsgrad = true, maximize = true },
   },
   rmsprop = {
      {},
      { lr = 1e-2, alpha = 0.9, weight_decay = 0.1 },
      { lr = 1e-3, eps = 1e-6, momentum = 0.9 },
      { lr = 1e-2, alpha = 0.9, centered = true },
      { lr = 1e-2, alpha = 0.8, weight_decay = 0.01, momentum = 0.5, centered = true },
      { lr = 1e-2, maximize = true },
   },
}

local function describe_opts(o)
   local keys, parts = {}, {}
   for k in pairs(o) do keys[#keys + 1] = k end
   table.sort(keys)
   for _, k in ipairs(keys) do
      local v = o[k]
      if type(v) == "table" then v = "{" .. table.concat(v, ", ") .. "}" end
      parts[#parts + 1] = k .. "=" .. tostring(v)
   end
   return #parts > 0 and table.concat(parts, ", ") or "defaults"
end

for _, kind in ipairs { "sgd", "adamw", "rmsprop" } do
   describe("dpo.optim." .. kind, function()
      for _, opts in ipairs(CASES[kind]) do
         it("follows the published rule with " .. describe_opts(opts), function()
            check_against_reference(kind, opts)
         end)
      end
   end)
end

describe("dpo.optim steps", function()
   it("update a tensor trained through autograd", function()
      -- loss = sum((p - target)^2): grad = 2 (p - target)
      local p = dpo.tensor { 1.5, -0.5, 0.25 }:requires_grad()
      local target = dpo.tensor { 0.5, 0.5, 0.5 }
      local opt = dpo.optim.sgd({ p }, { lr = 0.1, momentum = 0.9 })
      local p0, grads = map({ 1.5, -0.5, 0.25 }, f32), {}
      for s = 1, 3 do
         opt:zero_grad()
         local d = p - target
         local loss = (d * d):sum()
         loss:backward()
         -- the gradient the reference sees: 2 (p - target), from p's current values
         grads[s] = map(flat(p:totable()), function(x) return 2 * (x - 0.5) end)
         opt:step()
      end
      local traj = ref.sgd({ lr = 0.1, momentum = 0.9 }, p0, grads)
      close(p, traj[3], "p after 3 steps")
   end)

   it("skip parameters without a grad, whose state starts at their first grad", function()
      local params = new_params()
      local opt = dpo.optim.adamw(params, { lr = 0.01 })
      params[1].grad = dpo.tensor(GRADS[1][1])
      opt:step()
      assert.is_nil(opt.state[2])
      close(params[2], map(flat(P0[2]), f32), "untouched tensor")
      assert.are.equal(1, opt.state[1].step)
      -- now both: tensor 2 takes its first step (bias corrections of step 1)
      params[1].grad = dpo.tensor(GRADS[2][1])
      params[2].grad = dpo.tensor(GRADS[1][2])
      opt:step()
      assert.are.equal(2, opt.state[1].step)
      assert.are.equal(1, opt.state[2].step)
      close(params[2], expected("adamw", { lr = 0.01 }, 2, 1)[1], "tensor 2 after its first step")
      local g1 = { map(flat(GRADS[1][1]), f32), map(flat(GRADS[2][1]), f32) }
      close(params[1], ref.adamw({ lr = 0.01 }, map(flat(P0[1]), f32), g1)[2], "tensor 1")
   end)

   it("create only the state their options need, named as torch names it", function()
      local _, opt = run("sgd", { lr = 0.1 }, 1)
      assert.is_nil(opt.state[1].momentum_buffer)
      _, opt = run("sgd", { lr = 0.1, momentum = 0.9 }, 1)
      assert.is_true(dpo.is_tensor(opt.state[1].momentum_buffer))
      _, opt = run("adamw", {}, 2)
      assert.are.equal(2, opt.state[2].step)
      assert.is_true(dpo.is_tensor(opt.state[2].exp_avg) and dpo.is_tensor(opt.state[2].exp_avg_sq))
      assert.is_nil(opt.state[2].max_exp_avg_sq)
      _, opt = run("adamw", { amsgrad = true }, 1)
      assert.are.same({ 2, 2 }, opt.state[2].max_exp_avg_sq:size())
      _, opt = run("rmsprop", {}, 1)
      assert.is_nil(opt.state[1].grad_avg)
      assert.is_nil(opt.state[1].momentum_buffer)
      _, opt = run("rmsprop", { centered = true, momentum = 0.5 }, 1)
      assert.is_true(dpo.is_tensor(opt.state[1].grad_avg))
      assert.is_true(dpo.is_tensor(opt.state[1].momentum_buffer))
   end)

   it("zero the grads in place, or drop them", function()
      local params = new_params()
      local opt = dpo.optim.sgd(params, { lr = 0.1 })
      for k, p in ipairs(params) do p.grad = dpo.tensor(GRADS[1][k]) end
      local g = params[1].grad
      opt:zero_grad()
      assert.are.same({ 0, 0, 0 }, params[1].grad:totable())
      assert.are.same({ 0, 0, 0 }, g:totable()) -- the same tensor, zeroed in place
      opt:zero_grad(true)
      assert.is_nil(params[1].grad)
      assert.is_nil(params[2].grad)
      opt:step() -- nothing to do
      close(params[1], map(P0[1], f32), "unchanged")
   end)

   it("return the closure's loss", function()
      local p = dpo.tensor { 2.0 }:requires_grad()
      local opt = dpo.optim.sgd({ p }, { lr = 0.25 })
      local loss = opt:step(function()
         opt:zero_grad()
         local l = (p * p):sum()
         l:backward()
         return l
      end)
      assert.are.equal(4, loss:item())
      close(p, { 2 - 0.25 * 4 }, "p")
   end)
end)

-- ---- the learning rate ------------------------------------------------------------

describe("the learning rate", function()
   it("is read at each step, set as a field or with set_lr", function()
      local params = new_params()
      local opt = dpo.optim.sgd(params, { lr = 0.1, momentum = 0.9 })
      assert.are.equal(0.1, opt:get_lr())
      assert.are.equal(0.1, opt.lr)
      local lrs = { 0.1, 0.02, 0.5, 0.3 }
      for s = 1, 4 do
         if s == 2 then opt.lr = lrs[2] elseif s == 3 then opt:set_lr(lrs[3]) end
         if s == 4 then opt.lr = lrs[4] end
         assert.are.equal(lrs[s], opt:get_lr())
         for k, p in ipairs(params) do p.grad = dpo.tensor(GRADS[s][k]) end
         opt:step()
      end
      -- reference with the lr of each step
      local p, buf = map(P0[1], f32), nil
      for s = 1, 4 do
         local g = map(GRADS[s][1], f32)
         local nb = {}
         for i = 1, 3 do
            nb[i] = buf and 0.9 * buf[i] + g[i] or g[i]
            p[i] = p[i] - lrs[s] * nb[i]
         end
         buf = nb
      end
      close(params[1], p, "p with a changing lr")
   end)

   it("is checked when set and at the next step", function()
      local opt = dpo.optim.adamw(new_params())
      fails(function() opt:set_lr(-1) end, "dpo.optim.adamw: option 'lr' must be >= 0 (got -1)")
      fails(function() opt:set_lr("big") end,
            "dpo.optim.adamw: option 'lr' must be a number (got string)")
      assert.are.equal(1e-3, opt:get_lr())
      opt.lr = -0.5
      fails(function() opt:step() end, "dpo.optim.adamw: option 'lr' must be >= 0 (got -0.5)")
      opt.lr = 0
      opt:step()
      fails(function() opt.learning_rate = 1 end,
            "dpo.optim.adamw: no option 'learning_rate' (options: lr, betas, eps, weight_decay, " ..
            "amsgrad, maximize)")
   end)
end)

-- ---- printing -------------------------------------------------------------------------

describe("tostring", function()
   it("shows the kind, the options and the sizes on one line", function()
      local params = new_params()
      assert.are.equal("dpo.optim.adamw(lr=0.001, betas=(0.9, 0.999), eps=1e-08, " ..
                       "weight_decay=0.01, 2 tensors, 7 params)",
                       tostring(dpo.optim.adamw(params)))
      assert.are.equal("dpo.optim.adamw(lr=0.0003, betas=(0.9, 0.95), eps=1e-08, " ..
                       "weight_decay=0, amsgrad=true, 2 tensors, 7 params)",
                       tostring(dpo.optim.adamw(params, { lr = 3e-4, betas = { 0.9, 0.95 },
                                                          weight_decay = 0, amsgrad = true })))
      assert.are.equal("dpo.optim.sgd(lr=0.1, momentum=0.9, dampening=0, weight_decay=0, " ..
                       "nesterov=true, 1 tensor, 3 params)",
                       tostring(dpo.optim.sgd({ params[1] }, { lr = 0.1, momentum = 0.9,
                                                               nesterov = true })))
      assert.are.equal("dpo.optim.rmsprop(lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0, " ..
                       "momentum=0, centered=false, maximize=true, 2 tensors, 7 params)",
                       tostring(dpo.optim.rmsprop(params, { maximize = true })))
   end)
end)

-- ---- gradient norms ------------------------------------------------------------------

describe("dpo.optim.clip_grad_norm", function()
   local function with_grads()
      local params = new_params()
      for k, p in ipairs(params) do p.grad = dpo.tensor(GRADS[1][k]) end
      return params, map(flat(GRADS[1]), f32)
   end

   it("returns the 2-norm before clipping and scales by max_norm / (norm + 1e-6)", function()
      local params, g = with_grads()
      local sq = 0
      for _, x in ipairs(g) do sq = sq + x * x end
      local norm = math.sqrt(sq)
      local total = dpo.optim.clip_grad_norm(params, 1.0)
      assert.are.equal("number", type(total))
      assert.is_true(math.abs(total - norm) <= 1e-12 * norm)
      local coef = 1.0 / (norm + 1e-6)
      local scaled = map(g, function(x) return x * coef end)
      close(flat({ params[1].grad:totable(), params[2].grad:totable() }), scaled, "clipped grads")
      -- now below the limit: unchanged
      local again = dpo.optim.clip_grad_norm(params, 2.0)
      assert.is_true(math.abs(again - 1.0) < 1e-6)
      close(flat({ params[1].grad:totable(), params[2].grad:totable() }), scaled, "unchanged")
   end)

   it("leaves grads under max_norm alone", function()
      local params, g = with_grads()
      dpo.optim.clip_grad_norm(params, 100)
      close(flat({ params[1].grad:totable(), params[2].grad:totable() }), g, "grads")
   end)

   it("measures other norms: 1, 3 and inf", function()
      local params, g = with_grads()
      local s1, s3, mx = 0, 0, 0
      for _, x in ipairs(g) do
         s1, s3, mx = s1 + math.abs(x), s3 + math.abs(x) ^ 3, math.max(mx, math.abs(x))
      end
      assert.is_true(math.abs(dpo.optim.grad_norm(params, 1) - s1) < 1e-12)
      assert.is_true(math.abs(dpo.optim.grad_norm(params, 3) - s3 ^ (1 / 3)) < 1e-12)
      assert.are.equal(mx, dpo.optim.grad_norm(params, math.huge))
      assert.are.equal(mx, dpo.optim.grad_norm(params, "inf"))
      local total = dpo.optim.clip_grad_norm(params, 0.5, math.huge)
      assert.are.equal(mx, total)
      local coef = 0.5 / (mx + 1e-6)
      close(params[2].grad, map(flat(GRADS[1][2]), function(x) return f32(x) * coef end),
            "inf-clipped")
   end)

   it("skips tensors without a grad and takes one tensor alone", function()
      local params = new_params()
      assert.are.equal(0, dpo.optim.clip_grad_norm(params, 1))
      params[2].grad = dpo.tensor { { 3, 0 }, { 0, 4 } }
      assert.are.equal(5, dpo.optim.grad_norm(params))
      assert.are.equal(5, dpo.optim.clip_grad_norm(params[2], 10))
   end)

   it("rejects a bad max_norm or norm_type", function()
      local params = with_grads()
      fails(function() dpo.optim.clip_grad_norm(params, -1) end,
            "dpo.optim.clip_grad_norm: max_norm must be a number >= 0 (got -1)")
      fails(function() dpo.optim.clip_grad_norm(params) end,
            "dpo.optim.clip_grad_norm: max_norm must be a number >= 0 (got nil)")
      fails(function() dpo.optim.clip_grad_norm(params, 1, 0) end,
            "dpo.optim.clip_grad_norm: norm_type must be a number > 0 or math.huge (got 0)")
      fails(function() dpo.optim.grad_norm(params, "two") end,
            "dpo.optim.grad_norm: norm_type must be a number > 0 or math.huge (got string)")
      fails(function() dpo.optim.grad_norm({ params[1], 7 }) end,
            "dpo.optim.grad_norm: params[2] is a number, expected a dpo.Tensor")
   end)
end)

-- ---- state dicts -------------------------------------------------------------------------

local RESUME = {
   sgd = { lr = 0.1, momentum = 0.9, dampening = 0.1, weight_decay = 0.01 },
   adamw = { lr = 1e-2, betas = { 0.8, 0.99 }, weight_decay = 0.05, amsgrad = true },
   rmsprop = { lr = 1e-2, alpha = 0.9, momentum = 0.5, centered = true, weight_decay = 0.01 },
}

describe("state_dict", function()
   for _, kind in ipairs { "sgd", "adamw", "rmsprop" } do
      it("resumes " .. kind .. " bit for bit", function()
         local opts = RESUME[kind]
         local params = new_params()
         local opt = dpo.optim[kind](params, opts)
         local function step(ps, o, s)
            for k, p in ipairs(ps) do p.grad = dpo.tensor(GRADS[s][k]) end
            o:step()
         end
         step(params, opt, 1)
         step(params, opt, 2)
         local sd = opt:state_dict()
         local saved = map(params, function(p) return dpo.tensor(p) end)
         -- the uninterrupted run goes on (its state changes in place after sd)
         step(params, opt, 3)
         step(params, opt, 4)
         -- a fresh optimizer, built with other options, over parameters restored
         local fresh = map(saved, function(p) return dpo.tensor(p):requires_grad() end)
         local opt2 = dpo.optim[kind](fresh, { lr = 0.5 })
         opt2:load_state_dict(sd)
         assert.are.equal(opts.lr, opt2.lr)
         step(fresh, opt2, 3)
         step(fresh, opt2, 4)
         for k = 1, 2 do
            assert.is_true(fresh[k]:equal(params[k]), "params differ after resume")
            for name, v in pairs(opt.state[k]) do
               if dpo.is_tensor(v) then
                  assert.is_true(v:equal(opt2.state[k][name]), name .. " differs")
               else
                  assert.are.equal(v, opt2.state[k][name])
               end
            end
         end
         -- the state dict was not changed by loading and stepping: load it again
         local again = map(saved, function(p) return dpo.tensor(p):requires_grad() end)
         local opt3 = dpo.optim[kind](again)
         opt3:load_state_dict(sd)
         step(again, opt3, 3)
         step(again, opt3, 4)
         assert.is_true(again[1]:equal(params[1]) and again[2]:equal(params[2]))
      end)
   end

   it("is a plain table of options, step counts and cloned state tensors", function()
      local _, opt = run("adamw", { lr = 0.02, betas = { 0.85, 0.995 } }, 3)
      local sd = opt:state_dict()
      assert.are.equal("table", type(sd))
      assert.are.equal(nil, getmetatable(sd))
      assert.are.equal("adamw", sd.optimizer)
      local g = sd.param_groups[1]
      assert.are.equal(0.02, g.lr)
      assert.are.same({ 0.85, 0.995 }, g.betas)
      assert.are.equal(1e-8, g.eps)
      assert.are.equal(0.01, g.weight_decay)
      assert.are.equal(false, g.amsgrad)
      assert.are.same({ 1, 2 }, g.params)
      assert.are.same({ { 3 }, { 2, 2 } }, sd.param_shapes)
      assert.are.equal(3, sd.state[1].step)
      assert.are.equal(math.type(3), math.type(sd.state[1].step))
      assert.are_not.equal(opt.state[1].exp_avg, sd.state[1].exp_avg)
      assert.is_true(opt.state[1].exp_avg:equal(sd.state[1].exp_avg))
      -- changing the optimizer's betas afterwards does not reach the saved ones
      opt.betas[1] = 0.5
      assert.are.equal(0.85, g.betas[1])
   end)

   it("rejects a state dict that does not fit", function()
      local _, opt = run("adamw", {}, 1)
      local sd = opt:state_dict()
      local one = dpo.optim.adamw({ dpo.tensor(P0[1]):requires_grad() })
      fails(function() one:load_state_dict(sd) end,
            "dpo.optim.adamw:load_state_dict: the state dict holds 2 parameter tensors, " ..
            "this optimizer has 1")
      local other = dpo.optim.adamw({ dpo.tensor(P0[1]):requires_grad(),
                                      dpo.zeros(4):requires_grad() })
      fails(function() other:load_state_dict(sd) end,
            "params[2] has size 4, the state dict's has size 2x2")
      sd.param_shapes = nil -- then the state tensors themselves are checked
      fails(function() other:load_state_dict(sd) end,
            "the state dict's state[2].exp_avg is float32 of size 2x2, " ..
            "params[2] is float32 of size 4")
      local sgd = dpo.optim.sgd(new_params())
      fails(function() sgd:load_state_dict(opt:state_dict()) end,
            "dpo.optim.sgd:load_state_dict: the state dict is for dpo.optim.adamw, " ..
            "not dpo.optim.sgd")
      sd = opt:state_dict()
      sd.param_groups[1].lr = -1
      fails(function() opt:load_state_dict(sd) end,
            "the state dict's option 'lr' must be >= 0 (got -1)")
      sd = opt:state_dict()
      sd.state[1].step = -2
      fails(function() opt:load_state_dict(sd) end,
            "the state dict's state[1].step must be an integer >= 0 (got -2)")
      sd = opt:state_dict()
      sd.state[1].exp_avg = nil
      fails(function() opt:load_state_dict(sd) end, "the state dict's state[1] lacks exp_avg")
      fails(function() opt:load_state_dict(42) end, "state dict must be a table (got number)")
      -- nothing changed by the failed loads
      assert.are.equal(1e-3, opt.lr)
      assert.are.equal(1, opt.state[1].step)
   end)
end)

-- ---- errors ------------------------------------------------------------------------------

describe("construction rejects", function()
   local p = dpo.tensor { 1, 2 }:requires_grad()

   it("options out of range, naming the option and the value", function()
      local cases = {
         { "adamw", { lr = -1 }, "option 'lr' must be >= 0 (got -1)" },
         { "adamw", { betas = { 0.9, 1 } }, "option 'betas[2]' must be in [0, 1) (got 1)" },
         { "adamw", { betas = { -0.1, 0.9 } }, "option 'betas[1]' must be in [0, 1) (got -0.1)" },
         { "adamw", { betas = 0.9 }, "option 'betas' must be a list of two numbers (got number)" },
         { "adamw", { eps = -1e-8 }, "option 'eps' must be >= 0 (got -1e-08)" },
         { "adamw", { weight_decay = -0.01 }, "option 'weight_decay' must be >= 0 (got -0.01)" },
         { "adamw", { amsgrad = 1 }, "option 'amsgrad' must be a boolean (got number)" },
         { "adamw", { lr = 0 / 0 }, "option 'lr' must be finite (got nan)" },
         { "adamw", { lr = math.huge }, "option 'lr' must be finite (got inf)" },
         { "sgd", { lr = "0.1" }, "option 'lr' must be a number (got string)" },
         { "sgd", { momentum = -0.9 }, "option 'momentum' must be >= 0 (got -0.9)" },
         { "sgd", { dampening = 2 }, "option 'dampening' must be in [0, 1] (got 2)" },
         { "sgd", { nesterov = true },
           "Nesterov momentum requires a momentum and zero dampening " ..
           "(got momentum=0, dampening=0)" },
         { "sgd", { nesterov = true, momentum = 0.9, dampening = 0.1 },
           "Nesterov momentum requires a momentum and zero dampening (got momentum=0.9, " ..
           "dampening=0.1)" },
         { "rmsprop", { alpha = 1.5 }, "option 'alpha' must be in [0, 1] (got 1.5)" },
         { "rmsprop", { momentum = -1 }, "option 'momentum' must be >= 0 (got -1)" },
         { "rmsprop", { centered = "yes" }, "option 'centered' must be a boolean (got string)" },
      }
      for _, c in ipairs(cases) do
         fails(function() dpo.optim[c[1]]({ p }, c[2]) end, "dpo.optim." .. c[1] .. ": " .. c[3])
      end
   end)

   it("unknown options, such as a misspelt learning rate", function()
      fails(function() dpo.optim.adamw({ p }, { learning_rate = 1e-4 }) end,
            "dpo.optim.adamw: unknown option 'learning_rate' (options: lr, betas, eps, " ..
            "weight_decay, amsgrad, maximize)")
      fails(function() dpo.optim.sgd({ p }, { lr = 0.1, betas = { 0.9, 0.99 } }) end,
            "dpo.optim.sgd: unknown option 'betas' (options: lr, momentum, dampening, " ..
            "weight_decay, nesterov, maximize)")
      fails(function() dpo.optim.rmsprop({ p }, { 0.1 }) end,
            "dpo.optim.rmsprop: unknown option [1]")
      fails(function() dpo.optim.rmsprop({ p }, 0.1) end,
            "dpo.optim.rmsprop: options must be a table (got number)")
   end)

   it("bad parameter lists, naming the index", function()
      local q = dpo.tensor { 3 }:requires_grad()
      local cases = {
         { nil, "params must be a list of tensors (got nil)" },
         { {}, "params must be a non-empty list of tensors" },
         { p, "params must be a list of tensors (got one dpo.Tensor; wrap it: {t})" },
         { { weight = p }, "params must be a list of tensors (it has the key 'weight')" },
         { { p, 5 }, "params[2] is a number, expected a dpo.Tensor" },
         { { q, dpo.tensor { 1 } },
           "params[2] does not require grad (call :requires_grad() on it)" },
         { { dpo.tensor({ 1 }, "int32") }, "params[1] is int32, expected float32" },
         { { q, p * 2 }, "params[2] is not a leaf tensor (an optimizer updates leaves)" },
         { { p, q, p }, "params[3] is the same tensor as params[1]" },
         { { dpo.tensor({ { 1, 2 }, { 3, 4 } }):t():requires_grad() },
           "params[1] is not contiguous" },
      }
      for _, c in ipairs(cases) do
         fails(function() dpo.optim.sgd(c[1], { lr = 0.1 }) end, "dpo.optim.sgd: " .. c[2])
      end
   end)

   it("bad tensors at the raw C steps, with an error rather than a crash", function()
      local core = require "dpo.core"
      local q, g = dpo.zeros(2, 3), dpo.zeros(2, 3)
      local m, v = dpo.zeros(2, 3), dpo.zeros(2, 3)
      fails(function()
         core.optim_adamw_step(q, dpo.zeros(3, 2), m, v, nil, 1, 0.1, 0.9, 0.999, 1e-8, 0)
      end, "bad argument #2 to 'optim_adamw_step' (adamw_step: grad has size 3x2, expected 2x3")
      fails(function()
         core.optim_adamw_step(q, g, m, v, nil, 0, 0.1, 0.9, 0.999, 1e-8, 0)
      end, "adamw_step: step must be >= 1 (got 0)")
      fails(function()
         core.optim_adamw_step(q, g, m, v, nil, 1, 0.1, 0.9, 0.999, 1e-8, 0, true)
      end, "adamw_step: max_exp_avg_sq is missing")
      fails(function() core.optim_sgd_step(q, g, nil, true, 0.1, 0.9, 0, 0) end,
            "sgd_step: momentum_buffer is missing")
      fails(function() core.optim_sgd_step(q, g, m, true, 0.1, 0.9, 0.5, 0, true) end,
            "Nesterov momentum requires a momentum and zero dampening")
      fails(function()
         core.optim_rmsprop_step(q, g, dpo.zeros({ 2, 3 }, "int32"), nil, nil, 0.1, 0.9, 0, 0, 0)
      end, "rmsprop_step: square_avg is int32, expected float32")
      local t = dpo.zeros(2, 3)
      t:free()
      fails(function() core.optim_sgd_step(q, t, nil, true, 0.1, 0, 0, 0) end,
            "attempt to use a freed dpo.Tensor")
      fails(function() core.optim_grad_norm({ q, "x" }) end, "element 2 is a string")
   end)

   it("a closure that is not a function", function()
      local opt = dpo.optim.sgd({ p })
      fails(function() opt:step(42) end,
            "dpo.optim.sgd: step's closure must be a function (got number)")
   end)
end)
