-- Loaded by resume_spec's subprocesses (dpolua -e "dofile(...)" script ...)
-- to make something happen at an exact step of a training phase, from the
-- phase's on_log callback:
--   HOOK_STEP=k           at the first logged record with step >= k
--   HOOK_SIGNALS="INT"    send these signals to this process, in order
--                         ("INT INT", "TERM", "")
--   HOOK_TOUCH=path       create this file (a fault's trigger, tests/faults)
local step = tonumber(os.getenv("HOOK_STEP"))
if not step then return end
local signals, touch = os.getenv("HOOK_SIGNALS") or "", os.getenv("HOOK_TOUCH")
local stat = assert(io.open("/proc/self/stat", "r"))
local pid = stat:read("n")
stat:close()
local done = false

-- Each signal comes from a background shell, a moment after os.execute has
-- returned (system() ignores SIGINT while it waits), and the hook waits, busy,
-- until the signal has been noted, so the stop falls on this very step.
local function fire()
   done = true
   if touch then assert(io.open(touch, "w")):close() end
   local first = true
   for sig in signals:gmatch("%u+") do
      if first then dpo.pending_signal(true) end
      os.execute(("(sleep 0.2; kill -%s %d) &"):format(sig, pid))
      local t0 = dpo.clock()
      -- the first is noted; a second ends the process while it waits here
      while (not first or not dpo.pending_signal()) and dpo.clock() - t0 < 10 do end
      first = false
   end
end

for _, name in ipairs{ "sft", "dpo" } do
   local phase = dpo.train[name]
   dpo.train[name] = function(o)
      local user = o.on_log
      o.on_log = function(rec)
         if not done and rec.step >= step then fire() end
         if user then user(rec) end
      end
      return phase(o)
   end
end
