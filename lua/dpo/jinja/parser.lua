-- dpo.jinja.parser: the tokens of dpo.jinja.lexer as a tree of statements
-- and expressions, parsed by jinja2's grammar and precedence (part of
-- dpo.jinja; internal, not a field of `dpo`).
--
--   parser.parse(tokens) -> body   a list of statement nodes
--
-- A node is a plain table {k = kind, line = n, ...}: statements (text,
-- output, if, for, set, setblock, macro, callblock, filterblock, break,
-- continue, block) and expressions (const, name, list, tuple, dict, getattr,
-- getitem, slice, call, filter, test, or, and, not, neg, pos, bin, concat,
-- compare, condexpr); dpo.jinja evaluates them. Constructs outside what
-- dpo.jinja renders (include, extends, import, block, with, do, recursive
-- for, *args) fail with "unsupported ..." naming them, through values.fail.
local V = require "dpo.jinja.values"

local concat = table.concat
local fail, None = V.fail, V.None

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

--[[
parser.parse(tokens) -> body: the statements of a whole template (tokens: from
lexer.lex, ending with eof).
]]
local function parse(toks)
   local p = setmetatable({ toks = toks, i = 1 }, ParserMT)
   return p:subparse(nil)
end

return { parse = parse }
