-- Reliability of a training run, with real `dpolua recipes/hh.lua`
-- subprocesses on a tiny model: the same seed gives the same numbers; a run
-- stopped by a signal, killed with SIGKILL at random moments, or failing to
-- save on a full or unwritable disk, resumes (--resume) to the weights an
-- uninterrupted run ends with, byte for byte; a run directory is never
-- overwritten unasked. In-process checks of dpo.train's resume cover what the
-- recipe does not use (dropout, a loss with running state, TR-DPO syncing).
local lfs = require "lfs"
local cjson = require "cjson"

local h = dofile("tests/spec/helper.lua")
local read, tmpdir, listing = h.read, h.tmpdir, h.listing
teardown(h.cleanup)

local quote, DPOLUA = h.quote, h.DPOLUA
local FAULTS = os.getenv("DPO_FAULTS_LIB")
local SANITIZE = os.getenv("DPO_SANITIZE") == "1"

-- A small run that still has everything: both phases, checkpoints every 4
-- steps, evaluations, the report.
local ARGS = { "--sft.steps=12", "--dpo.steps=12", "--save_every=4", "--log_every=2", "--eval_every=6",
               "--eval_pairs=8", "--samples=1", "--max_new_tokens=4", "--tiny.tokenizer=bytes",
               "--tiny.n_layer=1", "--tiny.n_embd=32", "--batch_size=4", "--max_length=96",
               "--max_prompt_length=48", "--progress=lines" }
local FINAL = "checkpoint-24"

-- `dpolua recipes/hh.lua args...` with env (a table of NAME = value) and
-- the stop hook loaded; returns {code, out, err, seconds}. kill_after: the
-- seconds after which it gets SIGKILL instead.
local function hh(args, env, kill_after)
   local out, err = os.tmpname(), os.tmpname()
   local parts = { "env -u LUA_INIT -u LUA_INIT_5_4 OMP_WAIT_POLICY=PASSIVE" }
   for k, v in pairs(env or {}) do parts[#parts + 1] = k .. "=" .. quote(v) end
   parts[#parts + 1] = quote(DPOLUA)
   parts[#parts + 1] = "-e " .. quote("dofile('tests/spec/stop_hook.lua')")
   parts[#parts + 1] = "recipes/hh.lua"
   for _, a in ipairs(args) do parts[#parts + 1] = quote(a) end
   local cmd = table.concat(parts, " ") .. " </dev/null >" .. out .. " 2>" .. err
   if kill_after then
      cmd = ("%s & pid=$!; sleep %.3f; kill -KILL $pid 2>/dev/null; wait $pid"):format(cmd, kill_after)
   end
   local t0 = dpo.clock()
   local _, _, code = os.execute(cmd)
   local r = { code = code, out = read(out), err = read(err), seconds = dpo.clock() - t0 }
   os.remove(out)
   os.remove(err)
   return r
end

local function with(extra)
   local t = {}
   for i, a in ipairs(ARGS) do t[i] = a end
   for _, a in ipairs(extra) do t[#t + 1] = a end
   return t
end

local function has(text, s)
   return text:find(s, 1, true) ~= nil
end

local function ok_run(r)
   assert(r.code == 0, ("exit %s\nstdout:\n%s\nstderr:\n%s"):format(tostring(r.code), r.out, r.err))
end

-- metrics.jsonl without the wall-clock fields
local function metrics(dir)
   local lines = {}
   for line in read(dir .. "/metrics.jsonl"):gmatch("[^\n]+") do
      local rec = cjson.decode(line)
      rec.elapsed, rec.tokens_per_second = nil, nil
      lines[#lines + 1] = rec
   end
   return lines
end

local function same_file(a, b)
   local x, y = read(a), read(b)
   assert(x and y, "missing " .. (x and b or a))
   assert(#x == #y and x == y, ("%s and %s differ (%d and %d bytes)"):format(a, b, #x, #y))
end

-- The run every other one is compared with, made once.
local straight_dir, straight_seconds
local function straight()
   if not straight_dir then
      straight_dir = tmpdir() .. "/run"
      local r = hh(with{ "--out=" .. straight_dir })
      ok_run(r)
      straight_seconds = r.seconds
   end
   return straight_dir
end

local function same_as_straight(dir)
   local s = straight()
   same_file(s .. "/" .. FINAL .. "/model.safetensors", dir .. "/" .. FINAL .. "/model.safetensors")
   same_file(s .. "/" .. FINAL .. "/optimizer.safetensors", dir .. "/" .. FINAL .. "/optimizer.safetensors")
   assert.are.same(metrics(s), metrics(dir))
end

describe("a run of recipes/hh.lua", function()
   it("gives the same weights and metrics when run again with the same seed", function()
      local again = tmpdir() .. "/again"
      ok_run(hh(with{ "--out=" .. again }))
      same_as_straight(again)
      -- and another seed gives other weights, so the comparison can fail
      local other = tmpdir() .. "/other"
      ok_run(hh(with{ "--out=" .. other, "--seed=1" }))
      assert.are_not.equal(read(straight() .. "/" .. FINAL .. "/model.safetensors"),
                           read(other .. "/" .. FINAL .. "/model.safetensors"))
   end)

   for _, case in ipairs{ { step = 6, phase = "sft" }, { step = 18, phase = "dpo" } } do
      it("stopped by Ctrl-C at step " .. case.step .. " (" .. case.phase .. ") saves, exits 130, and resumes to the same weights", function()
         local dir = tmpdir() .. "/run"
         local r = hh(with{ "--out=" .. dir }, { HOOK_STEP = case.step, HOOK_SIGNALS = "INT" })
         assert.are.equal(130, r.code, r.err)
         local ck = dir .. "/checkpoint-" .. case.step
         assert.is_true(has(r.err, "stopped by SIGINT after step " .. case.step), r.err)
         assert.is_true(has(r.err, "saved " .. ck), r.err)
         assert.is_true(has(r.err, "resume with: " .. DPOLUA .. " recipes/hh.lua --resume " .. dir), r.err)
         assert.are.equal("directory", lfs.attributes(ck, "mode"))
         assert.is_nil(lfs.attributes(dir .. "/" .. FINAL))
         local state = cjson.decode(read(ck .. "/trainer_state.json"))
         assert.are.equal(case.phase, state.phase)
         assert.are.equal(case.step, state.global_step)

         local again = hh({ "--resume=" .. dir })
         ok_run(again)
         assert.is_true(has(again.out, "resuming " .. dir .. " from " .. ck), again.out)
         same_as_straight(dir)
      end)
   end

   it("with precomputed or TR-DPO references resumes to the same weights too", function()
      for _, mode in ipairs{ "precompute", "sync" } do
         local a, b = tmpdir() .. "/a", tmpdir() .. "/b"
         ok_run(hh(with{ "--out=" .. a, "--dpo.ref=" .. mode, "--dpo.sync_tau=5" }))
         local r = hh(with{ "--out=" .. b, "--dpo.ref=" .. mode, "--dpo.sync_tau=5" },
                      { HOOK_STEP = 20, HOOK_SIGNALS = "INT" })
         assert.are.equal(130, r.code, r.err)
         ok_run(hh({ "--resume=" .. b }))
         same_file(a .. "/" .. FINAL .. "/model.safetensors", b .. "/" .. FINAL .. "/model.safetensors")
         assert.are.same(metrics(a), metrics(b))
      end
   end)

   it("stopped by SIGTERM exits 143 after saving", function()
      local dir = tmpdir() .. "/run"
      local r = hh(with{ "--out=" .. dir }, { HOOK_STEP = 10, HOOK_SIGNALS = "TERM" })
      assert.are.equal(143, r.code, r.err)
      assert.is_true(has(r.err, "stopped by SIGTERM after step 10"), r.err)
      assert.are.equal("directory", lfs.attributes(dir .. "/checkpoint-10", "mode"))
      ok_run(hh({ "--resume", dir }))
      same_as_straight(dir)
   end)

   it("ends at once on a second Ctrl-C, saving nothing more", function()
      local dir = tmpdir() .. "/run"
      local r = hh(with{ "--out=" .. dir }, { HOOK_STEP = 6, HOOK_SIGNALS = "INT INT" })
      assert.are.equal(130, r.code, r.err) -- the shell's status of a process SIGINT ended
      assert.is_false(has(r.err, "stopped by"), r.err)
      assert.is_nil(lfs.attributes(dir .. "/checkpoint-6"))
      -- the checkpoint before it is whole, and the run resumes from it
      local again = hh({ "--resume=" .. dir })
      ok_run(again)
      assert.is_true(has(again.out, "from " .. dir .. "/checkpoint-4"), again.out)
      same_as_straight(dir)
   end)

   it("killed with SIGKILL at random moments resumes each time and ends the same", function()
      local dir = tmpdir() .. "/run"
      straight()
      math.randomseed(8)
      local kills, resumed, finished = 0, 0, true
      -- a whole run's time: the straight run's, or a fresh one's here when shorter (the
      -- straight run may have met a busier machine), so that kills land inside runs
      local span = straight_seconds
      while kills < 15 do
         local fresh = finished or not lfs.attributes(dir .. "/run.json")
         local args = fresh and with{ "--out=" .. dir, "--overwrite" } or { "--resume=" .. dir }
         local r = hh(args, nil, (0.05 + 0.9 * math.random()) * span)
         finished = r.code == 0
         if finished and fresh then span = math.min(span, r.seconds) end
         if not finished then
            kills = kills + 1
            if not fresh then resumed = resumed + 1 end
            -- whatever moment it died at, the newest checkpoint there loads
            if lfs.attributes(dir .. "/checkpoint-4") then
               local ck = dpo.train.latest_checkpoint(dir)
               assert.are.equal("dpolua.trainer_state.v1", ck and ck.state.format)
            end
         end
      end
      assert.is_true(resumed >= 5, "resumed only " .. resumed .. " times")
      ok_run(hh({ "--resume=" .. dir }))
      same_as_straight(dir)
      for _, name in ipairs(listing(dir)) do
         assert.is_nil(name:match("^%.checkpoint"), "left behind: " .. name)
      end
   end)

   for _, skip in ipairs{ 0, 3 } do
      it("killed in the middle of writing a checkpoint (after " .. skip .. " writes) resumes from the one before", function()
         assert(FAULTS, "DPO_FAULTS_LIB is not set (tests/CMakeLists.txt sets it)")
         local dir = tmpdir() .. "/run"
         local trigger = tmpdir() .. "/now"
         local env = { LD_PRELOAD = FAULTS, DPO_FAULT = "kill", DPO_FAULT_SKIP = skip,
                       DPO_FAULT_TRIGGER = trigger, HOOK_STEP = 6, HOOK_TOUCH = trigger }
         if SANITIZE then env.ASAN_OPTIONS = "verify_asan_link_order=0:detect_leaks=0" end
         local r = hh(with{ "--out=" .. dir }, env)
         assert.are.equal(128 + 9, r.code, r.err)
         -- it died with checkpoint-8 half-written under its temporary name
         assert.are.same({ ".checkpoint-8.tmp", "checkpoint-4", "metrics.jsonl", "run.json" }, listing(dir))
         local again = hh({ "--resume=" .. dir })
         ok_run(again)
         assert.is_true(has(again.out, "from " .. dir .. "/checkpoint-4"), again.out)
         same_as_straight(dir)
      end)
   end

   it("refuses to write into an existing run directory unless told", function()
      local dir = tmpdir() .. "/run"
      lfs.mkdir(dir)
      h.write(dir .. "/metrics.jsonl", "{\"step\":1}\n")
      local r = hh(with{ "--out=" .. dir })
      assert.are.equal(1, r.code)
      assert.is_true(has(r.err, dir .. " already exists"), r.err)
      assert.are.equal("{\"step\":1}\n", read(dir .. "/metrics.jsonl"))
      -- and a resumed run keeps its options
      local s = straight()
      local bad = hh({ "--resume=" .. s, "--dpo.beta=0.5" })
      assert.are.equal(1, bad.code)
      assert.is_true(has(bad.err, "--dpo.beta=0.5: a resumed run keeps its options"), bad.err)
   end)
end)

describe("a checkpoint that cannot be written", function()
   local function faulty(kind, message)
      assert(FAULTS, "DPO_FAULTS_LIB is not set (tests/CMakeLists.txt sets it)")
      local dir = tmpdir() .. "/run"
      local trigger = tmpdir() .. "/full"
      local env = { LD_PRELOAD = FAULTS, DPO_FAULT = kind, DPO_FAULT_TRIGGER = trigger,
                    HOOK_STEP = 6, HOOK_TOUCH = trigger }
      if SANITIZE then env.ASAN_OPTIONS = "verify_asan_link_order=0:detect_leaks=0" end
      local r = hh(with{ "--out=" .. dir }, env)
      assert.are.equal(1, r.code, r.err)
      assert.is_true(has(r.err, "cannot save " .. dir .. "/checkpoint-8"), r.err)
      assert.is_true(has(r.err, message), r.err)
      assert.is_true(has(r.err, "the last complete checkpoint is " .. dir .. "/checkpoint-4"), r.err)
      -- the previous checkpoint is whole, nothing half-written is left
      same_file(straight() .. "/checkpoint-4/model.safetensors", dir .. "/checkpoint-4/model.safetensors")
      same_file(straight() .. "/checkpoint-4/optimizer.safetensors", dir .. "/checkpoint-4/optimizer.safetensors")
      assert.are.same({ "checkpoint-4", "metrics.jsonl", "run.json" }, listing(dir))
      -- with room again, the run resumes and ends as it would have
      ok_run(hh({ "--resume=" .. dir }))
      same_as_straight(dir)
   end

   it("on a full disk, is a clear error and the previous one stays", function()
      faulty("enospc", "No space left on device")
   end)

   it("in a directory that stopped being writable, is a clear error and the previous one stays", function()
      faulty("eacces", "Permission denied")
   end)
end)

describe("dpo.train.latest_checkpoint", function()
   local function copy_run()
      local dir = tmpdir() .. "/run"
      assert(os.execute(("cp -r %s %s"):format(quote(straight()), quote(dir))))
      return dir
   end

   it("passes over a newest checkpoint that does not load, saying so", function()
      local dir = copy_run()
      local model = dir .. "/" .. FINAL .. "/model.safetensors"
      local bytes = read(model)
      h.write(model, bytes:sub(1, #bytes // 2))
      local said = {}
      local ck = dpo.train.latest_checkpoint(dir, function(text) said[#said + 1] = text end)
      assert.are.equal(dir .. "/checkpoint-20", ck.path)
      assert.are.equal(20, ck.state.global_step)
      assert.are.equal(1, #said)
      assert.is_truthy(said[1]:find("passing over " .. dir .. "/" .. FINAL, 1, true), said[1])
   end)

   it("puts back a checkpoint whose replacement was cut off between its two renames", function()
      local dir = copy_run()
      assert(os.rename(dir .. "/" .. FINAL, dir .. "/." .. FINAL .. ".old"))
      lfs.mkdir(dir .. "/.checkpoint-28.tmp")
      local ck = dpo.train.latest_checkpoint(dir)
      assert.are.equal(dir .. "/" .. FINAL, ck.path)
      assert.is_nil(lfs.attributes(dir .. "/.checkpoint-28.tmp"))
      same_file(straight() .. "/" .. FINAL .. "/model.safetensors", dir .. "/" .. FINAL .. "/model.safetensors")
   end)

   it("says why when there is nothing to resume from", function()
      local dir = tmpdir()
      local ck, why = dpo.train.latest_checkpoint(dir)
      assert.is_nil(ck)
      assert.are.equal(dir .. ": no checkpoint to resume from", why)
      local none, why2 = dpo.train.latest_checkpoint(dir .. "/nothing")
      assert.is_nil(none)
      assert.are.equal(dir .. "/nothing: no such run directory", why2)
   end)
end)

describe("dpo.train with resume", function()
   -- a tiny model and data set, trained in this process
   local tok = dpo.tokenizer.bytes()
   local ds = dpo.data.hh("examples/data/hh-sample/test.jsonl.gz"):take(48)
      :tokenize(tok, { max_length = 64, max_prompt_length = 32 })
   local function model()
      return dpo.gpt.new{ vocab_size = tok:vocab_size(), n_ctx = 64, n_layer = 1, n_head = 2, n_embd = 16,
                          dropout = 0.1, seed = 3 }
   end

   local function weights(m)
      local out = {}
      for _, np in ipairs(m:named_parameters()) do out[np[1]] = np[2]:totable() end
      return out
   end

   -- dpo with dropout, TR-DPO syncing and BCO's running shift: stopped by an
   -- error at step 6 (before its checkpoint), resumed from checkpoint-4, equal to
   -- a run straight
   local function dpo_run(dir, stop_at, resume)
      local policy = model()
      local ref = model():freeze()
      local st = { }
      local ok, err = pcall(dpo.train.dpo, {
         policy = policy, ref = ref, data = ds, batch_size = 4, max_steps = 10, save_every = 2,
         log_every = 2, lr = 1e-2, beta = 0.2, loss = "bco_pair", loss_options = { state = st },
         dropout = true, sync_ref = { tau = 3, alpha = 0.5 }, out = dir, overwrite = not resume,
         quiet = true, resume = resume, global_step = resume and 0 or nil,
         on_log = function(rec) if rec.step == stop_at then error("stop here", 0) end end,
      })
      return ok, err, policy, st
   end

   it("continues to the same weights, loss state and reference", function()
      local a, b = tmpdir() .. "/a", tmpdir() .. "/b"
      local ok, _, straight_model, straight_state = dpo_run(a)
      assert.is_true(ok)
      local stopped, err = dpo_run(b, 6)
      assert.is_false(stopped)
      assert.are.equal("dpo.train.dpo: stop here", err)
      local ok2, err2, resumed_model, resumed_state = dpo_run(b, nil, b .. "/checkpoint-4")
      assert.is_true(ok2, tostring(err2))
      assert.are.same(weights(straight_model), weights(resumed_model))
      assert.are.same(straight_state, resumed_state)
      assert.are.equal(read(a .. "/checkpoint-10/ref_model.safetensors"), read(b .. "/checkpoint-10/ref_model.safetensors"))
      assert.are.equal(read(a .. "/checkpoint-10/model.safetensors"), read(b .. "/checkpoint-10/model.safetensors"))
   end)

   it("refuses a checkpoint of another phase or another batch size", function()
      local dir = tmpdir() .. "/a"
      assert.is_true((dpo_run(dir)))
      local m = model()
      h.errors(function()
         dpo.train.sft{ model = m, data = ds, batch_size = 4, max_steps = 10, quiet = true,
                        resume = dir .. "/checkpoint-4" }
      end, "is a checkpoint of a dpo phase, not sft", true)
      h.errors(function()
         dpo.train.dpo{ policy = m, ref = model():freeze(), data = ds, batch_size = 8, max_steps = 10,
                        quiet = true, resume = dir .. "/checkpoint-4" }
      end, "was made with batch_size = 4, this run has 8", true)
   end)
end)
