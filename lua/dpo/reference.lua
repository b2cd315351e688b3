-- dpo.reference: the reference model of a DPO phase (internal; used by
-- dpo.train, whose options it reads: ref, precompute_ref, ref_cache,
-- sync_ref).
--
-- Three kinds, by R.mode:
--   "model"        a frozen model: the caller's frozen ref as it is, another
--                  (or, with ref = nil, the policy as the phase begins)
--                  copied frozen; its log-probs are computed with each batch
--   "base"         the policy itself with its LoRA adapters off
--                  (dpo.lora.disabled), in eval mode: the default when the
--                  policy has adapters (or ref = "base"); no copy is kept
--   "precomputed"  the log-probs of every train and eval pair computed once,
--                  before training, and cached on disk under a name hashing
--                  the data and the weights; the model is then let go. In a
--                  job (dpo.dist) each rank computes its share of the batches
--                  and all are gathered, so every rank holds the whole table;
--                  rank 0 alone writes the file
--   "sync"         TR-DPO: a frozen copy that every tau steps becomes
--                  alpha * policy + (1 - alpha) * ref (a policy with
--                  adapters: the copy and the mix are of the merged
--                  weights W + s B A, so TR-DPO is exact there too)
--   "none"         ref = false, or a loss that never reads one (simpo, orpo,
--                  cpo, sft): the log-probs are 0 where a loss asks
--
--   reference.setup(P) -> R   the reference of phase P (dpo.train's phase
--                  table: o, model, ds, bs, loss_name, rst, resume, run, say,
--                  fname); R = {mode, model, lookup, eval_lookup, caches,
--                  sync = {tau, alpha}, last_sync}. When resuming, the
--                  reference comes from the checkpoint (ref_source, or the
--                  TR-DPO ref_model.safetensors)
--   reference.logps(R, b, loss_name) -> ref_c, ref_r   [B] each for the
--                  micro-batch b (2B rows: chosen then rejected), or nil
--                  for a reference-free loss. Called before the policy's
--                  forward: with "base" it is the same model, whose
--                  activations the policy's backward needs
--   reference.eval_logps(R) -> nil | function(pairs, b) for
--                  dpo.eval.preferences's ref_logps (the "base" reference)
--   reference.after_step(R, policy, s, step)   the TR-DPO sync after phase
--                  step s (global step `step`)
--   reference.data_key(ds), reference.weights_key(model)   the cache keys:
--                  16 hex digits of a 64-bit FNV-1a hash of a tokenized
--                  dataset (texts, token counts, tokenization options), of
--                  a model's weights (config; each parameter's sum, sum of
--                  squares and dot product with a fixed random tensor, the
--                  generator restored afterwards); dpo.train.data_key and
--                  dpo.train.weights_key
local core = require "dpo.core"
local lfs = require "lfs"
local log = require "dpo.log"
local models = require "dpo.model"
local lora = require "dpo.lora"
local dist = require "dpo.dist"

local reference = {}

local format = string.format

local function fail(fname, msg, ...)
   error(format("dpo.train.%s: " .. msg, fname, ...), 0)
end

-- The losses that never read a reference.
local NO_REF = { simpo = true, orpo = true, cpo = true, sft = true }
reference.NO_REF = NO_REF

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
-- (the generator's state is restored afterwards). A model with adapters:
-- its base weights and, unless they are off, its adapters.
local function weights_key(model)
   if not models.is_model(model) then
      error("dpo.train.weights_key: expected a model (dpo.model), got " .. tostring(model), 2)
   end
   local h = -3750763034362895579
   local c = model:config()
   h = hash_update(h, format("%d|%d|%d|%d|%d", c.vocab_size, c.n_ctx, c.n_layer, c.n_head, c.n_embd))
   local saved = core.rng_state()
   core.manual_seed(20240531)
   local info = model:lora()
   core.no_grad(function()
      for _, np in ipairs(model:named_parameters(true)) do
         local p = np[2]
         if info and not info.enabled and np[1]:find(".lora_", 1, true) then goto next end
         local r = core.randn(table.unpack(p:size()))
         h = hash_update(h, format("%s:%.7g:%.7g:%.7g", np[1], p:sum():item(), (p * p):sum():item(),
                                   (p * r):sum():item()))
         ::next::
      end
   end)
   core.set_rng_state(saved)
   return hash_hex(h)
end

reference.data_key, reference.weights_key = data_key, weights_key

-- ---- reference log-probs ---------------------------------------------------------------

-- This rank's share of the reference log-probs of ds's batches of bs pairs
-- (in a job of size ranks, batches r+1, r+1+size, ... of rank r; alone, all),
-- gathered so that every rank holds all of them: chosen, rejected as Lua
-- lists in ds order. Each batch is the one a single process forms, so the
-- values are those it computes.
local function sharded_logps(ref, ds, bs)
   local size, rank = dist.size(), dist.rank()
   local mine, index = {}, 0
   core.no_grad(function()
      for b in ds:batches(bs) do
         if index % size == rank then
            local lp = ref:logps(b.ids, b.mask):totable() -- [2B]: chosen, then rejected
            local parts = { string.pack("<i4i4", index + 1, b.size) }
            for i = 1, 2 * b.size do parts[i + 1] = string.pack("<f", lp[i]) end
            mine[#mine + 1] = table.concat(parts)
         end
         index = index + 1
      end
   end)
   local gathered = size > 1 and dist.allgather(table.concat(mine)) or { table.concat(mine) }
   local batches = {}
   for _, bytes in ipairs(gathered) do
      local at = 1
      while at <= #bytes do
         local i, B
         i, B, at = string.unpack("<i4i4", bytes, at)
         local lp = {}
         for j = 1, 2 * B do lp[j], at = string.unpack("<f", bytes, at) end
         batches[i] = { B = B, lp = lp }
      end
   end
   local c, r, at = {}, {}, 0
   for i = 1, index do
      local b = batches[i] or error(format("dpo.train: reference batch %d of %d came back from no rank", i, index), 0)
      for j = 1, b.B do
         c[at + j], r[at + j] = b.lp[j], b.lp[b.B + j]
      end
      at = at + b.B
   end
   return c, r
end

-- The reference log-probs of every pair of ds (in ds order): chosen, rejected
-- as float32 [N] tensors, from the cache file when it is there. In a job the
-- ranks agree: the file is read when every rank finds it, else each computes
-- its share (sharded_logps) and rank 0 alone writes the file.
local function ref_table(ref, ds, opts, say)
   local key = data_key(ds) .. "-" .. weights_key(ref)
   local main = dist.rank() == 0
   local path, tc, tr
   if opts.dir then
      if main then
         local ok, err = log.mkdirs(opts.dir)
         if not ok then fail("dpo", "cannot create the reference cache: %s", err) end
      end
      path = format("%s/ref_logps-%s.safetensors", opts.dir, key)
      if lfs.attributes(path, "mode") == "file" then
         local t, meta = core.load(path)
         if t and t.chosen and t.rejected and t.chosen:size(1) == #ds and meta.key == key then
            tc, tr = t.chosen, t.rejected
         end
      end
      if dist.size() > 1 and dist.any(tc == nil) then tc, tr = nil, nil end
      if tc then
         say(format("reference log-probs of %d pairs from %s", #ds, path))
         return tc, tr, path, true
      end
   end
   local bs = opts.batch_size or 32
   local t0 = core.clock()
   local was = ref:is_training()
   ref:eval()
   local ok, c, r = pcall(sharded_logps, ref, ds, bs)
   if was then ref:train(true) end
   if not ok then error(c, 0) end
   tc, tr = core.tensor(c), core.tensor(r)
   if path and main then
      local okw, err = core.save(path, { chosen = tc, rejected = tr }, { key = key, pairs = #ds })
      if not okw then say("warning: could not cache the reference log-probs: " .. err) end
   end
   say(format("reference log-probs of %d pairs computed in %.1fs%s%s", #ds, core.clock() - t0,
              dist.size() > 1 and format(" by %d ranks", dist.size()) or "",
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

-- The policy's log-probs with its adapters off and in eval mode: the "base"
-- reference (under no_grad; the policy's train mode comes back).
local function base_logps(policy, ids, mask)
   local was = policy:is_training()
   if was then policy:eval() end
   local ok, rl = pcall(lora.disabled, policy, core.no_grad, function() return (policy:logps(ids, mask)) end)
   if was then policy:train(true) end
   if not ok then error(rl, 0) end
   return rl
end

-- A frozen copy of a policy with adapters, folded in: an ordinary model.
local function merged_copy(policy)
   return lora.merge(policy:clone(true))
end

-- TR-DPO: ref <- alpha * policy + (1 - alpha) * ref
local function sync_reference(ref, policy, alpha)
   if policy:lora() then policy = merged_copy(policy) end -- W + s B A, for a while
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


-- ---- a phase's reference ---------------------------------------------------------------

-- The reference model as the options give it (nil: none): when resuming
-- without one, the model the checkpoint's phase began with.
local function reference_model(P)
   local ref, rst = P.o.ref, P.rst
   local adapted = P.model:lora() ~= nil
   if ref == "base" and not adapted then
      fail(P.fname, "ref = \"base\" is the policy with its adapters off: the policy has none (dpo.lora.apply)")
   end
   if ref == false or NO_REF[P.loss_name] then return nil end
   if adapted and (ref == nil or ref == "base") then
      if P.o.sync_ref == nil then return "base" end
      if ref == "base" then
         fail(P.fname, "sync_ref (TR-DPO) moves the reference, which ref = \"base\" cannot: leave ref " ..
              "nil for a merged copy of the policy")
      end
      return merged_copy(P.model) -- TR-DPO's moving reference: the weights it mixes
   end
   if ref == nil and rst then
      -- the reference was the policy as the phase began: the checkpoint names it
      local src = rst.reference and rst.reference.source
      if type(src) ~= "string" or lfs.attributes(src, "mode") ~= "directory" then
         fail(P.fname, "resuming needs the reference model: pass ref = (the model the phase began " ..
              "with%s)", type(src) == "string" and (", " .. src) or "")
      end
      local ok, m = pcall(models.load, src)
      if not ok then fail(P.fname, "resume: the reference: %s", tostring(m)) end
      ref = m:freeze()
   end
   if ref == false or NO_REF[P.loss_name] then return nil end
   -- a frozen copy: the caller's model is never changed
   if ref == nil or not ref:is_frozen() then ref = (ref or P.model):clone(true) end
   return ref
end

-- TR-DPO: the sync options checked; when resuming, the reference's weights
-- as the checkpoint saved them.
local function setup_sync(P, R)
   local o, fname, sync = P.o, P.fname, R.sync
   if type(sync) ~= "table" then fail(fname, "sync_ref must be a table {tau =, alpha =}") end
   if not R.model then fail(fname, "sync_ref needs a reference model") end
   if o.precompute_ref then fail(fname, "sync_ref and precompute_ref exclude each other") end
   sync = { tau = sync.tau or 512, alpha = sync.alpha or 0.6 }
   if math.type(sync.tau) ~= "integer" or sync.tau < 1 then fail(fname, "sync_ref.tau must be an integer >= 1") end
   if not (sync.alpha > 0 and sync.alpha <= 1) then fail(fname, "sync_ref.alpha must be in (0, 1]") end
   R.sync, R.mode = sync, "sync"
   if P.rst then
      local resume = P.resume
      if not (resume.ref_tensors) then
         fail(fname, "%s has no ref_model.safetensors, which a TR-DPO run resumes from",
              resume.path or "the checkpoint")
      end
      core.no_grad(function()
         for _, np in ipairs(R.model:named_parameters()) do
            local t = resume.ref_tensors[np[1]]
            if not t then fail(fname, "ref_model.safetensors lacks %s", np[1]) end
            np[2]:copy(t)
         end
      end)
   end
end

-- The reference log-probs of the train and eval pairs, computed (or read
-- from the cache) now; the model is let go.
local function precompute(P, R)
   local o = P.o
   local dir = o.ref_cache
   if dir == nil and P.run.dir then
      local parent = P.run.dir:match("^(.*)/[^/]+$") or "."
      dir = parent .. "/cache"
   end
   -- in a job rank 0's run directory names it (the others have none)
   if dist.size() > 1 then dir = dist.allgather(dir)[1] end
   local copts = { dir = dir, batch_size = o.eval_batch_size or 2 * P.bs }
   local ref = R.mode == "base" and P.model or R.model
   local function tables()
      local c, r, path = ref_table(ref, P.ds, copts, P.say)
      R.lookup = ref_lookup(P.ds, c, r)
      R.caches = { path }
      if o.eval_data then
         local ec, er, epath = ref_table(ref, o.eval_data, copts, P.say)
         R.eval_lookup = ref_lookup(o.eval_data, ec, er)
         R.caches[2] = epath
      end
   end
   if R.mode == "base" then lora.disabled(P.model, tables) else tables() end
   R.model, R.mode = nil, "precomputed"
   collectgarbage()
end

function reference.setup(P)
   local R = { mode = "none", sync = P.o.sync_ref, last_sync = 0 }
   if P.sft then return R end
   R.model = reference_model(P)
   if R.model == "base" then
      R.model, R.mode, R.base = nil, "base", P.model
   elseif R.model then
      R.mode = "model"
   end
   if R.sync ~= nil then setup_sync(P, R) end
   if P.o.precompute_ref and (R.model or R.base) then precompute(P, R) end
   if R.mode ~= "base" then R.base = nil end
   return R
end

function reference.eval_logps(R)
   if not R.base then return nil end
   return function(_, b)
      local B = b.size
      local rl = base_logps(R.base, b.ids, b.mask)
      return rl:narrow(1, 1, B), rl:narrow(1, B + 1, B)
   end
end

function reference.logps(R, b, loss_name)
   local B = b.size
   if R.lookup then
      return R.lookup(b.pairs)
   elseif R.base then
      local rl = base_logps(R.base, b.ids, b.mask)
      return rl:narrow(1, 1, B), rl:narrow(1, B + 1, B)
   elseif R.model then
      local ref = R.model
      local rl = core.no_grad(function() return (ref:logps(b.ids, b.mask)) end)
      return rl:narrow(1, 1, B), rl:narrow(1, B + 1, B)
   elseif not NO_REF[loss_name] then
      return core.zeros(B), core.zeros(B)
   end
   return nil, nil
end

function reference.after_step(R, policy, s, step)
   if R.mode == "sync" and s % R.sync.tau == 0 then
      sync_reference(R.model, policy, R.sync.alpha)
      R.last_sync = step
   end
end

return reference
