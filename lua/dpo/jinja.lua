-- dpo.jinja: the Jinja templates of chat models, rendered as transformers
-- renders them (an ImmutableSandboxedEnvironment with trim_blocks and
-- lstrip_blocks on, the loopcontrols extension, its own tojson filter with
-- ensure_ascii off, raise_exception(msg) and strftime_now(fmt) as globals).
--
--   local t = dpo.jinja.compile(source [, name])   parse once (errors name the line)
--   t:render(vars) -> string                       vars: a table of variables
--   dpo.jinja.render(source, vars [, name])        both at once
--   dpo.jinja.tojson(value [, opts])               the tojson filter, from Lua
--   dpo.jinja.none         Python's None (cjson.null is taken as None too)
--   dpo.jinja.list(t), dpo.jinja.dict(t [, keys])  mark a Lua table as a list
--                          or a dict (keys: the order of a dict's keys)
--
-- Values. A template sees Python's values; a Lua value is read as:
--   nil (a missing variable or field)  undefined: prints as "", is false
--   dpo.jinja.none, cjson.null         None
--   boolean, string                    bool, str (UTF-8; indexing, slicing and
--                                      length count code points, as Python does)
--   integer / float                    int / float: 1 prints "1", 1.0 prints "1.0"
--   a table marked by dpo.jinja.list   a list
--   a table marked by dpo.jinja.dict   a dict, its keys in the order given
--   any other table                    a list when it is a non-empty sequence
--                                      (keys 1..n only); otherwise a dict whose
--                                      keys iterate in sorted order (Lua tables
--                                      have none; numbers before strings). An
--                                      empty unmarked table is an empty dict,
--                                      as cjson encodes it: use dpo.jinja.list{}
--                                      (or cjson.empty_array) for [].
-- The variables are read once, at the start of each render.
--
-- What is rendered exactly as jinja2 3.1 does: text, {{ }}, {% %}, {# #},
-- whitespace control (- and +, trim_blocks, lstrip_blocks; \r\n and \r read
-- as \n; one trailing newline dropped), raw; if/elif/else; for (loop.index,
-- index0, revindex, revindex0, first, last, length, previtem, nextitem,
-- cycle, changed; else; tuple targets; `for x in xs if cond`), break,
-- continue; set (tuples, namespace attributes, block set with filters);
-- macro (defaults, varargs, kwargs, caller) and call; filter blocks;
-- generation blocks (transformers' tag; rendered as their body); literals,
-- attribute and item access, slices, calls with keyword arguments, all of
-- Jinja's operators, inline if-else; the filters and tests in FILTERS and
-- TESTS below; the string, dict and list methods in STR_METHODS and
-- DICT_METHODS; the globals range, dict, namespace, raise_exception,
-- strftime_now. Undefined behaves as jinja's default Undefined (printing
-- gives "", an attribute of it raises "'x' is undefined").
--
-- What is not: anything else (include, extends, import, block, with, do,
-- unknown filters, tests or methods) is an error "name:line: unsupported
-- ..." naming the construct, never a guess. Case mapping (upper, lower,
-- title, capitalize) is ASCII: text holding other letters is an error.
-- Markup (safe, escape) is kept through `+` and printing only.
-- Errors: "name:line: reason" for the template's faults; raise_exception's
-- message is raised as it is, with nothing added.
local jinja = {}

local format, sub, byte, find, rep = string.format, string.sub, string.byte, string.find, string.rep
local concat, unpack = table.concat, table.unpack
local mtype = math.type

-- ---- values ---------------------------------------------------------------------------

local None = setmetatable({}, { __name = "dpo.jinja.None", __tostring = function() return "None" end })
local UndefMT = { __name = "dpo.jinja.Undefined" }
local ListMT = { __name = "dpo.jinja.list" }   -- {items..., _k = kind}: list tuple gen view
local DictMT = { __name = "dpo.jinja.dict" }   -- {_keys = {k...}, _v = {[k] = v}}
local NsMT = { __name = "dpo.jinja.Namespace" } -- as a dict
local FnMT = { __name = "dpo.jinja.callable" }  -- {fn = function(args, kw, kwo, ctx), name}
local MarkupMT = { __name = "dpo.jinja.Markup" } -- {s = string}
local LoopMT = { __name = "dpo.jinja.LoopContext" }

jinja.none = None

-- A failure of the template: raised as a table, turned into "name:line: msg"
-- by render.
local Fail = {}
local function fail(line, msg, ...)
   if select("#", ...) > 0 then msg = format(msg, ...) end
   error(setmetatable({ line = line, msg = msg }, Fail), 0)
end

local function undef(hint) return setmetatable({ hint = hint }, UndefMT) end
local function is_undef(v) return type(v) == "table" and getmetatable(v) == UndefMT end

local function list(items, kind)
   items = items or {}
   items._k = kind or "list"
   return setmetatable(items, ListMT)
end

-- Dict keys: Python's 1 == 1.0 == True are one key; Lua's 1 and 1.0 already
-- are; a bool key stays a bool.
local function newdict(mt) return setmetatable({ _keys = {}, _v = {} }, mt or DictMT) end
local function dset(d, k, v)
   if d._v[k] == nil then d._keys[#d._keys + 1] = k end
   d._v[k] = v
end

local function markup(s) return setmetatable({ s = s }, MarkupMT) end

local function callable(name, fn) return setmetatable({ name = name, fn = fn }, FnMT) end

local cjson_null, cjson_empty_array, cjson_array_mt
do
   local ok, cj = pcall(require, "cjson")
   if ok then cjson_null, cjson_empty_array, cjson_array_mt = cj.null, cj.empty_array, cj.array_mt end
end

local LIST_MARK, DICT_MARK = {}, {}

--[[
dpo.jinja.list(t) -> t, marked as a list; dpo.jinja.dict(t [, keys]) -> t,
marked as a dict whose keys come in the order of the list `keys` (default:
sorted).
]]
function jinja.list(t)
   if type(t) ~= "table" then error("bad argument #1 to 'list' (table expected, got " .. type(t) .. ")", 2) end
   local mt = getmetatable(t)
   if mt ~= nil and mt ~= LIST_MARK then
      error("bad argument #1 to 'list' (the table already has a metatable)", 2)
   end
   return setmetatable(t, LIST_MARK)
end

local DICT_KEYS = setmetatable({}, { __mode = "k" })
function jinja.dict(t, keys)
   if type(t) ~= "table" then error("bad argument #1 to 'dict' (table expected, got " .. type(t) .. ")", 2) end
   if keys ~= nil and type(keys) ~= "table" then
      error("bad argument #2 to 'dict' (list of keys expected, got " .. type(keys) .. ")", 2)
   end
   local mt = getmetatable(t)
   if mt ~= nil and mt ~= DICT_MARK then
      error("bad argument #1 to 'dict' (the table already has a metatable)", 2)
   end
   DICT_KEYS[t] = keys
   return setmetatable(t, DICT_MARK)
end

local function key_less(a, b)
   local ta, tb = type(a), type(b)
   if ta ~= tb then return ta == "number" or (ta == "boolean" and tb == "string") end
   if ta == "boolean" then return (not a) and b end
   return a < b
end

-- A Lua value as a template value (deep; tables copied).
local function from_lua(v, depth)
   local tv = type(v)
   if tv == "string" or tv == "number" or tv == "boolean" then return v end
   if v == nil then return undef() end
   if v == None or v == cjson_null then return None end
   if v == cjson_empty_array then return list() end
   if tv == "function" then
      return callable("function", function(args) return from_lua(v(unpack(args)), 0) end)
   end
   if tv ~= "table" then error(format("a %s cannot be a template value", tv), 0) end
   local mt = getmetatable(v)
   if mt == ListMT or mt == DictMT or mt == NsMT or mt == FnMT or mt == MarkupMT
      or mt == UndefMT or mt == LoopMT then
      return v
   end
   depth = depth + 1
   if depth > 100 then error("a table nested more than 100 deep (a cycle?) cannot be a template value", 0) end
   local n, count = #v, 0
   for _ in next, v do count = count + 1 end
   local is_list = mt == LIST_MARK or (cjson_array_mt and mt == cjson_array_mt)
      or (mt ~= DICT_MARK and n > 0 and count == n)
   if is_list then
      local out = list()
      for i = 1, n do out[i] = from_lua(v[i], depth) end
      return out
   end
   local keys = DICT_KEYS[v]
   if not keys then
      keys = {}
      for k in next, v do keys[#keys + 1] = k end
      table.sort(keys, key_less)
   end
   local d = newdict()
   for _, k in ipairs(keys) do
      if v[k] ~= nil then dset(d, k, from_lua(v[k], depth)) end
   end
   return d
end

-- ---- UTF-8 and Python's str ---------------------------------------------------------------

-- The code points of s as strings (bytes when s is not valid UTF-8).
local function chars(s)
   local out = {}
   if utf8.len(s) then
      for _, c in utf8.codes(s) do out[#out + 1] = utf8.char(c) end
   else
      for i = 1, #s do out[i] = sub(s, i, i) end
   end
   return out
end

local function ulen(s) return utf8.len(s) or #s end

-- Python's str.isspace code points.
local SPACE = {}
for _, c in ipairs { 9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 0x85, 0xA0, 0x1680, 0x2028, 0x2029,
                     0x202F, 0x205F, 0x3000 } do SPACE[utf8.char(c)] = true end
for c = 0x2000, 0x200A do SPACE[utf8.char(c)] = true end

-- str.strip / lstrip / rstrip (chars: a string of code points, or nil for white space).
local function strip(s, chars_, left, right)
   local set
   if chars_ and not find(chars_, "[\128-\255]") then
      -- ASCII characters: trimming bytes is exact (UTF-8 sequences hold none)
      local bset = {}
      for k = 1, #chars_ do bset[byte(chars_, k)] = true end
      local i, j = 1, #s
      if left then while i <= j and bset[byte(s, i)] do i = i + 1 end end
      if right then while j >= i and bset[byte(s, j)] do j = j - 1 end end
      return sub(s, i, j)
   end
   if chars_ then
      set = {}
      for _, c in ipairs(chars(chars_)) do set[c] = true end
   else
      if not find(s, "[\128-\255]") then
         if left then s = s:gsub("^[\t-\r\28-\31 ]+", "") end
         if right then s = s:gsub("[\t-\r\28-\31 ]+$", "") end
         return s
      end
      set = SPACE
   end
   local cs = chars(s)
   local i, j = 1, #cs
   if left then while i <= j and set[cs[i]] do i = i + 1 end end
   if right then while j >= i and set[cs[j]] do j = j - 1 end end
   return concat(cs, "", i, j)
end

local function ascii_only(s, what, line)
   if find(s, "[\128-\255]") then
      fail(line, "unsupported: %s of text with non-ASCII characters (only ASCII case mapping)", what)
   end
end

local function str_title(s, line)
   ascii_only(s, "title", line)
   local prev_cased = false
   return (s:gsub(".", function(c)
      local r
      if c:match("%a") then
         r = prev_cased and c:lower() or c:upper()
         prev_cased = true
      else
         r, prev_cased = c, false
      end
      return r
   end))
end

-- ---- printing values as Python does -----------------------------------------------------

local function float_repr(x)
   if x ~= x then return "nan" end
   if x == math.huge then return "inf" elseif x == -math.huge then return "-inf" end
   if x == 0 then return 1 / x < 0 and "-0.0" or "0.0" end
   local s
   for p = 0, 16 do
      s = format("%." .. p .. "e", x)
      if tonumber(s) == x then break end
   end
   local sign, d1, rest, e = s:match("^(-?)(%d)%.?(%d*)e([-+]%d+)$")
   local digits = (d1 .. rest):gsub("0+$", "")
   if digits == "" then digits = "0" end
   local exp = tonumber(e)
   if exp >= 16 or exp < -4 then
      local m = sub(digits, 1, 1) .. (#digits > 1 and "." .. sub(digits, 2) or "")
      return format("%s%se%s%02d", sign, m, exp < 0 and "-" or "+", math.abs(exp))
   elseif exp >= 0 then
      if #digits <= exp + 1 then return sign .. digits .. rep("0", exp + 1 - #digits) .. ".0" end
      return sign .. sub(digits, 1, exp + 1) .. "." .. sub(digits, exp + 2)
   end
   return sign .. "0." .. rep("0", -exp - 1) .. digits
end

-- Python's repr of a str: quotes, escapes, non-printable code points.
local NONPRINT = { [0xA0] = true, [0xAD] = true, [0x1680] = true, [0x180E] = true, [0x2028] = true,
                   [0x2029] = true, [0x202F] = true, [0x205F] = true, [0x3000] = true, [0xFEFF] = true }
for c = 0x2000, 0x200F do NONPRINT[c] = true end
for c = 0x202A, 0x202E do NONPRINT[c] = true end
for c = 0x2060, 0x206F do NONPRINT[c] = true end

local function str_repr(s)
   local q = (find(s, "'", 1, true) and not find(s, '"', 1, true)) and '"' or "'"
   local out = { q }
   local codes = utf8.len(s) and { utf8.codepoint(s, 1, -1) }
   if not codes then
      codes = {}
      for i = 1, #s do codes[i] = byte(s, i) end -- not UTF-8: byte by byte
   end
   for _, c in ipairs(codes) do
      local r
      if c == 92 then r = "\\\\"
      elseif c == byte(q) then r = "\\" .. q
      elseif c == 9 then r = "\\t"
      elseif c == 10 then r = "\\n"
      elseif c == 13 then r = "\\r"
      elseif c < 32 or (c >= 0x7F and c < 0xA1) or c == 0xAD then r = format("\\x%02x", c)
      elseif NONPRINT[c] or (c >= 0xD800 and c < 0xE000) or (c >= 0xE000 and c < 0xF900) then
         r = format("\\u%04x", c)
      elseif c >= 0xF0000 then r = format("\\U%08x", c)
      else r = utf8.char(c) end
      out[#out + 1] = r
   end
   out[#out + 1] = q
   return concat(out)
end

local tostr, repr

local function type_name(v)
   local tv = type(v)
   if tv == "string" then return "str" end
   if tv == "boolean" then return "bool" end
   if tv == "number" then return mtype(v) == "integer" and "int" or "float" end
   if v == None then return "NoneType" end
   local mt = getmetatable(v)
   if mt == ListMT then
      return ({ list = "list", tuple = "tuple", gen = "generator", view = "dict_items" })[v._k]
   elseif mt == DictMT then return "dict"
   elseif mt == NsMT then return "Namespace"
   elseif mt == FnMT then return "function"
   elseif mt == MarkupMT then return "Markup"
   elseif mt == UndefMT then return "Undefined"
   elseif mt == LoopMT then return "LoopContext" end
   return tv
end

function repr(v, line)
   if type(v) == "string" then return str_repr(v) end
   local mt = getmetatable(v)
   if mt == UndefMT then return "Undefined" end
   if mt == MarkupMT then return "Markup(" .. str_repr(v.s) .. ")" end
   return tostr(v, line)
end

function tostr(v, line)
   local tv = type(v)
   if tv == "string" then return v end
   if tv == "number" then
      if mtype(v) == "integer" then return tostring(v) end
      return float_repr(v)
   end
   if tv == "boolean" then return v and "True" or "False" end
   if v == None then return "None" end
   local mt = getmetatable(v)
   if mt == UndefMT then return "" end
   if mt == MarkupMT then return v.s end
   if mt == ListMT then
      local k = v._k
      if k == "gen" or k == "view" then
         fail(line, "unsupported: printing a %s (add |list)", type_name(v))
      end
      local parts = {}
      for i = 1, #v do parts[i] = repr(v[i], line) end
      if k == "tuple" then
         return "(" .. concat(parts, ", ") .. (#v == 1 and ",)" or ")")
      end
      return "[" .. concat(parts, ", ") .. "]"
   end
   if mt == DictMT then
      local parts = {}
      for i, k in ipairs(v._keys) do parts[i] = repr(k, line) .. ": " .. repr(v._v[k], line) end
      return "{" .. concat(parts, ", ") .. "}"
   end
   fail(line, "unsupported: printing a %s", type_name(v))
end

-- ---- Python's truth, equality, order -----------------------------------------------------

local function truthy(v)
   if v == nil or v == false or v == None then return false end
   local tv = type(v)
   if tv == "boolean" then return true end
   if tv == "number" then return v ~= 0 end
   if tv == "string" then return v ~= "" end
   local mt = getmetatable(v)
   if mt == UndefMT then return false end
   if mt == ListMT then return v._k == "gen" or #v > 0 end
   if mt == DictMT then return #v._keys > 0 end
   if mt == MarkupMT then return v.s ~= "" end
   return true
end

local function as_num(v)
   if type(v) == "boolean" then return v and 1 or 0 end
   if type(v) == "number" then return v end
   return nil
end

local function as_str(v)
   if type(v) == "string" then return v end
   if getmetatable(v) == MarkupMT then return v.s end
   return nil
end

local function eq(a, b)
   local na, nb = as_num(a), as_num(b)
   if na and nb then return na == nb end
   local sa, sb = as_str(a), as_str(b)
   if sa and sb then return sa == sb end
   local ma, mb = getmetatable(a), getmetatable(b)
   if ma == UndefMT and mb == UndefMT then return true end
   if ma == ListMT and mb == ListMT and a._k ~= "gen" and a._k == b._k then
      if #a ~= #b then return false end
      for i = 1, #a do if not eq(a[i], b[i]) then return false end end
      return true
   end
   if ma == DictMT and mb == DictMT then
      if #a._keys ~= #b._keys then return false end
      for _, k in ipairs(a._keys) do
         local w = b._v[k]
         if w == nil or not eq(a._v[k], w) then return false end
      end
      return true
   end
   return rawequal(a, b)
end

local function less(a, b, line, op)
   local na, nb = as_num(a), as_num(b)
   if na and nb then return na < nb end
   local sa, sb = as_str(a), as_str(b)
   if sa and sb then return sa < sb end -- UTF-8 byte order is code point order
   local ma, mb = getmetatable(a), getmetatable(b)
   if ma == UndefMT or mb == UndefMT then fail(line, "%s is undefined", is_undef(a) and "left operand" or "right operand") end
   if ma == ListMT and mb == ListMT and a._k == b._k and a._k ~= "gen" then
      for i = 1, math.min(#a, #b) do
         if not eq(a[i], b[i]) then return less(a[i], b[i], line, op) end
      end
      return #a < #b
   end
   fail(line, "'%s' not supported between instances of '%s' and '%s'", op or "<", type_name(a), type_name(b))
end

-- The items of an iterable value, as a Lua array.
local function items_of(v, line)
   local tv = type(v)
   if tv == "string" then return chars(v) end
   local mt = getmetatable(v)
   if mt == ListMT then return { unpack(v) } end
   if mt == DictMT then return { unpack(v._keys) } end
   if mt == UndefMT then return {} end
   if mt == MarkupMT then return chars(v.s) end
   fail(line, "'%s' object is not iterable", type_name(v))
end

local function length(v, line)
   local s = as_str(v)
   if s then return ulen(s) end
   local mt = getmetatable(v)
   if mt == ListMT and v._k ~= "gen" then return #v end
   if mt == DictMT then return #v._keys end
   if mt == UndefMT then return 0 end
   fail(line, "object of type '%s' has no len()", type_name(v))
end

local function contains(container, x, line)
   local s = as_str(container)
   if s then
      local xs = as_str(x)
      if not xs then fail(line, "'in <string>' requires string as left operand, not %s", type_name(x)) end
      return find(s, xs, 1, true) ~= nil
   end
   local mt = getmetatable(container)
   if mt == ListMT then
      for i = 1, #container do if eq(container[i], x) then return true end end
      return false
   end
   if mt == DictMT then
      if type(x) == "boolean" then x = x and 1 or 0 end
      return type(x) ~= "table" and container._v[x] ~= nil
   end
   if mt == UndefMT then return false end
   fail(line, "argument of type '%s' is not iterable", type_name(container))
end

-- ---- JSON as Python's json.dumps writes it -----------------------------------------------------

local JSON_ESC = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
                   ["\b"] = "\\b", ["\f"] = "\\f" }

local function json_str(s, ascii)
   s = s:gsub('[%c"\\]', function(c)
      return JSON_ESC[c] or (byte(c) < 32 and format("\\u%04x", byte(c))) or c
   end)
   if ascii then
      if not utf8.len(s) then error("tojson: text that is not UTF-8", 0) end
      s = s:gsub("[\127-\255][\128-\191]*", function(ch)
         local c = utf8.codepoint(ch)
         if c < 0x10000 then return format("\\u%04x", c) end
         c = c - 0x10000
         return format("\\u%04x\\u%04x", 0xD800 + (c >> 10), 0xDC00 + (c & 0x3FF))
      end)
   end
   return '"' .. s .. '"'
end

local function json_float(x)
   if x ~= x then return "NaN" end
   if x == math.huge then return "Infinity" elseif x == -math.huge then return "-Infinity" end
   return float_repr(x)
end

local function tojson(v, o, level, line)
   local tv = type(v)
   if tv == "string" then return json_str(v, o.ascii) end
   if tv == "boolean" then return v and "true" or "false" end
   if tv == "number" then return mtype(v) == "integer" and tostring(v) or json_float(v) end
   if v == None then return "null" end
   local mt = getmetatable(v)
   if mt == MarkupMT then return json_str(v.s, o.ascii) end
   local nl, inner = "", ""
   if o.indent then
      nl = "\n" .. rep(o.indent, level)
      inner = "\n" .. rep(o.indent, level + 1)
   end
   if mt == ListMT and (v._k == "list" or v._k == "tuple") then
      if #v == 0 then return "[]" end
      local parts = {}
      for i = 1, #v do parts[i] = tojson(v[i], o, level + 1, line) end
      return "[" .. inner .. concat(parts, o.item .. inner) .. nl .. "]"
   end
   if mt == DictMT then
      if #v._keys == 0 then return "{}" end
      local keys = v._keys
      if o.sort then
         keys = { unpack(keys) }
         table.sort(keys, function(a, b) return less(a, b, line) end)
      end
      local parts = {}
      for i, k in ipairs(keys) do
         local ks
         if type(k) == "string" then ks = json_str(k, o.ascii)
         elseif type(k) == "number" then
            ks = '"' .. (mtype(k) == "integer" and tostring(k) or json_float(k)) .. '"'
         elseif type(k) == "boolean" then ks = k and '"true"' or '"false"'
         else ks = '"null"' end
         parts[i] = ks .. o.key .. tojson(v._v[k], o, level + 1, line)
      end
      return "{" .. inner .. concat(parts, o.item .. inner) .. nl .. "}"
   end
   fail(line, "Object of type %s is not JSON serializable", type_name(v))
end

-- ---- the lexer --------------------------------------------------------------------------------

-- Python's \s at one position of s (ASCII white space; the lexer's cases).
local WS = "[ \t\n\r\f\v]"

local function rstrip_py(s) return strip(s, nil, false, true) end

local ESCAPES = { a = "\a", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t", v = "\v",
                  ["\\"] = "\\", ["'"] = "'", ['"'] = '"', ["\n"] = "" }

local function unescape(s, line)
   if not find(s, "\\", 1, true) then return s end
   local out, i, n = {}, 1, #s
   while i <= n do
      local j = find(s, "\\", i, true)
      if not j then out[#out + 1] = sub(s, i); break end
      out[#out + 1] = sub(s, i, j - 1)
      local c = sub(s, j + 1, j + 1)
      if ESCAPES[c] then
         out[#out + 1] = ESCAPES[c]
         i = j + 2
      elseif c:match("[0-7]") then
         local oct = s:match("^[0-7][0-7]?[0-7]?", j + 1)
         out[#out + 1] = utf8.char(tonumber(oct, 8))
         i = j + 1 + #oct
      elseif c == "x" or c == "u" or c == "U" then
         local w = ({ x = 2, u = 4, U = 8 })[c]
         local hex = sub(s, j + 2, j + 1 + w)
         if #hex ~= w or not hex:match("^%x+$") then
            fail(line, "truncated \\%sXX escape in a string", c)
         end
         local cp = tonumber(hex, 16)
         if cp > 0x10FFFF then fail(line, "illegal Unicode character in a string") end
         out[#out + 1] = utf8.char(cp)
         i = j + 2 + w
      elseif c == "N" then
         fail(line, "unsupported: \\N{...} escapes in strings")
      else
         out[#out + 1] = "\\" -- an unknown escape stays as it is
         i = j + 1
      end
   end
   return concat(out)
end

local OPS2 = { ["//"] = true, ["**"] = true, ["=="] = true, ["!="] = true, [">="] = true, ["<="] = true }
local OPS1 = "^[%+%-/%*%%~%[%]%(%){}<>=%.:|,;]"
local CLOSE = { ["("] = ")", ["["] = "]", ["{"] = "}" }

local function count_nl(s) local _, k = s:gsub("\n", ""); return k end

-- The lexer's state: src, n (its length), toks, line, line_starting (the
-- last tag ended a line: lstrip_blocks may strip the next one's indent).
local function push(L, t, v, ln) L.toks[#L.toks + 1] = { t = t, v = v, line = ln } end

-- The text before a tag, with its white space control applied.
local function lex_text(L, text, sign, kind)
   local nl = count_nl(text)
   if sign == "-" then
      text = rstrip_py(text)
   elseif sign ~= "+" and kind ~= "{" then
      local lpos = 1
      for k = #text, 1, -1 do
         if byte(text, k) == 10 then lpos = k + 1; break end
      end
      if lpos > 1 or L.line_starting then
         local tail = sub(text, lpos)
         if tail ~= "" and not tail:find("[^ \t\f\v]") then text = sub(text, 1, lpos - 1) end
      end
   end
   if text ~= "" then push(L, "data", text, L.line) end
   L.line = L.line + nl
end

-- The end of a block tag at p ("%}"): the position after it, trim_blocks applied.
local function block_end_at(L, p, sign)
   local e = p + 2
   if sign == "-" then
      e = (L.src:match("^" .. WS .. "*()", e))
   elseif sign ~= "+" and sub(L.src, e, e) == "\n" then
      e = e + 1
   end
   return e
end

-- The tag ends just before e: count its lines, note whether it ended one.
local function tag_done(L, from, e)
   L.line = L.line + count_nl(sub(L.src, from, e - 1))
   L.line_starting = byte(L.src, e - 1) == 10
   return e
end

-- {% raw %} ... {% endraw %} from s (body at raw_a): the body as text; the
-- position after it.
local function lex_raw(L, s, raw_a, raw_b)
   local src = L.src
   local p = raw_a + #raw_b + 2
   if raw_b == "-" then p = src:match("^" .. WS .. "*()", p) end
   L.line = L.line + count_nl(sub(src, s, p - 1))
   local q = p
   while true do
      local a = find(src, "{%", q, true)
      if not a then fail(L.line, "Missing end of raw directive") end
      local esign = sub(src, a + 2, a + 2)
      if esign ~= "-" and esign ~= "+" then esign = "" end
      local at = src:match("^" .. WS .. "*endraw" .. WS .. "*()", a + 2 + #esign)
      if at then
         local csign = ""
         if sub(src, at, at + 2) == "+%}" or sub(src, at, at + 2) == "-%}" then
            csign, at = sub(src, at, at), at + 1
         end
         if sub(src, at, at + 1) == "%}" then
            L.line_starting = false
            lex_text(L, sub(src, p, a - 1), esign, "%")
            return tag_done(L, a, block_end_at(L, at, csign))
         end
      end
      q = a + 2
   end
end

-- {# ... #} from s (after: past its opening): the position after it.
local function lex_comment(L, s, after)
   local src = L.src
   local j = find(src, "#}", after, true)
   if not j then fail(L.line, "Missing end of comment tag") end
   local prev = j > after and sub(src, j - 1, j - 1) or ""
   local e = j + 2
   if prev == "-" then
      e = src:match("^" .. WS .. "*()", e)
   elseif prev ~= "+" and sub(src, e, e) == "\n" then
      e = e + 1
   end
   return tag_done(L, s, e)
end

-- A number at p: pushes it; the position after it.
local function lex_number(L, p)
   local src, line = L.src, L.line
   local num = src:match("^%d[%d_]*", p)
   local q = p + #num
   local frac = src:match("^%.%d[%d_]*", q)
   if frac then q = q + #frac end
   local ex = src:match("^[eE][-+]?%d[%d_]*", q)
   if ex then q = q + #ex end
   local txt = sub(src, p, q - 1):gsub("_", "")
   if frac or ex then
      push(L, "float", tonumber(txt) + 0.0, line)
      return q
   end
   local pre = src:match("^0[xX][%x_]+", p) or src:match("^0[oO][0-7_]+", p) or src:match("^0[bB][01_]+", p)
   if pre then
      local base = ({ x = 16, o = 8, b = 2 })[sub(pre, 2, 2):lower()]
      push(L, "integer", tonumber(sub(pre, 3):gsub("_", ""), base), line)
      return p + #pre
   end
   push(L, "integer", math.tointeger(tonumber(txt)) or fail(line, "integer too large"), line)
   return q
end

-- A string literal at p: pushes it; the position after it.
local function lex_string(L, p)
   local src, c = L.src, sub(L.src, p, p)
   local q = p + 1
   while true do
      local a = find(src, "[\\" .. c .. "]", q)
      if not a then fail(L.line, "unexpected char %s at %d", repr(c), p) end
      if sub(src, a, a) == "\\" then q = a + 2 else q = a; break end
   end
   local body = sub(src, p + 1, q - 1)
   push(L, "string", unescape(body, L.line), L.line)
   L.line = L.line + count_nl(body)
   return q + 1
end

-- The end of a {{ }} or {% %} tag at p when there is one (stack: the open
-- brackets, inside which none ends): its position after, and the sign.
local function tag_end(L, p, is_var, stack)
   if #stack > 0 then return nil end
   local src = L.src
   if is_var then
      if sub(src, p, p + 2) == "-}}" then return src:match("^" .. WS .. "*()", p + 3) end
      if sub(src, p, p + 1) == "}}" then return p + 2 end
      return nil
   end
   local c3 = sub(src, p, p + 2)
   if c3 == "-%}" or c3 == "+%}" then return block_end_at(L, p + 1, sub(c3, 1, 1)) end
   if sub(src, p, p + 1) == "%}" then return block_end_at(L, p, "") end
   return nil
end

-- The tokens of a {{ }} or {% %} tag whose contents start at p; the
-- position after its end.
local function lex_tag(L, p, is_var)
   local src, n, stack = L.src, L.n, {}
   push(L, is_var and "var_begin" or "block_begin", nil, L.line)
   while true do
      local ws = src:match("^" .. WS .. "+", p)
      if ws then
         L.line = L.line + count_nl(ws)
         p = p + #ws
      end
      if p > n then
         fail(L.line, "unexpected end of template, expected the end of the %s",
              is_var and "print statement ('}}')" or "statement ('%}')")
      end
      local e = tag_end(L, p, is_var, stack)
      if e then
         push(L, is_var and "var_end" or "block_end", nil, L.line)
         return tag_done(L, p, e)
      end
      local c = sub(src, p, p)
      if c:match("%d") then
         p = lex_number(L, p)
      elseif c:match("[%a_]") then
         local name = src:match("^[%a_][%w_]*", p)
         push(L, "name", name, L.line)
         p = p + #name
      elseif c == "'" or c == '"' then
         p = lex_string(L, p)
      else
         local two = sub(src, p, p + 1)
         local op = OPS2[two] and two or (src:match(OPS1, p) and c)
         if not op then fail(L.line, "unexpected char %s", repr(c)) end
         if CLOSE[op] then
            stack[#stack + 1] = CLOSE[op]
         elseif op == ")" or op == "]" or op == "}" then
            if #stack == 0 then fail(L.line, "unexpected '%s'", op) end
            local want = table.remove(stack)
            if want ~= op then fail(L.line, "unexpected '%s', expected '%s'", op, want) end
         end
         push(L, "op", op, L.line)
         p = p + #op
      end
   end
end

-- The tokens of a template: data, var_begin/var_end, block_begin/block_end
-- and the expression tokens between them (name, string, integer, float, op),
-- then eof. Newlines are read as jinja reads them; one trailing one is dropped.
local function lex(src)
   src = src:gsub("\r\n", "\n"):gsub("\r", "\n")
   if sub(src, -1) == "\n" then src = sub(src, 1, -2) end
   local L = { src = src, n = #src, toks = {}, line = 1, line_starting = true }
   local pos = 1
   while pos <= L.n do
      local s = find(src, "{[{%%#]", pos)
      if not s then
         push(L, "data", sub(src, pos), L.line)
         break
      end
      local kind = sub(src, s + 1, s + 1)
      local sign = sub(src, s + 2, s + 2)
      if sign ~= "-" and sign ~= "+" then sign = "" end
      local after = s + 2 + #sign
      local raw_a, raw_b
      if kind == "%" then raw_a, raw_b = src:match("^" .. WS .. "*raw" .. WS .. "*()(%-?)%%}", after) end
      lex_text(L, sub(src, pos, s - 1), sign, kind)
      if raw_a then
         pos = lex_raw(L, s, raw_a, raw_b)
      elseif kind == "#" then
         pos = lex_comment(L, s, after)
      else
         pos = lex_tag(L, after, kind == "{")
      end
   end
   push(L, "eof", nil, L.line)
   return L.toks
end

-- ---- the parser -------------------------------------------------------------------------------

local Parser = {} -- methods of a parser {toks, i}; not a public class
local ParserMT = { __index = function(_, k) return Parser[k] end }

function Parser:cur() return self.toks[self.i] end
function Parser:peek(k) return self.toks[self.i + (k or 1)] end
function Parser:next()
   local t = self.toks[self.i]
   self.i = self.i + 1
   return t
end
function Parser:is(t, v)
   local c = self.toks[self.i]
   return c.t == t and (v == nil or c.v == v)
end
function Parser:is_name(v) return self:is("name", v) end
function Parser:is_op(v) return self:is("op", v) end
function Parser:skip(t, v)
   if self:is(t, v) then self.i = self.i + 1; return true end
   return false
end

local function describe(tok)
   if tok.t == "op" or tok.t == "name" then return "'" .. tostring(tok.v) .. "'" end
   return ({ block_end = "end of statement block", var_end = "end of print statement",
             eof = "end of template", data = "template data", string = "string",
             integer = "integer", float = "float", var_begin = "begin of print statement",
             block_begin = "begin of statement block" })[tok.t] or tok.t
end

function Parser:expect(t, v)
   local c = self:cur()
   if c.t == t and (v == nil or c.v == v) then return self:next() end
   local want = v and ("'" .. v .. "'") or describe { t = t }
   fail(c.line, "expected %s, got %s", want, describe(c))
end

-- Statement keywords that close a body.
function Parser:subparse(ends)
   local body = {}
   while true do
      local t = self:cur()
      if t.t == "data" then
         body[#body + 1] = { k = "text", s = t.v, line = t.line }
         self:next()
      elseif t.t == "var_begin" then
         self:next()
         local e = self:tuple()
         self:expect("var_end")
         body[#body + 1] = { k = "output", e = e, line = t.line }
      elseif t.t == "block_begin" then
         local nt = self:peek()
         if ends and nt.t == "name" and ends[nt.v] then
            self:next()
            return body, self:next().v
         end
         self:next()
         body[#body + 1] = self:statement()
      elseif t.t == "eof" then
         if ends then
            local names = {}
            for k in next, ends do names[#names + 1] = "'" .. k .. "'" end
            table.sort(names)
            fail(t.line, "unexpected end of template: looking for %s", concat(names, " or "))
         end
         return body
      else
         fail(t.line, "unexpected %s", describe(t))
      end
   end
end

local UNSUPPORTED_TAGS = { include = true, extends = true, import = true, from = true, block = true,
                           with = true, ["do"] = true, autoescape = true, trans = true,
                           endblock = true }

function Parser:statement()
   local t = self:cur()
   if t.t ~= "name" then fail(t.line, "expected a statement name, got %s", describe(t)) end
   local kw, line = t.v, t.line
   self:next()
   if kw == "if" then
      local node = { k = "if", tests = {}, line = line }
      local cond = self:tuple(false, true)
      while true do
         self:expect("block_end")
         local body, ending = self:subparse { elif = true, ["else"] = true, endif = true }
         node.tests[#node.tests + 1] = { cond, body }
         if ending == "elif" then
            cond = self:tuple(false, true)
         elseif ending == "else" then
            self:expect("block_end")
            node.else_ = self:subparse { endif = true }
            break
         else
            break
         end
      end
      self:expect("block_end")
      return node
   elseif kw == "for" then
      local node = { k = "for", line = line }
      node.target = self:assign_target(false, { ["in"] = true })
      self:expect("name", "in")
      node.iter = self:tuple(false, true, { recursive = true })
      if self:skip("name", "if") then node.cond = self:expression(true) end
      if self:is_name("recursive") then fail(line, "unsupported: recursive for loops") end
      self:expect("block_end")
      local body, ending = self:subparse { endfor = true, ["else"] = true }
      node.body = body
      if ending == "else" then
         self:expect("block_end")
         node.else_ = self:subparse { endfor = true }
      end
      self:expect("block_end")
      return node
   elseif kw == "set" then
      local target = self:assign_target(true)
      if self:skip("op", "=") then
         local e = self:tuple()
         self:expect("block_end")
         return { k = "set", target = target, e = e, line = line }
      end
      local filters = {}
      while self:skip("op", "|") do filters[#filters + 1] = self:filter_call(line) end
      self:expect("block_end")
      local body = self:subparse { endset = true }
      self:expect("block_end")
      return { k = "setblock", target = target, body = body, filters = filters, line = line }
   elseif kw == "macro" then
      local name = self:expect("name").v
      local args, defaults = self:signature()
      self:expect("block_end")
      local body = self:subparse { endmacro = true }
      if self:is_name(name) then self:next() end
      self:expect("block_end")
      return { k = "macro", name = name, args = args, defaults = defaults, body = body, line = line }
   elseif kw == "call" then
      local args, defaults = {}, {}
      if self:is_op("(") then args, defaults = self:signature() end
      local call = self:expression(true)
      if call.k ~= "call" then fail(line, "expected call") end
      self:expect("block_end")
      local body = self:subparse { endcall = true }
      self:expect("block_end")
      return { k = "callblock", call = call, args = args, defaults = defaults, body = body, line = line }
   elseif kw == "filter" then
      local filters = { self:filter_call(line) }
      while self:skip("op", "|") do filters[#filters + 1] = self:filter_call(line) end
      self:expect("block_end")
      local body = self:subparse { endfilter = true }
      self:expect("block_end")
      return { k = "filterblock", filters = filters, body = body, line = line }
   elseif kw == "break" or kw == "continue" then
      self:expect("block_end")
      return { k = kw, line = line }
   elseif kw == "generation" then
      self:expect("block_end")
      local body = self:subparse { endgeneration = true }
      self:expect("block_end")
      return { k = "block", body = body, line = line }
   end
   if UNSUPPORTED_TAGS[kw] then fail(line, "unsupported construct '{%% %s %%}'", kw) end
   fail(line, "unsupported construct: unknown tag '{%% %s %%}'", kw)
end

-- (a, b=default, ...) of a macro or call block
function Parser:signature()
   self:expect("op", "(")
   local args, defaults = {}, {}
   while not self:is_op(")") do
      if #args > 0 then self:expect("op", ",") end
      local name = self:expect("name").v
      args[#args + 1] = name
      if self:skip("op", "=") then defaults[name] = self:expression(true) end
   end
   self:expect("op", ")")
   return args, defaults
end

local CONST_NAMES = { ["true"] = true, ["false"] = true, none = true, True = true, False = true,
                      None = true }

-- A target of set or for: a name, a tuple of names, or (set) ns.attr.
function Parser:assign_target(with_ns, extra_end)
   local t = self:cur()
   if with_ns and t.t == "name" and self:peek().t == "op" and self:peek().v == "." then
      self:next()
      self:next()
      local attr = self:expect("name").v
      return { k = "nsref", name = t.v, attr = attr, line = t.line }
   end
   local names, comma = {}, false
   local paren = self:skip("op", "(")
   while true do
      local nt = self:expect("name")
      if CONST_NAMES[nt.v] then fail(nt.line, "can't assign to '%s'", nt.v) end
      names[#names + 1] = nt.v
      if not self:is_op(",") then break end
      self:next()
      comma = true
      if not self:is("name") or (extra_end and extra_end[self:cur().v]) then break end
   end
   if paren then self:expect("op", ")") end
   if #names == 1 and not comma then return { k = "name", name = names[1], line = t.line } end
   return { k = "tuple_target", names = names, line = t.line }
end

local function is_tuple_end(self, extra_end)
   local c = self:cur()
   if c.t == "var_end" or c.t == "block_end" or c.t == "eof" then return true end
   if c.t == "op" and (c.v == ")" or c.v == "]" or c.v == "}") then return true end
   if extra_end and c.t == "name" and extra_end[c.v] then return true end
   return false
end

-- expression [, expression ...]: one expression, or a tuple
function Parser:tuple(simplified, no_condexpr, extra_end)
   local line = self:cur().line
   local items, comma = {}, false
   while true do
      if #items > 0 then
         if not self:skip("op", ",") then break end
         comma = true
      end
      if is_tuple_end(self, extra_end) then break end
      items[#items + 1] = simplified and self:primary() or self:expression(not no_condexpr)
      if not self:is_op(",") then break end
   end
   if not comma then
      if #items == 0 then fail(line, "expected an expression, got %s", describe(self:cur())) end
      return items[1]
   end
   return { k = "tuple", items = items, line = line }
end

function Parser:expression(condexpr)
   if condexpr == false then return self:or_() end
   local e = self:or_()
   while self:is_name("if") do
      local line = self:next().line
      local cond = self:or_()
      local else_
      if self:skip("name", "else") then else_ = self:expression(true) end
      e = { k = "condexpr", test = cond, a = e, b = else_, line = line }
   end
   return e
end

function Parser:or_()
   local e = self:and_()
   while self:is_name("or") do
      local line = self:next().line
      e = { k = "or", a = e, b = self:and_(), line = line }
   end
   return e
end

function Parser:and_()
   local e = self:not_()
   while self:is_name("and") do
      local line = self:next().line
      e = { k = "and", a = e, b = self:not_(), line = line }
   end
   return e
end

function Parser:not_()
   if self:is_name("not") then
      local line = self:next().line
      return { k = "not", a = self:not_(), line = line }
   end
   return self:compare()
end

local CMP = { ["=="] = true, ["!="] = true, ["<"] = true, [">"] = true, ["<="] = true, [">="] = true }

function Parser:compare()
   local line = self:cur().line
   local e = self:math1()
   local ops = {}
   while true do
      local c = self:cur()
      if c.t == "op" and CMP[c.v] then
         self:next()
         ops[#ops + 1] = { c.v, self:math1() }
      elseif c.t == "name" and c.v == "in" then
         self:next()
         ops[#ops + 1] = { "in", self:math1() }
      elseif c.t == "name" and c.v == "not" and self:peek().t == "name" and self:peek().v == "in" then
         self:next()
         self:next()
         ops[#ops + 1] = { "notin", self:math1() }
      else
         break
      end
   end
   if #ops == 0 then return e end
   return { k = "compare", a = e, ops = ops, line = line }
end

function Parser:math1()
   local e = self:concat()
   while self:is_op("+") or self:is_op("-") do
      local t = self:next()
      e = { k = "bin", op = t.v, a = e, b = self:concat(), line = t.line }
   end
   return e
end

function Parser:concat()
   local e = self:math2()
   if not self:is_op("~") then return e end
   local parts, line = { e }, self:cur().line
   while self:skip("op", "~") do parts[#parts + 1] = self:math2() end
   return { k = "concat", parts = parts, line = line }
end

function Parser:math2()
   local e = self:pow()
   while self:is_op("*") or self:is_op("/") or self:is_op("//") or self:is_op("%") do
      local t = self:next()
      e = { k = "bin", op = t.v, a = e, b = self:pow(), line = t.line }
   end
   return e
end

function Parser:pow()
   local e = self:unary()
   while self:is_op("**") do
      local t = self:next()
      e = { k = "bin", op = "**", a = e, b = self:unary(), line = t.line }
   end
   return e
end

function Parser:unary(no_filter)
   local t = self:cur()
   local e
   if t.t == "op" and t.v == "-" then
      self:next()
      e = { k = "neg", a = self:unary(true), line = t.line }
   elseif t.t == "op" and t.v == "+" then
      self:next()
      e = { k = "pos", a = self:unary(true), line = t.line }
   else
      e = self:primary()
   end
   e = self:postfix(e)
   if not no_filter then e = self:filter_expr(e) end
   return e
end

local CONSTS = { ["true"] = true, ["True"] = true, ["false"] = false, ["False"] = false,
                 none = None, None = None }

function Parser:primary()
   local t = self:cur()
   if t.t == "name" then
      self:next()
      if CONSTS[t.v] ~= nil then return { k = "const", v = CONSTS[t.v], line = t.line } end
      return { k = "name", name = t.v, line = t.line }
   elseif t.t == "string" then
      self:next()
      local s = t.v
      while self:is("string") do s = s .. self:next().v end
      return { k = "const", v = s, line = t.line }
   elseif t.t == "integer" or t.t == "float" then
      self:next()
      return { k = "const", v = t.v, line = t.line }
   elseif t.t == "op" and t.v == "(" then
      self:next()
      if self:skip("op", ")") then return { k = "tuple", items = {}, line = t.line } end
      local e = self:tuple(false, false)
      if e.k == "tuple" then e.paren = true end
      self:expect("op", ")")
      return e
   elseif t.t == "op" and t.v == "[" then
      self:next()
      local items = {}
      while not self:is_op("]") do
         if #items > 0 then self:expect("op", ",") end
         if self:is_op("]") then break end
         items[#items + 1] = self:expression(true)
      end
      self:expect("op", "]")
      return { k = "list", items = items, line = t.line }
   elseif t.t == "op" and t.v == "{" then
      self:next()
      local keys, vals = {}, {}
      while not self:is_op("}") do
         if #keys > 0 then self:expect("op", ",") end
         if self:is_op("}") then break end
         keys[#keys + 1] = self:expression(true)
         self:expect("op", ":")
         vals[#vals + 1] = self:expression(true)
      end
      self:expect("op", "}")
      return { k = "dict", keys = keys, vals = vals, line = t.line }
   end
   fail(t.line, "unexpected %s", describe(t))
end

function Parser:postfix(e)
   while true do
      local t = self:cur()
      if t.t == "op" and t.v == "." then
         self:next()
         local a = self:next()
         if a.t == "name" then
            e = { k = "getattr", a = e, name = a.v, line = a.line }
         elseif a.t == "integer" then
            e = { k = "getitem", a = e, key = { k = "const", v = a.v }, line = a.line }
         else
            fail(a.line, "expected name or number after '.'")
         end
      elseif t.t == "op" and t.v == "[" then
         self:next()
         local subs = {}
         while not self:is_op("]") do
            if #subs > 0 then self:expect("op", ",") end
            subs[#subs + 1] = self:subscript()
         end
         self:expect("op", "]")
         if #subs ~= 1 then fail(t.line, "unsupported: a subscript with %d parts", #subs) end
         e = { k = "getitem", a = e, key = subs[1], line = t.line }
      elseif t.t == "op" and t.v == "(" then
         e = self:call(e)
      else
         return e
      end
   end
end

function Parser:subscript()
   local line = self:cur().line
   local parts = {}
   if not self:is_op(":") then
      parts[1] = self:expression(true)
      if not self:is_op(":") then return parts[1] end
   end
   self:next()
   if not self:is_op("]") and not self:is_op(",") and not self:is_op(":") then
      parts[2] = self:expression(true)
   end
   if self:skip("op", ":") then
      if not self:is_op("]") and not self:is_op(",") then parts[3] = self:expression(true) end
   end
   return { k = "slice", start = parts[1], stop = parts[2], step = parts[3], line = line }
end

function Parser:call_args()
   self:expect("op", "(")
   local args, kwargs, kwo = {}, {}, {}
   while not self:is_op(")") do
      if #args + #kwo > 0 then
         self:expect("op", ",")
         if self:is_op(")") then break end
      end
      if self:is_op("*") or self:is_op("**") then
         fail(self:cur().line, "unsupported: *args and **kwargs in a call")
      end
      if self:is("name") and self:peek().t == "op" and self:peek().v == "=" then
         local name = self:next().v
         self:next()
         kwargs[name] = self:expression(true)
         kwo[#kwo + 1] = name
      else
         if #kwo > 0 then fail(self:cur().line, "invalid syntax for function call expression") end
         args[#args + 1] = self:expression(true)
      end
   end
   self:expect("op", ")")
   return args, kwargs, kwo
end

function Parser:call(e)
   local line = self:cur().line
   local args, kwargs, kwo = self:call_args()
   return { k = "call", fn = e, args = args, kwargs = kwargs, kwo = kwo, line = line }
end

function Parser:dotted_name()
   local name = self:expect("name").v
   while self:is_op(".") do
      self:next()
      name = name .. "." .. self:expect("name").v
   end
   return name
end

function Parser:filter_call(line)
   local name = self:dotted_name()
   local args, kwargs, kwo = {}, {}, {}
   if self:is_op("(") then args, kwargs, kwo = self:call_args() end
   return { name = name, args = args, kwargs = kwargs, kwo = kwo, line = line }
end

local TEST_ARG_START = { name = true, string = true, integer = true, float = true }

function Parser:filter_expr(e)
   while true do
      local t = self:cur()
      if t.t == "op" and t.v == "|" then
         self:next()
         local f = self:filter_call(t.line)
         e = { k = "filter", a = e, f = f, line = t.line }
      elseif t.t == "name" and t.v == "is" then
         self:next()
         local negate = self:skip("name", "not")
         local name = self:dotted_name()
         local args, kwargs, kwo = {}, {}, {}
         local c = self:cur()
         if c.t == "op" and c.v == "(" then
            args, kwargs, kwo = self:call_args()
         elseif (TEST_ARG_START[c.t] or (c.t == "op" and (c.v == "[" or c.v == "{")))
            and not (c.t == "name" and (c.v == "else" or c.v == "or" or c.v == "and")) then
            if c.t == "name" and c.v == "is" then fail(c.line, "You cannot chain multiple tests with is") end
            args = { self:postfix(self:primary()) }
         end
         e = { k = "test", a = e, name = name, args = args, kwargs = kwargs, kwo = kwo,
               negate = negate, line = t.line }
      elseif t.t == "op" and t.v == "(" then
         e = self:call(e)
      else
         return e
      end
   end
end

-- ---- evaluation -------------------------------------------------------------------------------

local eval, exec_body
local FILTERS, TESTS, STR_METHODS, DICT_METHODS, LIST_METHODS

local function lookup(scope, name)
   while scope do
      local v = scope.vars[name]
      if v ~= nil then return v end
      scope = scope.parent
   end
   return nil
end

local function new_scope(parent) return { vars = {}, parent = parent } end

local function object_desc(v)
   return format("'%s object'", type_name(v))
end

-- A missing attribute or element: its message is made when it is needed.
local function undef_attr(obj, name)
   return setmetatable({ of = obj, key = name }, UndefMT)
end

local function hint_of(u)
   if u.hint then return u.hint end
   if u.uname then return format("'%s' is undefined", u.uname) end
   if u.key == nil then return "undefined value" end
   if type(u.key) == "string" then
      return format("%s has no attribute %s", object_desc(u.of), str_repr(u.key))
   end
   return format("%s has no element %s", object_desc(u.of), repr(u.key))
end

local function check_defined(v, line)
   if is_undef(v) then fail(line, "%s", hint_of(v)) end
end

local function bound(obj, name, fn)
   return callable(name, function(args, kw, kwo, line) return fn(obj, args, kw, line) end)
end

local UNSAFE_DICT = { pop = true, popitem = true, update = true, setdefault = true, clear = true }
local UNSAFE_LIST = { append = true, pop = true, remove = true, extend = true, insert = true,
                      clear = true, sort = true, reverse = true }

local function unsafe(obj, name)
   return callable(name, function(_, _, _, line)
      fail(line, "access to attribute '%s' of '%s' object is unsafe.", name, type_name(obj))
   end)
end

local function getattr(obj, name, line)
   check_defined(obj, line)
   local mt = getmetatable(obj)
   if as_str(obj) then
      local m = STR_METHODS[name]
      if m then return bound(as_str(obj), name, m) end
      return undef_attr(obj, name)
   end
   if mt == DictMT then
      local m = DICT_METHODS[name]
      if m then return bound(obj, name, m) end
      if UNSAFE_DICT[name] then return unsafe(obj, name) end
      local v = obj._v[name]
      if v ~= nil then return v end
      return undef_attr(obj, name)
   end
   if mt == NsMT then
      local v = obj._v[name]
      if v ~= nil then return v end
      return undef_attr(obj, name)
   end
   if mt == ListMT then
      if obj._k == "list" or obj._k == "tuple" then
         local m = LIST_METHODS[name]
         if m then return bound(obj, name, m) end
         if UNSAFE_LIST[name] and obj._k == "list" then return unsafe(obj, name) end
      end
      return undef_attr(obj, name)
   end
   if mt == LoopMT then
      local v = obj:get(name, line)
      if v ~= nil then return v end
      return undef_attr(obj, name)
   end
   return undef_attr(obj, name)
end

-- Python's slice indices for a sequence of n items.
local function slice_range(n, start, stop, step, line)
   step = step or 1
   if step == 0 then fail(line, "slice step cannot be zero") end
   local function adj(v, def)
      if v == nil then return def end
      if v < 0 then
         v = v + n
         if v < 0 then v = step < 0 and -1 or 0 end
      elseif v >= n then
         v = step < 0 and n - 1 or n
      end
      return v
   end
   local a = adj(start, step < 0 and n - 1 or 0)
   local b = adj(stop, step < 0 and -1 or n)
   local idx = {}
   if step > 0 then
      for i = a, b - 1, step do idx[#idx + 1] = i + 1 end
   else
      for i = a, b + 1, step do idx[#idx + 1] = i + 1 end
   end
   return idx
end

local function int_arg(v, line, what)
   if v == nil or v == None then return nil end
   if type(v) == "boolean" then return v and 1 or 0 end
   if mtype(v) ~= "integer" then
      fail(line, "%s must be integers or None, not %s", what, type_name(v))
   end
   return v
end

local function getitem(obj, key, line)
   check_defined(obj, line)
   local mt = getmetatable(obj)
   local s = as_str(obj)
   if type(key) == "table" and key.slice then
      local start = int_arg(key.start, line, "slice indices")
      local stop = int_arg(key.stop, line, "slice indices")
      local step = int_arg(key.step, line, "slice indices")
      if s then
         local cs = chars(s)
         local out = {}
         for _, i in ipairs(slice_range(#cs, start, stop, step, line)) do out[#out + 1] = cs[i] end
         return concat(out)
      end
      if mt == ListMT and (obj._k == "list" or obj._k == "tuple") then
         local out = list(nil, obj._k)
         for _, i in ipairs(slice_range(#obj, start, stop, step, line)) do out[#out + 1] = obj[i] end
         return out
      end
      fail(line, "'%s' object is not subscriptable", type_name(obj))
   end
   if mt == DictMT then
      local k = key
      if type(k) == "boolean" then k = k and 1 or 0 end
      local v = (type(k) == "string" or type(k) == "number") and obj._v[k] or nil
      if v ~= nil then return v end
      if type(key) == "string" then return getattr(obj, key, line) end
      return undef_attr(obj, key)
   end
   if s or (mt == ListMT and (obj._k == "list" or obj._k == "tuple")) then
      local k = key
      if type(k) == "boolean" then k = k and 1 or 0 end
      if mtype(k) == "integer" then
         local seq = s and chars(s) or obj
         local n = #seq
         local i = k < 0 and k + n or k
         if i >= 0 and i < n then return seq[i + 1] end
         return undef_attr(obj, key)
      end
      if type(key) == "string" then return getattr(obj, key, line) end
      return undef_attr(obj, key)
   end
   if type(key) == "string" then return getattr(obj, key, line) end
   return undef_attr(obj, key)
end

local function call_value(f, args, kw, kwo, line)
   local mt = getmetatable(f)
   if mt == FnMT then return f.fn(args, kw or {}, kwo or {}, line) end
   if mt == UndefMT then fail(line, "%s (it is called)", hint_of(f)) end
   fail(line, "'%s' object is not callable", type_name(f))
end

-- ---- arithmetic ----

local function num_operand(v, line, op, other)
   check_defined(v, line)
   local n = as_num(v)
   if n == nil then
      fail(line, "unsupported operand type(s) for %s: '%s' and '%s'", op, type_name(v), type_name(other))
   end
   return n
end

local function ipow(a, b)
   local r = 1
   while b > 0 do
      if b & 1 == 1 then r = r * a end
      a = a * a
      b = b >> 1
   end
   return r
end

local function seq_repeat(seq, n)
   if as_str(seq) then return rep(as_str(seq), math.max(n, 0)) end
   local out = list(nil, seq._k)
   for _ = 1, n do for i = 1, #seq do out[#out + 1] = seq[i] end end
   return out
end

local function escape_html(s)
   return (s:gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&#34;",
                                ["'"] = "&#39;" }))
end

local py_format

local function binop(op, a, b, line)
   check_defined(a, line)
   check_defined(b, line)
   if op == "+" then
      local ma, mb = getmetatable(a), getmetatable(b)
      if ma == MarkupMT or mb == MarkupMT then
         local sa, sb = as_str(a), as_str(b)
         if sa and sb then
            if ma ~= MarkupMT then sa = escape_html(sa) end
            if mb ~= MarkupMT then sb = escape_html(sb) end
            return markup(sa .. sb)
         end
      end
      if type(a) == "string" and type(b) == "string" then return a .. b end
      if ma == ListMT and mb == ListMT and a._k == b._k and (a._k == "list" or a._k == "tuple") then
         local out = list(nil, a._k)
         for i = 1, #a do out[i] = a[i] end
         for i = 1, #b do out[#a + i] = b[i] end
         return out
      end
   elseif op == "*" then
      local na, nb = as_num(a), as_num(b)
      local seq, n
      if mtype(nb) == "integer" and (as_str(a) or (getmetatable(a) == ListMT and a._k ~= "gen")) then
         seq, n = a, nb
      elseif mtype(na) == "integer" and (as_str(b) or (getmetatable(b) == ListMT and b._k ~= "gen")) then
         seq, n = b, na
      end
      if seq then return seq_repeat(seq, n) end
   elseif op == "%" and as_str(a) then
      return py_format(as_str(a), b, line)
   end
   local x, y = num_operand(a, line, op, b), num_operand(b, line, op, a)
   if op == "+" then return x + y
   elseif op == "-" then return x - y
   elseif op == "*" then return x * y
   elseif op == "/" then
      if y == 0 then fail(line, "division by zero") end
      return x / y
   elseif op == "//" then
      if y == 0 then fail(line, "integer division or modulo by zero") end
      return x // y
   elseif op == "%" then
      if y == 0 then fail(line, "integer division or modulo by zero") end
      return x % y
   elseif op == "**" then
      if mtype(x) == "integer" and mtype(y) == "integer" and y >= 0 then return ipow(x, y) end
      return (x + 0.0) ^ y
   end
end

-- ---- the loop object ----

function LoopMT.__index(self, k) return LoopMT[k] end

function LoopMT.get(self, name)
   local i, n = self.i, self.n
   if name == "index" then return i
   elseif name == "index0" then return i - 1
   elseif name == "revindex" then return n - i + 1
   elseif name == "revindex0" then return n - i
   elseif name == "first" then return i == 1
   elseif name == "last" then return i == n
   elseif name == "length" then return n
   elseif name == "depth" then return 1
   elseif name == "depth0" then return 0
   elseif name == "previtem" then
      if i > 1 then return self.items[i - 1] end
      return undef("there is no previous item")
   elseif name == "nextitem" then
      if i < n then return self.items[i + 1] end
      return undef("there is no next item")
   elseif name == "cycle" then
      return callable("cycle", function(args, _, _, line)
         if #args == 0 then fail(line, "no items for cycling given") end
         return args[(i - 1) % #args + 1]
      end)
   elseif name == "changed" then
      return callable("changed", function(args)
         local v = list(args, "list")
         if self.last_changed == nil or not eq(self.last_changed, v) then
            self.last_changed = v
            return true
         end
         return false
      end)
   end
   return nil
end

-- ---- macros ----

local function make_macro(node, scope, ctx)
   return callable(node.name or "caller", function(args, kw, kwo, line)
      local s = new_scope(scope)
      local nargs = #node.args
      for j, name in ipairs(node.args) do
         local v = args[j]
         if v == nil then v = kw[name] end
         if v == nil then
            local d = node.defaults[name]
            v = d and eval(d, s, ctx) or undef(format("parameter '%s' was not provided", name))
         elseif args[j] ~= nil and kw[name] ~= nil then
            fail(line, "macro '%s' got multiple values for argument '%s'", node.name, name)
         end
         s.vars[name] = v
      end
      local varargs = list(nil, "tuple")
      for j = nargs + 1, #args do varargs[#varargs + 1] = args[j] end
      local kwargs = newdict()
      for _, name in ipairs(kwo) do
         local known = false
         for _, a in ipairs(node.args) do if a == name then known = true end end
         if not known then dset(kwargs, name, kw[name]) end
      end
      s.vars.varargs, s.vars.kwargs = varargs, kwargs
      if kw.caller ~= nil then s.vars.caller = kw.caller end
      local out = {}
      exec_body(node.body, s, ctx, out)
      return markup(concat(out))
   end)
end

-- ---- filters and tests ----

local function apply_filter(f, value, scope, ctx, line)
   local fn = FILTERS[f.name]
   if not fn then fail(line, "unsupported filter '%s'", f.name) end
   local args = {}
   for j, a in ipairs(f.args) do args[j] = eval(a, scope, ctx) end
   local kw = {}
   for name, a in next, f.kwargs do kw[name] = eval(a, scope, ctx) end
   return fn(value, args, kw, line, ctx)
end

local function apply_test(name, value, args, kw, line)
   local fn = TESTS[name]
   if not fn then fail(line, "unsupported test '%s'", name) end
   return fn(value, args, kw, line) and true or false
end

-- ---- expressions ----

local EVAL = {}

function eval(node, scope, ctx)
   local f = node.eval_fn -- cached on the node: one lookup per node, not per visit
   if not f then
      f = EVAL[node.k]
      node.eval_fn = f
   end
   return f(node, scope, ctx)
end

EVAL.const = function(n) return n.v end

EVAL.name = function(n, scope, ctx)
   local v = lookup(scope, n.name)
   if v ~= nil then return v end
   v = ctx.globals[n.name]
   if v ~= nil then return v end
   return setmetatable({ uname = n.name }, UndefMT)
end

EVAL.list = function(n, scope, ctx)
   local out = list()
   for j, e in ipairs(n.items) do out[j] = eval(e, scope, ctx) end
   return out
end

EVAL.tuple = function(n, scope, ctx)
   local out = list(nil, "tuple")
   for j, e in ipairs(n.items) do out[j] = eval(e, scope, ctx) end
   return out
end

EVAL.dict = function(n, scope, ctx)
   local d = newdict()
   for j, ke in ipairs(n.keys) do
      local k = eval(ke, scope, ctx)
      if type(k) == "boolean" then k = k and 1 or 0 end
      if type(k) ~= "string" and type(k) ~= "number" then
         fail(n.line, "unsupported: a dict key that is a %s", type_name(k))
      end
      dset(d, k, eval(n.vals[j], scope, ctx))
   end
   return d
end

EVAL.getattr = function(n, scope, ctx)
   return getattr(eval(n.a, scope, ctx), n.name, n.line)
end

EVAL.getitem = function(n, scope, ctx)
   local obj = eval(n.a, scope, ctx)
   local key
   if n.key.k == "slice" then
      key = { slice = true }
      if n.key.start then key.start = eval(n.key.start, scope, ctx) end
      if n.key.stop then key.stop = eval(n.key.stop, scope, ctx) end
      if n.key.step then key.step = eval(n.key.step, scope, ctx) end
   else
      key = eval(n.key, scope, ctx)
   end
   return getitem(obj, key, n.line)
end

EVAL.slice = function(n) fail(n.line, "unsupported: a slice outside []") end

EVAL.call = function(n, scope, ctx)
   local f = eval(n.fn, scope, ctx)
   local args, kw = {}, {}
   for j, a in ipairs(n.args) do args[j] = eval(a, scope, ctx) end
   for name, a in next, n.kwargs do kw[name] = eval(a, scope, ctx) end
   return call_value(f, args, kw, n.kwo, n.line)
end

EVAL.filter = function(n, scope, ctx)
   return apply_filter(n.f, eval(n.a, scope, ctx), scope, ctx, n.line)
end

EVAL.test = function(n, scope, ctx)
   local v = eval(n.a, scope, ctx)
   local args, kw = {}, {}
   for j, a in ipairs(n.args) do args[j] = eval(a, scope, ctx) end
   for name, a in next, n.kwargs do kw[name] = eval(a, scope, ctx) end
   local r = apply_test(n.name, v, args, kw, n.line)
   if n.negate then return not r end
   return r
end

EVAL["or"] = function(n, scope, ctx)
   local a = eval(n.a, scope, ctx)
   if truthy(a) then return a end
   return eval(n.b, scope, ctx)
end

EVAL["and"] = function(n, scope, ctx)
   local a = eval(n.a, scope, ctx)
   if not truthy(a) then return a end
   return eval(n.b, scope, ctx)
end

EVAL["not"] = function(n, scope, ctx) return not truthy(eval(n.a, scope, ctx)) end

EVAL.neg = function(n, scope, ctx)
   local v = eval(n.a, scope, ctx)
   check_defined(v, n.line)
   local x = as_num(v)
   if not x then fail(n.line, "bad operand type for unary -: '%s'", type_name(v)) end
   return -x
end

EVAL.pos = function(n, scope, ctx)
   local v = eval(n.a, scope, ctx)
   check_defined(v, n.line)
   local x = as_num(v)
   if not x then fail(n.line, "bad operand type for unary +: '%s'", type_name(v)) end
   return x
end

EVAL.bin = function(n, scope, ctx)
   return binop(n.op, eval(n.a, scope, ctx), eval(n.b, scope, ctx), n.line)
end

EVAL.concat = function(n, scope, ctx)
   local parts = {}
   for j, e in ipairs(n.parts) do parts[j] = tostr(eval(e, scope, ctx), n.line) end
   return concat(parts)
end

EVAL.compare = function(n, scope, ctx)
   local a = eval(n.a, scope, ctx)
   for _, o in ipairs(n.ops) do
      local op, b = o[1], eval(o[2], scope, ctx)
      local r
      if op == "==" then r = eq(a, b)
      elseif op == "!=" then r = not eq(a, b)
      elseif op == "<" then r = less(a, b, n.line, op)
      elseif op == ">" then r = less(b, a, n.line, op)
      elseif op == "<=" then r = not less(b, a, n.line, op)
      elseif op == ">=" then r = not less(a, b, n.line, op)
      elseif op == "in" then r = contains(b, a, n.line)
      else r = not contains(b, a, n.line) end
      if not r then return false end
      a = b
   end
   return true
end

EVAL.condexpr = function(n, scope, ctx)
   if truthy(eval(n.test, scope, ctx)) then return eval(n.a, scope, ctx) end
   if n.b then return eval(n.b, scope, ctx) end
   return undef("the inline if expression evaluated to false and no else section was defined.")
end

-- ---- statements ----

local EXEC = {}

local function assign(target, value, scope, line)
   if target.k == "name" then
      scope.vars[target.name] = value
   else
      local its = items_of(value, line)
      if #its ~= #target.names then
         fail(line, "%s values to unpack (expected %d, got %d)",
              #its > #target.names and "too many" or "not enough", #target.names, #its)
      end
      for j, name in ipairs(target.names) do scope.vars[name] = its[j] end
   end
end

function exec_body(body, scope, ctx, out)
   for _, node in ipairs(body) do
      local sig = EXEC[node.k](node, scope, ctx, out)
      if sig then return sig end
   end
end

EXEC.text = function(n, _, _, out) out[#out + 1] = n.s end

EXEC.output = function(n, scope, ctx, out)
   out[#out + 1] = tostr(eval(n.e, scope, ctx), n.line)
end

EXEC.block = function(n, scope, ctx, out) return exec_body(n.body, scope, ctx, out) end

EXEC["if"] = function(n, scope, ctx, out)
   for _, t in ipairs(n.tests) do
      if truthy(eval(t[1], scope, ctx)) then return exec_body(t[2], scope, ctx, out) end
   end
   if n.else_ then return exec_body(n.else_, scope, ctx, out) end
end

EXEC["for"] = function(n, scope, ctx, out)
   local seq = eval(n.iter, scope, ctx)
   if seq == None or type(seq) == "number" or type(seq) == "boolean" then
      fail(n.line, "'%s' object is not iterable", type_name(seq))
   end
   local all = items_of(seq, n.line)
   local its = all
   if n.cond then
      its = {}
      for _, v in ipairs(all) do
         local s = new_scope(scope)
         assign(n.target, v, s, n.line)
         if truthy(eval(n.cond, s, ctx)) then its[#its + 1] = v end
      end
   end
   if #its == 0 then
      if n.else_ then return exec_body(n.else_, scope, ctx, out) end
      return
   end
   local loop = setmetatable({ i = 0, n = #its, items = its }, LoopMT)
   for j, v in ipairs(its) do
      -- each pass has its own scope: what the body sets does not outlive it
      local s = new_scope(scope)
      s.vars.loop = loop
      loop.i = j
      assign(n.target, v, s, n.line)
      local sig = exec_body(n.body, s, ctx, out)
      if sig == "break" then break end
   end
end

EXEC["break"] = function(n, scope)
   local s = scope
   while s and not s.vars.loop do s = s.parent end
   if not s then fail(n.line, "'break' outside of a loop") end
   return "break"
end

EXEC["continue"] = function(n, scope)
   local s = scope
   while s and not s.vars.loop do s = s.parent end
   if not s then fail(n.line, "'continue' outside of a loop") end
   return "continue"
end

EXEC.set = function(n, scope, ctx)
   local v = eval(n.e, scope, ctx)
   if n.target.k == "nsref" then
      local ns = lookup(scope, n.target.name) or ctx.globals[n.target.name]
      if getmetatable(ns) ~= NsMT then
         fail(n.line, "cannot assign attribute on non-namespace object")
      end
      dset(ns, n.target.attr, v)
   else
      assign(n.target, v, scope, n.line)
   end
end

EXEC.setblock = function(n, scope, ctx)
   local out = {}
   exec_body(n.body, scope, ctx, out)
   local v = concat(out)
   for _, f in ipairs(n.filters) do v = apply_filter(f, v, scope, ctx, n.line) end
   if n.target.k == "nsref" then
      local ns = lookup(scope, n.target.name) or ctx.globals[n.target.name]
      if getmetatable(ns) ~= NsMT then fail(n.line, "cannot assign attribute on non-namespace object") end
      dset(ns, n.target.attr, v)
   else
      assign(n.target, v, scope, n.line)
   end
end

EXEC.macro = function(n, scope, ctx)
   scope.vars[n.name] = make_macro(n, scope, ctx)
end

EXEC.callblock = function(n, scope, ctx, out)
   local caller = make_macro({ name = "caller", args = n.args, defaults = n.defaults, body = n.body },
                             scope, ctx)
   local c = n.call
   local f = eval(c.fn, scope, ctx)
   local args, kw = {}, {}
   for j, a in ipairs(c.args) do args[j] = eval(a, scope, ctx) end
   for name, a in next, c.kwargs do kw[name] = eval(a, scope, ctx) end
   kw.caller = caller
   local v = call_value(f, args, kw, c.kwo, n.line)
   out[#out + 1] = tostr(v, n.line)
end

EXEC.filterblock = function(n, scope, ctx, out)
   local buf = {}
   exec_body(n.body, scope, ctx, buf)
   local v = concat(buf)
   for _, f in ipairs(n.filters) do v = apply_filter(f, v, scope, ctx, n.line) end
   out[#out + 1] = tostr(v, n.line)
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

local function kwdict(kw, kwo, mt)
   local d = newdict(mt)
   for _, name in ipairs(kwo) do dset(d, name, kw[name]) end
   return d
end

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

-- ---- templates ----------------------------------------------------------------------------

local Template = {}
Template.__index = Template
Template.__name = "dpo.jinja.Template"

local function where(name, e)
   if getmetatable(e) == Fail then
      if e.raised then return e.raised end
      return format("%s:%s: %s", name, tostring(e.line or "?"), e.msg)
   end
   return format("%s: %s", name, tostring(e))
end

--[[
jinja.compile(source [, name = "template"]) -> template. A syntax error, or
a construct this interpreter does not render, raises "name:line: reason".
]]
function jinja.compile(source, name)
   if type(source) ~= "string" then
      error("bad argument #1 to 'compile' (template text expected, got " .. type(source) .. ")", 2)
   end
   if name ~= nil and type(name) ~= "string" then
      error("bad argument #2 to 'compile' (name expected, got " .. type(name) .. ")", 2)
   end
   name = name or "template"
   local ok, body = pcall(function()
      local p = setmetatable({ toks = lex(source), i = 1 }, ParserMT)
      return p:subparse(nil)
   end)
   if not ok then error(where(name, body), 0) end
   return setmetatable({ body = body, name = name, source = source }, Template)
end

--[[
template:render(vars) -> string. vars: a table of variables (see the values
at the top of this file). A runtime fault raises "name:line: reason";
raise_exception(msg) raises msg.
]]
function Template:render(vars)
   if getmetatable(self) ~= Template then
      error("bad argument #1 to 'render' (dpo.jinja.Template expected)", 2)
   end
   if vars ~= nil and type(vars) ~= "table" then
      error("bad argument #1 to 'render' (table of variables expected, got " .. type(vars) .. ")", 2)
   end
   local ok, res = pcall(function()
      local scope = new_scope(nil)
      for k, v in next, vars or {} do
         if type(k) == "string" then scope.vars[k] = from_lua(v, 0) end
      end
      local out = {}
      exec_body(self.body, scope, { globals = GLOBALS }, out)
      return concat(out)
   end)
   if not ok then error(where(self.name, res), 0) end
   return res
end

function jinja.render(source, vars, name)
   if type(source) ~= "string" then
      error("bad argument #1 to 'render' (template text expected, got " .. type(source) .. ")", 2)
   end
   if vars ~= nil and type(vars) ~= "table" then
      error("bad argument #2 to 'render' (table of variables expected, got " .. type(vars) .. ")", 2)
   end
   if name ~= nil and type(name) ~= "string" then
      error("bad argument #3 to 'render' (name expected, got " .. type(name) .. ")", 2)
   end
   local ok, t = pcall(jinja.compile, source, name)
   if not ok then error(t, 0) end
   local ok2, s = pcall(t.render, t, vars)
   if not ok2 then error(s, 0) end
   return s
end

function jinja.is_template(x) return getmetatable(x) == Template end

--[[
jinja.tojson(value [, {indent = nil, sort_keys = false, ensure_ascii = false}])
-> the JSON text Python's json.dumps writes for the value a template would
see (the tojson filter's output).
]]
function jinja.tojson(value, opts)
   if opts ~= nil and type(opts) ~= "table" then
      error("bad argument #2 to 'tojson' (options table expected, got " .. type(opts) .. ")", 2)
   end
   opts = opts or {}
   local ok, s = pcall(function()
      local kw = {}
      for _, k in ipairs { "indent", "sort_keys", "ensure_ascii" } do
         if opts[k] ~= nil then kw[k] = from_lua(opts[k], 0) end
      end
      return FILTERS.tojson(from_lua(value, 0), {}, kw, nil)
   end)
   if not ok then error("tojson: " .. (getmetatable(s) == Fail and s.msg or tostring(s)), 2) end
   return s
end

return jinja
