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
-- TESTS of dpo.jinja.builtins; the string, dict and list methods in its
-- STR_METHODS, DICT_METHODS and LIST_METHODS; the globals range, dict,
-- namespace, raise_exception,
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
--
-- The package, one concept a file (the submodules are internal: required by
-- this file only, not fields of `dpo`):
--   dpo/jinja/values.lua    the value model; Python's str, printing, truth,
--                           equality and order; JSON as json.dumps writes it
--   dpo/jinja/lexer.lua     template text -> tokens
--   dpo/jinja/parser.lua    tokens -> a tree of statements and expressions
--   dpo/jinja/builtins.lua  filters, tests, str/dict/list methods, globals
--   dpo/jinja.lua (this)    evaluation: lookup, attribute and item access,
--                           arithmetic, the loop object, macros, expressions,
--                           statements; the public functions above
local V = require "dpo.jinja.values"
local lexer = require "dpo.jinja.lexer"
local parser = require "dpo.jinja.parser"
local B = require "dpo.jinja.builtins"

local jinja = {}

local format, rep = string.format, string.rep
local concat = table.concat
local mtype = math.type

local None, ListMT, DictMT, NsMT, FnMT, MarkupMT, UndefMT, LoopMT, Fail =
   V.None, V.ListMT, V.DictMT, V.NsMT, V.FnMT, V.MarkupMT, V.UndefMT, V.LoopMT, V.Fail
local fail, undef, is_undef, list, newdict, dset = V.fail, V.undef, V.is_undef, V.list, V.newdict, V.dset
local markup, escape_html, callable, from_lua = V.markup, V.escape_html, V.callable, V.from_lua
local chars, type_name, str_repr, repr, tostr = V.chars, V.type_name, V.str_repr, V.repr, V.tostr
local truthy, as_num, as_str, eq, less = V.truthy, V.as_num, V.as_str, V.eq, V.less
local items_of, contains = V.items_of, V.contains
local lex, parse = lexer.lex, parser.parse
local FILTERS, STR_METHODS, DICT_METHODS, LIST_METHODS, GLOBALS =
   B.FILTERS, B.STR_METHODS, B.DICT_METHODS, B.LIST_METHODS, B.GLOBALS
local apply_test, py_format = B.apply_test, B.py_format

jinja.none = None
jinja.list = V.mark_list -- dpo.jinja.list(t), dpo.jinja.dict(t [, keys]): marks (dpo.jinja.values)
jinja.dict = V.mark_dict

-- ---- evaluation -------------------------------------------------------------------------------

local eval, exec_body -- below; each calls the other

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

-- ---- the loop object (its metatable is values' LoopMT) ----

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

-- ---- filters and tests (dpo.jinja.builtins) ----

local function apply_filter(f, value, scope, ctx, line)
   local fn = FILTERS[f.name]
   if not fn then fail(line, "unsupported filter '%s'", f.name) end
   local args = {}
   for j, a in ipairs(f.args) do args[j] = eval(a, scope, ctx) end
   local kw = {}
   for name, a in next, f.kwargs do kw[name] = eval(a, scope, ctx) end
   return fn(value, args, kw, line, ctx)
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

-- The filters, tests and methods call back into the evaluation above.
B.install { getattr = getattr, getitem = getitem, binop = binop }

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
      return parse(lex(source))
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
