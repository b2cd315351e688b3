-- dpo.losses: every loss against its published formula, the values each
-- takes when the policy equals the reference, the direction of its
-- gradient, a finite-difference gradient check, the combinators (weighted,
-- reference_free, a user's own loss), the errors for bad options, and a few
-- training steps of each loss on a tiny GPT.
--
-- Every expected value is computed here in plain Lua doubles (math.log,
-- math.exp) from the formulas in the papers, on inputs that float32 holds
-- exactly; never with the module under test.
local h = dofile("tests/spec/helper.lua")
local L = dpo.losses

-- ---- plain-Lua math ------------------------------------------------------------

local LN2 = math.log(2)

local function sig(x) return 1 / (1 + math.exp(-x)) end

-- log sigmoid(x), stable for either sign
local function lsig(x)
   if x >= 0 then return -math.log(1 + math.exp(-x)) end
   return x - math.log(1 + math.exp(x))
end

local function mean(list)
   local s = 0
   for _, v in ipairs(list) do s = s + v end
   return s / #list
end

local function sum(list)
   local s = 0
   for _, v in ipairs(list) do s = s + v end
   return s
end

-- {f(1), ..., f(n)}
local function per(n, f)
   local r = {}
   for i = 1, n do r[i] = f(i) end
   return r
end

local function sorted(list)
   local r = table.move(list, 1, #list, 1, {})
   table.sort(r)
   return r
end

-- ---- the inputs ----------------------------------------------------------------------

-- Summed log-probs of B = 3 pairs, and their completion token counts.
local PC = { -12.5, -7.25, -20.0 }
local PR = { -14.0, -6.5, -23.5 }
local RC = { -13.0, -7.0, -21.0 }
local RR = { -13.5, -8.5, -22.0 }
local NC = { 5, 3, 8 }
local NR = { 6, 4, 9 }
local BETA = 0.1
local N = #PC

-- r_c = {0.5, -0.25, 1}, r_r = {-0.5, 2, -1.5}, h = {1, -2.25, 2.5}
local RCH = per(N, function(i) return PC[i] - RC[i] end)
local RRJ = per(N, function(i) return PR[i] - RR[i] end)
local H = per(N, function(i) return RCH[i] - RRJ[i] end)
-- the token-mean NLL of the chosen completions over the batch
local NLL = -sum(PC) / sum(NC)

-- Fresh argument tables: policy log-probs as leaves that require grad.
local function inputs(extra, pc, pr, rc, rr)
   local a = {
      pi_c = dpo.tensor(pc or PC):requires_grad(), pi_r = dpo.tensor(pr or PR):requires_grad(),
      ref_c = dpo.tensor(rc or RC), ref_r = dpo.tensor(rr or RR),
      n_c = dpo.tensor(NC), n_r = dpo.tensor(NR),
   }
   for k, v in pairs(extra or {}) do a[k] = v end
   return a
end

local function smoothed(z, eps) return -(1 - eps) * lsig(z) - eps * lsig(-z) end

-- ---- the formulas, by hand --------------------------------------------------------------

-- name -> { options, expected loss, [variant label] }; several per loss
local CASES = {
   { "sigmoid", {}, mean(per(N, function(i) return -lsig(BETA * H[i]) end)) },
   { "cdpo", {}, mean(per(N, function(i) return smoothed(BETA * H[i], 0.1) end)) },
   { "cdpo", { label_smoothing = 0.25 },
     mean(per(N, function(i) return smoothed(BETA * H[i], 0.25) end)) },
   { "robust", {}, mean(per(N, function(i)
        local z = BETA * H[i]
        return (-(1 - 0.1) * lsig(z) + 0.1 * lsig(-z)) / (1 - 2 * 0.1)
     end)) },
   { "robust", { label_smoothing = 0.3, beta = 0.5 }, mean(per(N, function(i)
        local z = 0.5 * H[i]
        return (-(1 - 0.3) * lsig(z) + 0.3 * lsig(-z)) / (1 - 2 * 0.3)
     end)) },
   { "ipo", {}, mean(per(N, function(i)
        return (RCH[i] / NC[i] - RRJ[i] / NR[i] - 1 / (2 * BETA)) ^ 2
     end)) },
   { "ipo", { average = false }, mean(per(N, function(i) return (H[i] - 1 / (2 * BETA)) ^ 2 end)) },
   { "hinge", {}, mean(per(N, function(i) return math.max(0, 1 - BETA * H[i]) end)) },
   { "hinge", { beta = 0.5 }, mean(per(N, function(i) return math.max(0, 1 - 0.5 * H[i]) end)) },
   { "exo_pair", {}, mean(per(N, function(i)
        local z, eps = BETA * H[i], 1e-3
        return sig(z) * (lsig(z) - math.log(1 - eps)) + sig(-z) * (lsig(-z) - math.log(eps))
     end)) },
   { "exo_pair", { label_smoothing = 0.2 }, mean(per(N, function(i)
        local z, eps = BETA * H[i], 0.2
        return sig(z) * (lsig(z) - math.log(1 - eps)) + sig(-z) * (lsig(-z) - math.log(eps))
     end)) },
   { "nca_pair", {}, mean(per(N, function(i)
        local zc, zr = BETA * RCH[i], BETA * RRJ[i]
        return -lsig(zc) - 0.5 * lsig(-zc) - 0.5 * lsig(-zr)
     end)) },
   { "bco_pair", {}, mean(per(N, function(i)
        return -lsig(BETA * RCH[i]) - lsig(-(BETA * RRJ[i]))
     end)) },
   { "bco_pair", { delta = 0.05 }, mean(per(N, function(i)
        return -lsig(BETA * RCH[i] - 0.05) - lsig(-(BETA * RRJ[i] - 0.05))
     end)) },
   { "sppo_hard", {}, mean(per(N, function(i)
        return (RCH[i] - 1 / (2 * BETA)) ^ 2 + (RRJ[i] + 1 / (2 * BETA)) ^ 2
     end)) },
   { "aot", {}, (function()
        local p = sorted(per(N, function(i) return PC[i] - PR[i] end))
        local r = sorted(per(N, function(i) return RC[i] - RR[i] end))
        return mean(per(N, function(i) return -lsig(BETA * (p[i] - r[i])) end))
     end)() },
   { "aot", { label_smoothing = 0.2 }, (function()
        local p = sorted(per(N, function(i) return PC[i] - PR[i] end))
        local r = sorted(per(N, function(i) return RC[i] - RR[i] end))
        return mean(per(N, function(i) return smoothed(BETA * (p[i] - r[i]), 0.2) end))
     end)() },
   { "aot_unpaired", {}, (function()
        local c, r = sorted(RCH), sorted(RRJ)
        return mean(per(N, function(i) return -lsig(BETA * (c[i] - r[i])) end))
     end)() },
   { "apo_zero", {}, mean(per(N, function(i)
        return (1 - sig(BETA * RCH[i])) + sig(BETA * RRJ[i])
     end)) },
   { "apo_down", {}, mean(per(N, function(i)
        return sig(BETA * RCH[i]) + (1 - sig(BETA * H[i]))
     end)) },
   { "discopop", {}, mean(per(N, function(i)
        local l = BETA * H[i]
        local m = sig(l / 0.05)
        return (1 - m) * -lsig(l) + m * math.exp(-l)
     end)) },
   { "discopop", { tau = 0.5, beta = 0.3 }, mean(per(N, function(i)
        local l = 0.3 * H[i]
        local m = sig(l / 0.5)
        return (1 - m) * -lsig(l) + m * math.exp(-l)
     end)) },
   { "sigmoid_norm", {}, mean(per(N, function(i)
        return -lsig(BETA * (RCH[i] / NC[i] - RRJ[i] / NR[i]))
     end)) },
   { "rpo", {}, mean(per(N, function(i) return -lsig(BETA * H[i]) end)) + 1 * NLL },
   { "rpo", { alpha = 0.5 }, mean(per(N, function(i) return -lsig(BETA * H[i]) end)) + 0.5 * NLL },
   { "simpo", {}, mean(per(N, function(i)
        return -lsig(BETA * (PC[i] / NC[i] - PR[i] / NR[i]) - 0.5)
     end)) },
   { "simpo", { gamma = 1.375, beta = 2.5, label_smoothing = 0.1, alpha = 0.3 },
     mean(per(N, function(i)
        return smoothed(2.5 * (PC[i] / NC[i] - PR[i] / NR[i]) - 1.375, 0.1)
     end)) + 0.3 * NLL },
   { "cpo", {}, mean(per(N, function(i) return -lsig(BETA * (PC[i] - PR[i])) end)) + NLL },
   { "cpo", { alpha = 0, label_smoothing = 0.2 }, mean(per(N, function(i)
        return smoothed(BETA * (PC[i] - PR[i]), 0.2)
     end)) },
   { "orpo", {}, NLL - BETA * mean(per(N, function(i)
        local lc, lr = PC[i] / NC[i], PR[i] / NR[i]
        local log_odds = (lc - lr) - (math.log(1 - math.exp(lc)) - math.log(1 - math.exp(lr)))
        return lsig(log_odds)
     end)) },
   { "sft", {}, NLL },
}

-- What each loss equals when the policy equals the reference (h = 0), at
-- beta = 0.1 unless given; the reference-free ones at a tie of their own
-- log-probs (pi_c/n_c = pi_r/n_r for simpo and orpo, pi_c = pi_r for cpo).
local E3 = 1e-3
local STEP0 = {
   { "sigmoid", {}, LN2 },
   { "cdpo", { label_smoothing = 0.3 }, LN2 },
   { "robust", { label_smoothing = 0.3 }, LN2 },
   { "ipo", {}, 1 / (4 * 0.1 ^ 2) },                        -- 25
   { "ipo", { average = false }, 1 / (4 * 0.1 ^ 2) },       -- 25
   { "ipo", { beta = 0.5 }, 1 / (4 * 0.5 ^ 2) },            -- 1
   { "hinge", {}, 1 },
   { "exo_pair", {}, -LN2 - 0.5 * math.log(E3 * (1 - E3)) },  -- 2.7608
   { "nca_pair", {}, 2 * LN2 },
   { "bco_pair", {}, 2 * LN2 },
   { "bco_pair", { state = {} }, 2 * LN2 },
   { "sppo_hard", {}, 1 / (2 * 0.1 ^ 2) },                  -- 50
   { "aot", {}, LN2 },
   { "aot_unpaired", { label_smoothing = 0.2 }, LN2 },
   { "apo_zero", {}, 1 },
   { "apo_down", {}, 1 },
   { "discopop", {}, (LN2 + 1) / 2 },
   { "sigmoid_norm", {}, LN2 },
   { "rpo", {}, "ln 2 + alpha NLL" },
   { "simpo", {}, "softplus(gamma)" },
   { "cpo", {}, "ln 2 + alpha NLL" },
   { "orpo", {}, "NLL + beta ln 2" },
}

-- ---- the specs -------------------------------------------------------------------------

describe("dpo.losses", function()
   it("lists every loss, each a function", function()
      local names = L.list()
      assert.are.same({ "sigmoid", "cdpo", "robust", "ipo", "hinge", "exo_pair", "nca_pair",
                        "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down",
                        "discopop", "sigmoid_norm", "rpo", "simpo", "cpo", "orpo", "sft" }, names)
      for _, n in ipairs(names) do assert.are.equal("function", type(L[n])) end
      -- the list is a copy
      names[1] = "x"
      assert.are.equal("sigmoid", L.list()[1])
   end)

   describe("matches the published formula", function()
      local seen = {}
      for k, case in ipairs(CASES) do
         local name, opts, want = case[1], case[2], case[3]
         seen[name] = true
         local label = next(opts) and " (case " .. k .. ")" or ""
         it(name .. label, function()
            local loss, metrics = L[name](inputs(opts))
            assert.are.equal(0, loss:dim())
            assert.is_not_nil(loss:grad_fn(), "the loss is not an autograd tensor")
            h.near(loss, want, 1e-5)
            assert.are.equal("table", type(metrics))
            for key, v in pairs(metrics) do
               assert.are.equal("number", type(v), key)
            end
         end)
      end
      it("covers every loss", function()
         for _, n in ipairs(L.list()) do assert.is_true(seen[n] == true, n) end
      end)
   end)

   describe("logs TRL's metrics", function()
      it("rewards beta (pi - ref) and summed logps, strict accuracy", function()
         for _, name in ipairs{ "sigmoid", "ipo", "hinge", "sppo_hard", "aot", "discopop",
                                "rpo" } do
            local _, m = L[name](inputs())
            h.near(m["rewards/chosen"], mean(per(N, function(i) return BETA * RCH[i] end)))
            h.near(m["rewards/rejected"], mean(per(N, function(i) return BETA * RRJ[i] end)))
            h.near(m["rewards/margins"], mean(per(N, function(i) return BETA * H[i] end)))
            h.near(m["rewards/accuracies"], 2 / 3)                -- h = {1, -2.25, 2.5}
            h.near(m["logps/chosen"], mean(PC))
            h.near(m["logps/rejected"], mean(PR))
         end
         local _, m = L.sigmoid(inputs{ beta = 0.5 })
         h.near(m["rewards/chosen"], mean(per(N, function(i) return 0.5 * RCH[i] end)))
      end)

      it("nll_loss for rpo, cpo and sft", function()
         for _, name in ipairs{ "rpo", "cpo", "sft" } do
            local _, m = L[name](inputs())
            h.near(m.nll_loss, NLL)
         end
         local _, m = L.sft(inputs())
         h.near(m["logps/chosen"], mean(PC))
      end)

      it("averaged log-probs as rewards for simpo and orpo, summed for cpo", function()
         local ac = per(N, function(i) return PC[i] / NC[i] end)
         local ar = per(N, function(i) return PR[i] / NR[i] end)
         for _, name in ipairs{ "simpo", "orpo" } do
            local _, m = L[name](inputs())
            h.near(m["rewards/chosen"], BETA * mean(ac))
            h.near(m["rewards/rejected"], BETA * mean(ar))
            h.near(m["rewards/margins"], BETA * (mean(ac) - mean(ar)))
            -- averages {-2.5, -2.4167, -2.5} against {-2.3333, -1.625, -2.6111}
            h.near(m["rewards/accuracies"], 1 / 3)
            h.near(m["logps/chosen"], mean(ac))
            h.near(m["logps/rejected"], mean(ar))
         end
         local _, m = L.cpo(inputs())
         h.near(m["rewards/chosen"], BETA * mean(PC))
         h.near(m["rewards/margins"], BETA * (mean(PC) - mean(PR)))
         h.near(m["rewards/accuracies"], 2 / 3)
      end)

      it("orpo's log-odds", function()
         local lo = per(N, function(i)
            local lc, lr = PC[i] / NC[i], PR[i] / NR[i]
            return (lc - lr) - (math.log(1 - math.exp(lc)) - math.log(1 - math.exp(lr)))
         end)
         local _, m = L.orpo(inputs())
         h.near(m.log_odds_chosen, mean(lo))
         h.near(m.log_odds_ratio, mean(per(N, function(i) return lsig(lo[i]) end)))
         h.near(m.nll_loss, NLL)
      end)
   end)

   describe("when the policy equals the reference", function()
      for k, case in ipairs(STEP0) do
         local name, opts, want = case[1], case[2], case[3]
         it(name .. " is " .. (type(want) == "string" and want or string.format("%.6g", want))
            .. (next(opts) and " (case " .. k .. ")" or ""), function()
            local a = inputs(opts, RC, RR, RC, RR)
            local gamma = 0.5
            if name == "rpo" then
               want = LN2 - sum(RC) / sum(NC)            -- alpha 1
            elseif name == "cpo" then
               a = inputs(opts, RC, RC)                  -- a tie: pi_c = pi_r
               want = LN2 - sum(RC) / sum(NC)
            elseif name == "simpo" then
               -- a tie of the averages: pi_c/n_c = pi_r/n_r = -2
               a = inputs(opts, { -10, -6, -16 }, { -12, -8, -18 })
               want = math.log(1 + math.exp(gamma))
            elseif name == "orpo" then
               a = inputs(opts, { -10, -6, -16 }, { -12, -8, -18 })
               want = 32 / 16 + BETA * LN2
            end
            local loss, m = L[name](a)
            h.near(loss, want, 1e-6)
            if name ~= "simpo" and name ~= "orpo" and name ~= "cpo" then
               assert.are.equal(0, m["rewards/chosen"])
               assert.are.equal(0, m["rewards/rejected"])
               assert.are.equal(0, m["rewards/margins"])
               assert.are.equal(0, m["rewards/accuracies"])    -- ties count as wrong
            end
         end)
      end
   end)

   describe("moves chosen up and rejected down", function()
      -- d loss / d pi_c <= 0 and d loss / d pi_r >= 0, at the inputs above
      -- and when the policy equals the reference. Two published exceptions:
      -- apo_down may lower the chosen log-prob (its purpose), and discopop's
      -- slope at h = 0 has the other sign (checked below).
      local function grads(name, a)
         L[name](a):backward()
         local gc = a.pi_c.grad and a.pi_c.grad:totable() or { 0, 0, 0 }
         local gr = a.pi_r.grad and a.pi_r.grad:totable() or { 0, 0, 0 }
         return gc, gr
      end
      for _, name in ipairs(L.list()) do
         it(name, function()
            local points = { inputs(), inputs(nil, RC, RR, RC, RR) }
            for p, a in ipairs(points) do
               if not (name == "discopop" and p == 2) then
                  local gc, gr = grads(name, a)
                  for i = 1, N do
                     if name ~= "apo_down" then
                        assert.is_true(gc[i] <= 0,
                                       ("point %d: d/dpi_c[%d] = %g"):format(p, i, gc[i]))
                     end
                     assert.is_true(gr[i] >= 0, ("point %d: d/dpi_r[%d] = %g"):format(p, i, gr[i]))
                  end
               end
            end
         end)
      end

      it("discopop at h = 0: the published loss first lowers the margin for tau < 0.1", function()
         -- the slope of f(l) = (1 - s(l/tau)) (-ls(l)) + s(l/tau) e^-l at l = 0
         -- is (1 - ln 2) / (4 tau) - 3/4: positive for tau = 0.05
         local slope = (1 - LN2) / (4 * 0.05) - 0.75
         assert.is_true(slope > 0)
         local gc = grads("discopop", inputs(nil, RC, RR, RC, RR))
         h.near(gc, { BETA * slope / N, BETA * slope / N, BETA * slope / N }, 1e-5)
         -- and with tau = 0.5 it pushes the chosen up as DPO does
         gc = grads("discopop", inputs({ tau = 0.5 }, RC, RR, RC, RR))
         for i = 1, N do assert.is_true(gc[i] < 0) end
      end)

      it("apo_down may lower the chosen: d/dpi_c = beta (s'(b r_c) - s'(b h)) / B", function()
         local gc = grads("apo_down", inputs())
         local ds = function(x) return sig(x) * (1 - sig(x)) end
         h.near(gc, per(N, function(i)
            return BETA * (ds(BETA * RCH[i]) - ds(BETA * H[i])) / N
         end), 1e-4)
      end)
   end)

   describe("passes dpo.gradcheck", function()
      -- beta 0.8 for gradients well above float32 noise; no input sits on a
      -- kink (hinge's 1 - h = 0 or a tie in aot's sorts)
      for _, name in ipairs(L.list()) do
         it(name, function()
            local fixed = inputs{ beta = 0.8 }
            local function f(pc, pr)
               local a = {}
               for k, v in pairs(fixed) do a[k] = v end
               a.pi_c, a.pi_r = pc, pr
               return (L[name](a))
            end
            local leaves = { dpo.tensor(PC):requires_grad(), dpo.tensor(PR):requires_grad() }
            local ok, msg = dpo.gradcheck(f, leaves, { eps = 1e-2, atol = 1e-4, rtol = 1e-2 })
            assert.is_true(ok, msg)
         end)
      end
   end)

   describe("bco_pair's running delta", function()
      it("is the running mean of the batch-mean reward, updated before the loss", function()
         local st = {}
         local b1 = (mean(per(N, function(i) return BETA * RCH[i] end))
                     + mean(per(N, function(i) return BETA * RRJ[i] end))) / 2
         local loss, m = L.bco_pair(inputs{ state = st })
         h.near(m.delta, b1)
         h.near(st.mean, b1)
         assert.are.equal(1, st.count)
         h.near(loss, mean(per(N, function(i)
            return -lsig(BETA * RCH[i] - b1) - lsig(-(BETA * RRJ[i] - b1))
         end)), 1e-5)
         -- a second batch at the reference: its mean reward is 0
         loss, m = L.bco_pair(inputs({ state = st }, RC, RR, RC, RR))
         h.near(m.delta, b1 / 2)
         assert.are.equal(2, st.count)
         h.near(loss, -lsig(-b1 / 2) - lsig(b1 / 2), 1e-5)
      end)
   end)

   describe("combinators", function()
      it("reference_free calls the loss with zero reference log-probs", function()
         local f = L.reference_free(L.sigmoid)
         local a = inputs()
         a.ref_c, a.ref_r = nil, nil
         local loss, m = f(a)
         h.near(loss, mean(per(N, function(i) return -lsig(BETA * (PC[i] - PR[i])) end)), 1e-5)
         h.near(m["rewards/chosen"], BETA * mean(PC))
         -- the caller's table is left alone
         assert.is_nil(a.ref_c)
         -- with a reference given, it is still replaced by zeros
         h.near(f(inputs()), mean(per(N, function(i) return -lsig(BETA * (PC[i] - PR[i])) end)),
                1e-5)
      end)

      it("weighted sums weighted losses and merges their metrics (MPO)", function()
         local mpo = L.weighted{ { fn = L.sigmoid, weight = 0.8 },
                                 { fn = L.bco_pair, weight = 0.2 },
                                 { fn = L.sft, weight = 1 } }
         local loss, m = mpo(inputs())
         local dpo_l = mean(per(N, function(i) return -lsig(BETA * H[i]) end))
         local bco_l = mean(per(N, function(i)
            return -lsig(BETA * RCH[i]) - lsig(-BETA * RRJ[i])
         end))
         h.near(loss, 0.8 * dpo_l + 0.2 * bco_l + NLL, 1e-5)
         h.near(m["loss/sigmoid"], dpo_l)
         h.near(m["loss/bco_pair"], bco_l)
         h.near(m["loss/sft"], NLL)
         h.near(m.nll_loss, NLL)
         h.near(m["rewards/margins"], mean(per(N, function(i) return BETA * H[i] end)))
         -- and the gradient is that of the sum
         loss:backward()
         assert.is_not_nil(loss:grad_fn())
      end)

      it("takes a user's own loss and per-entry options", function()
         -- a user's loss: mean(exp(-beta h)), with a metric of its own
         local function exp_loss(a)
            local hh = (a.pi_c - a.ref_c) - (a.pi_r - a.ref_r)
            return (-(hh * a.beta)):exp():mean(), { ["my/scale"] = a.scale or 0 }
         end
         local f = L.weighted{ { fn = L.cdpo, label_smoothing = 0.25 },
                               { fn = exp_loss, weight = 0.5, name = "exp", scale = 3 },
                               { fn = exp_loss, weight = -0.25 } }
         local loss, m = f(inputs{ beta = BETA })
         local want_c = mean(per(N, function(i) return smoothed(BETA * H[i], 0.25) end))
         local want_e = mean(per(N, function(i) return math.exp(-BETA * H[i]) end))
         h.near(loss, want_c + 0.5 * want_e - 0.25 * want_e, 1e-5)
         h.near(m["loss/cdpo"], want_c)
         h.near(m["loss/exp"], want_e)
         h.near(m["loss/loss3"], want_e)
         assert.are.equal(3, m["my/scale"])               -- the first entry's value is kept
         h.near(m["rewards/accuracies"], 2 / 3)
         -- a user's loss alone is a loss too: the trainer calls it the same way
         local l2 = exp_loss(inputs{ beta = 0.5 })
         h.near(l2, mean(per(N, function(i) return math.exp(-0.5 * H[i]) end)), 1e-5)
      end)

      it("names repeated entries apart", function()
         local f = L.weighted{ { fn = L.sigmoid }, { fn = L.sigmoid, weight = 2 } }
         local loss, m = f(inputs())
         local want = mean(per(N, function(i) return -lsig(BETA * H[i]) end))
         h.near(loss, 3 * want, 1e-5)
         h.near(m["loss/sigmoid"], want)
         h.near(m["loss/sigmoid_2"], want)
      end)
   end)

   describe("rejects bad arguments, naming the option", function()
      it("an unknown option, for every loss", function()
         for _, name in ipairs(L.list()) do
            local msg = h.errors(function() L[name](inputs{ lable_smoothing = 0.1 }) end,
                                 "dpo.losses." .. name .. ": unknown option 'lable_smoothing'",
                                 true)
            assert.is_truthy(msg:find("losses_spec.lua:%d+:"), msg)   -- blames the caller
         end
         h.errors(function() L.sigmoid(inputs{ label_smoothing = 0.1 }) end,
                  "'label_smoothing' is an option of cdpo, robust", true)
         h.errors(function() L.hinge(inputs{ gamma = 1 }) end,
                  "'gamma' is an option of simpo", true)
      end)

      it("option values out of range", function()
         local cases = {
            { "sigmoid", { beta = 0 }, "option 'beta' must be a positive number (got 0)" },
            { "sigmoid", { beta = "0.1" }, "option 'beta' must be a positive number" },
            { "cdpo", { label_smoothing = 0.5 },
              "option 'label_smoothing' must be a number in [0, 0.5) (got 0.5)" },
            { "robust", { label_smoothing = -0.1 },
              "option 'label_smoothing' must be a number in [0, 0.5)" },
            { "exo_pair", { label_smoothing = 0 },
              "option 'label_smoothing' must be a number in (0, 1) (got 0)" },
            { "ipo", { average = "yes" }, "option 'average' must be a boolean" },
            { "discopop", { tau = 0 }, "option 'tau' must be a positive number" },
            { "rpo", { alpha = -1 }, "option 'alpha' must be a number >= 0" },
            { "simpo", { gamma = 0 / 0 }, "option 'gamma' must be a finite number" },
            { "bco_pair", { delta = 0.1, state = {} },
              "options 'delta' and 'state' exclude each other" },
            { "bco_pair", { state = 3 }, "option 'state' must be a table" },
         }
         for _, c in ipairs(cases) do
            h.errors(function() L[c[1]](inputs(c[2])) end, "dpo.losses." .. c[1] .. ": " .. c[3],
                     true)
         end
      end)

      it("missing or misshapen tensors", function()
         local a = inputs()
         a.ref_r = nil
         h.errors(function() L.sigmoid(a) end,
                  "dpo.losses.sigmoid: 'ref_r' is required (a float32 tensor [B]); without a "
                  .. "reference model use dpo.losses.reference_free(dpo.losses.sigmoid)", true)
         a = inputs()
         a.n_r = nil
         h.errors(function() L.ipo(a) end, "dpo.losses.ipo: 'n_r' is required", true)
         a.n_c = nil
         a.average = false
         L.ipo(a)                                         -- summed IPO needs no counts
         h.errors(function() L.sigmoid(inputs{ pi_r = dpo.tensor{ -1, -2 } }) end,
                  "dpo.losses.sigmoid: 'pi_r' has 2 elements but 'pi_c' has 3", true)
         h.errors(function() L.sigmoid(inputs{ ref_c = dpo.zeros(3, 1) }) end,
                  "'ref_c' must be a 1-D float32 tensor [B] (got a tensor of 2 dimensions)", true)
         h.errors(function() L.sigmoid(inputs{ pi_c = dpo.tensor({ 1, 2, 3 }, "int32") }) end,
                  "'pi_c' must be a float32 tensor (got int32)", true)
         h.errors(function() L.sigmoid(inputs{ pi_c = { -1, -2, -3 } }) end,
                  "'pi_c' must be a 1-D float32 tensor [B] (got table)", true)
         h.errors(function() L.sigmoid("pi_c") end,
                  "dpo.losses.sigmoid: expected a table of arguments", true)
         -- int32 counts are taken as counts
         local b = inputs{ n_c = dpo.tensor(NC, "int32"), n_r = dpo.tensor(NR, "int32") }
         h.near(L.sigmoid_norm(b), mean(per(N, function(i)
            return -lsig(BETA * (RCH[i] / NC[i] - RRJ[i] / NR[i]))
         end)), 1e-5)
      end)

      it("bad combinator arguments", function()
         h.errors(function() L.weighted{} end, "dpo.losses.weighted: expected a non-empty list",
                  true)
         h.errors(function() L.weighted{ { fn = "sigmoid" } } end,
                  "dpo.losses.weighted: entry 1: 'fn' must be a loss function (got string)", true)
         h.errors(function() L.weighted{ { fn = L.sigmoid, weight = "1" } } end,
                  "dpo.losses.weighted: entry 1: 'weight' must be a finite number", true)
         h.errors(function() L.reference_free(nil) end,
                  "dpo.losses.reference_free: expected a loss function (got nil)", true)
         -- an entry's options reach its own loss only, which checks them
         local f = L.weighted{ { fn = L.sigmoid, label_smoothing = 0.1 } }
         h.errors(function() f(inputs()) end,
                  "dpo.losses.sigmoid: unknown option 'label_smoothing'", true)
      end)
   end)

   describe("trains a tiny GPT", function()
      -- B = 4 pairs sharing their prompts, T = 12: 4 prompt tokens, then
      -- completions of different lengths; 12 AdamW steps at lr 1e-2, and the
      -- mean margin h = (pi_c - ref_c) - (pi_r - ref_r) must grow from 0.
      local B, T, P = 4, 12, 4
      local LEN_C, LEN_R = { 8, 6, 7, 5 }, { 7, 8, 4, 6 }
      local function batch()
         dpo.manual_seed(7)
         local ids = dpo.randint(0, 32, { 2 * B, T })
         local rows, mask = ids:totable(), {}
         for i = 1, B do
            for t = 1, P do rows[B + i][t] = rows[i][t] end       -- same prompt
         end
         for r = 1, 2 * B do
            local len = r <= B and LEN_C[r] or LEN_R[r - B]
            mask[r] = {}
            for t = 1, T do mask[r][t] = (t > P and t <= P + len) and 1 or 0 end
         end
         return dpo.tensor(rows, "int32"), dpo.tensor(mask, "int32")
      end
      local ids, mask = batch()

      -- one thread: the model is tiny, and spinning worker threads only slow
      -- it down when the machine is busy
      local threads
      setup(function()
         threads = dpo.get_num_threads()
         dpo.set_num_threads(1)
      end)
      teardown(function() dpo.set_num_threads(threads) end)

      local function margin(m, ref)
         local lp = dpo.no_grad(function() return m:logps(ids, mask) end)
         local rp = ref:logps(ids, mask)
         local rc = lp:narrow(1, 1, B) - rp:narrow(1, 1, B)
         local rr = lp:narrow(1, B + 1, B) - rp:narrow(1, B + 1, B)
         return (rc - rr):mean():item(), rc:mean():item()
      end

      local function train(fn, steps)
         local m = dpo.gpt.new{ vocab_size = 32, n_ctx = 16, n_layer = 1, n_head = 2, n_embd = 16,
                                seed = 1 }
         local ref = m:clone(true)
         local opt = dpo.optim.adamw(m:parameters(), { lr = 1e-2, weight_decay = 0 })
         local rp, counts = dpo.no_grad(function() return ref:logps(ids, mask) end)
         local first, last
         for step = 1, steps do
            opt:zero_grad()
            local lp = m:logps(ids, mask)
            local loss, metrics = fn{
               pi_c = lp:narrow(1, 1, B), pi_r = lp:narrow(1, B + 1, B),
               ref_c = rp:narrow(1, 1, B), ref_r = rp:narrow(1, B + 1, B),
               n_c = counts:narrow(1, 1, B), n_r = counts:narrow(1, B + 1, B),
            }
            loss:backward()
            opt:step()
            first = first or metrics
            last = metrics
         end
         return m, ref, first, last
      end

      -- { label, loss function, whether its rewards use the reference }
      local RUNS = {}
      for _, name in ipairs(L.list()) do
         if name ~= "sft" and name ~= "discopop" then
            local uses_ref = name ~= "simpo" and name ~= "cpo" and name ~= "orpo"
            RUNS[#RUNS + 1] = { name, L[name], uses_ref }
         end
      end
      -- discopop with tau = 0.5: at its default 0.05 it first moves to a
      -- small negative margin (see above)
      RUNS[#RUNS + 1] = { "discopop (tau 0.5)", L.weighted{ { fn = L.discopop, tau = 0.5 } }, true }
      RUNS[#RUNS + 1] = { "bco_pair (running delta)", L.weighted{ { fn = L.bco_pair, state = {} } },
                          true }
      RUNS[#RUNS + 1] = { "weighted: sigmoid .8, bco_pair .2, sft 1",
                          L.weighted{ { fn = L.sigmoid, weight = 0.8 },
                                      { fn = L.bco_pair, weight = 0.2 }, { fn = L.sft } }, true }
      RUNS[#RUNS + 1] = { "reference_free(sigmoid)", L.reference_free(L.sigmoid), false }

      for _, run in ipairs(RUNS) do
         it(run[1] .. ": the margin grows", function()
            local m, ref, first = train(run[2], 12)
            -- step 1 ran with the policy equal to the reference
            if run[3] then assert.are.equal(0, first["rewards/margins"]) end
            local hmean = margin(m, ref)
            assert.is_true(hmean > 0.5, ("mean margin after 12 steps: %g"):format(hmean))
         end)
      end

      it("discopop at its default tau settles at a negative margin, as its formula does", function()
         -- l = beta h; the loss has a local minimum near h = -1.1 for beta 0.1,
         -- tau 0.05, and from h = 0 the gradient leads there
         local m, ref = train(L.discopop, 12)
         local hmean = margin(m, ref)
         assert.is_true(hmean < -0.5 and hmean > -2,
                        ("mean margin after 12 steps: %g"):format(hmean))
      end)

      it("sft raises the chosen log-probs", function()
         local m, ref = train(L.sft, 12)
         local _, up = margin(m, ref)
         assert.is_true(up > 1, ("chosen log-prob change: %g"):format(up))
      end)
   end)
end)
