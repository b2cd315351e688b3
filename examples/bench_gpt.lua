-- Benchmark: one DPO training step on GPT-2-shaped models and on a
-- Llama-family model of SmolLM2-135M's shape (config smollm: dpo.model's
-- Llama engine), dpolua next to PyTorch (../shared/bench/torch_dpo_step.py,
-- --arch llama for smollm) in the same run.
--
--   dpolua examples/bench_gpt.lua [--configs tiny,small,gpt2,smollm] [--steps 5]
--                                 [--peer path/to/torch_dpo_step.py] [--no-peer]
--
-- A step: policy logps forward and backward on B chosen + B rejected rows of
-- T tokens (a shared prompt of T/2 tokens, completions scored), reference
-- logps under no_grad from a frozen copy, the DPO loss, an AdamW step. Each
-- config runs in its own process so peak resident memory is its own. Printed:
-- median ms/step over the timed steps (2 warm-up steps excluded), policy
-- tokens/s, achieved GFLOP/s (the peer's FLOP count, so the figures compare),
-- that over the sgemm GFLOP/s measured here, and peak RSS.
local core = require "dpo.core"

local configs = {
   tiny = { V = 512, L = 4, H = 4, C = 256, T = 256, B = 4 },
   small = { V = 50257, L = 6, H = 6, C = 384, T = 256, B = 4 },
   gpt2 = { V = 50257, L = 12, H = 12, C = 768, T = 256, B = 2 },
   -- SmolLM2-135M: tied, 9 heads of 64, 3 key/value heads, SwiGLU 1536
   smollm = { arch = "llama", V = 49152, L = 30, H = 9, KV = 3, C = 576, I = 1536, T = 256, B = 2 },
}
local order = { "tiny", "small", "gpt2", "smollm" }

local opts = { configs = "tiny,small,gpt2", steps = 5, peer = nil, child = nil }
do
   local i = 1
   while arg and arg[i] do
      local a = arg[i]
      local k, v = a:match("^%-%-([%w_-]+)=(.*)$")
      if not k then
         k = a:match("^%-%-([%w_-]+)$")
         if k == "no-peer" then
            v = true
         elseif k then
            i = i + 1
            v = arg[i]
         end
      end
      if not k then error("bench_gpt: unexpected argument " .. a) end
      opts[k:gsub("-", "_")] = v
      i = i + 1
   end
   opts.steps = tonumber(opts.steps)
end

-- the peer's count: parameters in products (the tied head once), attention over T x T
local function flops_per_step(c)
   local n_mm = c.L * 12 * c.C * c.C + c.V * c.C
   local attn = 4 * c.L * c.C * c.T
   if c.arch == "llama" then
      local D = c.C // c.H
      n_mm = c.L * (c.C * c.H * D * 2 + 2 * c.C * c.KV * D + 3 * c.C * c.I) + c.V * c.C
      attn = 4 * c.L * c.H * D * c.T
   end
   local tokens = 2 * c.B * c.T
   return tokens * (6 * n_mm + 3 * attn) + tokens * (2 * n_mm + attn)
end

local function peak_rss_mib()
   local f = io.open("/proc/self/status")
   if not f then return 0 end
   local s = f:read("a")
   f:close()
   return (tonumber(s:match("VmHWM:%s*(%d+)")) or 0) / 1024
end

local function median(xs)
   local t = { table.unpack(xs) }
   table.sort(t)
   local n = #t
   return n % 2 == 1 and t[(n + 1) // 2] or (t[n // 2] + t[n // 2 + 1]) / 2
end

-- The child: run one config and print one machine-readable line.
local function run_child(name)
   local c = assert(configs[name], "unknown config " .. name)
   dpo.manual_seed(1234)
   local policy
   if c.arch == "llama" then
      policy = dpo.model.new{ model_type = "llama", vocab_size = c.V, hidden_size = c.C, intermediate_size = c.I,
         num_hidden_layers = c.L, num_attention_heads = c.H, num_key_value_heads = c.KV,
         max_position_embeddings = 2048, rms_norm_eps = 1e-5, tie_word_embeddings = true, seed = 1234 }
   else
      policy = dpo.gpt.new{ vocab_size = c.V, n_ctx = c.T + 1, n_layer = c.L, n_head = c.H,
         n_embd = c.C, seed = 1234 }
   end
   local reference = policy:clone(true)
   local opt = dpo.optim.adamw(policy:parameters(), { lr = 1e-5, weight_decay = 0 })
   local P, T, B = c.T // 2, c.T, c.B
   local prompt = dpo.randint(0, c.V, B, P)
   local rows = {}
   for k = 1, 2 do rows[k] = dpo.cat({ prompt, dpo.randint(0, c.V, B, T + 1 - P) }, 2) end
   local ids = dpo.cat(rows, 1)            -- [2B, T+1]: chosen rows, then rejected
   local mask = dpo.zeros(2 * B, T + 1, "int32")
   mask:narrow(2, P + 1, T + 1 - P):fill(1) -- completion tokens
   local beta = 0.1
   local function step()
      local ref = dpo.no_grad(function() return reference:logps(ids, mask) end)
      local pol = policy:logps(ids, mask)
      local logits = (pol:narrow(1, 1, B) - ref:narrow(1, 1, B))
         - (pol:narrow(1, B + 1, B) - ref:narrow(1, B + 1, B))
      local loss = -(logits * beta):logsigmoid():mean()
      opt:zero_grad()
      loss:backward()
      opt:step()
      return loss:item()
   end
   local times, first, last = {}, nil, nil
   for i = 1, 2 + opts.steps do
      local t0 = dpo.clock()
      last = step()
      first = first or last
      if i > 2 then times[#times + 1] = dpo.clock() - t0 end
   end
   print(string.format("RESULT ms=%.1f loss_first=%.4f loss_last=%.4f rss=%.0f params=%d",
      median(times) * 1e3, first, last, peak_rss_mib(), policy:num_params()))
end

if opts.child then
   run_child(opts.child)
   return
end

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function run(cmd)
   local p = assert(io.popen(cmd .. " 2>&1"))
   local out = p:read("a")
   p:close()
   return out
end

local exe = arg[-1] or "dpolua"
local script = arg[0]
local threads = dpo.get_num_threads()
local peer = opts.peer or (script:match("^(.*)/examples/") or ".") .. "/../shared/bench/torch_dpo_step.py"
-- Debian's python3-torch belongs to /usr/bin/python3, whatever else is on PATH
local python = io.open("/usr/bin/python3") and "/usr/bin/python3" or "python3"
local have_peer = not opts.no_peer and io.open(peer) ~= nil
   and os.execute(python .. " -c 'import torch' >/dev/null 2>&1")

-- the sgemm ceiling on this machine, now
local sg = 0
for _ = 1, 3 do
   sg = math.max(sg, 2 * 2048 ^ 3 / core.sgemm_direct(2048, 2048, 2048, 2) / 1e9)
end

print(string.format("dpolua %s, %d threads, sgemm %.1f GFLOP/s (2048^3), %d timed steps",
   dpo.version, threads, sg, opts.steps))
if not have_peer then
   print("peer: not run (" .. (opts.no_peer and "--no-peer" or "needs " .. peer .. " and python3-torch") .. ")")
end
print(string.format("%-6s %-8s %10s %10s %9s %7s %9s %9s", "config", "runtime", "ms/step",
   "tokens/s", "GFLOP/s", "/sgemm", "peak MiB", "loss"))
for name in opts.configs:gmatch("[^,]+") do
   local c = assert(configs[name], "unknown config " .. name)
   local flops = flops_per_step(c)
   local tokens = 2 * c.B * c.T
   local out = run(string.format("%s %s --child %s --steps %d", shell_quote(exe), shell_quote(script),
      name, opts.steps))
   local ms, lf, ll, rss = out:match("RESULT ms=([%d.]+) loss_first=([%d.-]+) loss_last=([%d.-]+) rss=([%d.]+)")
   if not ms then error("bench_gpt: the " .. name .. " run failed:\n" .. out) end
   ms = tonumber(ms)
   local ours_tps = tokens / (ms / 1e3)
   print(string.format("%-6s %-8s %10.1f %10.0f %9.1f %6.0f%% %9.0f %4.2f>%4.2f", name, "dpolua", ms,
      ours_tps, flops / (ms / 1e3) / 1e9, 100 * flops / (ms / 1e3) / 1e9 / sg, tonumber(rss),
      tonumber(lf), tonumber(ll)))
   if have_peer then
      local arch = c.arch == "llama" and string.format(" --arch llama --KV %d --I %d", c.KV, c.I) or ""
      local pout = run(string.format("%s %s%s --V %d --L %d --H %d --C %d --T %d --B %d --threads %d --steps %d",
         python, shell_quote(peer), arch, c.V, c.L, c.H, c.C, c.T, c.B, threads, opts.steps))
      local pms = tonumber(pout:match("ms/step median=([%d.]+)"))
      local prss = tonumber(pout:match("maxrss=([%d.]+) MiB"))
      local plf, pll = pout:match("loss first=([%d.-]+) last=([%d.-]+)")
      if not pms then
         print("peer failed:\n" .. pout)
      else
         print(string.format("%-6s %-8s %10.1f %10.0f %9.1f %6.0f%% %9.0f %4.2f>%4.2f", name, "pytorch",
            pms, tokens / (pms / 1e3), flops / (pms / 1e3) / 1e9, 100 * flops / (pms / 1e3) / 1e9 / sg,
            prss, tonumber(plf), tonumber(pll)))
         print(string.format("%-6s %-8s %10s %9.2fx %9s %7s %8.2fx", name, "ratio", "", ours_tps / (tokens / (pms / 1e3)),
            "", "", tonumber(rss) / prss))
      end
   end
end
