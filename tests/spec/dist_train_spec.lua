-- Data-parallel training: recipes/hh.lua as a job of two ranks under mpirun
-- (batch 4 per rank, no accumulation) against the same run in one process
-- with the same global batch (batch 4, two micro-batches accumulated). The
-- steps, the records of metrics.jsonl and the final weights must agree; a job
-- resumed from its checkpoint too, by two ranks or by one. Needs mpirun (CI
-- installs OpenMPI); without it the cases are pending, never passed.
local h = dofile("tests/spec/helper.lua")

local cjson = require "cjson"

local SHORT = { "--sft.steps=4", "--dpo.steps=4", "--eval_pairs=16", "--samples=1",
                "--max_new_tokens=4", "--eval_every=0", "--log_every=2", "--save_every=2",
                "--batch_size=4" }
-- metrics that measure the machine, not the training
local TIMING = { elapsed = true, tokens_per_second = true }
-- Under the sanitizers the ranks run without LeakSanitizer: OpenMPI unloads
-- its components before exit, so what they keep cannot be told from ours by
-- name (AddressSanitizer's other checks stay on).
local NO_LEAK_CHECK = os.getenv("DPO_SANITIZE") == "1" and "ASAN_OPTIONS=detect_leaks=0 " or ""

local function have_mpirun()
   return dpo.dist.size() == 1 and os.execute("command -v mpirun >/dev/null 2>&1") == true
end

-- Run hh.lua (with ranks > 1: under mpirun); returns the exit status and the output.
local function hh(ranks, args)
   local dir = h.tmpdir()
   local out = dir .. "/out.txt"
   local words = {}
   for i, a in ipairs(args) do words[i] = h.quote(a) end
   local launcher = ranks > 1 and (NO_LEAK_CHECK .. "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " ..
      "mpirun --oversubscribe -np " .. ranks .. " -x OMP_NUM_THREADS=1 ") or "OMP_NUM_THREADS=1 "
   local cmd = ("%stimeout 300 %s recipes/hh.lua %s >%s 2>&1"):format(launcher, h.quote(h.DPOLUA),
                                                                   table.concat(words, " "), h.quote(out))
   local _, _, status = os.execute(cmd)
   return status, h.read(out)
end

local function records(dir)
   local list = {}
   for line in h.read(dir .. "/metrics.jsonl"):gmatch("[^\n]+") do list[#list + 1] = cjson.decode(line) end
   return list
end

-- Same records, same keys; numbers equal to 1e-6 (relative past 1).
local function same_records(a, b)
   assert.are.equal(#a, #b)
   for i = 1, #a do
      for k, v in pairs(a[i]) do
         if not TIMING[k] then
            local w = b[i][k]
            if type(v) == "number" then
               assert(type(w) == "number" and math.abs(v - w) <= 1e-6 * math.max(1, math.abs(v)),
                      ("record %d (step %s): %s is %s here, %s there"):format(i, tostring(a[i].step), k,
                                                                             tostring(v), tostring(w)))
            else
               assert.are.equal(v, w)
            end
         end
      end
      for k in pairs(b[i]) do assert(a[i][k] ~= nil, ("record %d: %s only in one run"):format(i, k)) end
   end
end

-- The largest |difference| of two checkpoints' weights over their largest |weight|.
local function weights_gap(ck1, ck2)
   local a = assert(dpo.load(ck1 .. "/model.safetensors"))
   local b = assert(dpo.load(ck2 .. "/model.safetensors"))
   local diff, scale, n = 0, 0, 0
   for k, t in pairs(a) do
      assert(b[k], k .. " missing")
      diff = math.max(diff, (t - b[k]):abs():max():item())
      scale = math.max(scale, t:abs():max():item())
      n = n + 1
   end
   assert.is_true(n > 0)
   return diff / scale
end

describe("recipes/hh.lua as a job of two ranks", function()
   local it_job = have_mpirun() and it or pending
   local root
   setup(function() root = h.tmpdir() end)
   teardown(function() h.cleanup() end)

   it_job("trains as one process does with the same global batch, and resumes", function()
      local one, two = root .. "/one", root .. "/two"
      local args1 = { "--grad_accum=2", "--out=" .. one }
      local args2 = { "--grad_accum=1", "--out=" .. two }
      for _, a in ipairs(SHORT) do
         args1[#args1 + 1], args2[#args2 + 1] = a, a
      end
      local s1, o1 = hh(1, args1)
      assert.are.equal(0, s1, o1)
      local s2, o2 = hh(2, args2)
      assert.are.equal(0, s2, o2)
      -- rank 0 alone speaks and writes: each report line once
      local _, n = o2:gsub("== SFT:", "")
      assert.are.equal(1, n, o2)
      assert.are.same(h.listing(one), h.listing(two))
      local r1 = records(one)
      same_records(r1, records(two))
      assert.is_true(weights_gap(one .. "/checkpoint-8", two .. "/checkpoint-8") <= 1e-6)
      local st = cjson.decode(h.read(two .. "/checkpoint-8/trainer_state.json"))
      assert.are.equal(2, st.data.ranks)
      assert.are.equal(8, st.global_step)

      -- resumed from the DPO phase's step 6, again as a job of two
      assert.is_true(os.execute("rm -rf " .. h.quote(two .. "/checkpoint-8")))
      local s3, o3 = hh(2, { "--resume=" .. two })
      assert.are.equal(0, s3, o3)
      assert.truthy(o3:find("resuming", 1, true), o3)
      same_records(r1, records(two))
      assert.is_true(weights_gap(one .. "/checkpoint-8", two .. "/checkpoint-8") <= 1e-6)

      -- the job's run resumed by one process: grad_accum 2 keeps the global
      -- batch (another value is refused, naming the one that fits)
      local three = root .. "/three"
      assert.is_true(os.execute(("cp -r %s %s && rm -rf %s"):format(h.quote(two), h.quote(three),
                                                                    h.quote(three .. "/checkpoint-8"))))
      local s4, o4 = hh(1, { "--resume=" .. three, "--grad_accum=1" })
      assert.are_not.equal(0, s4, o4)
      assert.truthy(o4:find("--grad_accum must be 2", 1, true), o4)
      local s5, o5 = hh(1, { "--resume=" .. three })
      assert.are.equal(0, s5, o5)
      assert.truthy(o5:find("resuming", 1, true), o5)
      same_records(r1, records(three))
      assert.is_true(weights_gap(one .. "/checkpoint-8", three .. "/checkpoint-8") <= 1e-6)
      assert.are.equal(1, cjson.decode(h.read(three .. "/checkpoint-8/trainer_state.json")).data.ranks)
   end)

   it_job("precomputes the reference sharded: the same table, the same run, one file by rank 0", function()
      -- each run in its own parent: the cache (PARENT/cache) is not shared
      local one, two = root .. "/pc1/run", root .. "/pc2/run"
      -- (SFT at lr 0 leaves the initial weights as they are, bit for bit: the
      -- reference is the same model in both runs, and near ties of the
      -- rewards at DPO's start are decided by the same rounding)
      local args1 = { "--grad_accum=2", "--out=" .. one, "--dpo.ref=precompute", "--sft.lr=0" }
      local args2 = { "--grad_accum=1", "--out=" .. two, "--dpo.ref=precompute", "--sft.lr=0" }
      for _, a in ipairs(SHORT) do
         args1[#args1 + 1], args2[#args2 + 1] = a, a
      end
      assert.is_true(os.execute("mkdir -p " .. h.quote(root .. "/pc1") .. " " .. h.quote(root .. "/pc2")))
      local s1, o1 = hh(1, args1)
      assert.are.equal(0, s1, o1)
      local s2, o2 = hh(2, args2)
      assert.are.equal(0, s2, o2)
      local _, n = o2:gsub("reference log%-probs of %d+ pairs computed in [%d.]+s by 2 ranks", "")
      assert.are.equal(2, n, o2) -- the train and the eval pairs, said once each
      -- a file for each data set (named by the data, then the weights), the
      -- same values to the bit: each batch is the one a single process scores
      local function by_data(dir)
         local t = {}
         for _, f in ipairs(h.listing(dir)) do
            local key = f:match("^ref_logps%-(%x+%-%x+)%.safetensors$")
            if key then t[key] = assert(dpo.load(dir .. "/" .. f)) end
         end
         return t
      end
      local c1, c2 = by_data(root .. "/pc1/cache"), by_data(root .. "/pc2/cache")
      local seen = 0
      for key, a in pairs(c1) do
         local b = assert(c2[key], "no cache file for data " .. key .. " in the job's")
         for _, k in ipairs{ "chosen", "rejected" } do
            assert.is_true(a[k]:numel() > 0)
            assert.are.equal(a[k]:numel(), b[k]:numel())
            assert.are.equal(0, (a[k] - b[k]):abs():max():item(), key .. " " .. k)
         end
         seen = seen + 1
      end
      assert.are.equal(2, seen)
      assert.are.equal(2, #h.listing(root .. "/pc2/cache"))
      same_records(records(one), records(two))
      assert.is_true(weights_gap(one .. "/checkpoint-8", two .. "/checkpoint-8") <= 1e-6)
   end)

   -- (against one process, 30 steps would be too many for 1e-6: Adam turns
   -- the float32 rounding of gradients that are zero in exact arithmetic,
   -- such as attention's key bias, into whole steps of lr)
   it_job("stops every rank at the same step on SIGTERM to a rank or SIGUSR1 to mpirun, and goes on", function()
      local one = root .. "/sig1"
      local common = { "--sft.steps=30", "--dpo.steps=2", "--eval_pairs=8", "--samples=1",
                       "--max_new_tokens=2", "--eval_every=0", "--log_every=2", "--batch_size=4" }
      local words = {}
      for i, a in ipairs(common) do words[i] = h.quote(a) end
      -- the job in dir; once it has logged a training record, `signal` to
      -- `whom` ($job: mpirun, which forwards SIGUSR1 to every rank at once);
      -- returns the exit status and the output
      local function stopped_job(dir, signal, whom)
         local out = dir .. ".txt"
         local script = ([[
%sOMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -np 2 \
  -x OMP_NUM_THREADS=1 %s recipes/hh.lua %s --out=%s >%s 2>&1 &
job=$!
n=0
until grep -q '"epoch"' %s/metrics.jsonl 2>/dev/null || [ $n -ge 600 ]; do sleep 0.2; n=$((n+1)); done
kill -%s %s
wait $job
exit $?]]):format(NO_LEAK_CHECK, h.quote(h.DPOLUA), table.concat(words, " "), h.quote(dir),
                  h.quote(out), h.quote(dir), signal, whom)
         local _, _, status = os.execute("sh -c " .. h.quote(script))
         return status, h.read(out)
      end
      -- the same job never stopped
      local args1 = { "--out=" .. one }
      for _, a in ipairs(common) do args1[#args1 + 1] = a end
      local s1, o1 = hh(2, args1)
      assert.are.equal(0, s1, o1)
      for _, case in ipairs{ { "SIGTERM", 143, "$(pgrep -P $job | tail -1)" }, { "SIGUSR1", 138, "$job" } } do
         local name, code, whom = case[1], case[2], case[3]
         local two = root .. "/" .. name
         local status, text = stopped_job(two, name:sub(4), whom)
         assert.are.equal(code, status, text)
         local at = text:match("stopped by " .. name .. " after step (%d+)")
         assert.truthy(at, text)
         assert.truthy(h.read(two .. "/checkpoint-" .. at .. "/trainer_state.json"), text)
         local _, n = text:gsub("stopped by " .. name, "")
         assert.are.equal(1, n, text) -- said once, by rank 0
         local s2, o2 = hh(2, { "--resume=" .. two })
         assert.are.equal(0, s2, o2)
         -- the same records, the same weights to the bit
         same_records(records(one), records(two))
         assert.are.equal(0, weights_gap(one .. "/checkpoint-32", two .. "/checkpoint-32"))
      end
   end)
end)
