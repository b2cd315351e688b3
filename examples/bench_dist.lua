-- Benchmark: the DPO step of examples/bench_gpt.lua, data-parallel.
--
--   OMP_NUM_THREADS=2 dpolua examples/bench_dist.lua [--config tiny] [--steps 5]
--   mpirun -np 2 -x OMP_NUM_THREADS=1 dpolua examples/bench_dist.lua [--config tiny]
--
-- One global batch of B pairs (the config's) is split over the ranks: each
-- runs policy and reference logps on its B/ranks pairs, the DPO loss (the
-- mean over the global batch), the backward, then the gradients are averaged
-- with one allreduce and every rank takes the same AdamW step. Printed by
-- rank 0: median ms per step (2 warm-up steps excluded), global policy
-- tokens/s, and the median time per step spent inside MPI.
local dist = dpo.dist

local configs = {
   tiny = { V = 512, L = 4, H = 4, C = 256, T = 256, B = 4 },
   small = { V = 50257, L = 6, H = 6, C = 384, T = 256, B = 4 },
}
local opts = { config = "tiny", steps = 5 }
for i = 1, #arg do
   local k, v = arg[i]:match("^%-%-(%w+)=(.*)$")
   if not k or opts[k] == nil then error("bench_dist: unexpected argument " .. arg[i]) end
   opts[k] = tonumber(v) or v
end

local c = assert(configs[opts.config], "unknown config " .. tostring(opts.config))
local P, R = dist.size(), dist.rank()
assert(c.B % P == 0, "the global batch must divide over the ranks")
local b = c.B // P -- this rank's pairs
dpo.manual_seed(1234) -- every rank builds the same model and the same global batch
local policy = dpo.gpt.new{ vocab_size = c.V, n_ctx = c.T + 1, n_layer = c.L, n_head = c.H,
                            n_embd = c.C, seed = 1234 }
local reference = policy:clone(true)
local params = policy:parameters()
local grads = dist.grads(params)
local opt = dpo.optim.adamw(params, { lr = 1e-5, weight_decay = 0 })
local Tp, T = c.T // 2, c.T
local prompt = dpo.randint(0, c.V, c.B, Tp)
local chosen = dpo.cat({ prompt, dpo.randint(0, c.V, c.B, T + 1 - Tp) }, 2)
local rejected = dpo.cat({ prompt, dpo.randint(0, c.V, c.B, T + 1 - Tp) }, 2)
-- this rank's rows: its pairs' chosen rows, then their rejected rows
local ids = dpo.cat({ chosen:narrow(1, R * b + 1, b), rejected:narrow(1, R * b + 1, b) }, 1):contiguous()
local mask = dpo.zeros(2 * b, T + 1, "int32")
mask:narrow(2, Tp + 1, T + 1 - Tp):fill(1)
local beta = 0.1

local function step()
   local ref = dpo.no_grad(function() return reference:logps(ids, mask) end)
   local pol = policy:logps(ids, mask)
   local logits = (pol:narrow(1, 1, b) - ref:narrow(1, 1, b)) - (pol:narrow(1, b + 1, b) - ref:narrow(1, b + 1, b))
   local loss = -(logits * beta):logsigmoid():mean()
   opt:zero_grad()
   loss:backward()
   local s0 = dist.stats().seconds
   dist.allreduce(grads, "mean")
   local in_mpi = dist.stats().seconds - s0
   opt:step()
   return in_mpi
end

local function median(xs)
   table.sort(xs)
   local n = #xs
   return n % 2 == 1 and xs[(n + 1) // 2] or (xs[n // 2] + xs[n // 2 + 1]) / 2
end

local times, mpi = {}, {}
for i = 1, 2 + opts.steps do
   dist.barrier()
   local t0 = dpo.clock()
   local m = step()
   dist.barrier()
   if i > 2 then
      times[#times + 1] = dpo.clock() - t0
      mpi[#mpi + 1] = m
   end
end
-- every rank ends with the same weights: compare a checksum
local sums = dist.allgather(string.format("%.9g", params[1]:sum():item() + params[#params]:sum():item()))
for q = 2, P do assert(sums[q] == sums[1], "the ranks' weights differ") end
local ms, mpi_ms = median(times) * 1e3, median(mpi) * 1e3
if dist.is_main() then
   print(string.format("%s: %d rank(s) x %d thread(s): %.1f ms/step, %.0f tokens/s, MPI %.1f ms/step " ..
                       "(%.1f%%), %.1f MB all-reduced per step",
                       opts.config, P, dpo.get_num_threads(), ms, 2 * c.B * T / (ms / 1e3), mpi_ms,
                       100 * mpi_ms / ms, 4 * policy:num_params() / 1e6))
end
