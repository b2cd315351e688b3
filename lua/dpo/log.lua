-- dpo.log: where a run's numbers go. A run directory with metrics.jsonl (one
-- JSON object per logged step and per evaluation), and what the terminal
-- shows while it trains: a progress bar on a TTY, plain lines otherwise.
--
--   local run = dpo.log.open("runs/hh", {overwrite = false, config = {...}})
--       creates the directory (and its parents). A directory that already
--       holds files is refused unless overwrite = true, which removes what a
--       run writes there (metrics.jsonl, report.html, run.json, checkpoint-*)
--       and refuses when anything else is there. config, when given, is
--       written to run.json. run.dir, run.path (metrics.jsonl), run.records
--       (every record logged, in order), run.started (dpo.clock() at open).
--   dpo.log.open("runs/hh", {resume = records, elapsed = seconds})
--       goes on with an existing run: metrics.jsonl is rewritten (atomically)
--       to hold exactly `records` (those of the checkpoint resumed from; any
--       logged after it are dropped, as the resumed run logs them again),
--       and run:elapsed() continues from `elapsed`. Nothing else is touched.
--   run:log(record)        append one record: a table of numbers, strings and
--                          booleans; non-finite numbers are written as null.
--                          The keys `step` and `phase` come first, then the
--                          rest sorted.
--   run:elapsed()          seconds since open
--   run:close()            a closed run refuses run:log (a memory run has
--                          nothing to close)
--   dpo.log.memory()       a run that keeps records in memory only (no files)
--   dpo.log.read(path)     the records of a metrics.jsonl file (a list)
--   dpo.log.encode(record [, exact])  the JSON line of a record; numbers
--                          with 8 significant digits, or with as many as
--                          read back to the same double when exact
--
--   local bar = dpo.log.progress{total = 300, phase = "dpo", mode = nil,
--                                stream = io.stderr, every = nil, first = 0}
--       mode: "bar" (redrawn in place), "lines" (a line every `every` steps,
--       default total/20, and at the last), "off"; nil: DPOLUA_PROGRESS=bar|
--       lines|off from the environment, else "bar" when the stream is a
--       terminal and "lines" otherwise. total, every, first and width
--       are integers (width at most 1000); other option names are refused.
--   bar:update(step, {loss = ..., ["rewards/accuracies"] = ...})
--       step (an integer) of total: step/total, steps/s, ETA, loss and
--       accuracy (when present)
--   bar:print(text)        a line of text (a warning, an eval summary) that
--                          does not break the bar
--   bar:finish()           end the bar's line
--
--   dpo.log.rmtree(path), dpo.log.mkdirs(path)   directory helpers (lfs only)
--
-- Metric names follow Hugging Face TRL (`loss`, `rewards/chosen`,
-- `rewards/rejected`, `rewards/accuracies`, `rewards/margins`,
-- `logps/chosen`, `logps/rejected`, `learning_rate`, `beta`, `grad_norm`,
-- `eval/...`), plus `step`, `phase`, `epoch`, `tokens_per_second`,
-- `num_tokens` and `elapsed` (seconds since the run began).
local core = require "dpo.core"
local check = require "dpo.check"
local cjson = require("cjson").new()
local lfs = require "lfs"

local log = {}

local format = string.format

-- ---- arguments -------------------------------------------------------------------------

-- A value as an error message shows it: numbers and strings as written,
-- anything else by its type.
local function show(v)
   if type(v) == "number" then return v ~= v and "NaN" or tostring(v) end
   if type(v) == "string" then return format("%q", v) end
   return type(v)
end

-- A path argument of log.<fname> (see dpo.check).
local function check_path(fname, p, what, level)
   check.path("dpo.log." .. fname, p, what, level + 1)
end

-- v as an integer when it is one (a float with an integral value of at most
-- 2^53 in magnitude counts), else nil.
local function as_integer(v)
   if math.type(v) == "integer" then return v end
   if math.type(v) == "float" and v == math.floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then
      return math.tointeger(v)
   end
   return nil
end

-- ---- directories ------------------------------------------------------------------

local function mkdirs(path)
   local mode = lfs.attributes(path, "mode")
   if mode == "directory" then return true end
   if mode then return nil, path .. ": exists and is not a directory" end
   local parent = path:match("^(.*[^/])/+[^/]+/*$")
   if parent and parent ~= "" then
      local ok, err = mkdirs(parent)
      if not ok then return nil, err end
   end
   local ok, err = lfs.mkdir(path)
   if not ok and lfs.attributes(path, "mode") ~= "directory" then
      return nil, path .. ": " .. tostring(err)
   end
   return true
end

-- log.mkdirs(path) -> true | nil, "path: reason": create path and its parents.
function log.mkdirs(path)
   check_path("mkdirs", path, "path", 2)
   return mkdirs(path)
end

local function rmtree(path)
   local attr = lfs.symlinkattributes(path)
   if not attr then return true end
   if attr.mode == "directory" then
      local names = {}
      for name in lfs.dir(path) do
         if name ~= "." and name ~= ".." then names[#names + 1] = name end
      end
      for _, name in ipairs(names) do
         local ok, err = rmtree(path .. "/" .. name)
         if not ok then return nil, err end
      end
      local ok, err = lfs.rmdir(path)
      if not ok then return nil, path .. ": " .. tostring(err) end
      return true
   end
   local ok, err = os.remove(path)
   if not ok then return nil, tostring(err) end
   return true
end

-- log.rmtree(path) -> true | nil, "path: reason": remove path and, when it
-- is a directory, everything under it. Symbolic links are removed, never
-- followed.
function log.rmtree(path)
   check_path("rmtree", path, "path", 2)
   return rmtree(path)
end

-- The names in directory path (without . and ..), sorted.
local function list_dir(path)
   local names = {}
   for name in lfs.dir(path) do
      if name ~= "." and name ~= ".." then names[#names + 1] = name end
   end
   table.sort(names)
   return names
end

-- What a run writes in its directory (and may remove with overwrite).
local function written_by_run(name)
   return name == "metrics.jsonl" or name == "report.html" or name == "run.json"
      or name:match("^checkpoint%-%d+$") ~= nil or name:match("^%.checkpoint%-%d+%..*$") ~= nil
end

-- ---- JSON ----------------------------------------------------------------------------

-- The JSON of one value, or nil and what is wrong with it.
local function encode_value(v, exact)
   if type(v) == "number" then
      if v ~= v or v == math.huge or v == -math.huge then return "null" end
      if math.type(v) == "integer" then return tostring(v) end
      if v == math.floor(v) and math.abs(v) < 1e15 then return format("%.1f", v) end
      if exact then
         for digits = 15, 17 do
            local s = format("%." .. digits .. "g", v)
            if tonumber(s) == v then return s end
         end
      end
      return format("%.8g", v)
   end
   if v == cjson.null then return "null" end
   if type(v) == "string" or type(v) == "boolean" or type(v) == "table" then
      local ok, s = pcall(cjson.encode, v)
      if not ok then return nil, tostring(s) end
      return s
   end
   return nil, "a " .. type(v) .. " (a record holds numbers, strings, booleans and tables)"
end

-- The JSON line of record rec, or nil and what is wrong with it.
local function encode(rec, exact)
   local keys = {}
   for k in pairs(rec) do
      if type(k) == "string" and k ~= "step" and k ~= "phase" then keys[#keys + 1] = k end
   end
   table.sort(keys)
   if rec.phase ~= nil then table.insert(keys, 1, "phase") end
   if rec.step ~= nil then table.insert(keys, 1, "step") end
   local parts = {}
   for i, k in ipairs(keys) do
      local v, err = encode_value(rec[k], exact)
      if not v then return nil, format("field %q: %s", k, err) end
      parts[i] = cjson.encode(k) .. ":" .. v
   end
   return (("{" .. table.concat(parts, ",") .. "}"):gsub("\\/", "/"))
end

-- log.encode(record) -> one line of JSON, `step` and `phase` first.
function log.encode(rec, exact)
   if type(rec) ~= "table" then
      error("dpo.log.encode: the record must be a table, got " .. type(rec), 2)
   end
   local line, err = encode(rec, exact)
   if not line then error("dpo.log.encode: " .. err, 2) end
   return line
end

-- lua-cjson writes "/" as "\/"; metric names read better without. In its
-- output a backslash followed by "/" is always that escape (a literal
-- backslash is doubled and a "/" never follows one unescaped), so this is exact.
function log.unescape_slashes(json)
   if type(json) ~= "string" then
      error("dpo.log.unescape_slashes: expected a string, got " .. type(json), 2)
   end
   return (json:gsub("\\/", "/"))
end

-- log.read(path) -> list of records | nil, "path: reason"
function log.read(path)
   check_path("read", path, "path", 2)
   local f, err = io.open(path, "rb")
   if not f then return nil, err end
   local out, n = {}, 0
   for line in f:lines() do
      n = n + 1
      if line:find("%S") then
         local ok, rec = pcall(cjson.decode, line)
         if not ok then
            f:close()
            return nil, format("%s:%d: %s", path, n, rec)
         end
         for k, v in pairs(rec) do
            if v == cjson.null then rec[k] = nil end
         end
         out[#out + 1] = rec
      end
   end
   f:close()
   return out
end

-- ---- runs --------------------------------------------------------------------------------

-- Record fields that are integers (JSON read back gives floats).
local INTEGER_KEYS = { step = true, num_tokens = true, skipped_steps = true, ["eval/pairs"] = true }

local Run = {}
Run.__index = Run
Run.__name = "dpo.log.Run"

function Run:__tostring()
   return format("dpo.log.Run(%s, %d records)", self.dir or "memory", #self.records)
end

function Run:elapsed()
   return core.clock() - self.started
end

function Run:log(rec)
   if type(rec) ~= "table" then
      error("dpo.log: run:log expects a table of metrics, got " .. type(rec), 2)
   end
   if self.closed then
      error(format("dpo.log: run:log on a closed run (%s)", tostring(self.path)), 2)
   end
   local copy = {}
   for k, v in pairs(rec) do copy[k] = v end
   local line, msg = encode(copy)
   if not line then error("dpo.log: run:log: " .. msg, 2) end
   self.records[#self.records + 1] = copy
   if self.file then
      local ok, err = self.file:write(line, "\n")
      if ok then ok, err = self.file:flush() end
      if not ok then error(format("dpo.log: cannot write %s: %s", self.path, tostring(err)), 2) end
   end
   return copy
end

-- run:close(): a run with files takes no more records (closing twice is
-- harmless); a run in memory stays open.
function Run:close()
   if self.file then
      self.file:close()
      self.closed = true
   end
   self.file = nil
end

Run.__close = Run.close

function log.memory()
   return setmetatable({ records = {}, started = core.clock() }, Run)
end

function log.open(dir, opts)
   if type(dir) ~= "string" or dir == "" then
      error("dpo.log.open: expected a directory path, got " .. tostring(dir), 2)
   end
   check_path("open", dir, "directory path", 2)
   if opts ~= nil and type(opts) ~= "table" then
      error("dpo.log.open: opts must be a table, got " .. type(opts), 2)
   end
   opts = opts or {}
   local config_line
   if opts.config ~= nil then
      if type(opts.config) ~= "table" then
         error("dpo.log.open: config must be a table, got " .. type(opts.config), 2)
      end
      local msg
      config_line, msg = encode(opts.config, true)
      if not config_line then error("dpo.log.open: config " .. msg, 2) end
   end
   local elapsed = opts.elapsed
   if elapsed == cjson.null then elapsed = nil end -- (a state file's null)
   if elapsed ~= nil and (type(elapsed) ~= "number" or elapsed ~= elapsed or elapsed == math.huge
                          or elapsed == -math.huge) then
      error("dpo.log.open: elapsed must be a finite number of seconds, got " .. show(elapsed), 2)
   end
   dir = dir:gsub("/+$", "")
   local mode = lfs.attributes(dir, "mode")
   if mode and mode ~= "directory" then
      error(format("dpo.log.open: %s exists and is not a directory", dir), 2)
   end
   if opts.resume ~= nil then
      if type(opts.resume) ~= "table" then
         error("dpo.log.open: resume must be a list of records, got " .. type(opts.resume), 2)
      end
      for i, rec in ipairs(opts.resume) do
         if type(rec) ~= "table" then
            error(format("dpo.log.open: resume record %d must be a table, got %s", i, type(rec)), 2)
         end
      end
      if mode ~= "directory" then error(format("dpo.log.open: %s: no such run directory", dir), 2) end
      local path = dir .. "/metrics.jsonl"
      -- the lines already written for these records are kept as they are;
      -- records read back from JSON are written anew (integers restored)
      local old = {}
      local fin = io.open(path, "rb")
      if fin then
         for line in fin:lines() do
            if line:find("%S") then old[#old + 1] = line end
         end
         fin:close()
      end
      local lines, records = {}, {}
      for i, rec in ipairs(opts.resume) do
         local copy = {}
         for k, v in pairs(rec) do
            if INTEGER_KEYS[k] and math.type(v) == "float" then v = math.tointeger(v) or v end
            copy[k] = v
         end
         records[i] = copy
         local line = old[i]
         local okd, was = pcall(cjson.decode, line or "")
         if not (okd and type(was) == "table" and was.step == copy.step and was.phase == copy.phase) then
            local err
            line, err = encode(copy)
            if not line then error(format("dpo.log.open: resume record %d: %s", i, err), 2) end
         end
         lines[i] = line .. "\n"
      end
      local ok, err = core.write_file(path, table.concat(lines))
      if not ok then error("dpo.log.open: " .. err, 2) end
      local f, e = io.open(path, "ab")
      if not f then error("dpo.log.open: " .. e, 2) end
      return setmetatable({ dir = dir, path = path, file = f, records = records,
                            started = core.clock() - (elapsed or 0) }, Run)
   end
   if mode == "directory" then
      local names = list_dir(dir)
      if #names > 0 then
         if not opts.overwrite then
            local shown = {}
            for i = 1, math.min(4, #names) do shown[i] = names[i] end
            if #names > 4 then shown[#shown + 1] = "..." end
            error(format("%s already exists and holds %s; pass --overwrite (overwrite = true) " ..
                         "to replace the run, or choose another --out", dir,
                         table.concat(shown, ", ")), 2)
         end
         local foreign = {}
         for _, name in ipairs(names) do
            if not written_by_run(name) then foreign[#foreign + 1] = name end
         end
         if #foreign > 0 then
            error(format("%s holds files a run does not write (%s); not overwriting it: " ..
                         "remove them or choose another --out", dir,
                         table.concat(foreign, ", ")), 2)
         end
         for _, name in ipairs(names) do
            local ok, err = rmtree(dir .. "/" .. name)
            if not ok then error("dpo.log.open: " .. err, 2) end
         end
      end
   else
      local ok, err = mkdirs(dir)
      if not ok then error("dpo.log.open: cannot create " .. err, 2) end
   end
   if config_line then
      local ok, err = core.write_file(dir .. "/run.json", config_line .. "\n")
      if not ok then error("dpo.log.open: " .. err, 2) end
   end
   local path = dir .. "/metrics.jsonl"
   local f, err = io.open(path, "wb")
   if not f then error("dpo.log.open: " .. err, 2) end
   return setmetatable({ dir = dir, path = path, file = f, records = {},
                         started = core.clock() }, Run)
end

-- ---- the terminal --------------------------------------------------------------------

-- Whether the stream is a terminal (io.stderr or io.stdout), from the link
-- /proc/self/fd/N (Linux); false when that cannot be told.
local function is_tty(stream)
   local fd = stream == io.stdout and 1 or stream == io.stderr and 2 or nil
   if not fd then return false end
   local target = lfs.symlinkattributes("/proc/self/fd/" .. fd, "target")
   return type(target) == "string" and (target:match("^/dev/pts/") ~= nil
                                        or target:match("^/dev/tty") ~= nil)
end
log.is_tty = is_tty

-- log.clock_str(seconds) -> "1:05", "12:03:09"; "?" for a time not known
-- (NaN, inf) or too long to show.
local function clock_str(s)
   if type(s) ~= "number" then
      error("dpo.log.clock_str: seconds must be a number, got " .. show(s), 2)
   end
   if s == -math.huge then error("dpo.log.clock_str: seconds must not be -inf", 2) end
   if s ~= s or s >= 2 ^ 53 or s <= -2 ^ 53 then return "?" end
   s = math.floor(s + 0.5)
   if s >= 3600 then return format("%d:%02d:%02d", s // 3600, s % 3600 // 60, s % 60) end
   return format("%d:%02d", s // 60, s % 60)
end
log.clock_str = clock_str

local function num(v)
   if type(v) ~= "number" then return tostring(v) end
   if v ~= v then return "nan" end
   local a = math.abs(v)
   if a ~= 0 and (a < 1e-3 or a >= 1e5) then return format("%.3e", v) end
   return format("%.4f", v)
end

local Progress = {}
Progress.__index = Progress
Progress.__name = "dpo.log.Progress"

local PROGRESS_OPTIONS = { total = true, phase = true, mode = true, stream = true, every = true,
                           first = true, width = true }
local MODES = { bar = true, lines = true, off = true }

-- The integer option opts[key] of log.progress, in [lo, hi], or default.
local function int_option(opts, key, lo, hi, default)
   local v = opts[key]
   if v == nil then return default end
   local n = as_integer(v)
   if not n or n < lo or n > hi then
      error(format("dpo.log.progress: %s must be an integer in [%d, %d], got %s", key, lo, hi,
                   show(v)), 3)
   end
   return n
end

local MAX_STEP = (1 << 53) - 1

function log.progress(opts)
   if opts ~= nil and type(opts) ~= "table" then
      error("dpo.log.progress: opts must be a table, got " .. type(opts), 2)
   end
   opts = opts or {}
   for k in pairs(opts) do
      if not PROGRESS_OPTIONS[k] then
         error(format("dpo.log.progress: unknown option %s", show(k)), 2)
      end
   end
   local stream = opts.stream or io.stderr
   local okw, write = pcall(function() return stream.write end)
   if not okw or write == nil then
      error("dpo.log.progress: stream must be a file (with a write method), got " .. type(stream),
            2)
   end
   local mode = opts.mode
   if mode == false then mode = "off" end
   if mode ~= nil and not MODES[mode] then
      error(format("dpo.log.progress: mode must be \"bar\", \"lines\" or \"off\", got %s",
                   show(mode)), 2)
   end
   if mode == nil then
      mode = os.getenv("DPOLUA_PROGRESS")
      if not MODES[mode] then mode = is_tty(stream) and "bar" or "lines" end
   end
   if opts.phase ~= nil and type(opts.phase) ~= "string" then
      error("dpo.log.progress: phase must be a string, got " .. type(opts.phase), 2)
   end
   local total = int_option(opts, "total", 0, MAX_STEP, 0)
   return setmetatable({
      stream = stream, mode = mode, total = total, phase = opts.phase or "train",
      every = int_option(opts, "every", 1, MAX_STEP, math.max(1, total // 20)),
      first = int_option(opts, "first", -MAX_STEP, MAX_STEP, 0),
      started = core.clock(), drawn = false, width = int_option(opts, "width", 1, 1000, 24),
   }, Progress)
end

-- The step and metrics of bar:<fname>(step, m), checked.
local function check_step(fname, step, m)
   local n = as_integer(step)
   if not n then
      error(format("dpo.log: bar:%s expects an integer step, got %s", fname, show(step)), 3)
   end
   if m ~= nil and type(m) ~= "table" then
      error(format("dpo.log: bar:%s expects a table of metrics, got %s", fname, type(m)), 3)
   end
   return n
end

-- bar:status(step [, metrics]) -> the text after the bar: rate, ETA, loss,
-- accuracy.
function Progress:status(step, m)
   step = check_step("status", step, m)
   local done = step - self.first
   local dt = core.clock() - self.started
   local rate = dt > 0 and done / dt or 0
   local left = rate > 0 and (self.total - done) / rate or math.huge
   local parts = { format("%d/%d", done, self.total), format("%.2f it/s", rate),
                   "ETA " .. clock_str(left) }
   if m then
      if m.loss then parts[#parts + 1] = "loss " .. num(m.loss) end
      local acc = m["rewards/accuracies"]
      if acc then
         parts[#parts + 1] = "acc " .. (type(acc) == "number" and format("%.3f", acc)
                                        or tostring(acc))
      end
      if m["rewards/margins"] then parts[#parts + 1] = "margin " .. num(m["rewards/margins"]) end
   end
   return table.concat(parts, "  ")
end

-- bar:update(step [, metrics]): draw the bar (or write a line) for step.
function Progress:update(step, m)
   step = check_step("update", step, m)
   if self.mode == "off" then return end
   local done = step - self.first
   if self.mode == "bar" then
      local frac = self.total > 0 and math.min(1, done / self.total) or 0
      local fill = math.floor(frac * self.width + 0.5)
      local bar = string.rep("#", fill) .. string.rep("-", self.width - fill)
      self.stream:write(format("\r\27[K%s [%s] %s", self.phase, bar, self:status(step, m)))
      self.stream:flush()
      self.drawn = true
   elseif done % self.every == 0 or done == self.total or done == 1 then
      self.stream:write(format("%s step %d  %s\n", self.phase, step, self:status(step, m)))
      self.stream:flush()
   end
end

-- bar:print(text): a line of text that does not break the bar.
function Progress:print(text)
   if type(text) ~= "string" and type(text) ~= "number" then
      error("dpo.log: bar:print expects a string, got " .. type(text), 2)
   end
   if self.mode == "bar" and self.drawn then
      self.stream:write("\r\27[K")
      self.drawn = false
   end
   self.stream:write(text, "\n")
   self.stream:flush()
end

function Progress:finish()
   if self.mode == "bar" and self.drawn then
      self.stream:write("\n")
      self.stream:flush()
      self.drawn = false
   end
end

return log
