-- dpo.dist: the processes of a data-parallel job (mpirun -np N dpolua ...).
--
-- Every rank runs the same script; rank 0 is the main one (it alone writes
-- files and prints). Started alone, the world is this one process and each
-- function below works as a world of one.
--   dist.rank(), dist.size(), dist.is_main(), dist.local_size()
--   dist.barrier()                         every rank reaches this point
--   dist.allreduce(t [, op]) -> t          in place; t a float32 tensor or a
--                                          list of them; op "sum" (default),
--                                          "mean" or "max"
--   dist.broadcast(t, root) -> t           root's values everywhere
--   dist.allgather(v) -> {v of rank 0, v of rank 1, ...}  numbers, strings,
--                                          booleans, nil
--   dist.sum(x) -> the sum of a number over the ranks, in rank order (the
--                  same bits on every rank)
--   dist.any(flag) -> true when flag is true on some rank
--   dist.grads(params) -> the gradients of a list of parameters, for
--                  dist.allreduce(dist.grads(model:parameters()), "mean"):
--                  a model's gradients lie in one arena, so this is one call
--   dist.pending_signal() -> name, exit code | nil   dpo.pending_signal()
--                  agreed by every rank: the first rank's that has one
--   dist.stats() -> {seconds, calls}       time spent in MPI
--   dist.finalize()                        leave the world (every rank, before
--                                          an exit all agreed on)
-- Collectives must be called by every rank, in the same order.
local core = require "dpo.core"

local dist = {}
for name, fn in pairs(core.dist) do dist[name] = fn end

local function argerror(n, fname, msg)
   error(string.format("bad argument #%d to 'dpo.dist.%s' (%s)", n, fname, msg), 3)
end

function dist.sum(x)
   if type(x) ~= "number" then argerror(1, "sum", "number expected, got " .. type(x)) end
   local all, s = core.dist.allgather(x), 0
   for i = 1, #all do s = s + all[i] end
   return s
end

function dist.any(flag)
   for _, v in ipairs(core.dist.allgather(flag and true or false)) do
      if v then return true end
   end
   return false
end

function dist.grads(params)
   if type(params) ~= "table" then argerror(1, "grads", "a list of parameters expected, got " .. type(params)) end
   local out = {}
   for i, p in ipairs(params) do
      if not core.is_tensor(p) then argerror(1, "grads", "element " .. i .. " is not a tensor") end
      if p.grad == nil then argerror(1, "grads", "parameter " .. i .. " has no gradient") end
      out[#out + 1] = p.grad
   end
   return out
end

function dist.pending_signal()
   local sig, code = core.pending_signal()
   if core.dist.size() == 1 then return sig, code end
   local all = core.dist.allgather(sig and (sig .. "=" .. code) or nil)
   for r = 1, #all do
      if all[r] then
         local name, c = all[r]:match("^(.-)=(%d+)$")
         return name, math.tointeger(tonumber(c))
      end
   end
   return nil
end

return dist
