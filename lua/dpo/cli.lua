-- dpo.cli: the `--key=value` options of a recipe.
--
--   local cli = require "dpo.cli"
--   local spec = {
--      usage = "dpolua recipes/hh.lua [--key=value ...]",
--      about = "SFT on the chosen responses, then DPO, then evaluation.",
--      { "data", "examples/data/hh-sample", "directory of train and test files" },
--      { "overwrite", false, "replace an existing run directory" },
--      { "dpo.beta", 0.1, "the DPO beta", alias = "beta" },
--      { "dpo.lr", function(o) return o.model ~= "" and 1e-6 or 1e-3 end,
--        "learning rate", show = "1e-3, or 1e-6 with --model", type = "number" },
--      { "dpo.loss", "sigmoid", "the loss", choices = { "sigmoid", "ipo" } },
--   }
--   local opts = cli.parse(arg, spec)      -- opts.data, opts.dpo.beta, ...
--
-- Each option is {name, default, help} plus, optionally: type ("string",
-- "number", "integer", "boolean"; else the default's type), alias (another
-- name for it), choices (the values allowed), show (how --help writes a
-- default that is a function). A dotted name is a nested table in the result
-- (`--dpo.beta=0.2` sets opts.dpo.beta). A default may be a function of the
-- options parsed so far (all explicit values, and the defaults of the options
-- listed before it); it runs after parsing.
--
-- Arguments: `--name=value`, `--name value`, and for booleans `--name`,
-- `--no-name`, `--name=true|false|1|0|yes|no`. `--help` (or `-h`) prints
-- every option with its default and exits with status 0. An unknown option,
-- a bad value or a stray argument prints what is wrong (with the closest
-- option name for a misspelling) to stderr and exits with status 2.
--
--   cli.parse(argv, spec [, defaults])  -> opts (exits on --help and errors)
--   cli.try_parse(argv, spec [, defaults]) -> opts | nil, message, "help"|"error"
--   cli.help(spec [, defaults])         -> the --help text
--   cli.closest(name, candidates)       -> the nearest candidate, or nil
--   cli.dump(opts)                      -> sorted "name=value" lines
--
-- `defaults` is a flat table {["dpo.beta"] = 0.5, ...} replacing defaults of
-- the spec: a recipe built on another one (recipes/ipo.lua) changes only the
-- defaults it cares about. opts._given holds the names set on the command
-- line; opts._flat the values by dotted name.
local cli = {}

local format = string.format

-- ---- names ----------------------------------------------------------------------

-- The edit distance between a and b (insertions, deletions, substitutions,
-- and swaps of two neighbours).
local function distance(a, b)
   local la, lb = #a, #b
   local d = {}
   for i = 0, la do
      d[i] = { [0] = i }
   end
   for j = 0, lb do d[0][j] = j end
   for i = 1, la do
      for j = 1, lb do
         local cost = a:byte(i) == b:byte(j) and 0 or 1
         local v = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
         if i > 1 and j > 1 and a:byte(i) == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
            v = math.min(v, d[i - 2][j - 2] + 1)
         end
         d[i][j] = v
      end
   end
   return d[la][lb]
end

-- cli.closest(name, candidates) -> the candidate nearest to name, when it is
-- near enough to be a likely misspelling (or name is its last dotted part).
function cli.closest(name, candidates)
   if type(name) ~= "string" then
      error("dpo.cli.closest: name must be a string, got " .. type(name), 2)
   end
   if type(candidates) ~= "table" then
      error("dpo.cli.closest: candidates must be a list of strings, got " .. type(candidates), 2)
   end
   for i, c in ipairs(candidates) do
      if type(c) ~= "string" then
         error(format("dpo.cli.closest: candidate %d must be a string, got %s", i, type(c)), 2)
      end
   end
   local best, bestd
   for _, c in ipairs(candidates) do
      local d = distance(name, c)
      local tail = c:match("[^.]+$")
      if tail == name or c:sub(-#name - 1) == "." .. name then d = math.min(d, 1) end
      if not bestd or d < bestd or (d == bestd and c < best) then best, bestd = c, d end
   end
   if best and bestd <= math.max(2, #name // 3) then return best end
   return nil
end

-- ---- the spec --------------------------------------------------------------------

local TYPES = { string = true, number = true, integer = true, boolean = true }

-- The options of spec, checked: a list of entries {name, default, help, type,
-- alias, choices, show} and a map from every name and alias to its entry.
local function compile(spec, overrides)
   if type(spec) ~= "table" then error("dpo.cli: the spec must be a table", 3) end
   if overrides ~= nil and type(overrides) ~= "table" then
      error("dpo.cli: the defaults must be a table of option values, got " .. type(overrides), 3)
   end
   local list, by = {}, {}
   for i, o in ipairs(spec) do
      local name, default, help = o[1] or o.name, o[2], o[3] or o.help or ""
      if o.default ~= nil then default = o.default end
      if type(name) ~= "string" or not name:match("^[%w_][%w_.%-]*$") then
         error(format("dpo.cli: option %d has a bad name %s", i, tostring(name)), 3)
      end
      if overrides and overrides[name] ~= nil then default = overrides[name] end
      local ty = o.type
      if ty == nil then
         if math.type(default) == "integer" then
            ty = "integer"
         elseif type(default) ~= "function" and default ~= nil then
            ty = type(default)
         else
            ty = "string"
         end
      end
      if not TYPES[ty] then error(format("dpo.cli: option '%s' has an unknown type %s", name,
                                         tostring(ty)), 3) end
      local e = { name = name, default = default, help = help, type = ty, alias = o.alias,
                  choices = o.choices, show = o.show, index = i }
      if by[name] then error(format("dpo.cli: option '%s' is listed twice", name), 3) end
      by[name] = e
      if o.alias then
         if by[o.alias] then error(format("dpo.cli: alias '%s' is taken", o.alias), 3) end
         by[o.alias] = e
      end
      list[#list + 1] = e
   end
   if overrides then
      for k in pairs(overrides) do
         if not by[k] then error(format("dpo.cli: a default for an unknown option '%s'", k), 3) end
      end
   end
   return list, by
end

local TRUE = { ["true"] = true, ["1"] = true, yes = true, on = true }
local FALSE = { ["false"] = true, ["0"] = true, no = true, off = true }

-- The value of the text s for option e, or nil and what is wrong.
local function convert(e, s)
   local v
   if e.type == "string" then
      v = s
   elseif e.type == "boolean" then
      if TRUE[s:lower()] then
         v = true
      elseif FALSE[s:lower()] then
         v = false
      else
         return nil, format("--%s expects true or false, got '%s'", e.name, s)
      end
   else
      v = tonumber(s)
      if v == nil or v ~= v then
         return nil, format("--%s expects a number, got '%s'", e.name, s)
      end
      if e.type == "integer" then
         local n = math.tointeger(v)
         if not n then return nil, format("--%s expects an integer, got '%s'", e.name, s) end
         v = n
      end
   end
   if e.choices then
      local ok = false
      for _, c in ipairs(e.choices) do
         if c == v then ok = true end
      end
      if not ok then
         local names = {}
         for i, c in ipairs(e.choices) do names[i] = tostring(c) end
         local near = cli.closest(s, names)
         return nil, format("--%s must be one of %s, got '%s'%s", e.name,
                            table.concat(names, ", "), s, near and format(" (did you mean %s?)", near) or "")
      end
   end
   return v
end

local function show_value(v)
   if v == nil then return "(none)" end
   if type(v) == "string" then return v == "" and '""' or v end
   if math.type(v) == "float" then return format("%g", v) end
   return tostring(v)
end

-- Set opts.a.b.c = v for the name "a.b.c".
local function set_nested(opts, name, v)
   local t, parts = opts, {}
   for part in name:gmatch("[^.]+") do parts[#parts + 1] = part end
   for i = 1, #parts - 1 do
      local k = parts[i]
      if type(t[k]) ~= "table" then t[k] = {} end
      t = t[k]
   end
   t[parts[#parts]] = v
end

-- ---- help -------------------------------------------------------------------------

function cli.help(spec, overrides)
   local list = compile(spec, overrides)
   local out = {}
   if spec.usage then out[#out + 1] = "usage: " .. spec.usage end
   if spec.about then out[#out + 1] = spec.about end
   if #out > 0 then out[#out + 1] = "" end
   out[#out + 1] = "options (--key=value; defaults shown):"
   local rows, width = {}, 0
   for _, e in ipairs(list) do
      local d
      if type(e.default) == "function" then
         d = e.show or "(computed)"
      else
         d = show_value(e.default)
      end
      local left = format("  --%s=%s", e.name, d)
      if #left > width then width = #left end
      local help = e.help
      if e.alias then help = help .. (help ~= "" and " " or "") .. "(also --" .. e.alias .. ")" end
      if e.choices then
         local names = {}
         for i, c in ipairs(e.choices) do names[i] = tostring(c) end
         help = help .. " [" .. table.concat(names, "|") .. "]"
      end
      rows[#rows + 1] = { left, help }
   end
   width = math.min(width, 44)
   for _, r in ipairs(rows) do
      if #r[1] > width then
         out[#out + 1] = r[1]
         out[#out + 1] = string.rep(" ", width + 2) .. r[2]
      else
         out[#out + 1] = r[1] .. string.rep(" ", width - #r[1] + 2) .. r[2]
      end
   end
   out[#out + 1] = format("%-" .. width .. "s  %s", "  --help", "print this list and exit")
   return table.concat(out, "\n") .. "\n"
end

-- ---- parsing ------------------------------------------------------------------------

-- The command line of cli.<fname>: nil (none) or a list of strings (arg).
local function check_argv(fname, argv)
   if argv ~= nil and type(argv) ~= "table" then
      error(format("dpo.cli.%s: argv must be a table of arguments (arg), got %s", fname,
                   type(argv)), 3)
   end
end

function cli.try_parse(argv, spec, overrides)
   check_argv("try_parse", argv)
   local list, by = compile(spec, overrides)
   argv = argv or {}
   local names = {}
   for k in pairs(by) do names[#names + 1] = k end
   table.sort(names)
   local given, flat = {}, {}
   local i, n = 1, #argv
   while i <= n do
      local a = argv[i]
      if type(a) ~= "string" then
         return nil, format("argument %d is a %s, not a string", i, type(a)), "error"
      end
      if a == "--help" or a == "-h" or a == "-help" then return nil, cli.help(spec, overrides), "help" end
      local key, value = a:match("^%-%-([^=]+)=(.*)$")
      if not key then key = a:match("^%-%-(.+)$") end
      if not key then
         return nil, format("unexpected argument '%s' (options look like --key=value)", a), "error"
      end
      local e, negated = by[key], false
      if not e and key:sub(1, 3) == "no-" and by[key:sub(4)] and by[key:sub(4)].type == "boolean"
         and value == nil then
         e, negated = by[key:sub(4)], true
      end
      if not e then
         local near = cli.closest(key, names)
         local msg = format("unknown option --%s", key)
         if near then msg = msg .. format(" (did you mean --%s?)", by[near].name) end
         return nil, msg .. "; --help lists the options", "error"
      end
      local v
      if negated then
         v = false
      elseif value == nil then
         if e.type == "boolean" then
            local nxt = argv[i + 1]
            if type(nxt) == "string" and (TRUE[nxt:lower()] or FALSE[nxt:lower()]) then
               value = nxt
               i = i + 1
            else
               v = true
            end
         else
            value = argv[i + 1]
            if value == nil then
               return nil, format("--%s needs a value (--%s=VALUE)", e.name, e.name), "error"
            end
            i = i + 1
         end
      end
      if v == nil then
         local err
         v, err = convert(e, value)
         if v == nil then return nil, err, "error" end
      end
      flat[e.name] = v
      given[e.name] = true
      i = i + 1
   end
   -- defaults, in the order of the spec
   local opts = {}
   for _, e in ipairs(list) do
      if flat[e.name] ~= nil then set_nested(opts, e.name, flat[e.name]) end
   end
   for _, e in ipairs(list) do
      if flat[e.name] == nil then
         local d = e.default
         if type(d) == "function" then d = d(opts) end
         flat[e.name] = d
         if d ~= nil then set_nested(opts, e.name, d) end
      end
   end
   opts._given, opts._flat = given, flat
   return opts
end

function cli.parse(argv, spec, overrides)
   check_argv("parse", argv)
   local opts, msg, kind = cli.try_parse(argv, spec, overrides)
   if opts then return opts end
   if kind == "help" then
      io.stdout:write(msg)
      io.stdout:flush()
      os.exit(0)
   end
   local prog = (spec and spec.name) or (arg and arg[0]) or "dpolua"
   io.stderr:write(prog, ": ", msg, "\n")
   io.stderr:flush()
   os.exit(2)
end

-- cli.dump(opts) -> the values of parsed options as a sorted list of
-- "name=value" lines (for logs and reports).
function cli.dump(opts)
   if type(opts) ~= "table" then
      error("dpo.cli.dump: opts must be the table cli.parse returned, got " .. type(opts), 2)
   end
   if opts._flat ~= nil and type(opts._flat) ~= "table" then
      error("dpo.cli.dump: opts._flat must be a table, got " .. type(opts._flat), 2)
   end
   local keys = {}
   for k in pairs(opts._flat or {}) do keys[#keys + 1] = k end
   table.sort(keys)
   local out = {}
   for i, k in ipairs(keys) do out[i] = k .. "=" .. show_value(opts._flat[k]) end
   return out
end

return cli
