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
--                            never use one)
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
local core = require "dpo.core"
local check = require "dpo.check"
local cjson = require("cjson").new()
local lfs = require "lfs"
local log = require "dpo.log"
local eval = require "dpo.eval"
local optim = require "dpo.optim"
local models = require "dpo.model"

cjson.encode_invalid_numbers("null")
cjson.encode_sparse_array(true)

local train = {}

local format = string.format
local STATE_FORMAT = "dpolua.trainer_state.v1"

local function finite(x)
   return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge
end

-- "NaN", "inf", "-inf" or the number
local function show_number(x)
   if x ~= x then return "NaN" end
   return tostring(x)
end

local function fail(fname, msg, ...)
   error(format("dpo.train.%s: " .. msg, fname, ...), 0)
end

-- A path argument of train.<fname> (see dpo.check).
local function check_path(fname, p, what, level)
   check.path("dpo.train." .. fname, p, what, level + 1)
end

local function hex(s)
   if type(s) ~= "string" then error("dpo.train.hex: expected a string, got " .. type(s), 2) end
   return (s:gsub(".", function(c) return format("%02x", c:byte()) end))
end

local function unhex(s)
   if type(s) ~= "string" then error("dpo.train.unhex: expected a string, got " .. type(s), 2) end
   return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

-- Numbers that must come back exactly from trainer_state.json (JSON keeps 14
-- digits): a float is written as "f:" and the hex of its 8 bytes.
local function exact(t)
   if t == nil then return nil end
   local out = {}
   for k, v in pairs(t) do
      if math.type(v) == "float" then v = "f:" .. hex(string.pack("<d", v)) end
      out[k] = v
   end
   return out
end

local function unexact(t)
   if type(t) ~= "table" then return nil end
   local out = {}
   for k, v in pairs(t) do
      if type(v) == "string" and v:match("^f:%x+$") and #v == 18 then
         v = string.unpack("<d", unhex(v:sub(3)))
      elseif math.type(v) == "float" and v == math.floor(v) and math.abs(v) < 2^53 then
         v = math.tointeger(v) -- cjson reads every number as a float
      end
      out[k] = v
   end
   return out
end

-- ---- hashing (cache keys) ---------------------------------------------------------

-- A 64-bit FNV-1a style hash of strings, 8 bytes at a time.
local PRIME = 0x100000001b3
local function hash_update(h, s)
   local n = #s
   local i = 1
   while i + 7 <= n do
      h = (h ~ string.unpack("<i8", s, i)) * PRIME
      i = i + 8
   end
   while i <= n do
      h = (h ~ s:byte(i)) * PRIME
      i = i + 1
   end
   return (h ~ n) * PRIME
end

local function hash_hex(h)
   return format("%016x", h)
end

-- The fingerprint of a tokenized dataset: every text and token count, and the
-- tokenization options.
local function data_key(ds)
   if type(ds) ~= "table" or type(ds.tokenizer) ~= "function" or type(ds.iter) ~= "function" then
      error("dpo.train.data_key: expected a dataset, got " .. tostring(ds), 2)
   end
   local h = -3750763034362895579 -- the FNV offset basis, as a signed integer
   local opts = ds._tokopts or {}
   h = hash_update(h, format("%s|%s|%s|%s|%s", tostring(opts.max_length),
                             tostring(opts.max_prompt_length), tostring(opts.truncation),
                             tostring(opts.eos_id), tostring(opts.bos_id)))
   local tok = ds:tokenizer()
   if tok and tok.vocab_size then h = hash_update(h, tostring(tok:vocab_size())) end
   for p in ds:iter() do
      h = hash_update(h, p.prompt)
      h = hash_update(h, p.chosen)
      h = hash_update(h, p.rejected)
      h = hash_update(h, format("%d,%d,%d", p.n_prompt or 0, p.n_chosen or 0, p.n_rejected or 0))
   end
   return hash_hex(h)
end

-- The fingerprint of a model's weights: its config and, for each parameter,
-- its sum, its sum of squares and its dot product with a fixed random tensor
-- (the generator's state is restored afterwards).
local function weights_key(model)
   if not models.is_model(model) then
      error("dpo.train.weights_key: expected a model (dpo.gpt), got " .. tostring(model), 2)
   end
   local h = -3750763034362895579
   local c = model:config()
   h = hash_update(h, format("%d|%d|%d|%d|%d", c.vocab_size, c.n_ctx, c.n_layer, c.n_head, c.n_embd))
   local saved = core.rng_state()
   core.manual_seed(20240531)
   core.no_grad(function()
      for _, np in ipairs(model:named_parameters()) do
         local p = np[2]
         local r = core.randn(table.unpack(p:size()))
         h = hash_update(h, format("%s:%.7g:%.7g:%.7g", np[1], p:sum():item(), (p * p):sum():item(),
                                   (p * r):sum():item()))
      end
   end)
   core.set_rng_state(saved)
   return hash_hex(h)
end

train.data_key, train.weights_key = data_key, weights_key

-- ---- reference log-probs ---------------------------------------------------------------

-- The reference log-probs of every pair of ds (in ds order): chosen, rejected
-- as float32 [N] tensors, from the cache file when it is there.
local function ref_table(ref, ds, opts, say)
   local key = data_key(ds) .. "-" .. weights_key(ref)
   local path
   if opts.dir then
      local ok, err = log.mkdirs(opts.dir)
      if not ok then fail("dpo", "cannot create the reference cache: %s", err) end
      path = format("%s/ref_logps-%s.safetensors", opts.dir, key)
      if lfs.attributes(path, "mode") == "file" then
         local t, meta = core.load(path)
         if t and t.chosen and t.rejected and t.chosen:size(1) == #ds and meta.key == key then
            say(format("reference log-probs of %d pairs from %s", #ds, path))
            return t.chosen, t.rejected, path, true
         end
      end
   end
   local c, r, at = {}, {}, 0
   local bs = opts.batch_size or 32
   local t0 = core.clock()
   local was = ref:is_training()
   ref:eval()
   core.no_grad(function()
      for b in ds:batches(bs) do
         local lp = ref:logps(b.ids, b.mask):totable()
         for i = 1, b.size do
            c[at + i], r[at + i] = lp[i], lp[b.size + i]
         end
         at = at + b.size
      end
   end)
   if was then ref:train(true) end
   local tc, tr = core.tensor(c), core.tensor(r)
   if path then
      local ok, err = core.save(path, { chosen = tc, rejected = tr }, { key = key, pairs = #ds })
      if not ok then say("warning: could not cache the reference log-probs: " .. err) end
   end
   say(format("reference log-probs of %d pairs computed in %.1fs%s", #ds, core.clock() - t0,
              path and (" (cached in " .. path .. ")") or ""))
   return tc, tr, path, false
end

-- A lookup function(pairs) -> ref_c, ref_r over the precomputed values of ds.
local function ref_lookup(ds, chosen, rejected)
   local index = {}
   for p, i in ds:iter() do index[p] = i end
   return function(list)
      local idx = {}
      for i, p in ipairs(list) do
         idx[i] = index[p] or error("dpo.train: a pair without precomputed reference log-probs", 0)
      end
      local t = core.tensor(idx, "int32")
      return chosen:index_select(1, t), rejected:index_select(1, t)
   end
end

-- TR-DPO: ref <- alpha * policy + (1 - alpha) * ref
local function sync_reference(ref, policy, alpha)
   local rp, pp = ref:parameters(), policy:parameters()
   core.no_grad(function()
      for i, r in ipairs(rp) do
         if alpha >= 1 then
            r:copy(pp[i])
         else
            r:copy(r * (1 - alpha) + pp[i]:detach() * alpha)
         end
      end
   end)
end

-- ---- checkpoints -----------------------------------------------------------------------

local function write_json(path, value)
   local ok, err = core.write_file(path, log.unescape_slashes(cjson.encode(value)) .. "\n")
   if not ok then error(err, 0) end
end

-- The optimizer's state: tensors {"state.<i>.<name>" = t} and the rest as a
-- JSON-able table.
local function optimizer_parts(opt)
   local sd = opt:state_dict()
   local tensors, state = {}, {}
   for i, st in pairs(sd.state) do
      local plain = {}
      for k, v in pairs(st) do
         if core.is_tensor(v) then
            tensors[format("state.%d.%s", i, k)] = v
         else
            plain[k] = v
         end
      end
      state[tostring(i)] = plain
   end
   return tensors, { optimizer = sd.optimizer, param_groups = sd.param_groups,
                     param_shapes = sd.param_shapes, state = state }
end

-- The optimizer state dict from optimizer.safetensors and trainer_state.json.
local function optimizer_state_dict(tensors, info)
   local state = {}
   for k, v in pairs(info.state or {}) do
      local i = math.tointeger(tonumber(k))
      local st = {}
      for name, x in pairs(v) do st[name] = math.tointeger(x) or x end
      state[i] = st
   end
   for name, t in pairs(tensors or {}) do
      local i, k = name:match("^state%.(%d+)%.(.+)$")
      if i then
         i = math.tointeger(tonumber(i))
         state[i] = state[i] or {}
         state[i][k] = t
      end
   end
   local groups = info.param_groups
   for _, g in ipairs(groups or {}) do
      for i, v in ipairs(g.params or {}) do g.params[i] = math.tointeger(v) or v end
   end
   return { optimizer = info.optimizer, param_groups = groups, param_shapes = info.param_shapes,
            state = state }
end

-- dpo.train.save_checkpoint(dir, {model, tokenizer, optimizer, state, ref})
-- -> dir. Written into a temporary directory next to dir, then renamed.
function train.save_checkpoint(dir, parts)
   check_path("save_checkpoint", dir, "the directory", 2)
   if type(parts) ~= "table" then
      error("dpo.train.save_checkpoint: expected a table {model =, ...}, got " .. type(parts), 2)
   end
   local m = parts.model
   if not models.is_model(m) then
      error("dpo.train.save_checkpoint: model must be a model (dpo.gpt), got " .. tostring(m), 2)
   end
   dir = dir:gsub("/+$", "")
   local parent, name = dir:match("^(.*)/([^/]+)$")
   if not parent then parent, name = ".", dir end
   local tmp = format("%s/.%s.tmp", parent, name)
   log.rmtree(tmp)
   local ok, err = log.mkdirs(tmp)
   if not ok then error("save_checkpoint: " .. err, 2) end
   local good, msg = pcall(function()
      parts.model:save(tmp)
      if parts.tokenizer then parts.tokenizer:save(tmp .. "/tokenizer.json") end
      local state = parts.state or {}
      if parts.optimizer then
         local tensors, info = optimizer_parts(parts.optimizer)
         local saved, e = core.save(tmp .. "/optimizer.safetensors", tensors,
                                    { format = "pt", optimizer = info.optimizer })
         if not saved then error(e, 0) end
         state.optimizer = info
      end
      if parts.ref then
         local named = {}
         for _, np in ipairs(parts.ref:named_parameters()) do named[np[1]] = np[2] end
         local saved, e = core.save(tmp .. "/ref_model.safetensors", named, { format = "pt" })
         if not saved then error(e, 0) end
      end
      write_json(tmp .. "/trainer_state.json", state)
   end)
   if not good then
      log.rmtree(tmp)
      error("save_checkpoint: " .. tostring(msg):gsub("^[^\n]-%.lua:%d+: ", ""), 2)
   end
   local old
   if lfs.attributes(dir) then
      old = format("%s/.%s.old", parent, name)
      log.rmtree(old)
      local moved, e = os.rename(dir, old)
      if not moved then
         log.rmtree(tmp)
         error("save_checkpoint: " .. tostring(e), 2)
      end
   end
   local moved, e = os.rename(tmp, dir)
   if not moved then
      if old then os.rename(old, dir) end -- the previous one stays where it was
      log.rmtree(tmp)
      error("save_checkpoint: " .. tostring(e), 2)
   end
   local synced, se = core.sync_dir(parent)
   if old then log.rmtree(old) end
   if not synced then error("save_checkpoint: " .. tostring(se), 2) end
   return dir
end

-- dpo.train.load_checkpoint(dir) -> {path, model, tokenizer, state,
-- optimizer_state, ref_tensors}
function train.load_checkpoint(dir)
   check_path("load_checkpoint", dir, "the directory", 2)
   dir = dir:gsub("/+$", "")
   local f, err = io.open(dir .. "/trainer_state.json", "rb")
   if not f then error("load_checkpoint: " .. err, 2) end
   local text = f:read("a")
   f:close()
   local okj, state = pcall(cjson.decode, text)
   if not okj or type(state) ~= "table" then
      error(format("load_checkpoint: %s/trainer_state.json: not a trainer state (%s)", dir,
                   okj and "not a JSON object" or tostring(state)), 2)
   end
   -- JSON gives every number as a float: the state's whole numbers are integers
   local function integers(t)
      for k, v in pairs(t) do
         if math.type(v) == "float" and v == math.floor(v) and math.abs(v) < 2^53 then
            t[k] = math.tointeger(v)
         elseif type(v) == "table" and k ~= "log_history" then
            integers(v)
         end
      end
   end
   integers(state)
   local okm, model = pcall(models.load, dir)
   if not okm then error("load_checkpoint: " .. tostring(model), 2) end
   local out = { path = dir, model = model, state = state }
   if lfs.attributes(dir .. "/tokenizer.json", "mode") == "file" then
      local okt, tok = pcall(require("dpo.tokenizer").load, dir .. "/tokenizer.json")
      if not okt then error("load_checkpoint: " .. tostring(tok), 2) end
      out.tokenizer = tok
   end
   if type(state.optimizer) == "table" then
      local tensors = {}
      if lfs.attributes(dir .. "/optimizer.safetensors", "mode") == "file" then
         local t, e = core.load(dir .. "/optimizer.safetensors")
         if not t then error("load_checkpoint: " .. e, 2) end
         tensors = t
      elseif next(state.optimizer.state or {}) then
         error(format("load_checkpoint: %s/optimizer.safetensors is missing", dir), 2)
      end
      out.optimizer_state = optimizer_state_dict(tensors, state.optimizer)
   end
   if lfs.attributes(dir .. "/ref_model.safetensors", "mode") == "file" then
      local t, e = core.load(dir .. "/ref_model.safetensors")
      if not t then error("load_checkpoint: " .. e, 2) end
      out.ref_tensors = t
   end
   return out
end

-- dpo.train.latest_checkpoint(run_dir [, say]) -> the newest checkpoint of
-- the run that loads (as load_checkpoint gives it) | nil, reason. A newer
-- one that does not load is passed over with a message to say(text). What
-- an interrupted save left behind is tidied first: .checkpoint-N.tmp
-- directories are removed, and a .checkpoint-N.old (a save killed between
-- its two renames) goes back to checkpoint-N.
function train.latest_checkpoint(run_dir, say)
   check_path("latest_checkpoint", run_dir, "the run directory", 2)
   if say ~= nil and type(say) ~= "function" then
      error("dpo.train.latest_checkpoint: say must be a function(text), got " .. type(say), 2)
   end
   run_dir = run_dir:gsub("/+$", "")
   say = say or function() end
   if lfs.attributes(run_dir, "mode") ~= "directory" then
      return nil, run_dir .. ": no such run directory"
   end
   local names = {}
   for name in lfs.dir(run_dir) do names[#names + 1] = name end
   for _, name in ipairs(names) do
      local step, suffix = name:match("^%.checkpoint%-(%d+)%.(%a+)$")
      if suffix == "tmp" then
         log.rmtree(run_dir .. "/" .. name)
      elseif suffix == "old" then
         local dest = format("%s/checkpoint-%s", run_dir, step)
         if lfs.attributes(dest) then
            log.rmtree(run_dir .. "/" .. name)
         else
            os.rename(run_dir .. "/" .. name, dest)
         end
      end
   end
   local list = train.checkpoints(run_dir)
   if #list == 0 then return nil, run_dir .. ": no checkpoint to resume from" end
   local reasons = {}
   for i = #list, 1, -1 do
      local ok, ck = pcall(train.load_checkpoint, list[i].path)
      if ok and type(ck.state) == "table" and ck.state.format == STATE_FORMAT then
         return ck
      end
      local why = ok and "not a dpolua trainer state" or tostring(ck)
      reasons[#reasons + 1] = list[i].path .. ": " .. why
      say(format("warning: passing over %s: %s", list[i].path, why))
   end
   return nil, "no checkpoint of " .. run_dir .. " loads (" .. table.concat(reasons, "; ") .. ")"
end

-- dpo.train.checkpoints(run_dir) -> list of {step = n, path = p}, by step
function train.checkpoints(run_dir)
   check_path("checkpoints", run_dir, "the run directory", 2)
   local list = {}
   if lfs.attributes(run_dir, "mode") ~= "directory" then return list end
   for name in lfs.dir(run_dir) do
      local step = name:match("^checkpoint%-(%d+)$")
      if step and lfs.attributes(run_dir .. "/" .. name, "mode") == "directory" then
         list[#list + 1] = { step = math.tointeger(tonumber(step)), path = run_dir .. "/" .. name }
      end
   end
   table.sort(list, function(a, b) return a.step < b.step end)
   return list
end

-- ---- the loop ------------------------------------------------------------------------------

local NO_REF = { simpo = true, orpo = true, cpo = true, sft = true }

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

-- The plain (JSON-able) options, for trainer_state.json.
local function plain_options(o)
   local out = {}
   for k, v in pairs(o) do
      local t = type(v)
      if t == "number" or t == "string" or t == "boolean" then
         out[k] = v
      elseif t == "function" then
         out[k] = "<function>"
      elseif k == "loss_options" or k == "sync_ref" or k == "optimizer_options" then
         local c = {}
         for kk, vv in pairs(v) do
            if type(vv) == "number" or type(vv) == "string" or type(vv) == "boolean" then c[kk] = vv end
         end
         out[k] = c
      end
   end
   return out
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

local is_model = models.is_model

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
      if o.ref ~= nil and o.ref ~= false and not is_model(o.ref) then
         fail(fname, "ref must be a model (dpo.gpt), false or nil, got %s", tostring(o.ref))
      end
      if o.loss ~= nil and type(o.loss) ~= "string" and type(o.loss) ~= "function" then
         fail(fname, "loss must be a name of dpo.losses.list() or a function, got %s", type(o.loss))
      end
      typed("sync_ref", "table", "a table {tau =, alpha =}")
   end
end

-- One training phase: kind is "sft" or "dpo".
local function run_phase(kind, o)
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
   local shuffle = o.shuffle ~= false
   local seed = o.seed or 0
   local sft = kind == "sft"
   local nb = ds:num_batches(bs)
   local total = o.max_steps
   if total == nil then
      local epochs = o.epochs or 1
      total = math.max(1, math.floor(epochs * nb / accum + 0.5))
   end
   if math.type(total) ~= "integer" or total < 1 then fail(fname, "max_steps must be an integer >= 1") end
   local first = o.global_step or 0
   local phase = o.phase or kind
   local quiet = o.quiet
   local log_every = o.log_every or 10
   local eval_every = o.eval_every or 0
   local save_every = o.save_every or 0
   local max_bad = o.max_bad_steps or 5
   local clip = o.max_grad_norm
   if clip == nil then clip = 1.0 end
   if clip == 0 then clip = false end

   -- resuming: the checkpoint's weights now; its optimizer state, data
   -- position, generators and counters below
   local resume, rst = o.resume, nil
   if resume ~= nil then
      if type(resume) == "string" then
         local ok, ck = pcall(train.load_checkpoint, resume)
         if not ok then fail(fname, "resume: %s", tostring(ck)) end
         resume = ck
      end
      if type(resume) ~= "table" or type(resume.state) ~= "table" or resume.state.format ~= STATE_FORMAT then
         fail(fname, "resume must be a checkpoint directory or dpo.train.load_checkpoint(dir)")
      end
      rst = resume.state
      local where = resume.path or "the checkpoint"
      if rst.kind ~= kind then fail(fname, "%s is a checkpoint of a %s phase, not %s", where, tostring(rst.kind), kind) end
      local d = rst.data or {}
      local mine = { batch_size = bs, grad_accum = accum, seed = seed, shuffle = shuffle, pairs = #ds }
      for _, k in ipairs{ "batch_size", "grad_accum", "seed", "shuffle", "pairs" } do
         if d[k] ~= mine[k] then
            fail(fname, "%s was made with %s = %s, this run has %s: it would not continue the same run",
                 where, k == "pairs" and "data pairs" or k, tostring(d[k]), tostring(mine[k]))
         end
      end
      if resume.model then
         local src = {}
         for _, np in ipairs(resume.model:named_parameters()) do src[np[1]] = np[2] end
         core.no_grad(function()
            for _, np in ipairs(model:named_parameters()) do
               local t = src[np[1]]
               if not t or table.concat(t:size(), "x") ~= table.concat(np[2]:size(), "x") then
                  fail(fname, "%s does not fit the model: parameter %s is %s there", where, np[1],
                       t and table.concat(t:size(), "x") or "missing")
               end
               np[2]:copy(t)
            end
         end)
      end
      if o.global_step ~= nil and o.global_step ~= rst.first_step then
         fail(fname, "%s continues a phase that began after step %s, not global_step %s", where,
              tostring(rst.first_step), tostring(o.global_step))
      end
      first = math.tointeger(rst.first_step) or first
   end

   -- the run: metrics.jsonl and checkpoints
   local run = o.run
   if run == nil and o.out and rst then
      run = log.open(o.out, { resume = rst.log_history or {}, elapsed = rst.elapsed })
   elseif run == nil and o.out then
      run = log.open(o.out, { overwrite = o.overwrite })
   end
   if run == nil then run = log.memory() end

   local progress = log.progress{ total = total, phase = phase, first = first,
                                  mode = quiet and "off" or o.progress }
   local function say(msg)
      if not quiet then progress:print(msg) end
   end

   -- the loss, the reference, beta
   local loss_fn, loss_name, beta_s
   local ref, ref_mode, lookup, eval_lookup, cache_paths = nil, "none", nil, nil, nil
   local sync = o.sync_ref
   if not sft then
      local loss = o.loss or "sigmoid"
      loss_fn = eval.resolve_loss(loss)
      loss_name = type(loss) == "string" and loss or "custom"
      beta_s = as_schedule(o.beta or 0.1, "beta", fname)
      ref = o.ref
      if ref == nil and rst then
         -- the reference was the policy as the phase began: the checkpoint names it
         local src = rst.reference and rst.reference.source
         if type(src) ~= "string" or lfs.attributes(src, "mode") ~= "directory" then
            fail(fname, "resuming needs the reference model: pass ref = (the model the phase began " ..
                 "with%s)", type(src) == "string" and (", " .. src) or "")
         end
         local ok, m = pcall(models.load, src)
         if not ok then fail(fname, "resume: the reference: %s", tostring(m)) end
         ref = m:freeze()
      end
      local needs_ref = not NO_REF[loss_name]
      if ref == false or not needs_ref then
         ref, ref_mode = nil, "none"
      else
         -- a frozen copy: the caller's model is never changed
         if ref == nil or not ref:is_frozen() then ref = (ref or model):clone(true) end
         ref_mode = "model"
      end
      if sync ~= nil then
         if type(sync) ~= "table" then fail(fname, "sync_ref must be a table {tau =, alpha =}") end
         if not ref then fail(fname, "sync_ref needs a reference model") end
         if o.precompute_ref then fail(fname, "sync_ref and precompute_ref exclude each other") end
         sync = { tau = sync.tau or 512, alpha = sync.alpha or 0.6 }
         if math.type(sync.tau) ~= "integer" or sync.tau < 1 then fail(fname, "sync_ref.tau must be an integer >= 1") end
         if not (sync.alpha > 0 and sync.alpha <= 1) then fail(fname, "sync_ref.alpha must be in (0, 1]") end
         ref_mode = "sync"
         if rst then
            if not (resume.ref_tensors) then
               fail(fname, "%s has no ref_model.safetensors, which a TR-DPO run resumes from",
                    resume.path or "the checkpoint")
            end
            core.no_grad(function()
               for _, np in ipairs(ref:named_parameters()) do
                  local t = resume.ref_tensors[np[1]]
                  if not t then fail(fname, "ref_model.safetensors lacks %s", np[1]) end
                  np[2]:copy(t)
               end
            end)
         end
      end
      if o.precompute_ref and ref then
         local dir = o.ref_cache
         if dir == nil and run.dir then
            local parent = run.dir:match("^(.*)/[^/]+$") or "."
            dir = parent .. "/cache"
         end
         local copts = { dir = dir, batch_size = o.eval_batch_size or 2 * bs }
         local c, r, path = ref_table(ref, ds, copts, say)
         lookup = ref_lookup(ds, c, r)
         cache_paths = { path }
         if o.eval_data then
            local ec, er, epath = ref_table(ref, o.eval_data, copts, say)
            eval_lookup = ref_lookup(o.eval_data, ec, er)
            cache_paths[2] = epath
         end
         ref, ref_mode = nil, "precomputed"
         collectgarbage()
      end
   end

   -- the optimizer and schedules
   local lr_s = as_schedule(o.lr or (sft and 1e-3 or 1e-6), "lr", fname)
   local params = model:parameters()
   local opt, opt_name = make_optimizer(o.optimizer, params, o.optimizer_options, lr_s(1, nil), fname)
   if rst and resume.optimizer_state then
      local ok, err = pcall(opt.load_state_dict, opt, resume.optimizer_state)
      if not ok then fail(fname, "resume: the optimizer state: %s", tostring(err)) end
   end

   if o.dropout then model:train(true) else model:eval() end
   model:zero_grad()

   -- the data position
   local epoch, in_epoch = 1, 0
   if rst then
      epoch, in_epoch = math.tointeger(rst.data.epoch) or 1, math.tointeger(rst.data.batch) or 0
   end
   local iter = ds:batches(bs, { shuffle = shuffle, seed = seed, epoch = epoch, sft = sft, skip = in_epoch })
   local function next_batch()
      local b = iter()
      if b == nil then
         epoch, in_epoch = epoch + 1, 0
         iter = ds:batches(bs, { shuffle = shuffle, seed = seed, epoch = epoch, sft = sft })
         b = iter()
      end
      in_epoch = in_epoch + 1
      return b
   end

   -- one micro-batch: forward, loss, backward (scaled); loss value, metrics, tokens
   local last_metrics, beta = nil, nil
   local function micro_step(b)
      local B = b.size
      local lp, cnt = model:logps(b.ids, b.mask)
      local loss, m
      if sft then
         local n = cnt:sum():item()
         loss = -lp:sum() / math.max(n, 1)
         m = { ["logps/chosen"] = lp:detach():sum():item() / B }
      else
         local args = {
            pi_c = lp:narrow(1, 1, B), pi_r = lp:narrow(1, B + 1, B),
            n_c = cnt:narrow(1, 1, B), n_r = cnt:narrow(1, B + 1, B), beta = beta,
         }
         if lookup then
            args.ref_c, args.ref_r = lookup(b.pairs)
         elseif ref then
            local rl = core.no_grad(function() return (ref:logps(b.ids, b.mask)) end)
            args.ref_c, args.ref_r = rl:narrow(1, 1, B), rl:narrow(1, B + 1, B)
         elseif not NO_REF[loss_name] then
            args.ref_c, args.ref_r = core.zeros(B), core.zeros(B)
         end
         for k, v in pairs(o.loss_options or {}) do args[k] = v end
         loss, m = loss_fn(args)
         if not core.is_tensor(loss) then
            fail(fname, "the loss returned a %s, not a tensor", type(loss))
         end
      end
      local value = loss:item()
      if finite(value) then
         if accum > 1 then loss = loss / accum end
         loss:backward()
      end
      local ntok = b.prompt_lengths:sum():item() + b.response_lengths:sum():item()
      return value, m or {}, ntok
   end

   -- evaluation
   local eval_bs = o.eval_batch_size or 2 * bs
   local last_eval
   local function evaluate(step)
      if not o.eval_data then return nil end
      local m
      if sft then
         m = eval.nll(model, o.eval_data, { batch_size = eval_bs, max_pairs = o.eval_pairs })
         m.loss = m.nll
      else
         local b = beta or beta_s(math.max(step - first, 1), last_metrics)
         m = eval.preferences(model, ref or false, o.eval_data, {
            batch_size = eval_bs, max_pairs = o.eval_pairs, beta = b, loss = loss_fn,
            loss_options = o.loss_options, ref_logps = eval_lookup,
         })
      end
      local rec = { step = step, phase = phase, elapsed = run:elapsed() }
      for k, v in pairs(m) do
         if k ~= "pairs" then rec["eval/" .. k] = v end
      end
      rec["eval/pairs"] = m.pairs
      run:log(rec)
      last_eval = rec
      if o.on_eval then o.on_eval(rec) end
      if not quiet then
         local parts = { format("%s eval at step %d (%d pairs): loss %.4f", phase, step, m.pairs, m.loss) }
         if m["rewards/accuracies"] then
            parts[#parts + 1] = format("accuracy %.3f  margin %.3f", m["rewards/accuracies"],
                                       m["rewards/margins"])
         end
         say(table.concat(parts, "  "))
      end
      return rec
   end

   -- the trainer's state, for trainer_state.json
   local skipped, bad_in_row, num_tokens = 0, 0, 0
   local last_sync = 0
   -- running means between log records
   local sums, nsum, window_tokens, window_time = {}, 0, 0, 0
   local last_record
   local loss_state = o.loss_options and type(o.loss_options.state) == "table" and o.loss_options.state or nil
   local function trainer_state(step, s, complete)
      return {
         format = STATE_FORMAT,
         phase = phase, kind = kind, global_step = step, phase_step = s, first_step = first,
         max_steps = total, epoch = (epoch - 1) + in_epoch / nb,
         data = { epoch = epoch, batch = in_epoch, batches_per_epoch = nb, batch_size = bs,
                  grad_accum = accum, shuffle = shuffle, seed = seed, pairs = #ds },
         rng_state = hex(core.rng_state()),
         skipped_steps = skipped, bad_steps_in_row = bad_in_row, num_tokens = num_tokens,
         learning_rate = opt.lr, beta = beta, loss = loss_name,
         reference = not sft and { mode = ref_mode, source = o.ref_source, caches = cache_paths,
                                   sync = sync, last_sync = last_sync } or nil,
         options = plain_options(o),
         elapsed = run:elapsed(),
         complete = complete or false,
         -- what the steps after this one read, kept exactly
         dropout_state = hex(model:dropout_state()),
         last_metrics = exact(last_metrics),
         window = { sums = exact(sums), steps = nsum, tokens = window_tokens },
         loss_state = exact(loss_state),
         last_record = last_record, last_eval = last_eval,
         log_history = run.records,
      }
   end

   local last_checkpoint = rst and resume.path or nil
   local function checkpoint(step, s, complete)
      if not run.dir then return nil end
      local path = format("%s/checkpoint-%d", run.dir, step)
      local ok, err = pcall(train.save_checkpoint, path, {
         model = model, tokenizer = o.tokenizer or ds:tokenizer(), optimizer = opt,
         state = trainer_state(step, s, complete), ref = ref_mode == "sync" and ref or nil,
      })
      if not ok then
         progress:finish()
         fail(fname, "cannot save %s: %s%s", path, tostring(err):gsub("^save_checkpoint: ", ""),
              last_checkpoint and format("; the last complete checkpoint is %s", last_checkpoint)
                 or "; no checkpoint of this phase was saved before")
      end
      last_checkpoint = path
      say("saved " .. path)
      return path
   end

   -- the counters of a resumed phase
   local s0 = 0
   if rst then
      s0 = math.tointeger(rst.phase_step) or 0
      skipped = math.tointeger(rst.skipped_steps) or 0
      bad_in_row = math.tointeger(rst.bad_steps_in_row) or 0
      num_tokens = math.tointeger(rst.num_tokens) or 0
      last_sync = math.tointeger(rst.reference and rst.reference.last_sync) or 0
      last_metrics = unexact(rst.last_metrics)
      local w = rst.window or {}
      sums, nsum, window_tokens = unexact(w.sums) or {}, math.tointeger(w.steps) or 0, math.tointeger(w.tokens) or 0
      last_record, last_eval = rst.last_record, rst.last_eval
      if loss_state then
         for k, v in pairs(unexact(rst.loss_state) or {}) do loss_state[k] = v end
      end
      if rst.rng_state then core.set_rng_state(unhex(rst.rng_state)) end
      if rst.dropout_state then model:set_dropout_state(unhex(rst.dropout_state)) end
      if s0 > total then
         fail(fname, "%s is at step %d of this phase, past its %d steps", resume.path or "the checkpoint",
              s0, total)
      end
      say(format("resuming %s at step %d of %d (global step %d) from %s", phase, s0, total, first + s0,
                 resume.path or "a checkpoint"))
   end

   if o.eval_data and o.eval_first ~= false and not rst then evaluate(first) end

   -- Ctrl-C and SIGTERM: the step in progress ends, a checkpoint is saved,
   -- and the phase raises a stop ({exit_code = 130 or 143, ...}); a second
   -- signal ends the process at once.
   local trap = o.stop_on_signal ~= false
   local trap_guard <close> = trap and core.trap_signals()
      and setmetatable({}, { __close = function() core.release_signals() end }) or nil
   local function stop_if_signalled(step, s, saved, at_end)
      if not trap then return end
      local sig, code = core.pending_signal()
      if not sig then return end
      progress:finish()
      local path = saved
      if not at_end and not path then path = checkpoint(step, s) end
      error(setmetatable({
         signal = sig, exit_code = code, step = step, phase = phase, checkpoint = path, run_dir = run.dir,
         message = format("stopped by %s after step %d (%s: %d of %d steps)%s", sig, step, phase, s, total,
                          path and ("; saved " .. path) or "; no run directory, nothing saved"),
      }, { __tostring = function(e) return e.message end }), 0)
   end

   local t_start = core.clock()

   for s = s0 + 1, total do
      local step_t0 = core.clock()
      local step = first + s
      local lr = lr_s(s, last_metrics)
      if not finite(lr) or lr < 0 then fail(fname, "the lr schedule gave %s at step %d", tostring(lr), s) end
      opt.lr = lr
      if not sft then
         beta = beta_s(s, last_metrics)
         if not finite(beta) or beta <= 0 then
            fail(fname, "the beta schedule gave %s at step %d", tostring(beta), s)
         end
      end
      local step_sums, pairs_seen, bad = {}, 0, nil
      for _ = 1, accum do
         local b = next_batch()
         local value, m, ntok = micro_step(b)
         num_tokens = num_tokens + ntok
         window_tokens = window_tokens + ntok
         if not finite(value) then
            bad = format("loss is %s", show_number(value))
            break
         end
         step_sums.loss = (step_sums.loss or 0) + value * b.size
         for k, v in pairs(m) do
            if type(v) == "number" then step_sums[k] = (step_sums[k] or 0) + v * b.size end
         end
         pairs_seen = pairs_seen + b.size
      end
      local norm
      if not bad then
         if clip then
            norm = optim.clip_grad_norm(params, clip)
         else
            norm = optim.grad_norm(params)
         end
         if not finite(norm) then bad = format("gradient norm is %s", show_number(norm)) end
      end
      if bad then
         model:zero_grad()
         skipped, bad_in_row = skipped + 1, bad_in_row + 1
         say(format("warning: %s step %d skipped: the %s (%d skipped so far)", phase, step, bad, skipped))
         if bad_in_row >= max_bad then
            progress:finish()
            fail(fname, "stopped at step %d: %d steps in a row had a non-finite loss or gradient " ..
                 "(the last: %s); lower the learning rate (now %g)%s, or check the data", step,
                 bad_in_row, bad, lr, sft and "" or ", lower beta")
         end
      else
         opt:step()
         model:zero_grad()
         bad_in_row = 0
         local m = {}
         for k, v in pairs(step_sums) do m[k] = v / pairs_seen end
         last_metrics = m
         for k, v in pairs(m) do sums[k] = (sums[k] or 0) + v end
         sums.grad_norm = (sums.grad_norm or 0) + norm
         nsum = nsum + 1
      end

      if ref_mode == "sync" and s % sync.tau == 0 then
         sync_reference(ref, model, sync.alpha)
         last_sync = step
      end

      window_time = window_time + (core.clock() - step_t0)
      if s % log_every == 0 or s == total then
         local rec = { step = step, phase = phase, learning_rate = lr,
                       epoch = (epoch - 1) + in_epoch / nb, num_tokens = num_tokens,
                       tokens_per_second = window_tokens / math.max(window_time, 1e-9),
                       elapsed = run:elapsed() }
         if not sft then rec.beta = beta end
         if nsum > 0 then
            for k, v in pairs(sums) do rec[k] = v / nsum end
         end
         if skipped > 0 then rec.skipped_steps = skipped end
         run:log(rec)
         last_record = rec
         if o.on_log then o.on_log(rec) end
         sums, nsum, window_tokens, window_time = {}, 0, 0, 0
      end
      progress:update(step, last_record or last_metrics)

      if eval_every > 0 and s % eval_every == 0 and s ~= total then evaluate(step) end
      local saved
      if save_every > 0 and s % save_every == 0 and s ~= total then saved = checkpoint(step, s) end
      stop_if_signalled(step, s, saved)
   end
   progress:finish()
   if o.eval_data then evaluate(first + total) end
   local final
   if o.save ~= false then final = checkpoint(first + total, total, true) end
   stop_if_signalled(first + total, total, final, true)
   if not quiet then
      say(format("%s: %d steps in %.1fs%s", phase, total, core.clock() - t_start,
                 skipped > 0 and format(" (%d skipped)", skipped) or ""))
   end
   return {
      model = model, optimizer = opt, step = first + total, steps = total, metrics = last_record,
      eval = last_eval, skipped = skipped, checkpoint = last_checkpoint,
      elapsed = core.clock() - t_start, run = run, ref = ref, optimizer_name = opt_name,
      state = trainer_state(first + total, total, true),
   }
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

train.hex, train.unhex = hex, unhex

return train
