-- dpo.jinja.values: the values a template sees, as Python has them (part of
-- dpo.jinja; internal, not a field of `dpo`).
--
-- Owns the value model (None, Undefined, list/tuple/generator/view, dict,
-- Namespace, callable, Markup; the loop object's metatable, whose methods
-- dpo.jinja adds), the reading of Lua values as template values (from_lua,
-- mark_list and mark_dict, which dpo.jinja publishes as list and dict), the
-- template's failure (fail raises a Fail table, turned into "name:line: msg"
-- by render), UTF-8 text as Python's str (chars, ulen, strip, SPACE), values
-- printed as Python prints them (tostr, repr, str_repr, type_name), Python's
-- truth, equality and order (truthy, eq, less, contains, length, items_of)
-- and JSON as json.dumps writes it (tojson). No state but the key orders
-- mark_dict records (a weak table); the module table returned holds it all.
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

-- Markup's escaping of text (jinja's escape filter).
local function escape_html(s)
   return (s:gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&#34;",
                                ["'"] = "&#39;" }))
end

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
local function mark_list(t)
   if type(t) ~= "table" then error("bad argument #1 to 'list' (table expected, got " .. type(t) .. ")", 2) end
   local mt = getmetatable(t)
   if mt ~= nil and mt ~= LIST_MARK then
      error("bad argument #1 to 'list' (the table already has a metatable)", 2)
   end
   return setmetatable(t, LIST_MARK)
end

local DICT_KEYS = setmetatable({}, { __mode = "k" })
local function mark_dict(t, keys)
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

return {
   None = None, UndefMT = UndefMT, ListMT = ListMT, DictMT = DictMT, NsMT = NsMT, FnMT = FnMT,
   MarkupMT = MarkupMT, LoopMT = LoopMT, Fail = Fail,
   fail = fail, undef = undef, is_undef = is_undef, list = list, newdict = newdict, dset = dset,
   markup = markup, escape_html = escape_html, callable = callable,
   mark_list = mark_list, mark_dict = mark_dict, from_lua = from_lua,
   chars = chars, ulen = ulen, SPACE = SPACE, strip = strip, ascii_only = ascii_only,
   str_title = str_title,
   float_repr = float_repr, str_repr = str_repr, type_name = type_name, repr = repr, tostr = tostr,
   truthy = truthy, as_num = as_num, as_str = as_str, eq = eq, less = less,
   items_of = items_of, length = length, contains = contains,
   tojson = tojson,
}
