-- dpo.losses: preference-optimization losses as pure functions of per-pair
-- log-probabilities. Each one is a few tensor ops on autograd tensors; none
-- touches a model.
--
--   local loss, metrics = dpo.losses.sigmoid{
--      pi_c = ..., pi_r = ...,    policy log-probs, float32 [B] (autograd tensors)
--      ref_c = ..., ref_r = ...,  reference log-probs, float32 [B] (plain tensors);
--                                 not needed by simpo, orpo, cpo and sft
--      n_c = ..., n_r = ...,      completion token counts, float32 [B]; needed by
--                                 the losses that average per token (ipo with
--                                 average=true, sigmoid_norm, simpo, orpo) and by
--                                 the NLL terms (rpo, cpo, sft)
--      beta = 0.1,
--      ...                        the loss's own options (listed at each loss)
--   }
--
-- Log-probs are SUMMED over the completion tokens of each sequence (prompt
-- masked, final EOS included), as every reference implementation computes
-- them; the losses that need per-token averages divide by n themselves
-- (counts are clamped to at least 1, so an empty completion gives 0, not NaN).
--
-- RETURNS
--   loss     a scalar autograd tensor: the mean over the B pairs of the
--            per-pair loss, plus any batch-level term a formula adds (NLL)
--   metrics  a table of plain numbers with TRL's names, batch means:
--              rewards/chosen, rewards/rejected, rewards/margins,
--              rewards/accuracies (mean of [reward_c > reward_r], strict, so
--              ties count as wrong), logps/chosen, logps/rejected
--            and a loss's extras (nll_loss, log_odds_ratio, ...).
--            The rewards are beta * (pi - ref) from the summed log-probs,
--            whatever the loss (TRL DPOTrainer); the losses without a
--            reference (simpo, orpo, cpo) log what TRL's CPO/ORPO trainers
--            log: beta * the policy log-probs they use (averaged for simpo and
--            orpo, summed for cpo), and logps/* are those same log-probs.
--
-- Notation in the comments: r_c = pi_c - ref_c, r_r = pi_r - ref_r,
-- h = r_c - r_r, ls(z) = log sigmoid(z), s(z) = sigmoid(z), b = beta,
-- eps = label_smoothing, NLL = -(sum over the batch of pi_c) / (sum of n_c),
-- the token-mean negative log-likelihood of the chosen completions.
--
-- Losses: sigmoid cdpo robust ipo hinge exo_pair nca_pair bco_pair sppo_hard
-- aot aot_unpaired apo_zero apo_down discopop sigmoid_norm rpo simpo cpo orpo
-- sft (dpo.losses.list()); combinators reference_free(fn) and
-- weighted{ {fn=, weight=}, ... }, at the end of this file.
--
-- Any function with the same signature is a loss: dpo.losses.weighted and
-- the trainer take it as they take these. An unknown option is an error that
-- names the loss and the option, so a misspelt option never passes silently.
local core = require "dpo.core"

local losses = {}

local is_tensor = core.is_tensor

-- ---- arguments ----------------------------------------------------------------

local TENSORS = { "pi_c", "pi_r", "ref_c", "ref_r", "n_c", "n_r" }
local COMMON = { pi_c = true, pi_r = true, ref_c = true, ref_r = true, n_c = true, n_r = true,
                 beta = true }

local SPECS = {}   -- name -> spec of a built-in loss
local ORDER = {}   -- names, in the order of definition (list())

local function show(v)
   if v ~= v then return "nan" end
   if type(v) == "number" then return string.format("%.6g", v) end
   if type(v) == "string" then return string.format("%q", v) end
   return tostring(v)
end

local function fail(name, msg, ...)
   error(("dpo.losses.%s: " .. msg):format(name, ...), 4)
end

-- Option rules: each returns nil, or what the value must be.
local function number_in(lo, lo_open, hi, hi_open)
   local range = ("in %s%s, %s%s"):format(lo_open and "(" or "[", show(lo), show(hi),
                                           hi_open and ")" or "]")
   return function(v)
      if type(v) ~= "number" or v ~= v then return "a number " .. range end
      if (lo_open and v <= lo) or v < lo or (hi_open and v >= hi) or v > hi then
         return "a number " .. range
      end
   end
end

local function positive(v)
   if type(v) ~= "number" or not (v > 0 and v < math.huge) then return "a positive number" end
end

local function nonneg(v)
   if type(v) ~= "number" or not (v >= 0 and v < math.huge) then return "a number >= 0" end
end

local function finite(v)
   if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
      return "a finite number"
   end
end

local function boolean(v)
   if type(v) ~= "boolean" then return "a boolean" end
end

local function running_state(v)
   if type(v) ~= "table" or (v.mean ~= nil and type(v.mean) ~= "number")
      or (v.count ~= nil and math.type(v.count) ~= "integer") then
      return "a table {mean = number, count = integer} (or {} to start)"
   end
end

local smoothing = number_in(0, false, 0.5, true)

-- The options of every built-in loss that declares `name`, for the hint in
-- an unknown-option error.
local function owners(option)
   local list = {}
   for _, n in ipairs(ORDER) do
      if SPECS[n].options[option] then list[#list + 1] = n end
   end
   return list
end

local function known_list(spec)
   local names = { "pi_c", "pi_r", "ref_c", "ref_r", "n_c", "n_r", "beta" }
   local own = {}
   for k in pairs(spec.options) do own[#own + 1] = k end
   table.sort(own)
   for _, k in ipairs(own) do names[#names + 1] = k end
   return table.concat(names, ", ")
end

-- Check args against a loss's spec. Returns the tensors and beta (table a:
-- pi_c, ..., beta, B) and the options with their defaults filled in (o).
local function parse(name, spec, args)
   if type(args) ~= "table" then
      fail(name, "expected a table of arguments {pi_c=, pi_r=, ...} (got %s)", type(args))
   end
   for k in pairs(args) do
      if not COMMON[k] and spec.options[k] == nil then
         local msg = ("unknown option '%s' (%s takes %s)"):format(tostring(k), name,
                                                                  known_list(spec))
         local others = type(k) == "string" and owners(k) or {}
         if #others > 0 then
            msg = msg .. ("; '%s' is an option of %s"):format(k, table.concat(others, ", "))
         end
         fail(name, "%s", msg)
      end
   end
   local a = { beta = args.beta }
   if a.beta == nil then a.beta = 0.1 end
   if positive(a.beta) then
      fail(name, "option 'beta' must be a positive number (got %s)", show(a.beta))
   end
   local o = {}
   for k, opt in pairs(spec.options) do
      local v = args[k]
      if v == nil then v = opt.default end
      if v ~= nil then
         local want = opt.rule(v)
         if want then fail(name, "option '%s' must be %s (got %s)", k, want, show(v)) end
      end
      o[k] = v
   end
   if spec.check then
      local msg = spec.check(o)
      if msg then fail(name, "%s", msg) end
   end
   local needs = spec.needs
   if type(needs) == "function" then needs = needs(o) end
   local first
   for _, key in ipairs(TENSORS) do
      local t = args[key]
      if t == nil then
         if needs[key] then
            local hint = ""
            if key:sub(1, 3) == "ref" then
               hint = ("; without a reference model use dpo.losses.reference_free(dpo.losses.%s)")
                  :format(name)
            elseif name == "ipo" then
               hint = " with average = true (or pass average = false for the summed form)"
            end
            fail(name, "'%s' is required (a float32 tensor [B])%s", key, hint)
         end
      else
         if not is_tensor(t) or t:dim() ~= 1 then
            fail(name, "'%s' must be a 1-D float32 tensor [B] (got %s)", key,
                 is_tensor(t) and ("a tensor of " .. t:dim() .. " dimensions") or type(t))
         end
         if t:dtype() ~= "float32" then
            if key == "n_c" or key == "n_r" then
               t = t:float()
            else
               fail(name, "'%s' must be a float32 tensor (got %s)", key, t:dtype())
            end
         end
         if first == nil then
            if t:size(1) == 0 then fail(name, "'%s' is empty (a batch needs a pair)", key) end
            first = key
            a.B = t:size(1)
         elseif t:size(1) ~= a.B then
            fail(name, "'%s' has %d elements but '%s' has %d", key, t:size(1), first, a.B)
         end
         a[key] = t
      end
   end
   return a, o
end

-- ---- pieces ---------------------------------------------------------------------

local function ls(z) return z:logsigmoid() end

local function values(t) return t:detach():totable() end

local function mean_of(list)
   local s = 0
   for _, v in ipairs(list) do s = s + v end
   return s / #list
end

-- counts as divisors: at least 1
local function count(n) return n:clamp(1) end

-- -(1 - eps) ls(z) - eps ls(-z), per pair
local function smoothed_ls(z, eps)
   if eps == 0 then return -ls(z) end
   return -ls(z) * (1 - eps) - ls(-z) * eps
end

-- NLL = -(sum pi_c) / (sum n_c): the token-mean NLL of the chosen completions
local function nll(a)
   return -a.pi_c:sum() / count(a.n_c):sum()
end

-- TRL's reward metrics from per-pair chosen and rejected values (Lua lists)
-- scaled by beta, and logps/* from lc, lr.
local function reward_metrics(beta, xc, xr, lc, lr)
   local m, acc, margin = {}, 0, 0
   local rc, rr = {}, {}
   for i = 1, #xc do
      rc[i], rr[i] = beta * xc[i], beta * xr[i]
      if rc[i] > rr[i] then acc = acc + 1 end
      margin = margin + (rc[i] - rr[i])
   end
   m["rewards/chosen"] = mean_of(rc)
   m["rewards/rejected"] = mean_of(rr)
   m["rewards/margins"] = margin / #xc
   m["rewards/accuracies"] = acc / #xc
   m["logps/chosen"] = mean_of(lc)
   m["logps/rejected"] = mean_of(lr)
   return m
end

-- The metrics of a loss with a reference: rewards beta * (pi - ref).
local function ref_metrics(a)
   local pc, pr, rc, rr = values(a.pi_c), values(a.pi_r), values(a.ref_c), values(a.ref_r)
   local xc, xr = {}, {}
   for i = 1, #pc do
      xc[i], xr[i] = pc[i] - rc[i], pr[i] - rr[i]
   end
   return reward_metrics(a.beta, xc, xr, pc, pr)
end

-- The metrics of a loss without one: rewards beta * the log-probs it uses.
local function policy_metrics(a, lc, lr)
   local vc, vr = values(lc), values(lr)
   return reward_metrics(a.beta, vc, vr, vc, vr)
end

local function log_ratios(a)
   return a.pi_c - a.ref_c, a.pi_r - a.ref_r
end

-- The ascending order of a 1-D tensor's values, as an int32 index tensor
-- (1-based); ties keep their original order.
local function sort_index(t)
   local v = values(t)
   local idx = {}
   for i = 1, #v do idx[i] = i end
   table.sort(idx, function(i, j)
      if v[i] ~= v[j] then return v[i] < v[j] end
      return i < j
   end)
   return core.tensor(idx, "int32")
end

local function sorted(t) return t:index_select(1, sort_index(t)) end

-- ---- defining a loss --------------------------------------------------------------

local REF = { pi_c = true, pi_r = true, ref_c = true, ref_r = true }
local REF_N = { pi_c = true, pi_r = true, ref_c = true, ref_r = true, n_c = true, n_r = true }

-- spec = { needs = {pi_c=true, ...}, options = {name = {default=, rule=}}, check = fn(o),
--          body = function(a, o) -> loss, metrics }
local function define(name, spec)
   spec.options = spec.options or {}
   SPECS[name] = spec
   ORDER[#ORDER + 1] = name
   losses[name] = function(args)
      local a, o = parse(name, spec, args)
      return spec.body(a, o)
   end
end

local function merge(into, from)
   for k, v in pairs(from) do into[k] = v end
   return into
end

-- ---- the losses ---------------------------------------------------------------------

-- sigmoid (DPO): -ls(b h).
-- Rafailov et al., "Direct Preference Optimization: Your Language Model is
-- Secretly a Reward Model", arXiv:2305.18290, eq. 7.
define("sigmoid", {
   needs = REF,
   body = function(a)
      local rc, rr = log_ratios(a)
      return (-ls((rc - rr) * a.beta)):mean(), ref_metrics(a)
   end,
})

-- cdpo (conservative DPO): -(1 - eps) ls(b h) - eps ls(-b h), eps = the
-- assumed fraction of flipped labels.
-- Mitchell, "A note on DPO with noisy preferences & relationship to IPO"
-- (2023), eq. 3. Options: label_smoothing = 0.1 (in [0, 0.5); 0 is DPO).
define("cdpo", {
   needs = REF,
   options = { label_smoothing = { default = 0.1, rule = smoothing } },
   body = function(a, o)
      local rc, rr = log_ratios(a)
      return smoothed_ls((rc - rr) * a.beta, o.label_smoothing):mean(), ref_metrics(a)
   end,
})

-- robust (robust DPO): [-(1 - eps) ls(b h) + eps ls(-b h)] / (1 - 2 eps), an
-- unbiased estimate of the DPO loss under label noise eps (the flipped term is
-- subtracted, where cDPO adds it).
-- Chowdhury et al., "Provably Robust DPO: Aligning Language Models with Noisy
-- Feedback", arXiv:2403.00409. Options: label_smoothing = 0.1 (in [0, 0.5)).
define("robust", {
   needs = REF,
   options = { label_smoothing = { default = 0.1, rule = smoothing } },
   body = function(a, o)
      local rc, rr = log_ratios(a)
      local z, eps = (rc - rr) * a.beta, o.label_smoothing
      local per = (-ls(z) * (1 - eps) + ls(-z) * eps) / (1 - 2 * eps)
      return per:mean(), ref_metrics(a)
   end,
})

-- ipo: (h' - 1/(2b))^2, b playing the paper's tau. With average = true (TRL,
-- LLaMA-Factory) h' = r_c/n_c - r_r/n_r, the per-token log-ratios; with
-- average = false (the paper's summed log-probs, as eric-mitchell and
-- OpenRLHF) h' = h.
-- Azar et al., "A General Theoretical Paradigm to Understand Learning from
-- Human Preferences", arXiv:2310.12036, eq. 17. Options: average = true.
define("ipo", {
   needs = function(o) return o.average and REF_N or REF end,
   options = { average = { default = true, rule = boolean } },
   body = function(a, o)
      local rc, rr = log_ratios(a)
      local hh
      if o.average then
         hh = rc / count(a.n_c) - rr / count(a.n_r)
      else
         hh = rc - rr
      end
      return ((hh - 1 / (2 * a.beta)) ^ 2):mean(), ref_metrics(a)
   end,
})

-- hinge (SLiC / RSO): relu(1 - b h), b the inverse of the margin.
-- Zhao et al., "SLiC-HF: Sequence Likelihood Calibration with Human
-- Feedback", arXiv:2305.10425; Liu et al., "Statistical Rejection Sampling
-- Improves Preference Optimization", arXiv:2309.06657.
define("hinge", {
   needs = REF,
   body = function(a)
      local rc, rr = log_ratios(a)
      return (1 - (rc - rr) * a.beta):relu():mean(), ref_metrics(a)
   end,
})

-- exo_pair (EXO, pairwise): the reverse KL from the model's preference
-- p = s(b h) to the smoothed label (1 - eps, eps):
--   s(b h) [ls(b h) - log(1 - eps)] + s(-b h) [ls(-b h) - log eps].
-- Ji et al., "Towards Efficient Exact Optimization of Language Model
-- Alignment", arXiv:2402.00856. Options: label_smoothing = 1e-3 (in (0, 1);
-- the value TRL substitutes for 0, where the loss is infinite).
define("exo_pair", {
   needs = REF,
   options = { label_smoothing = { default = 1e-3, rule = number_in(0, true, 1, true) } },
   body = function(a, o)
      local rc, rr = log_ratios(a)
      local z, eps = (rc - rr) * a.beta, o.label_smoothing
      local per = z:sigmoid() * (ls(z) - math.log(1 - eps))
                + (-z):sigmoid() * (ls(-z) - math.log(eps))
      return per:mean(), ref_metrics(a)
   end,
})

-- nca_pair (NCA, pairwise): -ls(b r_c) - 1/2 ls(-b r_c) - 1/2 ls(-b r_r).
-- Chen et al., "Noise Contrastive Alignment of Language Models with Explicit
-- Rewards", arXiv:2402.05369.
define("nca_pair", {
   needs = REF,
   body = function(a)
      local rc, rr = log_ratios(a)
      local zc, zr = rc * a.beta, rr * a.beta
      local per = -ls(zc) - ls(-zc) * 0.5 - ls(-zr) * 0.5
      return per:mean(), ref_metrics(a)
   end,
})

-- bco_pair (BCO, pairwise): -ls(b r_c - delta) - ls(-(b r_r - delta)).
-- Jung et al., "Binary Classifier Optimization for Large Language Model
-- Alignment", arXiv:2404.04656.
-- delta, the reward shift: TRL >= 0.29 uses 0; classic TRL and
-- LLaMA-Factory use the running mean of the batch-mean reward
-- mean(b r_c, b r_r), updated with this batch before the loss is computed.
-- Options:
--   delta = nil   a fixed shift (0 when neither delta nor state is given)
--   state = nil   a table the caller owns, {} to start; each call adds this
--                 batch's mean reward to state.mean (a plain running mean over
--                 calls, state.count of them) and uses it as delta; keep it
--                 across steps (and in checkpoints) for TRL's running delta
-- Extra metric: delta.
define("bco_pair", {
   needs = REF,
   options = { delta = { rule = finite }, state = { rule = running_state } },
   check = function(o)
      if o.delta ~= nil and o.state ~= nil then
         return "options 'delta' and 'state' exclude each other (a fixed shift, or a running one)"
      end
   end,
   body = function(a, o)
      local rc, rr = log_ratios(a)
      local m = ref_metrics(a)
      local delta = o.delta or 0
      if o.state then
         local st = o.state
         local batch = (m["rewards/chosen"] + m["rewards/rejected"]) / 2
         st.count = (st.count or 0) + 1
         st.mean = (st.mean or 0) + (batch - (st.mean or 0)) / st.count
         delta = st.mean
      end
      local per = -ls(rc * a.beta - delta) - ls(-(rr * a.beta - delta))
      m.delta = delta
      return per:mean(), m
   end,
})

-- sppo_hard (SPPO with hard labels): (r_c - 1/(2b))^2 + (r_r + 1/(2b))^2.
-- Wu et al., "Self-Play Preference Optimization for Language Model
-- Alignment", arXiv:2405.00675.
define("sppo_hard", {
   needs = REF,
   body = function(a)
      local rc, rr = log_ratios(a)
      local half = 1 / (2 * a.beta)
      return ((rc - half) ^ 2 + (rr + half) ^ 2):mean(), ref_metrics(a)
   end,
})

-- aot (AOT, paired): d = sort(pi_c - pi_r) - sort(ref_c - ref_r), both sorted
-- ascending over the batch; -(1 - eps) ls(b d) - eps ls(-b d). Couples the
-- pairs of a batch (it wants B > 1).
-- Melnyk et al., "Distributional Preference Alignment of LLMs via Optimal
-- Transport", arXiv:2406.05882. Options: label_smoothing = 0 (in [0, 0.5)).
define("aot", {
   needs = REF,
   options = { label_smoothing = { default = 0, rule = smoothing } },
   body = function(a, o)
      local d = sorted(a.pi_c - a.pi_r) - sorted(a.ref_c - a.ref_r)
      return smoothed_ls(d * a.beta, o.label_smoothing):mean(), ref_metrics(a)
   end,
})

-- aot_unpaired (AOT, unpaired; classic TRL's aot_pair): d = sort(r_c) -
-- sort(r_r), then as aot. Same paper. Options: label_smoothing = 0.
define("aot_unpaired", {
   needs = REF,
   options = { label_smoothing = { default = 0, rule = smoothing } },
   body = function(a, o)
      local rc, rr = log_ratios(a)
      local d = sorted(rc) - sorted(rr)
      return smoothed_ls(d * a.beta, o.label_smoothing):mean(), ref_metrics(a)
   end,
})

-- apo_zero (APO-zero): (1 - s(b r_c)) + s(b r_r): chosen up, rejected down.
-- D'Oosterlinck et al., "Anchored Preference Optimization and Contrastive
-- Revisions", arXiv:2408.06266.
define("apo_zero", {
   needs = REF,
   body = function(a)
      local rc, rr = log_ratios(a)
      return (1 - (rc * a.beta):sigmoid() + (rr * a.beta):sigmoid()):mean(), ref_metrics(a)
   end,
})

-- apo_down (APO-down): s(b r_c) + (1 - s(b h)): both down, the margin up
-- (its gradient may lower the chosen log-prob, by design). Same paper.
define("apo_down", {
   needs = REF,
   body = function(a)
      local rc, rr = log_ratios(a)
      return ((rc * a.beta):sigmoid() + 1 - ((rc - rr) * a.beta):sigmoid()):mean(), ref_metrics(a)
   end,
})

-- discopop (DiscoPOP, log-ratio modulated loss): with l = b h and
-- m = s(l / tau): (1 - m) (-ls(l)) + m exp(-l).
-- Lu et al., "Discovering Preference Optimization Algorithms with and for
-- Large Language Models", arXiv:2406.08414, eq. 5. Options: tau = 0.05.
-- The published loss is not convex: for tau below about 0.1 its slope at
-- h = 0 is positive, so from policy == reference it first lowers the margin,
-- towards a local minimum at a small negative h.
define("discopop", {
   needs = REF,
   options = { tau = { default = 0.05, rule = positive } },
   body = function(a, o)
      local rc, rr = log_ratios(a)
      local l = (rc - rr) * a.beta
      local m = (l / o.tau):sigmoid()
      return ((1 - m) * -ls(l) + m * (-l):exp()):mean(), ref_metrics(a)
   end,
})

-- sigmoid_norm (DPO with length normalization, TRL's "DPO w/ LN" as in
-- Tulu 3): -ls(b (r_c/n_c - r_r/n_r)).
-- Lambert et al., "Tulu 3: Pushing Frontiers in Open Language Model
-- Post-Training", arXiv:2411.15124.
define("sigmoid_norm", {
   needs = REF_N,
   body = function(a)
      local rc, rr = log_ratios(a)
      local z = (rc / count(a.n_c) - rr / count(a.n_r)) * a.beta
      return (-ls(z)):mean(), ref_metrics(a)
   end,
})

-- rpo (RPO, DPO + NLL): mean(-ls(b h)) + alpha NLL.
-- Pang et al., "Iterative Reasoning Preference Optimization",
-- arXiv:2404.19733. Options: alpha = 1 (the paper's value).
-- Extra metric: nll_loss.
define("rpo", {
   needs = { pi_c = true, pi_r = true, ref_c = true, ref_r = true, n_c = true },
   options = { alpha = { default = 1, rule = nonneg } },
   body = function(a, o)
      local rc, rr = log_ratios(a)
      local n = nll(a)
      local m = ref_metrics(a)
      m.nll_loss = n:item()
      return (-ls((rc - rr) * a.beta)):mean() + n * o.alpha, m
   end,
})

-- simpo (SimPO, no reference): with the averages l_c = pi_c/n_c and
-- l_r = pi_r/n_r and z = b (l_c - l_r) - gamma:
--   -(1 - eps) ls(z) - eps ls(-z)  [+ alpha NLL: CPO-SimPO].
-- Meng et al., "SimPO: Simple Preference Optimization with a Reference-Free
-- Reward", arXiv:2405.14734 (paper: beta 2.5, gamma 1.375). Options: gamma =
-- 0.5, label_smoothing = 0, alpha = 0 (TRL CPOConfig's defaults, with beta
-- 0.1). Rewards and logps/* are the averages. Extra metric with alpha > 0:
-- nll_loss.
define("simpo", {
   needs = { pi_c = true, pi_r = true, n_c = true, n_r = true },
   options = { gamma = { default = 0.5, rule = finite },
               label_smoothing = { default = 0, rule = smoothing },
               alpha = { default = 0, rule = nonneg } },
   body = function(a, o)
      local lc, lr = a.pi_c / count(a.n_c), a.pi_r / count(a.n_r)
      local z = (lc - lr) * a.beta - o.gamma
      local loss = smoothed_ls(z, o.label_smoothing):mean()
      local m = policy_metrics(a, lc, lr)
      if o.alpha > 0 then
         local n = nll(a)
         m.nll_loss = n:item()
         loss = loss + n * o.alpha
      end
      return loss, m
   end,
})

-- cpo (CPO, no reference): mean(-(1 - eps) ls(b (pi_c - pi_r)) - eps
-- ls(-b (pi_c - pi_r))) + alpha NLL, on summed log-probs.
-- Xu et al., "Contrastive Preference Optimization: Pushing the Boundaries of
-- LLM Performance in Machine Translation", arXiv:2401.08417. Options:
-- alpha = 1 (TRL's cpo_alpha), label_smoothing = 0. Rewards are b pi.
-- Extra metric: nll_loss.
define("cpo", {
   needs = { pi_c = true, pi_r = true, n_c = true },
   options = { alpha = { default = 1, rule = nonneg },
               label_smoothing = { default = 0, rule = smoothing } },
   body = function(a, o)
      local n = nll(a)
      local m = policy_metrics(a, a.pi_c, a.pi_r)
      m.nll_loss = n:item()
      local loss = smoothed_ls((a.pi_c - a.pi_r) * a.beta, o.label_smoothing):mean()
      return loss + n * o.alpha, m
   end,
})

-- log(1 - exp(x)) for x < 0
local function log1mexp(x)
   return (1 - x:exp()):clamp(1e-30):log()
end

-- orpo (ORPO, no reference): with the averages l_c = pi_c/n_c, l_r = pi_r/n_r,
--   log_odds = (l_c - l_r) - (log(1 - e^l_c) - log(1 - e^l_r))
--   loss = NLL - b mean(ls(log_odds))        (b is the paper's lambda)
-- Hong et al., "ORPO: Monolithic Preference Optimization without Reference
-- Model", arXiv:2403.07691. The NLL is over the chosen completion tokens (as
-- LLaMA-Factory; TRL's covers the prompt tokens too, which these arguments do
-- not carry). Rewards and logps/* are b l and l. Extra metrics: nll_loss,
-- log_odds_ratio (mean ls(log_odds)), log_odds_chosen (mean log_odds).
define("orpo", {
   needs = { pi_c = true, pi_r = true, n_c = true, n_r = true },
   body = function(a)
      local lc, lr = a.pi_c / count(a.n_c), a.pi_r / count(a.n_r)
      local log_odds = (lc - lr) - (log1mexp(lc) - log1mexp(lr))
      local ratio = ls(log_odds)
      local n = nll(a)
      local m = policy_metrics(a, lc, lr)
      m.nll_loss = n:item()
      m.log_odds_ratio = mean_of(values(ratio))
      m.log_odds_chosen = mean_of(values(log_odds))
      return n - ratio:mean() * a.beta, m
   end,
})

-- sft: NLL, the token-mean negative log-likelihood of the chosen completions
-- over the batch, -(sum pi_c) / (sum n_c) (TRL's "sft" loss_type, to be
-- summed with a preference loss by weighted). Needs only pi_c and n_c.
-- Metrics: nll_loss, logps/chosen (and logps/rejected when pi_r is given).
define("sft", {
   needs = { pi_c = true, n_c = true },
   body = function(a)
      local n = nll(a)
      local m = { nll_loss = n:item(), ["logps/chosen"] = mean_of(values(a.pi_c)) }
      if a.pi_r then m["logps/rejected"] = mean_of(values(a.pi_r)) end
      return n, m
   end,
})

-- ---- combinators ----------------------------------------------------------------------

-- dpo.losses.list() -> the names of the built-in losses, in a fixed order.
function losses.list()
   local r = {}
   for i, n in ipairs(ORDER) do r[i] = n end
   return r
end

-- dpo.losses.reference_free(loss_fn) -> a loss function that calls loss_fn
-- with ref_c = ref_r = zeros (a uniform reference, so h = pi_c - pi_r, as
-- eric-mitchell's and classic TRL's reference_free); rewards become b pi.
-- ARGS    loss_fn  any loss function
-- RETURNS function(args) -> loss, metrics
function losses.reference_free(loss_fn)
   if type(loss_fn) ~= "function" then
      error(("dpo.losses.reference_free: expected a loss function (got %s)"):format(type(loss_fn)),
            2)
   end
   return function(args)
      if type(args) ~= "table" then
         error(("dpo.losses.reference_free: expected a table of arguments (got %s)")
               :format(type(args)), 2)
      end
      local a = merge({}, args)
      local like = a.pi_c or a.pi_r
      if not is_tensor(like) then
         error("dpo.losses.reference_free: 'pi_c' must be a 1-D float32 tensor [B]", 2)
      end
      local zeros = core.zeros(like:size(1))
      a.ref_c, a.ref_r = zeros, zeros
      return loss_fn(a)
   end
end

local function name_of(fn)
   for _, n in ipairs(ORDER) do
      if losses[n] == fn then return n end
   end
end

-- dpo.losses.weighted{ {fn = loss_fn, weight = 1, name = nil, <options>}, ... }
--   -> a loss function summing weight * loss over the entries (TRL's list of
--   loss types with loss_weights; MPO is sigmoid .8, bco_pair .2, sft 1).
-- Each entry's other fields are options passed to its fn only (for example
-- {fn = dpo.losses.cdpo, label_smoothing = 0.2}); the arguments of a call go
-- to every fn. The metrics are merged: for a name several entries log (the
-- rewards), the first entry's value is kept; each entry's own loss value is
-- added as loss/<name>, name being the entry's name, the built-in loss's
-- name, or "loss<i>" for the i-th entry, with "_<i>" appended to a repeat.
-- ARGS    list  non-empty list of entries; weight a finite number (default 1)
-- RETURNS function(args) -> loss, metrics
function losses.weighted(list)
   local function bad(msg, ...) error(("dpo.losses.weighted: " .. msg):format(...), 3) end
   if type(list) ~= "table" or #list == 0 then
      bad("expected a non-empty list of {fn = loss_fn, weight = number} (got %s)",
          type(list) == "table" and "an empty table" or type(list))
   end
   local entries, used = {}, {}
   for i, e in ipairs(list) do
      if type(e) ~= "table" then
         bad("entry %d must be a table {fn =, weight =} (got %s)", i, type(e))
      end
      if type(e.fn) ~= "function" then
         bad("entry %d: 'fn' must be a loss function (got %s)", i, type(e.fn))
      end
      local w = e.weight
      if w == nil then w = 1 end
      if finite(w) then bad("entry %d: 'weight' must be a finite number (got %s)", i, show(w)) end
      if e.name ~= nil and type(e.name) ~= "string" then
         bad("entry %d: 'name' must be a string (got %s)", i, type(e.name))
      end
      local name = e.name or name_of(e.fn) or ("loss" .. i)
      if used[name] then name = name .. "_" .. i end
      used[name] = true
      local opts = {}
      for k, v in pairs(e) do
         if k ~= "fn" and k ~= "weight" and k ~= "name" then opts[k] = v end
      end
      entries[i] = { fn = e.fn, weight = w, name = name, opts = opts }
   end
   return function(args)
      if type(args) ~= "table" then
         error(("dpo.losses.weighted: expected a table of arguments (got %s)"):format(type(args)),
               2)
      end
      local total, metrics = nil, {}
      for _, e in ipairs(entries) do
         local a = merge(merge({}, args), e.opts)
         local l, m = e.fn(a)
         if not is_tensor(l) then
            error(("dpo.losses.weighted: loss '%s' returned %s, not a tensor"):format(e.name,
                                                                                     type(l)), 2)
         end
         local term = e.weight == 1 and l or l * e.weight
         total = total and total + term or term
         if type(m) == "table" then
            for k, v in pairs(m) do
               if metrics[k] == nil then metrics[k] = v end
            end
         end
         metrics["loss/" .. e.name] = l:item()
      end
      return total, metrics
   end
end

return losses
