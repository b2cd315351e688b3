-- dpo.eval: how a policy does on held-out pairs, and what it says.
--
--   dpo.eval.preferences(policy, ref, data, opts) -> metrics
--       policy, ref: models (ref may be nil when opts.ref_logps holds the
--       reference log-probs, or false for no reference: ref log-probs 0).
--       data: a tokenized dataset (ds:tokenize). opts:
--         batch_size = 32      pairs per forward
--         max_pairs = nil      only the first max_pairs pairs
--         beta = 0.1           the reward scale
--         loss = "sigmoid"     a loss function or a dpo.losses name: its value
--                              is `loss`, and its metrics (the rewards, and the
--                              loss's extras) are averaged over the pairs
--         loss_options = {}    the loss's own options
--         ref_logps = nil      function(pairs) -> ref_c, ref_r (float32 [B]):
--                              precomputed reference log-probs
--       metrics, means over the pairs with TRL's definitions (rewards are
--       beta * (policy - reference) summed log-probs, accuracy counts a tie as
--       wrong): rewards/chosen, rewards/rejected, rewards/margins,
--       rewards/accuracies, logps/chosen, logps/rejected; and
--         logps/accuracies   the fraction of pairs whose chosen response has the
--                            higher per-token log-prob under the policy (no
--                            reference involved)
--         nll                token-mean negative log-likelihood of the chosen
--                            responses (the SFT loss)
--         pairs              how many pairs were scored
--       Both models are evaluated in eval mode (no dropout) under no_grad;
--       the policy's training mode is restored afterwards.
--
--   dpo.eval.nll(model, data, opts) -> {nll, logps/chosen, logps/rejected,
--       logps/accuracies, pairs}: the same without a reference (for SFT)
--
--   dpo.eval.samples(model, tok, prompts, opts) -> list of
--       {prompt, policy, reference, chosen, rejected}
--       prompts: a list of strings or of pairs ({prompt, chosen, rejected});
--       opts: ref (a second model, generated side by side), max_new_tokens =
--       64, temperature = 0 (greedy), top_k, top_p, seed = 0, max_prompt_tokens
--       (default: what fits the model's context; the prompt keeps its end).
--       Generation stops at the tokenizer's eos.
--   dpo.eval.format_samples(list [, {policy_name, ref_name}]) -> text for a terminal
local core = require "dpo.core"

local eval = {}

local format = string.format

local function resolve_loss(loss)
   if loss == nil then return nil end
   if type(loss) == "function" then return loss end
   local losses = require "dpo.losses"
   local fn = losses[loss]
   if type(fn) ~= "function" or loss == "list" or loss == "weighted" or loss == "reference_free" then
      error(format("dpo.eval: unknown loss '%s' (losses: %s)", tostring(loss),
                   table.concat(losses.list(), ", ")), 3)
   end
   return fn
end
eval.resolve_loss = resolve_loss

local function check_data(data, fname)
   if type(data) ~= "table" or type(data.batches) ~= "function" or not data:is_tokenized() then
      error(format("dpo.eval.%s: data must be a tokenized dataset (ds:tokenize(tok, opts))", fname), 3)
   end
end

-- Run fn with model in eval mode, then restore its mode.
local function in_eval_mode(models, fn)
   local modes = {}
   for i, m in ipairs(models) do
      modes[i] = m:is_training()
      m:eval()
   end
   local ok, a, b = pcall(core.no_grad, fn)
   for i, m in ipairs(models) do
      if modes[i] then m:train(true) end
   end
   if not ok then error(a, 0) end
   return a, b
end

-- The batches of data (the first max_pairs pairs, in order).
local function eval_batches(data, opts)
   local bs = opts.batch_size or 32
   local limit = opts.max_pairs
   local src = data
   if limit and limit < #data then src = data:take(limit) end
   return src:batches(bs)
end

-- Per-token and summed stats of one batch's chosen/rejected policy logps.
local function policy_stats(acc, lp, cnt, B)
   local v, n = lp:totable(), cnt:totable()
   for i = 1, B do
      local c, r = v[i], v[B + i]
      local nc, nr = math.max(n[i], 1), math.max(n[B + i], 1)
      acc.sum_c = acc.sum_c + c
      acc.sum_r = acc.sum_r + r
      acc.tok_c = acc.tok_c + n[i]
      if c / nc > r / nr then acc.lp_wins = acc.lp_wins + 1 end
   end
end

local function new_acc()
   return { pairs = 0, sum_c = 0, sum_r = 0, tok_c = 0, lp_wins = 0, sums = {} }
end

local function finish(acc, out)
   local n = math.max(acc.pairs, 1)
   out = out or {}
   out["logps/chosen"] = acc.sum_c / n
   out["logps/rejected"] = acc.sum_r / n
   out["logps/accuracies"] = acc.lp_wins / n
   out.nll = acc.tok_c > 0 and -acc.sum_c / acc.tok_c or 0
   out.pairs = acc.pairs
   return out
end

function eval.preferences(policy, ref, data, opts)
   opts = opts or {}
   check_data(data, "preferences")
   local beta = opts.beta or 0.1
   local loss_fn = resolve_loss(opts.loss) or require("dpo.losses").sigmoid
   local loss_opts = opts.loss_options or {}
   local ref_logps = opts.ref_logps
   if ref == nil and ref_logps == nil then
      error("dpo.eval.preferences: no reference: pass a model, false (no reference), or " ..
            "opts.ref_logps", 2)
   end
   local models = { policy }
   if ref then models[2] = ref end
   local acc = new_acc()
   in_eval_mode(models, function()
      for b in eval_batches(data, opts) do
         local B = b.size
         local lp, cnt = policy:logps(b.ids, b.mask)
         local rc, rr
         if ref_logps then
            rc, rr = ref_logps(b.pairs)
         elseif ref then
            local rl = ref:logps(b.ids, b.mask)
            rc, rr = rl:narrow(1, 1, B), rl:narrow(1, B + 1, B)
         else
            rc, rr = core.zeros(B), core.zeros(B)
         end
         local args = { pi_c = lp:narrow(1, 1, B), pi_r = lp:narrow(1, B + 1, B), ref_c = rc,
                        ref_r = rr, n_c = cnt:narrow(1, 1, B), n_r = cnt:narrow(1, B + 1, B),
                        beta = beta }
         for k, v in pairs(loss_opts) do args[k] = v end
         local loss, m = loss_fn(args)
         m.loss = loss:item()
         for k, v in pairs(m) do
            if type(v) == "number" then acc.sums[k] = (acc.sums[k] or 0) + v * B end
         end
         policy_stats(acc, lp, cnt, B)
         acc.pairs = acc.pairs + B
      end
   end)
   local out = {}
   for k, v in pairs(acc.sums) do out[k] = v / math.max(acc.pairs, 1) end
   return finish(acc, out)
end

function eval.nll(model, data, opts)
   opts = opts or {}
   check_data(data, "nll")
   local acc = new_acc()
   in_eval_mode({ model }, function()
      for b in eval_batches(data, opts) do
         local lp, cnt = model:logps(b.ids, b.mask)
         policy_stats(acc, lp, cnt, b.size)
         acc.pairs = acc.pairs + b.size
      end
   end)
   return finish(acc)
end

-- ---- samples ------------------------------------------------------------------------

local function generate(model, tok, ids, opts)
   local out = model:generate(ids, {
      max_new_tokens = opts.max_new_tokens or 64, temperature = opts.temperature or 0,
      top_k = opts.top_k, top_p = opts.top_p, seed = opts.seed or 0, stop_ids = tok.eos_id,
   })
   local list = out:totable()
   if tok.eos_id and list[#list] == tok.eos_id then list[#list] = nil end
   return tok:decode(list)
end

function eval.samples(model, tok, prompts, opts)
   opts = opts or {}
   if type(prompts) ~= "table" then
      error("dpo.eval.samples: prompts must be a list of strings or pairs", 2)
   end
   local ref = opts.ref
   local models = { model }
   if ref then models[2] = ref end
   local n_ctx = model:config().n_ctx
   local new = opts.max_new_tokens or 64
   local keep = opts.max_prompt_tokens or math.max(1, n_ctx - new)
   local out = {}
   in_eval_mode(models, function()
      for i, p in ipairs(prompts) do
         local text = type(p) == "table" and p.prompt or p
         if type(text) ~= "string" then
            error(format("dpo.eval.samples: prompt %d is a %s, not a string", i, type(text)), 0)
         end
         local ids = tok:encode(text, { special = false }):totable()
         if #ids > keep then ids = table.move(ids, #ids - keep + 1, #ids, 1, {}) end
         if #ids == 0 then ids = { tok.bos_id or tok.eos_id or 0 } end
         local s = { prompt = text, policy = generate(model, tok, ids, opts) }
         if ref then s.reference = generate(ref, tok, ids, opts) end
         if type(p) == "table" then s.chosen, s.rejected = p.chosen, p.rejected end
         out[i] = s
      end
   end)
   return out
end

-- The last human turn of an HH prompt (what a reader needs to judge a reply).
local function last_turn(prompt)
   local h = prompt:match(".*\n\nHuman:%s*(.-)\n\nAssistant:%s*$")
   return h or prompt
end
eval.last_turn = last_turn

function eval.format_samples(list, opts)
   opts = opts or {}
   local out = {}
   local policy_name, ref_name = opts.policy_name or "policy", opts.ref_name or "reference"
   for i, s in ipairs(list) do
      out[#out + 1] = format("[%d] Human: %s", i, last_turn(s.prompt))
      local w = math.max(#policy_name, s.reference and #ref_name or 0, s.chosen and 6 or 0)
      local function item(name, text)
         out[#out + 1] = format("    %-" .. w .. "s | %s", name, (text:gsub("^%s+", ""):gsub("\n", " ")))
      end
      if s.reference then item(ref_name, s.reference) end
      item(policy_name, s.policy)
      if s.chosen then item("chosen", s.chosen) end
   end
   return table.concat(out, "\n")
end

return eval
