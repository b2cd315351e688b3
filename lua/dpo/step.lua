-- dpo.step: the pieces of one optimizer step of a training phase (internal;
-- dpo.train's loop calls them in order). P is the phase table of dpo.train
-- (see there); these read its settings and keep its running state.
--
--   step.open_data(P)      the batch stream at the data position (P.epoch,
--                          P.in_epoch: from 1, 0 or a checkpoint's)
--   step.next_batch(P)     the next micro-batch; past an epoch's last one
--                          the next epoch begins, in a new seeded order
--   step.schedules(P, s) -> lr   the learning rate (and, for DPO, P.beta) of
--                          phase step s from their schedules, checked
--   step.forward_backward(P) -> sums, pairs, bad   grad_accum micro-batches:
--                          forward, loss, backward (the loss scaled by
--                          1 / grad_accum); sums: each metric summed over
--                          pairs; bad: why the step cannot be taken (a
--                          non-finite loss) or nil. In a job of N ranks
--                          (dpo.dist) a step reads N x grad_accum
--                          micro-batches, the same as one process with N
--                          times the accumulation: rank r computes the r-th
--                          run of grad_accum of them, then the gradients are
--                          averaged (one allreduce over the gradient arena)
--                          and sums, pairs and bad gathered, in rank order,
--                          so every rank ends the step with the same numbers
--   step.clip(P) -> norm, bad    the global gradient norm, clipped to
--                          max_grad_norm unless that is off; bad if the norm
--                          is not finite
--   step.skip(P, step, bad, lr)  a step not taken: the gradients dropped,
--                          counted, warned of; max_bad_steps in a row stop
--                          the phase with an error
--   step.update(P, sums, pairs, norm)  the optimizer's update; the step's
--                          metrics (means over its pairs) into P.last_metrics
--                          and the running sums of the log window
--   step.log(P, step, lr)  the log record of the window's steps (their
--                          means) to P.run, P.o.on_log; the window restarts
--
-- The numbers are those of the loop before it was cut in pieces: the same
-- operations in the same order.
local core = require "dpo.core"
local optim = require "dpo.optim"
local reference = require "dpo.reference"
local dist = require "dpo.dist"

local step = {}

local format = string.format

local function fail(fname, msg, ...)
   error(format("dpo.train.%s: " .. msg, fname, ...), 0)
end

local function finite(x)
   return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge
end

-- "NaN", "inf", "-inf" or the number
local function show_number(x)
   if x ~= x then return "NaN" end
   return tostring(x)
end

-- ---- batches --------------------------------------------------------------------------

local function batches(P, skip)
   return P.ds:batches(P.bs, { shuffle = P.shuffle, seed = P.seed, epoch = P.epoch, sft = P.sft, skip = skip })
end

function step.open_data(P)
   P.iter = batches(P, P.in_epoch)
end

function step.next_batch(P)
   local b = P.iter()
   if b == nil then
      P.epoch, P.in_epoch = P.epoch + 1, 0
      P.iter = batches(P, nil)
      b = P.iter()
   end
   P.in_epoch = P.in_epoch + 1
   return b
end

-- ---- the step ---------------------------------------------------------------------------

function step.schedules(P, s)
   local lr = P.lr_s(s, P.last_metrics)
   if not finite(lr) or lr < 0 then fail(P.fname, "the lr schedule gave %s at step %d", tostring(lr), s) end
   P.opt.lr = lr
   if not P.sft then
      P.beta = P.beta_s(s, P.last_metrics)
      if not finite(P.beta) or P.beta <= 0 then
         fail(P.fname, "the beta schedule gave %s at step %d", tostring(P.beta), s)
      end
   end
   return lr
end

-- One micro-batch: forward, loss, backward (scaled); the loss's value, its
-- metrics, the tokens read.
local function micro_step(P, b)
   local B = b.size
   -- the reference first: it may be the policy itself with its adapters off
   local ref_c, ref_r
   if not P.sft then ref_c, ref_r = reference.logps(P.ref, b, P.loss_name) end
   local lp, cnt = P.model:logps(b.ids, b.mask)
   local loss, m
   if P.sft then
      local n = cnt:sum():item()
      loss = -lp:sum() / math.max(n, 1)
      m = { ["logps/chosen"] = lp:detach():sum():item() / B }
   else
      local args = {
         pi_c = lp:narrow(1, 1, B), pi_r = lp:narrow(1, B + 1, B),
         n_c = cnt:narrow(1, 1, B), n_r = cnt:narrow(1, B + 1, B), beta = P.beta,
      }
      args.ref_c, args.ref_r = ref_c, ref_r
      for k, v in pairs(P.o.loss_options or {}) do args[k] = v end
      loss, m = P.loss_fn(args)
      if not core.is_tensor(loss) then
         fail(P.fname, "the loss returned a %s, not a tensor", type(loss))
      end
   end
   local value = loss:item()
   if finite(value) then
      if P.accum > 1 then loss = loss / P.accum end
      loss:backward()
   end
   local ntok = b.prompt_lengths:sum():item() + b.response_lengths:sum():item()
   return value, m or {}, ntok
end

local function local_forward_backward(P)
   local sums, pairs_seen = {}, 0
   for _ = 1, P.accum do
      local b = step.next_batch(P)
      local value, m, ntok = micro_step(P, b)
      P.num_tokens = P.num_tokens + ntok
      P.window_tokens = P.window_tokens + ntok
      if not finite(value) then
         return sums, pairs_seen, format("loss is %s", show_number(value))
      end
      sums.loss = (sums.loss or 0) + value * b.size
      for k, v in pairs(m) do
         if type(v) == "number" then sums[k] = (sums[k] or 0) + v * b.size end
      end
      pairs_seen = pairs_seen + b.size
   end
   return sums, pairs_seen, nil
end

-- A rank's part of a step as one string: bad, pairs, then name = value pairs.
local function pack_part(sums, pairs_seen, bad)
   local keys = {}
   for k in pairs(sums) do keys[#keys + 1] = k end
   table.sort(keys)
   local parts = { string.pack("<s4j", bad or "", pairs_seen) }
   for _, k in ipairs(keys) do parts[#parts + 1] = string.pack("<s4d", k, sums[k]) end
   return table.concat(parts)
end

local function unpack_part(s)
   local bad, pairs_seen, at = string.unpack("<s4j", s)
   local sums, order = {}, {}
   while at <= #s do
      local k, v
      k, v, at = string.unpack("<s4d", s, at)
      sums[k] = v
      order[#order + 1] = k
   end
   return sums, order, pairs_seen, bad ~= "" and bad or nil
end

-- The step of one rank in a job: every micro-batch of the global step is
-- read (so the data position and token counts stay those of one process),
-- this rank's run of them computed; then the gathering.
local function dist_forward_backward(P)
   local sums, pairs_seen, bad = {}, 0, nil
   local mine = P.rank * P.accum
   for j = 0, P.world * P.accum - 1 do
      local b = step.next_batch(P)
      if j >= mine and j < mine + P.accum and not bad then
         local value, m, ntok = micro_step(P, b)
         P.num_tokens = P.num_tokens + ntok
         P.window_tokens = P.window_tokens + ntok
         if not finite(value) then
            bad = format("loss is %s", show_number(value))
         else
            sums.loss = (sums.loss or 0) + value * b.size
            for k, v in pairs(m) do
               if type(v) == "number" then sums[k] = (sums[k] or 0) + v * b.size end
            end
            pairs_seen = pairs_seen + b.size
         end
      else
         local ntok = b.prompt_lengths:sum():item() + b.response_lengths:sum():item()
         P.num_tokens = P.num_tokens + ntok
         P.window_tokens = P.window_tokens + ntok
      end
   end
   -- every rank's sums, added in rank order (one process's order of micro-batches)
   local all = dist.allgather(pack_part(sums, pairs_seen, bad))
   local total, total_pairs, first_bad = {}, 0, nil
   for r = 1, #all do
      local s, order, n, why = unpack_part(all[r])
      if why and not first_bad then first_bad = format("%s (rank %d)", why, r - 1) end
      for _, k in ipairs(order) do total[k] = (total[k] or 0) + s[k] end
      total_pairs = total_pairs + n
   end
   if first_bad then return total, total_pairs, first_bad end
   dist.allreduce(P.grads, "mean")
   return total, total_pairs, nil
end

function step.forward_backward(P)
   if (P.world or 1) > 1 then return dist_forward_backward(P) end
   return local_forward_backward(P)
end

function step.clip(P)
   local norm
   if P.clip then
      norm = optim.clip_grad_norm(P.params, P.clip)
   else
      norm = optim.grad_norm(P.params)
   end
   if not finite(norm) then return norm, format("gradient norm is %s", show_number(norm)) end
   return norm, nil
end

function step.skip(P, at, bad, lr)
   P.model:zero_grad()
   P.skipped, P.bad_in_row = P.skipped + 1, P.bad_in_row + 1
   P.say(format("warning: %s step %d skipped: the %s (%d skipped so far)", P.phase, at, bad, P.skipped))
   if P.bad_in_row >= P.max_bad then
      P.progress:finish()
      fail(P.fname, "stopped at step %d: %d steps in a row had a non-finite loss or gradient " ..
           "(the last: %s); lower the learning rate (now %g)%s, or check the data", at,
           P.bad_in_row, bad, lr, P.sft and "" or ", lower beta")
   end
end

function step.update(P, sums, pairs_seen, norm)
   P.opt:step()
   P.model:zero_grad()
   P.bad_in_row = 0
   local m = {}
   for k, v in pairs(sums) do m[k] = v / pairs_seen end
   P.last_metrics = m
   for k, v in pairs(m) do P.sums[k] = (P.sums[k] or 0) + v end
   P.sums.grad_norm = (P.sums.grad_norm or 0) + norm
   P.nsum = P.nsum + 1
end

-- ---- logging ----------------------------------------------------------------------------

function step.log(P, at, lr)
   local rec = { step = at, phase = P.phase, learning_rate = lr,
                 epoch = (P.epoch - 1) + P.in_epoch / P.nb, num_tokens = P.num_tokens,
                 tokens_per_second = P.window_tokens / math.max(P.window_time, 1e-9),
                 elapsed = P.run:elapsed() }
   if not P.sft then rec.beta = P.beta end
   if P.nsum > 0 then
      for k, v in pairs(P.sums) do rec[k] = v / P.nsum end
   end
   if P.skipped > 0 then rec.skipped_steps = P.skipped end
   P.run:log(rec)
   P.last_record = rec
   if P.o.on_log then P.o.on_log(rec) end
   P.sums, P.nsum, P.window_tokens, P.window_time = {}, 0, 0, 0
end

return step
