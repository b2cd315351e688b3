-- dpo.checkpoint: a phase's checkpoints on disk and the state that resumes
-- it (internal; its public face is dpo.train's *_checkpoint functions).
--
--   checkpoint.save(dir, {model, tokenizer, optimizer, state, ref, base}) -> dir
--       dpo.train.save_checkpoint: written into .NAME.tmp next to dir, then
--       renamed over it (a crash never leaves a half-written checkpoint)
--   checkpoint.load(dir)   dpo.train.load_checkpoint -> {path, model,
--                          tokenizer, state, optimizer_state, ref_tensors,
--                          adapters}
--
-- A model with LoRA adapters (dpo.lora) is saved as its adapters only
-- (adapter_config.json, adapter_model.safetensors: PEFT's layout) and
-- trainer_state.json's lora = {base = the base model's path when known,
-- base_hash = model:base_hash()}; its optimizer state is the adapters'.
-- Loading such a checkpoint gives adapters = its path and no model;
-- resuming from it applies the adapters to the phase's model, whose base
-- must hash the same (a different base is an error).
--   checkpoint.latest(run_dir [, say])   dpo.train.latest_checkpoint
--   checkpoint.list(run_dir)             dpo.train.checkpoints
--   checkpoint.hex(s), checkpoint.unhex(s)   bytes <-> hex text
--                          (dpo.train.hex, dpo.train.unhex)
--   checkpoint.exact(t), checkpoint.unexact(t)   a flat table of numbers for
--                          trainer_state.json and back: floats travel as
--                          "f:" and the hex of their 8 bytes, so they come
--                          back bit for bit (JSON keeps 14 digits)
--   checkpoint.FORMAT      the trainer state's format tag
--
-- A phase's side (P is the phase table of dpo.train, see there):
--   checkpoint.resume(P)   P.o.resume (a directory or a loaded checkpoint)
--                          checked against this phase, its weights copied
--                          into P.model; sets P.resume, P.rst, P.first
--   checkpoint.state(P, step, s, complete)  the trainer_state.json table:
--                          counters, data position, generators, running
--                          means, options and every record so far
--   checkpoint.restore(P)  the counters, running means, loss state and
--                          generators of P.rst back into P; sets P.s0
--   checkpoint.save_phase(P, step, s [, complete]) -> path | nil
--                          RUN/checkpoint-STEP (nil without a run
--                          directory); a failed save is an error naming the
--                          last complete checkpoint
--
-- Errors name dpo.train's functions, as a user calls them.
local core = require "dpo.core"
local check = require "dpo.check"
local cjson = require("cjson").new()
local lfs = require "lfs"
local log = require "dpo.log"
local gpt = require "dpo.gpt"
local lora = require "dpo.lora"
local models = require "dpo.model"

cjson.encode_invalid_numbers("null")
cjson.encode_sparse_array(true)

local checkpoint = {}

local format = string.format
local STATE_FORMAT = "dpolua.trainer_state.v1"
checkpoint.FORMAT = STATE_FORMAT

local function fail(fname, msg, ...)
   error(format("dpo.train.%s: " .. msg, fname, ...), 0)
end

-- A path argument of train.<fname> (see dpo.check).
local function check_path(fname, p, what, level)
   check.path("dpo.train." .. fname, p, what, level + 1)
end

-- ---- exact numbers ---------------------------------------------------------------------

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

checkpoint.hex, checkpoint.unhex = hex, unhex
checkpoint.exact, checkpoint.unexact = exact, unexact

-- ---- files ---------------------------------------------------------------------------

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

-- dpo.train.save_checkpoint(dir, {model, tokenizer, optimizer, state, ref, base})
-- (base: the path of the base model of a model with adapters)
-- -> dir. Written into a temporary directory next to dir, then renamed.
function checkpoint.save(dir, parts)
   check_path("save_checkpoint", dir, "the directory", 2)
   if type(parts) ~= "table" then
      error("dpo.train.save_checkpoint: expected a table {model =, ...}, got " .. type(parts), 2)
   end
   local m = parts.model
   if not models.is_model(m) then
      error("dpo.train.save_checkpoint: model must be a model (dpo.model), got " .. tostring(m), 2)
   end
   dir = dir:gsub("/+$", "")
   local parent, name = dir:match("^(.*)/([^/]+)$")
   if not parent then parent, name = ".", dir end
   local tmp = format("%s/.%s.tmp", parent, name)
   log.rmtree(tmp)
   local ok, err = log.mkdirs(tmp)
   if not ok then error("save_checkpoint: " .. err, 2) end
   local adapted = m:lora() ~= nil
   local good, msg = pcall(function()
      local state = parts.state or {}
      if adapted then
         local base = parts.base or models.source(m) or lora.config(m).base_model_name_or_path
         lora.save(m, tmp, { base_model_name_or_path = base })
         state.lora = { base = base, base_hash = m:base_hash() }
      else
         m:save(tmp, { dtype = "float32" }) -- exact resume, whatever dtype it was loaded in
      end
      if parts.tokenizer then parts.tokenizer:save(tmp .. "/tokenizer.json") end
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
function checkpoint.load(dir)
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
   local out = { path = dir, state = state }
   if lfs.attributes(dir .. "/adapter_config.json", "mode") == "file"
      and not lfs.attributes(dir .. "/model.safetensors") then
      out.adapters = dir -- a LoRA run's: its adapters, applied by resuming
   else
      local okm, model = pcall(models.load, dir)
      if not okm then error("load_checkpoint: " .. tostring(model), 2) end
      out.model = model
   end
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
function checkpoint.latest(run_dir, say)
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
   local list = checkpoint.list(run_dir)
   if #list == 0 then return nil, run_dir .. ": no checkpoint to resume from" end
   local reasons = {}
   for i = #list, 1, -1 do
      local ok, ck = pcall(checkpoint.load, list[i].path)
      if ok and type(ck.state) == "table" and ck.state.format == STATE_FORMAT then
         return ck
      end
      local why = ok and "not a dpolua trainer state" or tostring(ck)
      reasons[#reasons + 1] = list[i].path .. ": " .. why
      say(format("warning: passing over %s: %s", list[i].path, why))
   end
   return nil, "no checkpoint of " .. run_dir .. " loads (" .. table.concat(reasons, "; ") .. ")"
end

-- dpo.checkpoint.list(run_dir) -> list of {step = n, path = p}, by step
function checkpoint.list(run_dir)
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


-- ---- a phase's checkpoints ---------------------------------------------------------------

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

-- Resuming: the checkpoint P.o.resume, checked against this phase, and its
-- weights in P.model now; its optimizer state, data position, generators and
-- counters come back later (checkpoint.restore).
function checkpoint.resume(P)
   local o, fname, kind = P.o, P.fname, P.kind
   local resume = o.resume
   if resume == nil then return end
   if type(resume) == "string" then
      local ok, ck = pcall(checkpoint.load, resume)
      if not ok then fail(fname, "resume: %s", tostring(ck)) end
      resume = ck
   end
   if type(resume) ~= "table" or type(resume.state) ~= "table" or resume.state.format ~= STATE_FORMAT then
      fail(fname, "resume must be a checkpoint directory or dpo.train.load_checkpoint(dir)")
   end
   local rst = resume.state
   local where = resume.path or "the checkpoint"
   if rst.kind ~= kind then fail(fname, "%s is a checkpoint of a %s phase, not %s", where, tostring(rst.kind), kind) end
   local d = rst.data or {}
   -- a job may resume with another number of ranks when the global batch
   -- (ranks x grad_accum micro-batches) stays the same
   local mine = { batch_size = P.bs, global_batch = P.accum * (P.world or 1), seed = P.seed,
                  shuffle = P.shuffle, pairs = #P.ds }
   if d.grad_accum then d.global_batch = d.grad_accum * (d.ranks or 1) end
   for _, k in ipairs{ "batch_size", "global_batch", "seed", "shuffle", "pairs" } do
      if d[k] ~= mine[k] then
         fail(fname, "%s was made with %s = %s, this run has %s: it would not continue the same run",
              where, k == "pairs" and "data pairs"
                 or k == "global_batch" and "ranks x grad_accum (micro-batches per step)" or k,
              tostring(d[k]), tostring(mine[k]))
      end
   end
   if resume.adapters then
      -- a LoRA run: the adapters onto this model, whose base must be the one they were trained on
      local want = type(rst.lora) == "table" and rst.lora.base_hash
      if want and want ~= P.model:base_hash() then
         fail(fname, "%s holds adapters trained on another base model (%s%s); this model's base " ..
              "weights differ (%s)", where, tostring(want),
              rst.lora.base and (", " .. tostring(rst.lora.base)) or "", P.model:base_hash())
      end
      local ok, err = pcall(lora.load, P.model, resume.adapters)
      if not ok then fail(fname, "resume: %s", tostring(err)) end
   elseif resume.model and P.model:lora() then
      fail(fname, "%s holds a whole model, not adapters: the policy has adapters (dpo.lora)", where)
   elseif resume.model then
      local src = {}
      for _, np in ipairs(resume.model:named_parameters()) do src[np[1]] = np[2] end
      core.no_grad(function()
         for _, np in ipairs(P.model:named_parameters()) do
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
   P.resume, P.rst = resume, rst
   P.first = math.tointeger(rst.first_step) or P.first
end

-- The trainer's state after phase step s (global step `step`), for
-- trainer_state.json.
function checkpoint.state(P, step, s, complete)
   local R = P.ref
   return {
      format = STATE_FORMAT,
      phase = P.phase, kind = P.kind, global_step = step, phase_step = s, first_step = P.first,
      max_steps = P.total, epoch = (P.epoch - 1) + P.in_epoch / P.nb,
      data = { epoch = P.epoch, batch = P.in_epoch, batches_per_epoch = P.nb, batch_size = P.bs,
               grad_accum = P.accum, ranks = P.world or 1, shuffle = P.shuffle, seed = P.seed,
               pairs = #P.ds },
      rng_state = hex(core.rng_state()),
      skipped_steps = P.skipped, bad_steps_in_row = P.bad_in_row, num_tokens = P.num_tokens,
      learning_rate = P.opt.lr, beta = P.beta, loss = P.loss_name,
      reference = not P.sft and { mode = R.mode, source = P.o.ref_source, caches = R.caches,
                                  sync = R.sync, last_sync = R.last_sync } or nil,
      options = plain_options(P.o),
      elapsed = P.run:elapsed(),
      complete = complete or false,
      -- what the steps after this one read, kept exactly
      dropout_state = hex(P.model:dropout_state()),
      last_metrics = exact(P.last_metrics),
      window = { sums = exact(P.sums), steps = P.nsum, tokens = P.window_tokens },
      loss_state = exact(P.loss_state),
      last_record = P.last_record, last_eval = P.last_eval,
      log_history = P.run.records,
   }
end

-- The counters of a resumed phase, its running means, the loss's state and
-- the generators, from P.rst; P.s0 is the phase step it goes on after.
function checkpoint.restore(P)
   P.s0 = 0
   local rst = P.rst
   if not rst then return end
   P.s0 = math.tointeger(rst.phase_step) or 0
   P.skipped = math.tointeger(rst.skipped_steps) or 0
   P.bad_in_row = math.tointeger(rst.bad_steps_in_row) or 0
   P.num_tokens = math.tointeger(rst.num_tokens) or 0
   P.ref.last_sync = math.tointeger(rst.reference and rst.reference.last_sync) or 0
   P.last_metrics = unexact(rst.last_metrics)
   local w = rst.window or {}
   P.sums, P.nsum = unexact(w.sums) or {}, math.tointeger(w.steps) or 0
   P.window_tokens = math.tointeger(w.tokens) or 0
   P.last_record, P.last_eval = rst.last_record, rst.last_eval
   if P.loss_state then
      for k, v in pairs(unexact(rst.loss_state) or {}) do P.loss_state[k] = v end
   end
   if rst.rng_state then core.set_rng_state(unhex(rst.rng_state)) end
   if rst.dropout_state then P.model:set_dropout_state(unhex(rst.dropout_state)) end
   if P.s0 > P.total then
      fail(P.fname, "%s is at step %d of this phase, past its %d steps", P.resume.path or "the checkpoint",
           P.s0, P.total)
   end
   P.say(format("resuming %s at step %d of %d (global step %d) from %s", P.phase, P.s0, P.total,
                P.first + P.s0, P.resume.path or "a checkpoint"))
end

-- RUN/checkpoint-STEP after phase step s, or nil without a run directory.
function checkpoint.save_phase(P, step, s, complete)
   if not P.run.dir then return nil end
   local path = format("%s/checkpoint-%d", P.run.dir, step)
   local R = P.ref
   local ok, err = pcall(checkpoint.save, path, {
      model = P.model, tokenizer = P.o.tokenizer or P.ds:tokenizer(), optimizer = P.opt,
      state = checkpoint.state(P, step, s, complete), ref = R.mode == "sync" and R.model or nil,
      base = P.o.ref_source,
   })
   if not ok then
      P.progress:finish()
      fail(P.fname, "cannot save %s: %s%s", path, tostring(err):gsub("^save_checkpoint: ", ""),
           P.last_checkpoint and format("; the last complete checkpoint is %s", P.last_checkpoint)
              or "; no checkpoint of this phase was saved before")
   end
   P.last_checkpoint = path
   P.say("saved " .. path)
   return path
end

return checkpoint
