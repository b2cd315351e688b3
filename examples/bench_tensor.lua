-- Benchmark: tensor mm against a direct cblas_sgemm call from C, in one run.
--
--   dpolua examples/bench_tensor.lua [reps]
--
-- For each size the two are timed in turn, `reps` rounds (default 5), and the
-- median GFLOP/s of each is printed with their ratio. The direct call works on
-- plain malloc'd buffers (dpo.core.sgemm_direct); the tensor path includes
-- everything a script pays: argument checks, the output allocation, userdata.
local core = require "dpo.core"

local reps = tonumber(arg and arg[1]) or 5

local function median(xs)
   table.sort(xs)
   local n = #xs
   if n % 2 == 1 then return xs[(n + 1) // 2] end
   return (xs[n // 2] + xs[n // 2 + 1]) / 2
end

-- seconds per call of f, running it enough times to take ~0.2 s
local function time_per_call(f, min_time)
   f() -- warm-up
   local calls, t0 = 0, dpo.clock()
   repeat
      f()
      calls = calls + 1
   until dpo.clock() - t0 >= min_time
   return (dpo.clock() - t0) / calls
end

local shapes = {
   {256, 256, 256}, {512, 512, 512}, {1024, 1024, 1024}, {2048, 2048, 2048},
   {4096, 3072, 768}, -- (4096x768) x (768x3072): a GPT-2 MLP projection
}

print(string.format("dpolua %s, %d threads, median of %d rounds", dpo.version,
   dpo.get_num_threads(), reps))
print(string.format("%-22s %12s %12s %8s", "m x k by k x n", "dpo mm", "direct", "ratio"))
dpo.manual_seed(0)
for _, s in ipairs(shapes) do
   local m, n, k = s[1], s[2], s[3]
   local a, b = dpo.randn(m, k), dpo.randn(k, n)
   local flop = 2 * m * n * k
   local ours, direct = {}, {}
   local min_time = m >= 2048 and 0.5 or 0.2
   for _ = 1, reps do
      ours[#ours + 1] = flop / time_per_call(function() return a:mm(b) end, min_time) / 1e9
      local t = core.sgemm_direct(m, n, k, math.max(1, math.floor(min_time * 20e9 / flop)))
      direct[#direct + 1] = flop / t / 1e9
      collectgarbage()
   end
   local go, gd = median(ours), median(direct)
   print(string.format("%-22s %8.1f GF/s %7.1f GF/s %7.1f%%",
      string.format("%dx%d by %dx%d", m, k, k, n), go, gd, 100 * go / gd))
end
