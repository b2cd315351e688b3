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
--         ref_logps = nil      function(pairs, b) -> ref_c, ref_r (float32 [B]):
--                              precomputed reference log-probs (b: the batch,
--                              for a reference computed from b.ids, b.mask)
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
--         shard = false      under mpirun (dpo.dist): every rank calls this
--                            with the same arguments, scores every size-th
--                            batch (rank r: batches r+1, r+1+size, ...), and
--                            the per-pair figures are gathered and summed in
--                            the order of the batches: every rank returns the
--                            global metrics, the same numbers one process
--                            finds. A collective: all ranks or none.
--
--   dpo.eval.nll(model, data, opts) -> {nll, logps/chosen, logps/rejected,
--       logps/accuracies, pairs}: the same without a reference (for SFT);
--       opts: batch_size, max_pairs, shard
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
local check = require "dpo.check"
local dist = require "dpo.dist"

local eval = {}

local format = string.format

-- resolve_loss(loss [, who]) -> the loss function of a name (or the function
-- itself); who prefixes the error ("dpo.eval" by default).
local function resolve_loss(loss, who)
   if loss == nil then return nil end
   if type(loss) == "function" then return loss end
   local losses = require "dpo.losses"
   local fn = type(loss) == "string" and losses[loss]
   if type(fn) ~= "function" or loss == "list" or loss == "weighted" or loss == "reference_free" then
      error(format("%s: unknown loss '%s' (losses: %s)", type(who) == "string" and who or "dpo.eval",
                   tostring(loss), table.concat(losses.list(), ", ")), 3)
   end
   return fn
end
eval.resolve_loss = resolve_loss

-- ---- argument checks ---------------------------------------------------------------

local THIS = debug.getinfo(1, "S").source

-- Raise "dpo.eval.<fname>: msg" at the first caller outside this file.
local function bad(fname, msg, ...)
   check.raise(THIS, format("dpo.eval.%s: " .. msg, fname, ...))
end

-- m must be a live model (anything with logps, as dpo.train takes).
local function check_model(m, what, fname)
   local t = type(m)
   if (t ~= "userdata" and t ~= "table") or not pcall(function() assert(type(m.logps) == "function") end) then
      bad(fname, "%s must be a model (dpo.model.new or dpo.model.load), got %s", what, t)
   end
   if not pcall(m.is_training, m) then bad(fname, "%s has been freed", what) end
end

-- opts must be nil or a table whose keys are among `known`; returns it (or {}).
local function check_opts(opts, known, fname)
   if opts == nil then return {} end
   if type(opts) ~= "table" then bad(fname, "options must be a table, got %s", type(opts)) end
   for k in pairs(opts) do
      if not known[k] then
         local names = {}
         for n in pairs(known) do names[#names + 1] = n end
         table.sort(names)
         bad(fname, "unknown option '%s' (options: %s)", tostring(k), table.concat(names, ", "))
      end
   end
   return opts
end

-- opts[key] must be nil or an integer >= least.
local function check_int(opts, key, least, fname)
   local v = opts[key]
   if v ~= nil and (math.type(v) ~= "integer" or v < least) then
      bad(fname, "%s must be an integer >= %d, got %s", key, least, tostring(v))
   end
end

-- opts[key] must be nil or a finite number >= least (> least when strict).
local function check_num(opts, key, least, strict, fname)
   local v = opts[key]
   if v ~= nil and (type(v) ~= "number" or not (v < math.huge) or v < least or (strict and v <= least)) then
      bad(fname, "%s must be a finite number %s %g, got %s", key, strict and ">" or ">=", least, tostring(v))
   end
end

local function check_data(data, fname)
   if type(data) ~= "table" or type(data.batches) ~= "function" or not data:is_tokenized() then
      error(format("dpo.eval.%s: data must be a tokenized dataset (ds:tokenize(tok, opts))", fname), 3)
   end
   if #data == 0 then error(format("dpo.eval.%s: data holds no pairs", fname), 3) end
end

local BATCH_OPTS = { batch_size = true, max_pairs = true, shard = true }

local function check_batch_opts(opts, fname)
   check_int(opts, "batch_size", 1, fname)
   check_int(opts, "max_pairs", 1, fname)
   if opts.shard ~= nil and type(opts.shard) ~= "boolean" then
      bad(fname, "shard must be a boolean, got %s", type(opts.shard))
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

-- One batch's figures: {B, pol = {c, r, n_c, n_r of pair 1, of pair 2, ...}
-- (the policy's summed log-probs and token counts), m = {metric = batch mean}}.
local function batch_record(lp, cnt, B, m)
   local v, n = lp:totable(), cnt:totable()
   local pol = {}
   for i = 1, B do
      pol[#pol + 1], pol[#pol + 2], pol[#pol + 3], pol[#pol + 4] = v[i], v[B + i], n[i], n[B + i]
   end
   return { B = B, pol = pol, m = m or {} }
end

-- Add a batch's figures to acc (pair by pair, in order).
local function apply(acc, rec)
   local B, pol = rec.B, rec.pol
   for k, v in pairs(rec.m) do acc.sums[k] = (acc.sums[k] or 0) + v * B end
   for i = 0, B - 1 do
      local c, r, n_c, n_r = pol[4 * i + 1], pol[4 * i + 2], pol[4 * i + 3], pol[4 * i + 4]
      local nc, nr = math.max(n_c, 1), math.max(n_r, 1)
      acc.sum_c = acc.sum_c + c
      acc.sum_r = acc.sum_r + r
      acc.tok_c = acc.tok_c + n_c
      if c / nc > r / nr then acc.lp_wins = acc.lp_wins + 1 end
   end
   acc.pairs = acc.pairs + B
end

-- A batch's figures as bytes (its index first), and back.
local function encode(index, rec)
   local parts = { string.pack("<i4i4", index, rec.B) }
   for _, x in ipairs(rec.pol) do parts[#parts + 1] = string.pack("<d", x) end
   local keys = {}
   for k in pairs(rec.m) do keys[#keys + 1] = k end
   table.sort(keys)
   parts[#parts + 1] = string.pack("<i4", #keys)
   for _, k in ipairs(keys) do parts[#parts + 1] = string.pack("<s4d", k, rec.m[k]) end
   return table.concat(parts)
end

local function decode_all(bytes, into)
   local at = 1
   while at <= #bytes do
      local index, B
      index, B, at = string.unpack("<i4i4", bytes, at)
      local pol = {}
      for j = 1, 4 * B do pol[j], at = string.unpack("<d", bytes, at) end
      local nk
      nk, at = string.unpack("<i4", bytes, at)
      local m = {}
      for _ = 1, nk do
         local k, v
         k, v, at = string.unpack("<s4d", bytes, at)
         m[k] = v
      end
      into[index] = { B = B, pol = pol, m = m }
   end
end

-- Score the batches of data with score(b) -> a batch record, into acc: all of
-- them here, or (sharded in a job) this rank's share, then every rank's
-- gathered and added in the order of the batches.
local function score_batches(acc, data, opts, score)
   local size = opts.shard and dist.size() or 1
   if size == 1 then
      for b in eval_batches(data, opts) do apply(acc, score(b)) end
      return
   end
   local rank, mine, index = dist.rank(), {}, 0
   for b in eval_batches(data, opts) do
      if index % size == rank then mine[#mine + 1] = encode(index + 1, score(b)) end
      index = index + 1
   end
   local recs = {}
   for _, bytes in ipairs(dist.allgather(table.concat(mine))) do decode_all(bytes, recs) end
   for i = 1, index do
      apply(acc, recs[i] or error(format("dpo.eval: batch %d of %d came back from no rank", i, index), 0))
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

local PREF_OPTS = { batch_size = true, max_pairs = true, beta = true, loss = true,
                    loss_options = true, ref_logps = true, shard = true }

function eval.preferences(policy, ref, data, opts)
   local fname = "preferences"
   check_model(policy, "policy", fname)
   if ref ~= nil and ref ~= false then check_model(ref, "ref", fname) end
   check_data(data, fname)
   opts = check_opts(opts, PREF_OPTS, fname)
   check_batch_opts(opts, fname)
   check_num(opts, "beta", 0, true, fname)
   if opts.loss ~= nil and type(opts.loss) ~= "string" and type(opts.loss) ~= "function" then
      bad(fname, "loss must be a dpo.losses name or a function, got %s", type(opts.loss))
   end
   if opts.loss_options ~= nil and type(opts.loss_options) ~= "table" then
      bad(fname, "loss_options must be a table, got %s", type(opts.loss_options))
   end
   if opts.ref_logps ~= nil and type(opts.ref_logps) ~= "function" then
      bad(fname, "ref_logps must be a function(pairs) -> ref_c, ref_r, got %s", type(opts.ref_logps))
   end
   local beta = opts.beta or 0.1
   local loss_fn = resolve_loss(opts.loss, "dpo.eval.preferences") or require("dpo.losses").sigmoid
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
      score_batches(acc, data, opts, function(b)
         local B = b.size
         local lp, cnt = policy:logps(b.ids, b.mask)
         local rc, rr
         if ref_logps then
            rc, rr = ref_logps(b.pairs, b)
            if not (core.is_tensor(rc) and core.is_tensor(rr)) then
               error(format("dpo.eval.preferences: ref_logps returned %s, %s; expected two " ..
                            "float32 tensors [%d]", type(rc), type(rr), B), 0)
            end
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
         if not core.is_tensor(loss) or type(m) ~= "table" then
            error(format("dpo.eval.preferences: the loss returned %s, %s; expected a tensor " ..
                         "and a table of metrics", type(loss), type(m)), 0)
         end
         m.loss = loss:item()
         local means = {}
         for k, v in pairs(m) do
            if type(v) == "number" then means[k] = v end
         end
         return batch_record(lp, cnt, B, means)
      end)
   end)
   local out = {}
   for k, v in pairs(acc.sums) do out[k] = v / math.max(acc.pairs, 1) end
   return finish(acc, out)
end

function eval.nll(model, data, opts)
   check_model(model, "model", "nll")
   check_data(data, "nll")
   opts = check_opts(opts, BATCH_OPTS, "nll")
   check_batch_opts(opts, "nll")
   local acc = new_acc()
   in_eval_mode({ model }, function()
      score_batches(acc, data, opts, function(b)
         local lp, cnt = model:logps(b.ids, b.mask)
         return batch_record(lp, cnt, b.size)
      end)
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

local SAMPLE_OPTS = { ref = true, max_new_tokens = true, temperature = true, top_k = true,
                      top_p = true, seed = true, max_prompt_tokens = true }

function eval.samples(model, tok, prompts, opts)
   local fname = "samples"
   check_model(model, "model", fname)
   local tt = type(tok)
   if (tt ~= "userdata" and tt ~= "table")
      or not pcall(function() assert(type(tok.encode) == "function" and type(tok.decode) == "function") end) then
      bad(fname, "tok must be a tokenizer (encode and decode), got %s", tt)
   end
   if not pcall(tok.encode, tok, "") then bad(fname, "tok has been freed") end
   if type(prompts) ~= "table" then
      error("dpo.eval.samples: prompts must be a list of strings or pairs", 2)
   end
   opts = check_opts(opts, SAMPLE_OPTS, fname)
   if opts.ref ~= nil then check_model(opts.ref, "ref", fname) end
   check_int(opts, "max_new_tokens", 0, fname)
   check_int(opts, "top_k", 0, fname)
   if (opts.top_k or 0) > 2147483647 then bad(fname, "top_k must be below 2^31, got %d", opts.top_k) end
   check_int(opts, "max_prompt_tokens", 1, fname)
   check_num(opts, "temperature", 0, false, fname)
   if opts.top_p ~= nil and (type(opts.top_p) ~= "number" or not (opts.top_p > 0 and opts.top_p <= 1)) then
      bad(fname, "top_p must be a number in (0, 1], got %s", tostring(opts.top_p))
   end
   if opts.seed ~= nil and math.type(opts.seed) ~= "integer" then
      bad(fname, "seed must be an integer, got %s", tostring(opts.seed))
   end
   local ctx = model:config().n_ctx
   if (opts.max_new_tokens or 64) >= ctx then
      bad(fname, "max_new_tokens (%d) leaves no room for a prompt in the model's n_ctx (%d)",
          opts.max_new_tokens or 64, ctx)
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
         -- a prompt a chat template rendered holds its special tokens as such
         local chat = type(p) == "table" and p.chat == true
         local ids = tok:encode(text, { special = chat, add_special_tokens = false }):totable()
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
   if type(prompt) ~= "string" then
      error("dpo.eval.last_turn: prompt must be a string, got " .. type(prompt), 2)
   end
   local h = prompt:match(".*\n\nHuman:%s*(.-)\n\nAssistant:%s*$")
   return h or prompt
end
eval.last_turn = last_turn

function eval.format_samples(list, opts)
   local fname = "format_samples"
   if type(list) ~= "table" then bad(fname, "list must be a list of samples, got %s", type(list)) end
   for i, s in ipairs(list) do
      if type(s) ~= "table" or type(s.prompt) ~= "string" or type(s.policy) ~= "string" then
         bad(fname, "sample %d must be a table with strings prompt and policy", i)
      end
   end
   opts = check_opts(opts, { policy_name = true, ref_name = true }, fname)
   for _, k in ipairs { "policy_name", "ref_name" } do
      if opts[k] ~= nil and type(opts[k]) ~= "string" then
         bad(fname, "%s must be a string, got %s", k, type(opts[k]))
      end
   end
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
