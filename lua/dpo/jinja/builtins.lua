-- dpo.jinja.builtins: what a template can call by name, as jinja2 and
-- transformers give it (part of dpo.jinja; internal, not a field of `dpo`).
--
--   FILTERS[name](value, args, kw, line, ctx)    the filters (| name(...))
--   TESTS[name](value, args, kw, line)           the tests (is name ...)
--   apply_test(name, value, args, kw, line)      a test by name, as a bool
--   STR_METHODS, DICT_METHODS, LIST_METHODS      [name](self, args, kw, line)
--   GLOBALS                                      range, dict, namespace,
--                                                raise_exception, strftime_now
--   py_format(s, v, line)                        Python's "%s" % v
--   install{getattr =, getitem =, binop =}       the evaluator's access and
--                                                arithmetic, which some filters,
--                                                tests and methods use; dpo.jinja
--                                                installs them once, at load
--
-- args: the positional arguments (a Lua array), kw: the keyword arguments by
-- name, line: the template line for errors (values.fail). Anything not here
-- is "unsupported" where it is looked up (in dpo.jinja).
local V = require "dpo.jinja.values"

local format, sub, find, rep = string.format, string.sub, string.find, string.rep
local concat, unpack = table.concat, table.unpack
local mtype = math.type

local None, ListMT, DictMT, NsMT, FnMT, MarkupMT, UndefMT, Fail =
   V.None, V.ListMT, V.DictMT, V.NsMT, V.FnMT, V.MarkupMT, V.UndefMT, V.Fail
local fail, undef, is_undef, list, newdict, dset = V.fail, V.undef, V.is_undef, V.list, V.newdict, V.dset
local markup, escape_html, callable = V.markup, V.escape_html, V.callable
local chars, ulen, SPACE, strip, ascii_only, str_title = V.chars, V.ulen, V.SPACE, V.strip, V.ascii_only, V.str_title
local type_name, repr, tostr, tojson = V.type_name, V.repr, V.tostr, V.tojson
local truthy, as_num, as_str, eq, less = V.truthy, V.as_num, V.as_str, V.eq, V.less
local items_of, length, contains = V.items_of, V.length, V.contains

-- The evaluator's attribute and item access and binary operators (set by install).
local getattr, getitem, binop

local FILTERS, TESTS, STR_METHODS, DICT_METHODS, LIST_METHODS -- the tables below
local py_format -- Python's %-formatting, under methods

local function apply_test(name, value, args, kw, line)
   local fn = TESTS[name]
   if not fn then fail(line, "unsupported test '%s'", name) end
   return fn(value, args, kw, line) and true or false
end

-- ---- filters ----------------------------------------------------------------------------------

-- The positional or keyword argument `name` at position j of a filter or method.
local function arg(args, kw, j, name, default)
   local v = args[j]
   if v == nil and name then v = kw[name] end
   if v == nil then return default end
   return v
end

local function need_str(v, line, what)
   local s = as_str(v)
   if not s then fail(line, "%s expects a string, got %s", what, type_name(v)) end
   return s
end

local function need_int(v, line, what)
   if type(v) == "boolean" then return v and 1 or 0 end
   if mtype(v) ~= "integer" then fail(line, "%s expects an integer, got %s", what, type_name(v)) end
   return v
end

-- An attribute getter for selectattr, map, sort...: "a.b.0" looks up a, then b, then item 0.
local function attr_getter(path, line)
   local parts = {}
   if type(path) == "string" then
      for p in path:gmatch("[^.]+") do parts[#parts + 1] = math.tointeger(tonumber(p)) or p end
   else
      parts[1] = path
   end
   return function(v)
      for _, p in ipairs(parts) do
         v = getitem(v, p, line)
      end
      return v
   end
end

local function str_case(fn, what)
   return function(v, _, _, line)
      local s = tostr(v, line)
      ascii_only(s, what, line)
      return fn(s)
   end
end

local function capitalize(s, line)
   ascii_only(s, "capitalize", line)
   return sub(s, 1, 1):upper() .. sub(s, 2):lower()
end

local function splitlines(s)
   local lines = {}
   local i, n = 1, #s
   while i <= n do
      local a, b = find(s, "\r\n", i, true)
      local j, k = find(s, "[\n\r\v\f\28\29\30]", i)
      local u1, u2 = find(s, "\194\133", i, true)
      local w1, w2 = find(s, "\226\128[\168\169]", i)
      local best, bend = nil, nil
      for _, c in ipairs { { a, b }, { j, k }, { u1, u2 }, { w1, w2 } } do
         if c[1] and (not best or c[1] < best or (c[1] == best and c[2] > bend)) then best, bend = c[1], c[2] end
      end
      if not best then lines[#lines + 1] = sub(s, i); break end
      lines[#lines + 1] = sub(s, i, best - 1)
      i = bend + 1
   end
   return lines
end

local function py_int(v, default, base)
   if type(v) == "boolean" then return v and 1 or 0 end
   if mtype(v) == "integer" then return v end
   if mtype(v) == "float" then
      if v ~= v or v == math.huge or v == -math.huge then return default end
      return math.tointeger(v < 0 and math.ceil(v) or math.floor(v)) or default
   end
   local s = as_str(v)
   if s then
      local t = strip(s):gsub("(%w)_(%w)", "%1%2")
      local sign, digits = t:match("^([-+]?)(%w+)$")
      if digits then
         local b = base or 10
         local prefix = digits:sub(1, 2):lower()
         local pb = ({ ["0x"] = 16, ["0o"] = 8, ["0b"] = 2 })[prefix]
         if pb and (b == pb or b == 0) then digits, b = digits:sub(3), pb end
         if b == 0 then b = 10 end
         local r = tonumber(digits, b)
         if r and mtype(r) == "integer" then return sign == "-" and -r or r end
      end
      local f = tonumber(t)
      if f and not t:find("^0[xX]") then return py_int(f + 0.0, default) end
      return default
   end
   return default
end

local function py_float(v, default)
   if type(v) == "boolean" then return v and 1.0 or 0.0 end
   if type(v) == "number" then return v + 0.0 end
   local s = as_str(v)
   if s then
      local t = strip(s):lower():gsub("(%d)_(%d)", "%1%2")
      if t == "nan" or t == "+nan" or t == "-nan" then return 0 / 0 end
      if t == "inf" or t == "+inf" or t == "infinity" or t == "+infinity" then return math.huge end
      if t == "-inf" or t == "-infinity" then return -math.huge end
      if t:find("^[-+]?%d*%.?%d*e?[-+]?%d*$") and not t:find("^0x") then
         local f = tonumber(t)
         if f then return f + 0.0 end
      end
   end
   return default
end

local function to_list(v, line, kind)
   return list(items_of(v, line), kind or "list")
end

local function select_or_reject(seq, args, kw, line, want, attr)
   local get, test, targs
   if attr then
      get = attr_getter(args[1], line)
      test, targs = args[2], { unpack(args, 3) }
   else
      get = function(x) return x end
      test, targs = args[1], { unpack(args, 2) }
   end
   local out = list(nil, "gen")
   for _, x in ipairs(items_of(seq, line)) do
      local v = get(x)
      local r
      if test == nil then r = truthy(v) else r = apply_test(test, v, targs, {}, line) end
      if r == want then out[#out + 1] = x end
   end
   return out
end

FILTERS = {
   trim = function(v, args, kw, line)
      local c = arg(args, kw, 1, "chars")
      return strip(tostr(v, line), c ~= nil and c ~= None and need_str(c, line, "trim") or nil, true, true)
   end,
   tojson = function(v, args, kw, line)
      local indent = arg(args, kw, 2, "indent")
      local o = { ascii = truthy(arg(args, kw, 1, "ensure_ascii", false)),
                  sort = truthy(arg(args, kw, 4, "sort_keys", false)) }
      if indent == nil or indent == None then
         o.indent = nil
      elseif mtype(indent) == "integer" then
         o.indent = rep(" ", indent)
      elseif as_str(indent) then
         o.indent = as_str(indent)
      else
         fail(line, "tojson: indent must be an integer or a string")
      end
      local sep = arg(args, kw, 3, "separators")
      if sep ~= nil and sep ~= None then
         if getmetatable(sep) ~= ListMT or #sep ~= 2 or not as_str(sep[1]) or not as_str(sep[2]) then
            fail(line, "tojson: separators must be a pair of strings")
         end
         o.item, o.key = as_str(sep[1]), as_str(sep[2])
      else
         o.item, o.key = o.indent and "," or ", ", ": "
      end
      return tojson(v, o, 0, line)
   end,
   length = function(v, _, _, line) return length(v, line) end,
   default = function(v, args, kw)
      local d = arg(args, kw, 1, "default_value", "")
      local boolean = truthy(arg(args, kw, 2, "boolean", false))
      if is_undef(v) or (boolean and not truthy(v)) then return d end
      return v
   end,
   upper = str_case(string.upper, "upper"),
   lower = str_case(string.lower, "lower"),
   title = function(v, _, _, line)
      local s = tostr(v, line)
      ascii_only(s, "title", line)
      local out = {}
      local pos = 1
      -- jinja splits on runs of [-\s({\[<] and capitalizes each piece
      while pos <= #s do
         local a, b = find(s, "[-%s({%[<]+", pos)
         local piece = sub(s, pos, (a or #s + 1) - 1)
         if piece ~= "" then out[#out + 1] = sub(piece, 1, 1):upper() .. sub(piece, 2):lower() end
         if not a then break end
         out[#out + 1] = sub(s, a, b)
         pos = b + 1
      end
      return concat(out)
   end,
   capitalize = function(v, _, _, line) return capitalize(tostr(v, line), line) end,
   replace = function(v, args, kw, line)
      local s = tostr(v, line)
      local old = need_str(arg(args, kw, 1, "old"), line, "replace")
      local new = need_str(arg(args, kw, 2, "new"), line, "replace")
      local c = arg(args, kw, 3, "count")
      return STR_METHODS.replace(s, { old, new, c }, {}, line)
   end,
   join = function(v, args, kw, line)
      local d = arg(args, kw, 1, "d", "")
      local attr = arg(args, kw, 2, "attribute")
      local its = items_of(v, line)
      local get = attr ~= nil and attr_getter(attr, line) or nil
      local parts = {}
      for j, x in ipairs(its) do parts[j] = tostr(get and get(x) or x, line) end
      return concat(parts, tostr(d, line))
   end,
   first = function(v, _, _, line)
      local its = items_of(v, line)
      if #its == 0 then return undef("No first item, sequence was empty.") end
      return its[1]
   end,
   last = function(v, _, _, line)
      local its = items_of(v, line)
      if #its == 0 then return undef("No last item, sequence was empty.") end
      return its[#its]
   end,
   list = function(v, _, _, line)
      if v == None or type(v) == "number" or type(v) == "boolean" then
         fail(line, "'%s' object is not iterable", type_name(v))
      end
      return to_list(v, line)
   end,
   items = function(v, _, _, line)
      if is_undef(v) then return list(nil, "gen") end
      if getmetatable(v) ~= DictMT then fail(line, "Can only get item pairs from a mapping.") end
      local out = list(nil, "gen")
      for j, k in ipairs(v._keys) do out[j] = list({ k, v._v[k] }, "tuple") end
      return out
   end,
   string = function(v, _, _, line)
      if getmetatable(v) == MarkupMT then return v end
      return tostr(v, line)
   end,
   int = function(v, args, kw, line)
      local default = arg(args, kw, 1, "default", 0)
      local base = arg(args, kw, 2, "base", 10)
      return py_int(v, default, need_int(base, line, "int"))
   end,
   float = function(v, args, kw) return py_float(v, arg(args, kw, 1, "default", 0.0)) end,
   abs = function(v, _, _, line)
      local x = as_num(v)
      if not x then fail(line, "bad operand type for abs(): '%s'", type_name(v)) end
      return math.abs(x)
   end,
   round = function(v, args, kw, line)
      local precision = need_int(arg(args, kw, 1, "precision", 0), line, "round")
      local method = arg(args, kw, 2, "method", "common")
      local x = as_num(v)
      if not x then fail(line, "round expects a number, got %s", type_name(v)) end
      if method == "common" then
         if mtype(x) == "integer" and precision >= 0 then return x end
         if precision < 0 then fail(line, "unsupported: round with a negative precision") end
         return tonumber(format("%." .. precision .. "f", x)) + 0.0
      elseif method == "floor" or method == "ceil" then
         local f = math[method]
         local p = 10 ^ precision
         return f(x * p) / p + 0.0
      end
      fail(line, "method must be common, ceil or floor")
   end,
   selectattr = function(v, args, kw, line) return select_or_reject(v, args, kw, line, true, true) end,
   rejectattr = function(v, args, kw, line) return select_or_reject(v, args, kw, line, false, true) end,
   select = function(v, args, kw, line) return select_or_reject(v, args, kw, line, true, false) end,
   reject = function(v, args, kw, line) return select_or_reject(v, args, kw, line, false, false) end,
   map = function(v, args, kw, line, ctx)
      local out = list(nil, "gen")
      local its = items_of(v, line)
      if kw.attribute ~= nil then
         local get = attr_getter(kw.attribute, line)
         local d = kw.default
         for j, x in ipairs(its) do
            local y = get(x)
            if d ~= nil and is_undef(y) then y = d end
            out[j] = y
         end
         return out
      end
      local name = args[1]
      if not as_str(name) then fail(line, "map expects a filter name or attribute=") end
      local f = { name = as_str(name), args = {}, kwargs = {}, kwo = {} }
      local fn = FILTERS[f.name]
      if not fn then fail(line, "unsupported filter '%s'", f.name) end
      local fargs = { unpack(args, 2) }
      for j, x in ipairs(its) do out[j] = fn(x, fargs, {}, line, ctx) end
      return out
   end,
   reverse = function(v, _, _, line)
      local s = as_str(v)
      if s then
         local cs = chars(s)
         local out = {}
         for j = #cs, 1, -1 do out[#out + 1] = cs[j] end
         return concat(out)
      end
      local its = items_of(v, line)
      local out = list(nil, "gen")
      for j = #its, 1, -1 do out[#out + 1] = its[j] end
      return out
   end,
   unique = function(v, args, kw, line)
      local cs = truthy(arg(args, kw, 1, "case_sensitive", false))
      local attr = arg(args, kw, 2, "attribute")
      local get = attr ~= nil and attr_getter(attr, line) or function(x) return x end
      local out, seen = list(nil, "gen"), {}
      for _, x in ipairs(items_of(v, line)) do
         local key = get(x)
         if not cs and as_str(key) then
            ascii_only(as_str(key), "unique", line)
            key = as_str(key):lower()
         end
         local dup = false
         for _, k in ipairs(seen) do if eq(k, key) then dup = true; break end end
         if not dup then
            seen[#seen + 1] = key
            out[#out + 1] = x
         end
      end
      return out
   end,
   indent = function(v, args, kw, line)
      local width = arg(args, kw, 1, "width", 4)
      local first = truthy(arg(args, kw, 2, "first", false))
      local blank = truthy(arg(args, kw, 3, "blank", false))
      local ind = as_str(width) or rep(" ", need_int(width, line, "indent"))
      local s = tostr(v, line) .. "\n"
      local lines = splitlines(s)
      local rv
      if blank then
         rv = concat(lines, "\n" .. ind)
      else
         rv = table.remove(lines, 1)
         if #lines > 0 then
            for j, l in ipairs(lines) do if l ~= "" then lines[j] = ind .. l end end
            rv = rv .. "\n" .. concat(lines, "\n")
         end
      end
      if first then rv = ind .. rv end
      return rv
   end,
   safe = function(v, _, _, line)
      if getmetatable(v) == MarkupMT then return v end
      return markup(tostr(v, line))
   end,
   escape = function(v, _, _, line)
      if getmetatable(v) == MarkupMT then return v end
      return markup(escape_html(tostr(v, line)))
   end,
   forceescape = function(v, _, _, line) return markup(escape_html(tostr(v, line))) end,
   attr = function(v, args, _, line) return getattr(v, args[1], line) end,
   sum = function(v, args, kw, line)
      local attr = arg(args, kw, 1, "attribute")
      local total = arg(args, kw, 2, "start", 0)
      local get = attr ~= nil and attr_getter(attr, line) or function(x) return x end
      for _, x in ipairs(items_of(v, line)) do total = binop("+", total, get(x), line) end
      return total
   end,
   wordcount = function(v, _, _, line)
      local n = 0
      for _ in tostr(v, line):gmatch("%w+") do n = n + 1 end
      return n
   end,
}
FILTERS.format = function(v, args, kw, line)
   if next(kw) then fail(line, "unsupported: the format filter with keyword arguments") end
   return py_format(tostr(v, line), list({ unpack(args) }, "tuple"), line)
end
FILTERS.d = FILTERS.default
FILTERS.e = FILTERS.escape
FILTERS.count = FILTERS.length

local function sort_items(its, args, kw, line)
   local rev = truthy(arg(args, kw, 1, "reverse", false))
   local cs = truthy(arg(args, kw, 2, "case_sensitive", false))
   local attr = arg(args, kw, 3, "attribute")
   local get = attr ~= nil and attr_getter(attr, line) or function(x) return x end
   local keyed = {}
   for j, x in ipairs(its) do
      local k = get(x)
      if not cs and as_str(k) then
         ascii_only(as_str(k), "sort", line)
         k = as_str(k):lower()
      end
      keyed[j] = { k = k, v = x, j = j }
   end
   table.sort(keyed, function(a, b)
      if rev then
         if less(b.k, a.k, line) then return true end
         if less(a.k, b.k, line) then return false end
      else
         if less(a.k, b.k, line) then return true end
         if less(b.k, a.k, line) then return false end
      end
      return a.j < b.j -- Python's sort is stable
   end)
   local out = list()
   for j, e in ipairs(keyed) do out[j] = e.v end
   return out
end

FILTERS.sort = function(v, args, kw, line) return sort_items(items_of(v, line), args, kw, line) end

FILTERS.dictsort = function(v, args, kw, line)
   if getmetatable(v) ~= DictMT then fail(line, "You can only sort by either \"key\" or \"value\"") end
   local cs = truthy(arg(args, kw, 1, "case_sensitive", false))
   local by = arg(args, kw, 2, "by", "key")
   local rev = truthy(arg(args, kw, 3, "reverse", false))
   local pairs_ = {}
   for j, k in ipairs(v._keys) do pairs_[j] = list({ k, v._v[k] }, "tuple") end
   local idx = by == "key" and 0 or by == "value" and 1 or fail(line, "You can only sort by either \"key\" or \"value\"")
   return sort_items(pairs_, { rev, cs, idx }, {}, line)
end

FILTERS.min = function(v, args, kw, line)
   local its = sort_items(items_of(v, line), { false, arg(args, kw, 1, "case_sensitive", false),
                                               arg(args, kw, 2, "attribute") }, {}, line)
   if #its == 0 then return undef("No aggregated item, sequence was empty.") end
   return its[1]
end

FILTERS.max = function(v, args, kw, line)
   local its = sort_items(items_of(v, line), { true, arg(args, kw, 1, "case_sensitive", false),
                                               arg(args, kw, 2, "attribute") }, {}, line)
   if #its == 0 then return undef("No aggregated item, sequence was empty.") end
   return its[1]
end

-- ---- tests ----

local function is_int(v) return mtype(v) == "integer" end

TESTS = {
   defined = function(v) return not is_undef(v) end,
   undefined = function(v) return is_undef(v) end,
   none = function(v) return v == None end,
   string = function(v) return as_str(v) ~= nil end,
   number = function(v) return type(v) == "number" or type(v) == "boolean" end,
   integer = function(v) return is_int(v) end,
   float = function(v) return mtype(v) == "float" end,
   boolean = function(v) return type(v) == "boolean" end,
   ["true"] = function(v) return v == true end,
   ["false"] = function(v) return v == false end,
   mapping = function(v) return getmetatable(v) == DictMT end,
   iterable = function(v)
      local mt = getmetatable(v)
      return as_str(v) ~= nil or mt == ListMT or mt == DictMT or mt == UndefMT
   end,
   sequence = function(v)
      local mt = getmetatable(v)
      return as_str(v) ~= nil or (mt == ListMT and v._k ~= "gen") or mt == DictMT or mt == UndefMT
   end,
   callable = function(v) return getmetatable(v) == FnMT end,
   even = function(v, _, _, line) return binop("%", v, 2, line) == 0 end,
   odd = function(v, _, _, line) return binop("%", v, 2, line) == 1 end,
   divisibleby = function(v, args, _, line) return binop("%", v, args[1], line) == 0 end,
   eq = function(v, args) return eq(v, args[1]) end,
   ne = function(v, args) return not eq(v, args[1]) end,
   lt = function(v, args, _, line) return less(v, args[1], line, "<") end,
   gt = function(v, args, _, line) return less(args[1], v, line, ">") end,
   le = function(v, args, _, line) return not less(args[1], v, line, "<=") end,
   ge = function(v, args, _, line) return not less(v, args[1], line, ">=") end,
   ["in"] = function(v, args, _, line) return contains(args[1], v, line) end,
   sameas = function(v, args)
      local o = args[1]
      if type(v) ~= type(o) then return false end
      if type(v) == "table" then return rawequal(v, o) end
      return v == o and mtype(v) == mtype(o)
   end,
   lower = function(v, _, _, line)
      local s = tostr(v, line)
      return s:find("%l") ~= nil and not s:find("%u")
   end,
   upper = function(v, _, _, line)
      local s = tostr(v, line)
      return s:find("%u") ~= nil and not s:find("%l")
   end,
   escaped = function(v) return getmetatable(v) == MarkupMT end,
   filter = function(v) return as_str(v) ~= nil and FILTERS[as_str(v)] ~= nil end,
   test = function(v) return as_str(v) ~= nil and TESTS[as_str(v)] ~= nil end,
}
TESTS.equalto = TESTS.eq
TESTS["=="] = TESTS.eq
TESTS["!="] = TESTS.ne
TESTS["<"] = TESTS.lt
TESTS[">"] = TESTS.gt
TESTS["<="] = TESTS.le
TESTS[">="] = TESTS.ge
TESTS.greaterthan = TESTS.gt
TESTS.lessthan = TESTS.lt

-- ---- methods ----------------------------------------------------------------------------------

-- str.split(sep=None, maxsplit=-1)
local function str_split(s, sep, maxsplit, line)
   local out = list()
   if sep == nil or sep == None then
      local cs = chars(s)
      local cur, n = nil, 0
      local j = 1
      while j <= #cs do
         if SPACE[cs[j]] then
            if cur then out[#out + 1] = concat(cur); cur = nil; n = n + 1 end
            j = j + 1
         else
            if not cur and maxsplit >= 0 and n >= maxsplit then
               local rest = strip(concat(cs, "", j), nil, false, true)
               out[#out + 1] = rest
               return out
            end
            cur = cur or {}
            cur[#cur + 1] = cs[j]
            j = j + 1
         end
      end
      if cur then out[#out + 1] = concat(cur) end
      return out
   end
   sep = need_str(sep, line, "split")
   if sep == "" then fail(line, "empty separator") end
   local pos, n = 1, 0
   while maxsplit < 0 or n < maxsplit do
      local a, b = find(s, sep, pos, true)
      if not a then break end
      out[#out + 1] = sub(s, pos, a - 1)
      pos = b + 1
      n = n + 1
   end
   out[#out + 1] = sub(s, pos)
   return out
end

local function affix_test(s, args, kw, line, at_end)
   local x = arg(args, kw, 1, nil)
   local start, stop = arg(args, kw, 2), arg(args, kw, 3)
   if start ~= nil or stop ~= nil then
      s = getitem(s, { slice = true, start = start, stop = stop }, line)
   end
   local cands = {}
   if getmetatable(x) == ListMT and x._k == "tuple" then
      cands = x
   else
      cands = { x }
   end
   for _, c in ipairs(cands) do
      local cs = as_str(c)
      if not cs then
         fail(line, "%s first arg must be str or a tuple of str, not %s",
              at_end and "endswith" or "startswith", type_name(c))
      end
      if at_end then
         if cs == "" or sub(s, -#cs) == cs then return true end
      else
         if sub(s, 1, #cs) == cs then return true end
      end
   end
   return false
end

-- str.format with {} {0} {name} fields (no format specs or conversions)
local function str_format(s, args, kw, line)
   local auto = 0
   local out = s:gsub("(%b{})", function(field)
      local inner = sub(field, 2, -2)
      if inner:find("[:!{}%[%.]") then
         fail(line, "unsupported: str.format field %s (only {}, {0}, {name})", field)
      end
      local v
      if inner == "" then
         auto = auto + 1
         v = args[auto]
      elseif inner:match("^%d+$") then
         v = args[tonumber(inner) + 1]
      else
         v = kw[inner]
      end
      if v == nil then fail(line, "str.format: no value for %s", field) end
      return tostr(v, line)
   end)
   if out:find("[{}]") then fail(line, "unsupported: '{' or '}' escapes in str.format") end
   return out
end

-- "%s" % value: %s, %d, %i, %r, %% only
function py_format(s, v, line)
   local vals
   if getmetatable(v) == ListMT and v._k == "tuple" then vals = v else vals = { v } end
   local k = 0
   local out = s:gsub("%%(.)", function(c)
      if c == "%" then return "%" end
      k = k + 1
      local x = vals[k]
      if x == nil then fail(line, "not enough arguments for format string") end
      if c == "s" then return tostr(x, line)
      elseif c == "r" then return repr(x, line)
      elseif c == "d" or c == "i" then
         local n = as_num(x)
         if not n then fail(line, "%%d format: a real number is required, not %s", type_name(x)) end
         return tostring(math.tointeger(n < 0 and math.ceil(n) or math.floor(n)))
      end
      fail(line, "unsupported: the %%-format conversion '%%%s'", c)
   end)
   if k < #vals then fail(line, "not all arguments converted during string formatting") end
   return out
end

STR_METHODS = {
   startswith = function(s, args, kw, line) return affix_test(s, args, kw, line, false) end,
   endswith = function(s, args, kw, line) return affix_test(s, args, kw, line, true) end,
   strip = function(s, args, _, line)
      local c = args[1]
      return strip(s, (c ~= nil and c ~= None) and need_str(c, line, "strip") or nil, true, true)
   end,
   lstrip = function(s, args, _, line)
      local c = args[1]
      return strip(s, (c ~= nil and c ~= None) and need_str(c, line, "lstrip") or nil, true, false)
   end,
   rstrip = function(s, args, _, line)
      local c = args[1]
      return strip(s, (c ~= nil and c ~= None) and need_str(c, line, "rstrip") or nil, false, true)
   end,
   split = function(s, args, kw, line)
      return str_split(s, arg(args, kw, 1, "sep"), need_int(arg(args, kw, 2, "maxsplit", -1), line, "split"), line)
   end,
   replace = function(s, args, kw, line)
      local old = need_str(arg(args, kw, 1, nil), line, "replace")
      local new = need_str(arg(args, kw, 2, nil), line, "replace")
      local c = arg(args, kw, 3, "count", -1)
      if c == None then c = -1 end
      c = need_int(c, line, "replace")
      if old == "" then
         local cs = chars(s)
         local out, n = {}, 0
         for j = 1, #cs + 1 do
            if c < 0 or n < c then out[#out + 1] = new; n = n + 1 end
            out[#out + 1] = cs[j]
         end
         return concat(out)
      end
      local out, pos, n = {}, 1, 0
      while c < 0 or n < c do
         local a, b = find(s, old, pos, true)
         if not a then break end
         out[#out + 1] = sub(s, pos, a - 1)
         out[#out + 1] = new
         pos = b + 1
         n = n + 1
      end
      out[#out + 1] = sub(s, pos)
      return concat(out)
   end,
   upper = function(s, _, _, line) ascii_only(s, "upper", line); return s:upper() end,
   lower = function(s, _, _, line) ascii_only(s, "lower", line); return s:lower() end,
   title = function(s, _, _, line) return str_title(s, line) end,
   capitalize = function(s, _, _, line) return capitalize(s, line) end,
   format = function(s, args, kw, line) return str_format(s, args, kw, line) end,
   join = function(s, args, _, line)
      local parts = {}
      for j, x in ipairs(items_of(args[1], line)) do
         parts[j] = as_str(x) or fail(line, "sequence item %d: expected str instance, %s found", j - 1, type_name(x))
      end
      return concat(parts, s)
   end,
   find = function(s, args, _, line)
      local a = find(s, need_str(args[1], line, "find"), 1, true)
      if not a then return -1 end
      return ulen(sub(s, 1, a - 1))
   end,
   count = function(s, args, _, line)
      local x = need_str(args[1], line, "count")
      if x == "" then return ulen(s) + 1 end
      local n, pos = 0, 1
      while true do
         local _, b = find(s, x, pos, true)
         if not b then return n end
         n, pos = n + 1, b + 1
      end
   end,
   splitlines = function(s)
      local ls = splitlines(s)
      return list(ls)
   end,
   isdigit = function(s) return s ~= "" and not s:find("%D") end,
   isspace = function(s) return s ~= "" and strip(s) == "" end,
   isalpha = function(s, _, _, line) ascii_only(s, "isalpha", line); return s ~= "" and not s:find("%A") end,
   isalnum = function(s, _, _, line) ascii_only(s, "isalnum", line); return s ~= "" and not s:find("%W") end,
   islower = function(s, _, _, line) ascii_only(s, "islower", line); return s:find("%l") ~= nil and not s:find("%u") end,
   isupper = function(s, _, _, line) ascii_only(s, "isupper", line); return s:find("%u") ~= nil and not s:find("%l") end,
   removeprefix = function(s, args, _, line)
      local p = need_str(args[1], line, "removeprefix")
      if sub(s, 1, #p) == p then return sub(s, #p + 1) end
      return s
   end,
   removesuffix = function(s, args, _, line)
      local p = need_str(args[1], line, "removesuffix")
      if p ~= "" and sub(s, -#p) == p then return sub(s, 1, -#p - 1) end
      return s
   end,
}

DICT_METHODS = {
   items = function(d)
      local out = list(nil, "view")
      for j, k in ipairs(d._keys) do out[j] = list({ k, d._v[k] }, "tuple") end
      return out
   end,
   keys = function(d) return list({ unpack(d._keys) }, "view") end,
   values = function(d)
      local out = list(nil, "view")
      for j, k in ipairs(d._keys) do out[j] = d._v[k] end
      return out
   end,
   get = function(d, args, _, line)
      local k = args[1]
      if k == nil then fail(line, "get expected at least 1 argument, got 0") end
      if type(k) == "boolean" then k = k and 1 or 0 end
      local v = (type(k) == "string" or type(k) == "number") and d._v[k] or nil
      if v ~= nil then return v end
      if args[2] ~= nil then return args[2] end
      return None
   end,
   copy = function(d)
      local c = newdict()
      for _, k in ipairs(d._keys) do dset(c, k, d._v[k]) end
      return c
   end,
}

LIST_METHODS = {
   index = function(l, args, _, line)
      for j = 1, #l do if eq(l[j], args[1]) then return j - 1 end end
      fail(line, "%s is not in list", repr(args[1], line))
   end,
   count = function(l, args)
      local n = 0
      for j = 1, #l do if eq(l[j], args[1]) then n = n + 1 end end
      return n
   end,
}

-- ---- globals --------------------------------------------------------------------------------

local GLOBALS = {
   range = callable("range", function(args, _, _, line)
      local a, b, c = args[1], args[2], args[3]
      for _, x in ipairs(args) do need_int(x, line, "range") end
      if b == nil then a, b = 0, a end
      c = c or 1
      if c == 0 then fail(line, "range() arg 3 must not be zero") end
      local out = list()
      if (c > 0 and b - a > 100000) or (c < 0 and a - b > 100000) then
         fail(line, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).")
      end
      for i = a, b - (c > 0 and 1 or -1), c do out[#out + 1] = i end
      return out
   end),
   dict = callable("dict", function(args, kw, kwo, line)
      local d = newdict()
      if args[1] ~= nil then
         if getmetatable(args[1]) ~= DictMT then fail(line, "unsupported: dict() of a %s", type_name(args[1])) end
         for _, k in ipairs(args[1]._keys) do dset(d, k, args[1]._v[k]) end
      end
      for _, name in ipairs(kwo) do dset(d, name, kw[name]) end
      return d
   end),
   namespace = callable("namespace", function(args, kw, kwo, line)
      local ns = newdict(NsMT)
      if args[1] ~= nil then
         if getmetatable(args[1]) ~= DictMT then fail(line, "unsupported: namespace() of a %s", type_name(args[1])) end
         for _, k in ipairs(args[1]._keys) do dset(ns, k, args[1]._v[k]) end
      end
      for _, name in ipairs(kwo) do dset(ns, name, kw[name]) end
      return ns
   end),
}

local function raise_exception(args, _, _, line)
   local msg = args[1]
   error(setmetatable({ raised = as_str(msg) or tostr(msg, line), line = line }, Fail), 0)
end

local function strftime_now(args, _, _, line)
   local f = need_str(args[1], line, "strftime_now")
   local ok, s = pcall(os.date, f)
   if not ok then fail(line, "strftime_now: %s", tostring(s):gsub("^.-: ", "")) end
   return s
end

GLOBALS.raise_exception = callable("raise_exception", raise_exception)
GLOBALS.strftime_now = callable("strftime_now", strftime_now)

--[[
builtins.install{getattr = f, getitem = f, binop = f}: the evaluator's
functions, which the filters, tests and methods here call back (attribute
paths, slicing, `sum`, `even`...). dpo.jinja calls it once, when it loads.
]]
local function install(ev)
   getattr, getitem, binop = ev.getattr, ev.getitem, ev.binop
end

return {
   FILTERS = FILTERS, TESTS = TESTS, STR_METHODS = STR_METHODS, DICT_METHODS = DICT_METHODS,
   LIST_METHODS = LIST_METHODS, GLOBALS = GLOBALS, apply_test = apply_test, py_format = py_format,
   install = install,
}
