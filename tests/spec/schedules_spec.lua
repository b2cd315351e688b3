-- dpo.schedules: learning-rate and beta schedules at chosen steps, against
-- values worked out here by hand from each documented rule (steps count from
-- 1), and the errors for bad arguments.
local h = dofile("tests/spec/helper.lua")
local S = dpo.schedules

-- s evaluated at each step of the list, as a list
local function at(s, steps, metrics)
   local r = {}
   for i, k in ipairs(steps) do r[i] = s(k, metrics) end
   return r
end

local PI = math.pi

describe("dpo.schedules", function()
   describe("learning rate", function()
      it("constant", function()
         local s = S.constant(3e-4)
         h.near(at(s, { 0, 1, 2, 1000 }), { 3e-4, 3e-4, 3e-4, 3e-4 }, 0)
         assert.are.equal(3e-4, s(7, { ["rewards/margins"] = 5 }))
      end)

      it("linear_warmup: lr * step / warmup up to warmup, then lr", function()
         local s = S.linear_warmup(1e-3, 10)
         h.near(at(s, { 0, 1, 5, 9, 10, 11, 500 }),
                { 0, 1e-4, 5e-4, 9e-4, 1e-3, 1e-3, 1e-3 }, 1e-12)
         -- no warmup: lr from step 1
         h.near(at(S.linear_warmup(1e-3, 0), { 1, 2 }), { 1e-3, 1e-3 }, 0)
         -- eric-mitchell's 150-step warmup: its k-th update (k from 1) uses
         -- lr * min(1, k / 151)
         local em = S.linear_warmup(1e-6, 151)
         h.near(at(em, { 1, 150, 151, 152 }), { 1e-6 / 151, 150e-6 / 151, 1e-6, 1e-6 }, 1e-12)
      end)

      it("warmup_linear: warmup, then down to 0 at total", function()
         local s = S.warmup_linear(1e-3, 10, 110)
         -- after warmup: lr * (110 - step) / 100
         h.near(at(s, { 1, 5, 10, 11, 60, 109, 110, 111, 1000 }),
                { 1e-4, 5e-4, 1e-3, 9.9e-4, 5e-4, 1e-5, 0, 0, 0 }, 1e-12)
         -- without warmup, step 1 is one step into the decay
         h.near(at(S.warmup_linear(2e-3, 0, 4), { 1, 2, 3, 4 }), { 1.5e-3, 1e-3, 0.5e-3, 0 }, 1e-12)
      end)

      it("warmup_linear(s - 1) is HF's linear schedule as its Trainer steps it", function()
         -- HF: factor(s) = s / W for s < W, else max(0, (T - s) / (T - W)),
         -- and its k-th update runs at factor(k - 1)
         local W, T, lr = 3, 8, 1.0
         local function hf(s)
            if s < W then return s / math.max(1, W) end
            return math.max(0, (T - s) / math.max(1, T - W))
         end
         local s = S.warmup_linear(lr, W, T)
         for k = 1, 10 do h.near(s(k - 1), lr * hf(k - 1), 1e-12) end
      end)

      it("cosine: warmup, then a half cosine from lr to min_lr at total", function()
         local s = S.cosine(1e-3, 10, 110, { min_lr = 1e-4 })
         local function c(p) return 1e-4 + 9e-4 * 0.5 * (1 + math.cos(PI * p)) end
         h.near(at(s, { 1, 5, 10, 35, 60, 85, 110, 111, 500 }),
                { 1e-4, 5e-4, 1e-3, c(0.25), 5.5e-4, c(0.75), 1e-4, 1e-4, 1e-4 }, 1e-12)
         -- min_lr defaults to 0
         local s0 = S.cosine(1e-3, 0, 100)
         h.near(at(s0, { 0, 50, 100, 200 }), { 1e-3, 5e-4, 0, 0 }, 1e-12)
         h.near(s0(25), 1e-3 * 0.5 * (1 + math.cos(PI / 4)), 1e-12)
      end)
   end)

   describe("beta", function()
      it("constant", function()
         h.near(at(S.beta.constant(0.1), { 1, 50 }), { 0.1, 0.1 }, 0)
      end)

      it("linear: b0 at step 1 to b1 at total, then b1", function()
         local s = S.linear(0.1, 0.5, 5)
         h.near(at(s, { 0, 1, 2, 3, 4, 5, 6, 100 }), { 0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5 },
                1e-12)
         h.near(at(S.linear(0.5, 0.1, 3), { 1, 2, 3 }), { 0.5, 0.3, 0.1 }, 1e-12)
         h.near(at(S.linear(0.1, 0.5, 1), { 1, 2 }), { 0.5, 0.5 }, 0)
      end)

      it("cosine: a half cosine from b0 at step 1 to b1 at total", function()
         local s = S.beta.cosine(0.5, 0.1, 5)
         local function c(p) return 0.1 + 0.4 * 0.5 * (1 + math.cos(PI * p)) end
         h.near(at(s, { 1, 2, 3, 4, 5, 9 }), { 0.5, c(0.25), 0.3, c(0.75), 0.1, 0.1 }, 1e-12)
      end)

      it("step: b0, then each value from its step on", function()
         local s = S.step(0.1, { at = { 3, 6 }, values = { 0.2, 0.05 } })
         h.near(at(s, { 1, 2, 3, 5, 6, 100 }), { 0.1, 0.1, 0.2, 0.2, 0.05, 0.05 }, 0)
         -- the lists are copied: changing them later changes nothing
         local opts = { at = { 2 }, values = { 1 } }
         local s2 = S.step(0.1, opts)
         opts.values[1] = 9
         assert.are.equal(1, s2(2))
      end)

      it("adaptive: clamp(b0 (1 + rate (margin - target)), min, max)", function()
         local s = S.adaptive(0.1, { target_margin = 1, rate = 0.5 })
         local function m(x) return { ["rewards/margins"] = x } end
         assert.are.equal(0.1, s(1))                 -- no metrics yet
         assert.are.equal(0.1, s(1, {}))             -- no margin in them
         h.near(s(2, m(1)), 0.1, 1e-12)
         h.near(s(2, m(3)), 0.1 * (1 + 0.5 * 2), 1e-12)       -- 0.2
         h.near(s(2, m(0)), 0.1 * (1 - 0.5), 1e-12)           -- 0.05
         h.near(s(2, m(-10)), 0.01, 1e-12)                    -- min = b0 / 10
         h.near(s(2, m(100)), 1.0, 1e-12)                     -- max = 10 b0
         -- no state: the same margin gives the same beta at any step
         h.near(s(500, m(3)), 0.2, 1e-12)
         local t = S.adaptive(0.2, { target_margin = 0.5, rate = 2, min = 0.15, max = 0.3 })
         h.near(at(t, { 5 }, m(0.55)), { 0.2 * (1 + 2 * 0.05) }, 1e-12)
         h.near(at(t, { 5 }, m(0)), { 0.15 }, 1e-12)
         h.near(at(t, { 5 }, m(2)), { 0.3 }, 1e-12)
      end)
   end)

   it("keeps the names in both places", function()
      assert.are.equal(S.lr.cosine, S.cosine)
      assert.are.equal(S.lr.warmup_linear, S.warmup_linear)
      assert.are.equal(S.lr.linear_warmup, S.linear_warmup)
      assert.are.equal(S.beta.linear, S.linear)
      assert.are.equal(S.beta.step, S.step)
      assert.are.equal(S.beta.adaptive, S.adaptive)
      assert.are.equal(S.lr.constant, S.beta.constant)
      assert.are.equal(S.constant, S.beta.constant)
   end)

   it("drives an optimizer's learning rate, as any function of (step, metrics) would", function()
      local p = dpo.tensor{ 1.0 }:requires_grad()
      local opt = dpo.optim.sgd({ p }, { lr = 0 })
      local schedules = { S.warmup_linear(0.1, 2, 4), function(step) return 0.1 / step end }
      local want = { { 0.05, 0.1, 0.05, 0 }, { 0.1, 0.05, 0.1 / 3, 0.025 } }
      for k, s in ipairs(schedules) do
         local seen = {}
         for step = 1, 4 do
            opt.lr = s(step, nil)
            seen[step] = opt:get_lr()
         end
         h.near(seen, want[k], 1e-12)
      end
   end)

   describe("rejects bad arguments, naming them", function()
      it("in the constructors", function()
         local cases = {
            { function() S.linear_warmup(-1, 10) end,
              "dpo.schedules.linear_warmup: 'lr' must be a number >= 0 (got -1)" },
            { function() S.linear_warmup(1e-3, 2.5) end,
              "dpo.schedules.linear_warmup: 'warmup' must be an integer >= 0 (got 2.5)" },
            { function() S.warmup_linear(1e-3, 10, 10) end,
              "dpo.schedules.warmup_linear: 'total' must be greater than warmup (10) (got 10)" },
            { function() S.warmup_linear(1e-3, 0, 0) end,
              "dpo.schedules.warmup_linear: 'total' must be an integer >= 1 (got 0)" },
            { function() S.cosine(1e-3, 10, nil) end,
              "dpo.schedules.cosine: 'total' must be an integer >= 1 (got nil)" },
            { function() S.cosine(1e-3, 0, 10, { minlr = 0 }) end,
              "dpo.schedules.cosine: unknown option 'minlr' (known: min_lr)" },
            { function() S.cosine(1e-3, 0, 10, { min_lr = 1e-2 }) end,
              "dpo.schedules.cosine: 'min_lr' must be at most lr" },
            { function() S.constant("0.1") end,
              "dpo.schedules.constant: 'value' must be a finite number" },
            { function() S.linear(0.1, 0 / 0, 10) end,
              "dpo.schedules.linear: 'b1' must be a finite number (got nan)" },
            { function() S.beta.cosine(0.1, 0.2, 0) end,
              "dpo.schedules.beta.cosine: 'total' must be an integer >= 1" },
            { function() S.step(0.1, { at = { 3, 2 }, values = { 1, 2 } }) end,
              "dpo.schedules.step: 'at[2]' must be greater than at[1] (3) (got 2)" },
            { function() S.step(0.1, { at = { 3 }, values = { 1, 2 } }) end,
              "dpo.schedules.step: 'values' must be as long as 'at' (got 2 values for 1 steps)" },
            { function() S.step(0.1, { at = { 3 } }) end,
              "dpo.schedules.step: 'values' must be a list of numbers (got nil)" },
            { function() S.step(0.1, { at = { 3 }, values = { 1 }, value = 2 }) end,
              "dpo.schedules.step: unknown option 'value'" },
            { function() S.adaptive(0.1, { rate = 1 }) end,
              "dpo.schedules.adaptive: 'target_margin' must be a finite number (got nil)" },
            { function() S.adaptive(0.1, { target_margin = 1, min = 0.5, max = 0.2 }) end,
              "dpo.schedules.adaptive: 'max' must be at least min (0.5) (got 0.2)" },
            { function() S.adaptive(0, { target_margin = 1 }) end,
              "dpo.schedules.adaptive: 'b0' must be a positive number (got 0)" },
         }
         for _, c in ipairs(cases) do
            local msg = h.errors(c[1], c[2], true)
            assert.is_truthy(msg:find("schedules_spec.lua:%d+:"), msg)   -- blames the caller
         end
      end)

      it("in the step", function()
         local all = { S.constant(1), S.linear_warmup(1, 2), S.warmup_linear(1, 2, 4),
                       S.cosine(1, 2, 4), S.linear(1, 2, 3), S.beta.cosine(1, 2, 3),
                       S.step(1, { at = {}, values = {} }), S.adaptive(1, { target_margin = 0 }) }
         for _, s in ipairs(all) do
            local msg = h.errors(function() s("3") end, "step must be a number (got \"3\")", true)
            assert.is_truthy(msg:find("schedules_spec.lua:%d+:"), msg)
            h.errors(function() s(nil) end, "step must be a number (got nil)", true)
         end
      end)
   end)
end)
