-- dpo.train: the SFT and DPO training loops, and checkpoints.
--
--   local r = dpo.train.sft{model = m, data = train_ds, eval_data = test_ds, ...}
--   local r = dpo.train.dpo{policy = m, ref = sft_model, data = train_ds, ...}
--
-- data and eval_data are tokenized datasets (ds:tokenize). SFT trains on the
-- prompt + chosen rows (token-mean NLL of the chosen response); DPO on both
-- rows of each pair, the policy's log-probs of chosen and rejected computed in
-- one forward of 2B rows, then one backward.
--
-- Options of both (defaults in brackets):
--   batch_size [16]          pairs per micro-batch
--   grad_accum [1]           micro-batches per optimizer step
--   max_steps                optimizer steps; else epochs [1] over the data
--   epochs
--   optimizer ["adamw"]      "adamw", "rmsprop", "sgd", an optimizer made by
--                            dpo.optim over the model's parameters, or a
--                            function(params) -> optimizer
--   optimizer_options [{}]   options of a named optimizer (weight_decay, ...)
--   lr [1e-3 sft, 1e-6 dpo]  a number or a schedule s(step, metrics) -> lr
--                            (dpo.schedules); step counts this phase's updates
--                            from 1
--   max_grad_norm [1.0]      clip the global gradient norm (false or 0: never
--                            clip; grad_norm is logged either way)
--   shuffle [true], seed [0] batches in a seeded order, a new one each epoch
--   eval_data, eval_every [0: only before and after], eval_pairs [all],
--   eval_batch_size [2 * batch_size], eval_first [true]
--   log_every [10]           steps between metrics.jsonl records (each the
--                            mean over its steps)
--   run                      a run from dpo.log.open (metrics.jsonl, checkpoints);
--   out, overwrite           or a directory to open one in; neither: metrics
--                            are kept in memory only (result.run.records)
--   tokenizer                saved as tokenizer.json in checkpoints
--   save_every [0]           checkpoint-STEP every N steps (0: only at the end)
--   save [true]              the final checkpoint (when there is a run directory)
--   global_step [0]          steps already done in this run by earlier phases:
--                            step numbers (logs, checkpoints) continue from it
--   phase ["sft" / "dpo"]    the phase name in logs
--   dropout [false]          train with the model's dropout (else off)
--   max_bad_steps [5]        a step whose loss or gradient is not finite is
--                            skipped (with a warning, counted in
--                            skipped_steps); this many in a row stop the run
--   resume                   a checkpoint of this kind of phase (its directory,
--                            or dpo.train.load_checkpoint(dir)): the model's
--                            weights, the optimizer, the data position, the
--                            generators, the counters and the records come
--                            back, and the phase goes on from its step to the
--                            weights it would have ended with unstopped (with
--                            `out`, metrics.jsonl is cut back to the records of
--                            the checkpoint; the data, batch_size, grad_accum
--                            and seed must be those of the checkpoint)
--   stop_on_signal [true]    the first SIGINT or SIGTERM ends the step, saves
--                            a checkpoint and raises a stop: a table with
--                            signal, exit_code (130 or 143; dpolua exits with
--                            it), step, phase, checkpoint, run_dir and message
--                            (also its tostring); a second signal ends the
--                            process at once
--   progress                 "bar", "lines", "off" or nil (a bar on a TTY)
--   quiet [false]            no progress and no messages (for tests)
--   on_log, on_eval          function(record) called with each record
--
-- Options of dpo only:
--   policy                   the model trained (also accepted as `model`)
--   loss ["sigmoid"]         a dpo.losses name or any function with the
--                            losses' signature
--   loss_options [{}]        the loss's own options (label_smoothing, ...)
--   beta [0.1]               a number or a schedule b(step, metrics)
--   ref                      the reference model (a frozen one is used as it is,
--                            another is copied frozen); nil: a frozen clone of
--                            the policy as it is when training starts (when
--                            resuming: loaded from the checkpoint's
--                            ref_source); false: none (log-probs 0; the
--                            reference-free losses simpo, orpo, cpo and sft
--                            never use one); "base" (the default when the
--                            policy has LoRA adapters, dpo.lora): the policy
--                            with its adapters off, no copy kept (with
--                            sync_ref, nil gives a merged copy instead)
--   precompute_ref [false]   compute the reference log-probs of every train
--                            and eval pair once, before training, and cache
--                            them on disk (ref_cache); the reference model is
--                            then not kept
--   ref_cache                the cache directory [dirname(run dir)/cache];
--                            files are named by a hash of the data (texts,
--                            token counts) and of the reference weights, so a
--                            changed data set or model never hits a stale file
--   ref_source               where the reference came from (a checkpoint
--                            path), recorded in trainer_state.json
--   sync_ref                 TR-DPO: {tau = 512, alpha = 0.6}: every tau steps
--                            ref <- alpha * policy + (1 - alpha) * ref
--                            (alpha = 1: a hard copy)
--
-- Under mpirun (dpo.dist), every rank calls the phase with the same options
-- and data: a step takes ranks x grad_accum micro-batches of batch_size, rank
-- r computes its own grad_accum of them, the gradients are averaged over the
-- ranks (see dpo.step), and the numbers are those of one process that
-- accumulates ranks x grad_accum micro-batches (to float32 rounding). Rank 0
-- alone writes (out, run); the others keep their records in memory and say
-- nothing. max_steps from epochs counts global batches. Evaluations and the
-- precomputed reference are sharded too: each rank computes its share of the
-- batches and the figures are gathered in the order of the batches.
--
-- Result: {model, optimizer, step (global), steps (this phase), metrics (the
-- last train record), eval (the last eval record), skipped, checkpoint (the
-- final checkpoint's path), elapsed, run, ref (the reference model)}.
--
-- Checkpoints: RUN/checkpoint-STEP/ holds model.safetensors and config.json
-- (Hugging Face GPT-2 layout), tokenizer.json, optimizer.safetensors (the
-- optimizer's tensors, named state.<i>.<name> for parameter i) and
-- trainer_state.json (step, phase, data position, RNG state, the optimizer's
-- other state, the options, and every record logged so far). Each file is
-- written atomically into .checkpoint-STEP.tmp, which is then renamed to
-- checkpoint-STEP: a crash never leaves a half-written checkpoint under that
-- name.
--   dpo.train.save_checkpoint(dir, {model, tokenizer, optimizer, state})
--   dpo.train.load_checkpoint(dir) -> {model, tokenizer, state, optimizer_state}
--   dpo.train.checkpoints(run_dir) -> sorted list of {step, path}
--   dpo.train.latest_checkpoint(run_dir [, say]) -> the newest that loads
-- A checkpoint whose save fails (a full disk) is an error that names the last
-- complete one, which stays as it was. The final checkpoint of a phase has
-- complete = true in its trainer_state.json.
--
-- The pieces live in their own files: dpo.checkpoint (checkpoint files,
-- resume state, exact numbers), dpo.reference (frozen, precomputed and
-- TR-DPO references, cache keys), dpo.step (one optimizer step: batches,
-- forward, loss, backward, clipping, the update, log records). They share
-- the phase table P that `prepare` below makes.

local core = require "dpo.core"
local log = require "dpo.log"
local eval = require "dpo.eval"
local optim = require "dpo.optim"
local checkpoint = require "dpo.checkpoint"
local reference = require "dpo.reference"
local step = require "dpo.step"
local dist = require "dpo.dist"

local train = {}

local format = string.format

local function finite(x)
   return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge
end

local function fail(fname, msg, ...)
   error(format("dpo.train.%s: " .. msg, fname, ...), 0)
end

-- ---- checkpoints, cache keys, exact numbers (see dpo.checkpoint, dpo.reference) -----------

train.save_checkpoint = checkpoint.save
train.load_checkpoint = checkpoint.load
train.latest_checkpoint = checkpoint.latest
train.checkpoints = checkpoint.list
train.data_key, train.weights_key = reference.data_key, reference.weights_key

-- ---- options ---------------------------------------------------------------------------

local function make_optimizer(spec, params, opts, lr0, fname)
   if spec == nil then spec = "adamw" end
   if type(spec) == "string" then
      local ctor = optim[spec]
      if spec ~= "adamw" and spec ~= "rmsprop" and spec ~= "sgd" then
         fail(fname, "unknown optimizer '%s' (adamw, rmsprop, sgd, or an optimizer object)", spec)
      end
      local o = {}
      for k, v in pairs(opts or {}) do o[k] = v end
      o.lr = lr0
      return ctor(params, o), spec
   elseif type(spec) == "function" then
      local opt = spec(params)
      local mt = type(opt) == "table" and getmetatable(opt)
      if not (mt and mt.__name == "dpo.Optimizer") then
         fail(fname, "optimizer: the function returned %s, not an optimizer (dpo.optim)", tostring(opt))
      end
      return opt, "custom"
   elseif type(spec) == "table" and getmetatable(spec) and getmetatable(spec).__name == "dpo.Optimizer" then
      return spec, spec.kind
   end
   fail(fname, "optimizer must be a name, an optimizer or a function(params) (got %s)", type(spec))
end

local function as_schedule(v, what, fname)
   if type(v) == "function" then return v end
   if finite(v) then return function() return v end end
   fail(fname, "%s must be a number or a function(step, metrics) (got %s)", what, tostring(v))
end

local function check_dataset(ds, what, fname)
   if type(ds) ~= "table" or type(ds.batches) ~= "function" then
      fail(fname, "%s must be a dataset (dpo.data.hh(...):tokenize(tok, opts))", what)
   end
   if not ds:is_tokenized() then
      fail(fname, "%s is not tokenized (call ds:tokenize(tok, opts) first)", what)
   end
   if #ds == 0 then fail(fname, "%s holds no pairs", what) end
end

local KNOWN = {
   common = { "data", "eval_data", "batch_size", "grad_accum", "max_steps", "epochs", "optimizer",
              "optimizer_options", "lr", "max_grad_norm", "shuffle", "seed", "eval_every",
              "eval_pairs", "eval_batch_size", "eval_first", "log_every", "run", "out", "overwrite",
              "tokenizer", "save_every", "save", "global_step", "phase", "dropout",
              "max_bad_steps", "progress", "quiet", "on_log", "on_eval", "model", "resume",
              "stop_on_signal" },
   dpo = { "policy", "loss", "loss_options", "beta", "ref", "precompute_ref", "ref_cache",
           "ref_source", "sync_ref" },
}

local function check_keys(o, kind)
   local ok = {}
   for _, k in ipairs(KNOWN.common) do ok[k] = true end
   if kind == "dpo" then
      for _, k in ipairs(KNOWN.dpo) do ok[k] = true end
   end
   for k in pairs(o) do
      if not ok[k] then
         local names = {}
         for n in pairs(ok) do names[#names + 1] = n end
         table.sort(names)
         local near = require("dpo.cli").closest(tostring(k), names)
         fail(kind, "unknown option '%s'%s", tostring(k), near and (" (did you mean '" .. near .. "'?)") or "")
      end
   end
end

local is_model = require("dpo.model").is_model

-- Every option's type and range, before any work: a mistake names its option.
local function check_options(o, kind, fname)
   local function int(k, lo, hi)
      local v = o[k]
      if v ~= nil and (math.type(v) ~= "integer" or v < lo or (hi and v > hi)) then
         fail(fname, "%s must be an integer %s, got %s", k,
              hi and format("in %d..%d", lo, hi) or format(">= %d", lo), tostring(v))
      end
   end
   local function typed(k, t, what)
      local v = o[k]
      if v ~= nil and type(v) ~= t then fail(fname, "%s must be %s, got %s", k, what, type(v)) end
   end
   for _, k in ipairs{ "batch_size", "grad_accum", "max_steps", "eval_pairs", "eval_batch_size",
                       "log_every", "max_bad_steps" } do
      int(k, 1)
   end
   int("eval_every", 0)
   int("save_every", 0)
   int("global_step", 0, 1 << 40)
   if o.seed ~= nil and math.type(o.seed) ~= "integer" then
      fail(fname, "seed must be an integer, got %s", tostring(o.seed))
   end
   if o.epochs ~= nil and not (finite(o.epochs) and o.epochs > 0) then
      fail(fname, "epochs must be a number > 0, got %s", tostring(o.epochs))
   end
   typed("phase", "string", "a string")
   typed("out", "string", "a directory path")
   typed("ref_cache", "string", "a directory path")
   typed("ref_source", "string", "a checkpoint path")
   typed("optimizer_options", "table", "a table")
   typed("loss_options", "table", "a table")
   typed("on_log", "function", "a function(record)")
   typed("on_eval", "function", "a function(record)")
   if o.progress ~= nil and o.progress ~= "bar" and o.progress ~= "lines" and o.progress ~= "off" then
      fail(fname, "progress must be \"bar\", \"lines\" or \"off\", got %s", tostring(o.progress))
   end
   if o.tokenizer ~= nil then
      local t = o.tokenizer
      if type(t) ~= "userdata" or not pcall(function() return t:vocab_size() end) then
         fail(fname, "tokenizer must be a tokenizer (dpo.tokenizer), got %s", tostring(t))
      end
   end
   if o.run ~= nil and (type(o.run) ~= "table" or getmetatable(o.run) == nil
                        or getmetatable(o.run).__name ~= "dpo.log.Run") then
      fail(fname, "run must be a run of dpo.log.open or dpo.log.memory, got %s", tostring(o.run))
   end
   if o.max_grad_norm ~= nil and o.max_grad_norm ~= false
      and not (type(o.max_grad_norm) == "number" and o.max_grad_norm >= 0) then
      fail(fname, "max_grad_norm must be a number >= 0 or false, got %s", tostring(o.max_grad_norm))
   end
   if type(o.lr) == "number" and not (finite(o.lr) and o.lr >= 0) then
      fail(fname, "lr must be a finite number >= 0, got %s", tostring(o.lr))
   end
   if o.resume ~= nil and type(o.resume) ~= "string" and type(o.resume) ~= "table" then
      fail(fname, "resume must be a checkpoint directory or dpo.train.load_checkpoint(dir), got %s",
           type(o.resume))
   end
   if kind == "dpo" then
      if type(o.beta) == "number" and not (finite(o.beta) and o.beta > 0) then
         fail(fname, "beta must be a finite number > 0, got %s", tostring(o.beta))
      end
      if o.ref ~= nil and o.ref ~= false and o.ref ~= "base" and not is_model(o.ref) then
         fail(fname, "ref must be a model (dpo.model), \"base\", false or nil, got %s", tostring(o.ref))
      end
      if o.loss ~= nil and type(o.loss) ~= "string" and type(o.loss) ~= "function" then
         fail(fname, "loss must be a name of dpo.losses.list() or a function, got %s", type(o.loss))
      end
      typed("sync_ref", "table", "a table {tau =, alpha =}")
   end
end


-- ---- the phase table ------------------------------------------------------------------------

--[[
P, what one phase knows, shared by the pieces (dpo.checkpoint, dpo.reference,
dpo.step):
  settings   kind ("sft"/"dpo"), sft (a boolean), fname (for errors), o (the
             options), model, ds, bs, accum, shuffle, seed, nb (batches an
             epoch), total (steps of the phase), first (global steps before
             it), phase (its name in logs), quiet, log_every, eval_every,
             save_every, max_bad, clip (a norm or false), eval_bs
  resuming   resume (the loaded checkpoint), rst (its trainer state), s0 (the
             phase step it goes on after; 0 when starting)
  world      world, rank (dpo.dist: ranks of the job, this one's)
  outputs    run (dpo.log), progress, say(msg)
  training   loss_fn, loss_name, beta_s, lr_s, ref (dpo.reference's R), params,
             opt, opt_name
  data       epoch, in_epoch (batches of this epoch read), iter
  running    beta (this step's), last_metrics (the last step's means),
             skipped, bad_in_row, num_tokens, loss_state (loss_options.state)
  log window sums, nsum (steps in them), window_tokens, window_time,
             last_record, last_eval, last_checkpoint
]]

-- The options of a phase checked, and the settings they give.
local function settings(kind, o)
   local fname = kind
   if type(o) ~= "table" then fail(fname, "expected a table of options") end
   check_keys(o, kind)
   local model = kind == "dpo" and (o.policy or o.model) or o.model
   if not is_model(model) then
      fail(fname, "%s must be a model (dpo.model.new or dpo.model.load), got %s", kind == "dpo" and "policy" or "model",
           tostring(model))
   end
   if model:is_frozen() then fail(fname, "the model is frozen; train a clone that is not") end
   check_options(o, kind, fname)
   local ds = o.data
   check_dataset(ds, "data", fname)
   if o.eval_data ~= nil then check_dataset(o.eval_data, "eval_data", fname) end
   local bs = o.batch_size or 16
   local accum = o.grad_accum or 1
   if math.type(bs) ~= "integer" or bs < 1 then fail(fname, "batch_size must be an integer >= 1") end
   if math.type(accum) ~= "integer" or accum < 1 then fail(fname, "grad_accum must be an integer >= 1") end
   local nb = ds:num_batches(bs)
   local total = o.max_steps
   local world = dist.size()
   if total == nil then
      local epochs = o.epochs or 1
      total = math.max(1, math.floor(epochs * nb / (accum * world) + 0.5))
   end
   if math.type(total) ~= "integer" or total < 1 then fail(fname, "max_steps must be an integer >= 1") end
   local clip = o.max_grad_norm
   if clip == nil then clip = 1.0 end
   if clip == 0 then clip = false end
   return {
      kind = kind, sft = kind == "sft", fname = fname, o = o, model = model, ds = ds, bs = bs,
      accum = accum, shuffle = o.shuffle ~= false, seed = o.seed or 0, nb = nb, total = total,
      first = o.global_step or 0, phase = o.phase or kind, quiet = o.quiet,
      log_every = o.log_every or 10, eval_every = o.eval_every or 0, save_every = o.save_every or 0,
      max_bad = o.max_bad_steps or 5, clip = clip, eval_bs = o.eval_batch_size or 2 * bs,
      world = world, rank = dist.rank(),
   }
end

-- The run (metrics.jsonl and checkpoints: o.run, else one opened in o.out,
-- else in memory) and the progress display. In a job, the ranks but rank 0
-- keep their records in memory and say nothing: rank 0 alone writes.
local function open_run(P)
   local o, rst = P.o, P.rst
   local run = o.run
   if P.rank > 0 then
      P.quiet = true
      if run == nil then run = log.memory() end
   elseif run == nil and o.out and rst then
      run = log.open(o.out, { resume = rst.log_history or {}, elapsed = rst.elapsed })
   elseif run == nil and o.out then
      run = log.open(o.out, { overwrite = o.overwrite })
   end
   P.run = run or log.memory()
   local progress = log.progress{ total = P.total, phase = P.phase, first = P.first,
                                  mode = P.quiet and "off" or o.progress }
   P.progress = progress
   P.say = function(msg)
      if not P.quiet then progress:print(msg) end
   end
end

-- DPO's loss and beta schedule.
local function setup_loss(P)
   if P.sft then return end
   local loss = P.o.loss or "sigmoid"
   P.loss_fn = eval.resolve_loss(loss)
   P.loss_name = type(loss) == "string" and loss or "custom"
   P.beta_s = as_schedule(P.o.beta or 0.1, "beta", P.fname)
end

-- The optimizer over the model's parameters (its state from the checkpoint
-- when resuming), the lr schedule, the model in its training mode.
local function setup_optimizer(P)
   local o, model = P.o, P.model
   P.lr_s = as_schedule(o.lr or (P.sft and 1e-3 or 1e-6), "lr", P.fname)
   P.params = model:parameters()
   if P.world > 1 then P.grads = dist.grads(P.params) end -- averaged over the ranks each step
   P.opt, P.opt_name = make_optimizer(o.optimizer, P.params, o.optimizer_options, P.lr_s(1, nil), P.fname)
   if P.rst and P.resume.optimizer_state then
      local ok, err = pcall(P.opt.load_state_dict, P.opt, P.resume.optimizer_state)
      if not ok then fail(P.fname, "resume: the optimizer state: %s", tostring(err)) end
   end
   if o.dropout then model:train(true) else model:eval() end
   model:zero_grad()
end

-- The data position: the start, or the checkpoint's.
local function setup_data(P)
   P.epoch, P.in_epoch = 1, 0
   if P.rst then
      P.epoch, P.in_epoch = math.tointeger(P.rst.data.epoch) or 1, math.tointeger(P.rst.data.batch) or 0
   end
   step.open_data(P)
end

-- The counters and running means as a phase starts (checkpoint.restore
-- then puts a resumed phase's back).
local function reset_counters(P)
   local lo = P.o.loss_options
   P.skipped, P.bad_in_row, P.num_tokens = 0, 0, 0
   P.sums, P.nsum, P.window_tokens, P.window_time = {}, 0, 0, 0
   P.loss_state = lo and type(lo.state) == "table" and lo.state or nil
   P.last_checkpoint = P.rst and P.resume.path or nil
end

-- Everything a phase needs before its first step, in this order (each may
-- draw on the generator or the weights the one before left).
local function prepare(kind, o)
   local P = settings(kind, o)
   checkpoint.resume(P) -- the weights now; the rest after the optimizer and data
   open_run(P)
   setup_loss(P)
   P.ref = reference.setup(P)
   setup_optimizer(P)
   setup_data(P)
   reset_counters(P)
   checkpoint.restore(P)
   return P
end

-- ---- evaluation, signals ----------------------------------------------------------------------

-- A checkpoint (rank 0 writes it; see checkpoint.save_phase): complete only
-- when every rank of a job has reached it.
local function save(P, at, s, complete)
   local path = checkpoint.save_phase(P, at, s, complete)
   if P.world > 1 then dist.barrier() end
   return path
end

-- The eval record at global step `step` (nil without eval_data): logged,
-- passed to on_eval, said. In a job each rank scores its share of the eval
-- batches and every rank gets the global figures (dpo.eval's shard).
local function evaluate(P, at)
   local o = P.o
   if not o.eval_data then return nil end
   local m
   if P.sft then
      m = eval.nll(P.model, o.eval_data, { batch_size = P.eval_bs, max_pairs = o.eval_pairs, shard = true })
      m.loss = m.nll
   else
      local b = P.beta or P.beta_s(math.max(at - P.first, 1), P.last_metrics)
      m = eval.preferences(P.model, P.ref.model or false, o.eval_data, {
         batch_size = P.eval_bs, max_pairs = o.eval_pairs, shard = true, beta = b, loss = P.loss_fn,
         loss_options = o.loss_options, ref_logps = P.ref.eval_lookup or reference.eval_logps(P.ref),
      })
   end
   local rec = { step = at, phase = P.phase, elapsed = P.run:elapsed() }
   for k, v in pairs(m) do
      if k ~= "pairs" then rec["eval/" .. k] = v end
   end
   rec["eval/pairs"] = m.pairs
   P.run:log(rec)
   P.last_eval = rec
   if o.on_eval then o.on_eval(rec) end
   if not P.quiet then
      local parts = { format("%s eval at step %d (%d pairs): loss %.4f", P.phase, at, m.pairs, m.loss) }
      if m["rewards/accuracies"] then
         parts[#parts + 1] = format("accuracy %.3f  margin %.3f", m["rewards/accuracies"],
                                    m["rewards/margins"])
      end
      P.say(table.concat(parts, "  "))
   end
   return rec
end

-- Ctrl-C and SIGTERM: the step in progress ends, a checkpoint is saved, and
-- the phase raises a stop ({exit_code = 130 or 143, ...}); a second signal
-- ends the process at once. trap_signals(P) -> a value to close when the
-- phase ends (nil with stop_on_signal = false).
local function trap_signals(P)
   P.trap = P.o.stop_on_signal ~= false
   return P.trap and core.trap_signals()
      and setmetatable({}, { __close = function() core.release_signals() end }) or nil
end

-- After global step `at` (phase step s): a pending signal stops the phase,
-- with the checkpoint `saved` at this step or one saved now (none at_end).
local function stop_if_signalled(P, at, s, saved, at_end)
   if not P.trap then return end
   local sig, code = dist.pending_signal() -- in a job: every rank stops at the same step
   if not sig then return end
   P.progress:finish()
   local path = saved
   if not at_end and not path then path = save(P, at, s) end
   error(setmetatable({
      signal = sig, exit_code = code, step = at, phase = P.phase, checkpoint = path, run_dir = P.run.dir,
      message = format("stopped by %s after step %d (%s: %d of %d steps)%s", sig, at, P.phase, s, P.total,
                       path and ("; saved " .. path) or "; no run directory, nothing saved"),
   }, { __tostring = function(e) return e.message end }), 0)
end

-- ---- the loop --------------------------------------------------------------------------------

-- The phase's end: the last evaluation and checkpoint, and its result.
local function finish(P, t_start)
   local o, last = P.o, P.first + P.total
   P.progress:finish()
   if o.eval_data then evaluate(P, last) end
   local final
   if o.save ~= false then final = save(P, last, P.total, true) end
   stop_if_signalled(P, last, P.total, final, true)
   if not P.quiet then
      P.say(format("%s: %d steps in %.1fs%s", P.phase, P.total, core.clock() - t_start,
                   P.skipped > 0 and format(" (%d skipped)", P.skipped) or ""))
   end
   return {
      model = P.model, optimizer = P.opt, step = last, steps = P.total, metrics = P.last_record,
      eval = P.last_eval, skipped = P.skipped, checkpoint = P.last_checkpoint,
      elapsed = core.clock() - t_start, run = P.run, ref = P.ref.model, optimizer_name = P.opt_name,
      state = checkpoint.state(P, last, P.total, true),
   }
end

-- One training phase: kind is "sft" or "dpo".
local function run_phase(kind, o)
   local P = prepare(kind, o)
   if o.eval_data and o.eval_first ~= false and not P.rst then evaluate(P, P.first) end
   local trap_guard <close> = trap_signals(P)
   local t_start = core.clock()
   for s = P.s0 + 1, P.total do
      local t0 = core.clock()
      local at = P.first + s -- the global step
      local lr = step.schedules(P, s)
      local sums, pairs_seen, bad = step.forward_backward(P)
      local norm
      if not bad then norm, bad = step.clip(P) end
      if bad then
         step.skip(P, at, bad, lr)
      else
         step.update(P, sums, pairs_seen, norm)
      end
      reference.after_step(P.ref, P.model, s, at)
      P.window_time = P.window_time + (core.clock() - t0)
      if s % P.log_every == 0 or s == P.total then step.log(P, at, lr) end
      P.progress:update(at, P.last_record or P.last_metrics)
      if P.eval_every > 0 and s % P.eval_every == 0 and s ~= P.total then evaluate(P, at) end
      local saved
      if P.save_every > 0 and s % P.save_every == 0 and s ~= P.total then
         saved = save(P, at, s)
      end
      stop_if_signalled(P, at, s, saved)
   end
   return finish(P, t_start)
end

-- A phase, its errors named after it: those raised deeper (a loss, a
-- callback, the data) get "dpo.train.KIND: " in front; a stop by a signal (a
-- table) goes through as it is.
local function phase(kind, opts)
   local ok, result = pcall(run_phase, kind, opts)
   if ok then return result end
   if type(result) == "string" and result:sub(1, 10) ~= "dpo.train." then
      result = "dpo.train." .. kind .. ": " .. result
   end
   error(result, 0)
end

-- dpo.train.sft{model =, data =, ...} -> result (see the top of this file)
function train.sft(opts)
   return phase("sft", opts)
end

-- dpo.train.dpo{policy =, data =, ref =, loss =, beta =, ...} -> result
function train.dpo(opts)
   return phase("dpo", opts)
end

train.hex, train.unhex = checkpoint.hex, checkpoint.unhex

return train
