-- Measurement: the peak resident memory of loading a Hugging Face checkpoint,
-- next to the float32 parameters it fills.
--
--   dpolua examples/bench_hf_load.lua [--layers 12] [--dtype bfloat16] [--shard 2GB]
--
-- Writes a GPT-2-shaped checkpoint (vocab 50257, n_ctx 1024, n_embd 768, 12
-- layers by default: 124M parameters, 249 MB in BF16) in the dtype asked,
-- then, each in a fresh process, reads VmHWM (peak RSS) of:
--   new    dpo.gpt.new with the same shape (the model's own memory)
--   load   dpo.gpt.load of the checkpoint
--   whole  dpo.load of the whole file (every tensor converted at once), for
--          comparison with reading a file without the streaming reader
-- and prints them with the float32 parameter bytes.
local lfs = require "lfs"

local opts = { layers = 12, dtype = "bfloat16", shard = "2GB" }
local i = 1
while i <= #arg do
   local k = arg[i]:match("^%-%-(.+)$")
   if not k or opts[k] == nil then error("usage: bench_hf_load.lua [--layers N] [--dtype D] [--shard SIZE]") end
   opts[k] = arg[i + 1]
   i = i + 2
end

local function hwm_mb()
   for line in io.lines("/proc/self/status") do
      local kb = line:match("^VmHWM:%s+(%d+)")
      if kb then return tonumber(kb) / 1024 end
   end
end

local cfg = { vocab_size = 50257, n_ctx = 1024, n_layer = tonumber(opts.layers), n_head = 12, n_embd = 768 }

-- in a child: one measurement
if os.getenv("DPO_BENCH_CHILD") then
   local what, dir = os.getenv("DPO_BENCH_CHILD"), os.getenv("DPO_BENCH_DIR")
   local before = hwm_mb()
   if what == "new" then
      local m = dpo.gpt.new(cfg)
      print(("%s %.1f %.1f %d"):format(what, before, hwm_mb(), m:num_params()))
   elseif what == "load" then
      local m = dpo.gpt.load(dir)
      print(("%s %.1f %.1f %d"):format(what, before, hwm_mb(), m:num_params()))
   else
      local t = assert(dpo.load(dir .. "/model.safetensors"))
      local n = 0
      for _, x in pairs(t) do n = n + x:numel() end
      print(("%s %.1f %.1f %d"):format(what, before, hwm_mb(), n))
   end
   os.exit(0)
end

local dir = os.tmpname()
os.remove(dir)
assert(lfs.mkdir(dir))
dpo.gpt.new(cfg):save(dir, { dtype = opts.dtype, max_shard_size = opts.shard })
collectgarbage()
local bytes = 0
for f in lfs.dir(dir) do
   if f:match("%.safetensors$") then bytes = bytes + lfs.attributes(dir .. "/" .. f, "size") end
end

local exe = arg[-1] or "dpolua"
local script = arg[0]
print(("checkpoint: %s, %d layers, %.1f MB of safetensors in %s"):format(opts.dtype, cfg.n_layer,
      bytes / 2 ^ 20, dir))
print(("%-6s %12s %12s %14s"):format("run", "start MB", "peak MB", "float32 MB"))
local runs = { "new", "load" }
if not lfs.attributes(dir .. "/model.safetensors.index.json") then runs[3] = "whole" end
for _, what in ipairs(runs) do
   local p = io.popen(("DPO_BENCH_CHILD=%s DPO_BENCH_DIR='%s' '%s' '%s' --layers %s"):format(
      what, dir, exe, script, opts.layers))
   local line = p:read("a")
   p:close()
   local name, start, peak, n = line:match("^(%S+) (%S+) (%S+) (%d+)")
   if not name then error("child failed: " .. line) end
   print(("%-6s %12.1f %12.1f %14.1f"):format(name, tonumber(start), tonumber(peak), tonumber(n) * 4 / 2 ^ 20))
end
for f in lfs.dir(dir) do if f ~= "." and f ~= ".." then os.remove(dir .. "/" .. f) end end
lfs.rmdir(dir)
