-- dpo.dist: the world of a data-parallel job. This spec runs twice under
-- ctest: alone (a world of one; it then also starts small jobs with mpirun
-- and checks how they end) and as every rank of `mpirun -np 2` (the
-- collectives, each rank checking against values computed here from the
-- rank numbers, never from dpo.dist itself).
local h = dofile("tests/spec/helper.lua")

local dist = dpo.dist
-- what the launcher says, independently of dpo.dist
local ENV_SIZE = tonumber(os.getenv("OMPI_COMM_WORLD_SIZE") or "1")
local ENV_RANK = tonumber(os.getenv("OMPI_COMM_WORLD_RANK") or "0")

describe("dpo.dist", function()
   it("knows its rank and the size of the world from the launcher", function()
      assert.are.equal(ENV_SIZE, dist.size())
      assert.are.equal(ENV_RANK, dist.rank())
      assert.are.equal(ENV_RANK == 0, dist.is_main())
      assert.is_true(dist.local_size() >= 1 and dist.local_size() <= ENV_SIZE)
   end)

   it("sums, averages and maxes a tensor over the ranks, in place", function()
      local P, r = ENV_SIZE, ENV_RANK
      -- rank q holds {q + 1, 10 * q, -q, 0.25}
      local function mine() return dpo.tensor({ r + 1, 10 * r, -r, 0.25 }) end
      local want_sum, want_max = { 0, 0, 0, 0 }, { -math.huge, -math.huge, -math.huge, -math.huge }
      for q = 0, P - 1 do
         local v = { q + 1, 10 * q, -q, 0.25 }
         for i = 1, 4 do
            want_sum[i] = want_sum[i] + v[i]
            want_max[i] = math.max(want_max[i], v[i])
         end
      end
      local t = mine()
      assert.are.equal(t, dist.allreduce(t)) -- in place, returned
      h.near(t, want_sum, 0)
      local mean = {}
      for i = 1, 4 do mean[i] = want_sum[i] / P end
      h.near(dist.allreduce(mine(), "mean"), mean, 1e-7)
      h.near(dist.allreduce(mine(), "max"), want_max, 0)
   end)

   it("reduces a model's gradients, which lie end to end, in one call", function()
      local m = dpo.gpt.new{ vocab_size = 40, n_ctx = 8, n_layer = 1, n_head = 2, n_embd = 8 }
      local g = dist.grads(m:parameters())
      for i, t in ipairs(g) do t:fill(ENV_RANK * 2 + i) end
      local calls = dist.stats().calls
      dist.allreduce(g, "mean")
      assert.are.equal(ENV_SIZE > 1 and 1 or 0, dist.stats().calls - calls)
      for i, t in ipairs(g) do
         local want = 0
         for q = 0, ENV_SIZE - 1 do want = want + q * 2 + i end
         want = want / ENV_SIZE
         assert.are.equal(want, t:min():item())
         assert.are.equal(want, t:max():item())
      end
   end)

   it("reduces a list of separate tensors, each in place", function()
      local a, b = dpo.full({ 3 }, ENV_RANK + 1), dpo.full({ 2, 2 }, 1)
      dist.allreduce({ a, b })
      h.near(a, { ENV_SIZE * (ENV_SIZE + 1) / 2, ENV_SIZE * (ENV_SIZE + 1) / 2,
                  ENV_SIZE * (ENV_SIZE + 1) / 2 }, 0)
      h.near(b, { { ENV_SIZE, ENV_SIZE }, { ENV_SIZE, ENV_SIZE } }, 0)
   end)

   it("broadcasts a tensor from any root", function()
      local root = ENV_SIZE - 1
      local f = dist.broadcast(dpo.full({ 2, 3 }, ENV_RANK + 0.5), root)
      h.near(f, { { root + 0.5, root + 0.5, root + 0.5 }, { root + 0.5, root + 0.5, root + 0.5 } }, 0)
      local i = dist.broadcast(dpo.tensor({ ENV_RANK, 7 }, "int32"), 0)
      assert.are.same({ 0, 7 }, i:totable())
      h.errors(function() dist.broadcast(dpo.ones(1), ENV_SIZE) end, "root must be a rank", true)
   end)

   it("gathers numbers, strings, booleans and nil from every rank, exactly", function()
      local ints = dist.allgather(ENV_RANK * 1000 + 7)
      local floats = dist.allgather(ENV_RANK + 0.1)
      local strings = dist.allgather(("r%d\0end"):format(ENV_RANK))
      local flags = dist.allgather(ENV_RANK % 2 == 0)
      local nils = dist.allgather(nil)
      assert.are.equal(ENV_SIZE, #ints)
      for q = 0, ENV_SIZE - 1 do
         assert.are.equal(q * 1000 + 7, ints[q + 1])
         assert.are.equal("integer", math.type(ints[q + 1]))
         assert.are.equal(q + 0.1, floats[q + 1])
         assert.are.equal(("r%d\0end"):format(q), strings[q + 1])
         assert.are.equal(q % 2 == 0, flags[q + 1])
         assert.is_nil(nils[q + 1])
      end
      local want = 0
      for q = 0, ENV_SIZE - 1 do want = want + (q + 0.1) end
      assert.are.equal(want, dist.sum(ENV_RANK + 0.1))
      assert.is_true(dist.any(ENV_RANK == ENV_SIZE - 1))
      assert.is_false(dist.any(false))
   end)

   -- a dataset of n pairs of different lengths, and a small random GPT-2
   local function eval_setup(n)
      local tok = dpo.tokenizer.bytes()
      local list = {}
      for i = 1, n do
         list[i] = { prompt = "\n\nHuman: say " .. i .. ("?"):rep(i % 5) .. "\n\nAssistant:",
                     chosen = " " .. i .. ("."):rep(i % 3), rejected = " no" .. ("!"):rep(i % 4) }
      end
      local ds = dpo.data.dataset(list):tokenize(tok, { max_length = 48, max_prompt_length = 40 })
      dpo.manual_seed(7) -- the same weights on every rank
      local cfg = { vocab_size = tok:vocab_size(), n_ctx = 48, n_layer = 1, n_head = 2, n_embd = 16 }
      return ds, dpo.gpt.new(cfg), dpo.gpt.new(cfg):freeze()
   end

   -- model's forwards counted (a model as dpo.eval takes one: logps, modes)
   local function counted(model)
      local c = { rows = 0 }
      c.logps = function(_, ids, mask)
         c.rows = c.rows + ids:size(1)
         return model:logps(ids, mask)
      end
      c.is_training = function() return model:is_training() end
      c.eval = function() return model:eval() end
      c.train = function(_, on) return model:train(on) end
      return c
   end

   it("evaluates sharded: each rank its share of the batches, every rank the figures of all", function()
      -- 11 pairs in batches of 2: 6 batches, the last of one pair
      local ds, policy, ref = eval_setup(11)
      local whole = dpo.eval.preferences(policy, ref, ds, { batch_size = 2, beta = 0.2 })
      local cp = counted(policy)
      local shared = dpo.eval.preferences(cp, ref, ds, { batch_size = 2, beta = 0.2, shard = true })
      -- the same additions in the same order: the same bits
      assert.are.same(whole, shared)
      assert.are.equal(11, shared.pairs)
      -- rank r scored batches r+1, r+1+P, ...: their pairs, chosen and rejected rows
      local want = 0
      for b = ENV_RANK + 1, 6, ENV_SIZE do want = want + 2 * (b == 6 and 1 or 2) end
      assert.are.equal(want, cp.rows)
      -- the SFT figures too, and the first max_pairs pairs only
      local nll = dpo.eval.nll(policy, ds, { batch_size = 3, max_pairs = 7 })
      assert.are.same(nll, dpo.eval.nll(policy, ds, { batch_size = 3, max_pairs = 7, shard = true }))
      assert.are.equal(7, nll.pairs)
      h.errors(function() dpo.eval.nll(policy, ds, { shard = 1 }) end, "shard must be a boolean", true)
   end)

   it("meets at a barrier and counts the time spent in MPI", function()
      dist.barrier()
      local s = dist.stats()
      assert.is_true(s.seconds >= 0)
      if ENV_SIZE > 1 then assert.is_true(s.calls > 0) end
   end)
end)

-- ---- jobs started from here: how they end --------------------------------------------

-- Under the sanitizers the ranks of these jobs run without LeakSanitizer:
-- OpenMPI unloads its components before exit, so what they keep cannot be
-- told from ours by name (AddressSanitizer's other checks stay on).
local NO_LEAK_CHECK = os.getenv("DPO_SANITIZE") == "1"
   and "ASAN_OPTIONS=detect_leaks=0 " or ""

local function have_mpirun()
   return ENV_SIZE == 1 and os.execute("command -v mpirun >/dev/null 2>&1") == true
end

-- Run `mpirun -np 2 dpolua -e code` (at most 60 s); returns its exit
-- status, its output and the seconds it took.
local function job(code, env)
   local dir = h.tmpdir()
   local out = dir .. "/out.txt"
   local cmd = ("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 %s%s timeout 60 " ..
                "mpirun --oversubscribe -np 2 %s -e %s >%s 2>&1"):format(
      NO_LEAK_CHECK, env or "", h.quote(h.DPOLUA), h.quote(code), h.quote(out))
   local t0 = dpo.clock()
   local _, _, status = os.execute(cmd)
   return status, h.read(out), dpo.clock() - t0
end

if ENV_SIZE > 1 then return end -- (a rank of a job does not start jobs)

describe("a job under mpirun", function()
   local it_job = have_mpirun() and it or pending
   after_each(function() h.cleanup() end)

   it_job("ends with every rank's success", function()
      local status, out = job("dpo.dist.barrier() print('rank ' .. dpo.dist.rank() .. ' of ' .. dpo.dist.size())")
      assert.are.equal(0, status, out)
      assert.truthy(out:find("rank 0 of 2", 1, true), out)
      assert.truthy(out:find("rank 1 of 2", 1, true), out)
   end)

   it_job("ends at once when a rank raises, naming the rank and its message", function()
      local status, out, secs = job(
         "if dpo.dist.rank() == 1 then error('the data is gone') end dpo.dist.barrier() print('never')")
      assert.are_not.equal(0, status)
      assert.truthy(out:find("dpolua: rank 1: %(command line%):1: the data is gone"), out)
      assert.falsy(out:find("never", 1, true), out)
      assert.is_true(secs < 30, ("took %.1fs"):format(secs))
   end)

   it_job("ends at once when a rank is killed", function()
      local status, out, secs = job("if dpo.dist.rank() == 1 then " ..
         "local pid = io.open('/proc/self/stat'):read('n') os.execute('kill -9 ' .. pid) end " ..
         "dpo.dist.barrier() dpo.dist.barrier() print('never')")
      assert.are_not.equal(0, status)
      assert.truthy(out:find("signal 9", 1, true) or out:find("Killed", 1, true), out)
      assert.falsy(out:find("never", 1, true), out)
      assert.is_true(secs < 30, ("took %.1fs"):format(secs))
   end)

   it_job("ends with the status a rank gives os.exit", function()
      local status, out = job("if dpo.dist.rank() == 0 then os.exit(3) end dpo.dist.barrier()")
      assert.are.equal(3, status, out)
   end)

   it_job("refuses to start each rank alone when MPI cannot be loaded", function()
      local status, out = job("print('trained alone')", "DPOLUA_MPI_LIB=/no/such/lib.so")
      assert.are_not.equal(0, status)
      assert.truthy(out:find("started by mpirun, but MPI cannot be used", 1, true), out)
      assert.falsy(out:find("trained alone", 1, true), out)
   end)
end)
