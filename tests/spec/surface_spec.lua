-- The whole Lua surface under misuse: every public function of `dpo` and its
-- modules, of `dpo.core`, every method of every userdata type and of every
-- object class the modules make, called with wrong types, missing and extra
-- arguments, nil, huge, negative and non-finite numbers, and freed or closed
-- objects. Nothing may crash the process; each misuse must raise a Lua error
-- whose message is a string naming the function (its name, its module's, or
-- for Lua code a parameter in Lua's own "(local 'opts')"); a method of a Lua
-- class called on something that is not its object may just say `self`.
--
-- The list of public functions is found at run time (see `enumerate`), and
-- the first test fails naming every function that has no case below: a new
-- function needs a case here. tests/spec/misuse_spec.lua holds the exact
-- messages of the tensor layer; this file checks breadth.
--
-- A case describes one valid call, slot by slot; the harness calls it once
-- as given (it must succeed), then again with each slot replaced by each bad
-- value of its kind, with too few arguments (which must raise) and with one
-- too many (which, as everywhere in Lua, is ignored: it must only not crash):
--   S.int(v [, o])   an integer (sizes, counts, indices, ids): non-numbers,
--                    fractions, NaN, +-inf, 1e300, +-2^53, math.maxinteger,
--                    math.mininteger and -1 must raise, except the labels in
--                    o.ok, which must only not crash
--   S.fin(v [, o])   a finite number option: non-numbers, NaN and +-inf
--                    raise; o.bad lists more labels that must raise
--   S.num(v)         a data value: only non-numbers raise; any number goes
--   S.operand(make)  a tensor or a number (tensor arithmetic)
--   S.str(v), S.path(v)  a string (a path: a zero byte raises too)
--   S.bool(v), S.tab(v), S.fn(v), S.any(v)
--   S.obj(make [, o])  an object (o.dead: freed or closed ones, o.other:
--                    objects of another kind; both must raise)
--   S.opts{key = slot, ...}  an options table, each field probed in turn
--   S.opt(slot)      the same slot, nil allowed
-- o.skip lists labels not to try (a call that would run for ever). A slot
-- value given as a function (but for S.fn and S.any) is a maker, called for
-- each call, so a call that consumes, frees or closes its argument is
-- harmless. Hand-written checks go in a case's `extra`; functions that return
-- nil and a message for a bad file by design (as LuaFileSystem does) are
-- checked there.
--
-- KNOWN lists the cases of modules this spec does not mend whose faults are
-- still open: they run, and report as pending until they pass.
-- DPO_SURFACE_ONLY=pattern[,...] runs only the matching cases. Every call
-- must also pass under AddressSanitizer and UBSan (build-asan/dpolua): keep
-- the objects tiny.
local h = dofile("tests/spec/helper.lua")
local core = require "dpo.core"

local unpack, pack = table.unpack, table.pack
local format = string.format

-- ---- the public functions ------------------------------------------------------------

local function sorted_keys(t)
   local keys = {}
   for k in next, t do
      if type(k) == "string" then keys[#keys + 1] = k end
   end
   table.sort(keys)
   return keys
end

--[[
enumerate() -> list of {fn, paths = {...}, at = {[path] = {container, key}}}:
every function reachable as a field of `dpo` or `dpo.core` (tables nested to
any depth: modules, classes, schedules.lr, ...); every function of each
userdata metatable "dpo.*" in the registry and of its method table; and every
function of the object classes held by the modules' functions (found through
their upvalues: the dataset reader, optimizers, runs, progress bars, ...),
named by the class's __name or by module.LocalName. A function reachable
under several names appears once, with all of them.
]]
local function enumerate()
   local byfn, order, seen = {}, {}, {}
   local function add(fn, path, container, key)
      local e = byfn[fn]
      if not e then
         e = { fn = fn, paths = {}, at = {} }
         byfn[fn] = e
         order[#order + 1] = e
      end
      e.paths[#e.paths + 1] = path
      e.at[path] = { container, key }
   end
   local function walk(t, path)
      if seen[t] then return end
      seen[t] = true
      for _, k in ipairs(sorted_keys(t)) do
         local v = rawget(t, k)
         if type(v) == "function" then
            add(v, path .. "." .. k, t, k)
         elseif type(v) == "table" then
            walk(v, path .. "." .. k)
         end
      end
   end
   -- a class: its methods under name.method, then its metamethods
   local function class(mt, name)
      if seen[mt] then return end
      local methods = rawget(mt, "__methods")
      if type(methods) ~= "table" then methods = rawget(mt, "__index") end
      if type(methods) == "table" and methods ~= mt then walk(methods, name) end
      walk(mt, name)
   end
   walk(dpo, "dpo")
   walk(core, "dpo.core")
   local reg = debug.getregistry()
   for _, k in ipairs(sorted_keys(reg)) do
      if k:match("^dpo%.") and type(reg[k]) == "table" then class(reg[k], k) end
   end
   local queue, visited, i = {}, {}, 1
   for _, e in ipairs(order) do queue[#queue + 1] = { e.fn, e.paths[1] } end
   while i <= #queue do
      local f, path = queue[i][1], queue[i][2]
      i = i + 1
      local info = debug.getinfo(f, "S")
      if not visited[f] and info.what == "Lua" and info.source:find("lua/dpo/", 1, true) then
         visited[f] = true
         local module = path:match("^(.*)%.[^.]+$")
         for u = 1, 255 do
            local name, v = debug.getupvalue(f, u)
            if not name then break end
            if name ~= "_ENV" and type(v) == "table" and type(rawget(v, "__index")) == "table"
               and not seen[v] then
               local before = #order
               class(v, rawget(v, "__name") or (module .. "." .. name))
               for j = before + 1, #order do
                  queue[#queue + 1] = { order[j].fn, order[j].paths[1] }
               end
            elseif type(v) == "function" then
               queue[#queue + 1] = { v, module .. "." .. name }
            end
         end
      end
   end
   return order
end

-- ---- values ------------------------------------------------------------------------------

-- {label, value} pairs; a function value is called for a fresh value
local function noop() end
local NOT_NUMBER = {
   { "nil", nil }, { "'x'", "x" }, { "{}", function() return {} end }, { "true", true },
   { "a function", function() return noop end },
}
local EXTREMES = {
   { "NaN", 0 / 0 }, { "inf", math.huge }, { "-inf", -math.huge }, { "1e300", 1e300 },
   { "-1e300", -1e300 }, { "math.maxinteger", math.maxinteger },
   { "math.mininteger", math.mininteger }, { "2^53", 2 ^ 53 }, { "-2^53", -2 ^ 53 },
   { "1.5", 1.5 }, { "-1", -1 },
}
local NUL_PATH -- set below, once the temporary directory exists
local NON_FINITE = { NaN = true, inf = true, ["-inf"] = true }

local function set(list)
   local s = {}
   for _, k in ipairs(list or {}) do s[k] = true end
   return s
end

-- ---- slots -------------------------------------------------------------------------------

local S = {}

local function slot(kind, v, o)
   o = o or {}
   local s = { kind = kind, ok = set(o.ok), extra_bad = o.bad or {}, dead = o.dead or {},
               optional = o.optional, other = o.other or {}, table_ok = o.table_ok,
               skip = set(o.skip) }
   if type(v) == "function" and kind ~= "fn" and kind ~= "any" then
      s.get = v -- a maker: a fresh value for each call
   else
      s.get = function() return v end
   end
   return s
end

function S.int(v, o) return slot("int", v, o) end
function S.fin(v, o) return slot("fin", v, o) end
function S.num(v, o) return slot("num", v, o) end
function S.str(v, o) return slot("str", v, o) end
function S.path(v, o) return slot("path", v, o) end
function S.tab(v, o) return slot("tab", v, o) end
function S.fn(v, o) return slot("fn", v, o) end
function S.any(v, o) return slot("any", v, o) end
function S.bool(v, o) return slot("bool", v, o) end
function S.obj(make, o) return slot("obj", make, o) end
function S.operand(make, o) return slot("operand", make, o) end -- a tensor or a number

function S.opt(s)
   s.optional = true
   return s
end

-- An options table: fields maps key -> slot; o.optional (the table may be
-- nil), o.strict (an unknown key raises).
function S.opts(fields, o)
   o = o or {}
   local s = { kind = "opts", fields = fields, optional = o.optional, strict = o.strict,
               ok = {}, extra_bad = o.bad or {}, dead = {}, other = {} }
   s.get = function()
      local t = {}
      for k, f in pairs(fields) do t[k] = f.get() end
      return t
   end
   return s
end

local function fresh(v)
   if type(v) == "function" then return v() end
   return v
end

-- The values of slot s that must raise ("error") and those that must only
-- not crash ("survive"), as {label, thunk, expect}.
local function probes(s)
   local out = {}
   local function add(label, value, expect)
      if s.skip and s.skip[label] then return end
      out[#out + 1] = { label, function() return fresh(value) end, expect }
   end
   local function not_numbers()
      for _, b in ipairs(NOT_NUMBER) do
         if not (b[1] == "nil" and s.optional) then add(b[1], b[2], "error") end
      end
   end
   local extra = set()
   for _, b in ipairs(s.extra_bad) do
      if type(b) == "table" then add(b[1], b[2], "error") else extra[b] = true end
   end
   if s.kind == "int" then
      not_numbers()
      for _, x in ipairs(EXTREMES) do add(x[1], x[2], s.ok[x[1]] and "survive" or "error") end
   elseif s.kind == "fin" then
      not_numbers()
      for _, x in ipairs(EXTREMES) do
         local bad = (NON_FINITE[x[1]] and not s.ok[x[1]]) or extra[x[1]]
         add(x[1], x[2], bad and "error" or "survive")
      end
   elseif s.kind == "num" then
      not_numbers()
      for _, x in ipairs(EXTREMES) do add(x[1], x[2], extra[x[1]] and "error" or "survive") end
   elseif s.kind == "str" or s.kind == "path" then
      for _, b in ipairs { { "nil", nil }, { "{}", NOT_NUMBER[3][2] }, { "true", true },
                           { "a function", NOT_NUMBER[5][2] } } do
         if not (b[1] == "nil" and s.optional) then add(b[1], b[2], "error") end
      end
      -- (no number for a path: it would name a file in the working directory)
      if s.kind == "str" then add("1", 1, "survive") end
      -- inside the spec's own directory: a function that ignores the zero byte
      -- must not touch the working tree
      if s.kind == "path" then add("a path with a zero byte", NUL_PATH, "error") end
   elseif s.kind == "tab" or s.kind == "opts" then
      for _, b in ipairs { { "nil", nil }, { "1", 1 }, { "'x'", "x" }, { "true", true },
                           { "a function", NOT_NUMBER[5][2] } } do
         if not (b[1] == "nil" and s.optional) then add(b[1], b[2], "error") end
      end
   elseif s.kind == "bool" then
      for _, b in ipairs { { "nil", nil }, { "1", 1 }, { "'x'", "x" }, { "{}", NOT_NUMBER[3][2] },
                           { "a function", NOT_NUMBER[5][2] } } do
         if not (b[1] == "nil" and s.optional) then add(b[1], b[2], "error") end
      end
   elseif s.kind == "fn" then
      for _, b in ipairs { { "nil", nil }, { "1", 1 }, { "'x'", "x" }, { "{}", NOT_NUMBER[3][2] },
                           { "true", true } } do
         if not (b[1] == "nil" and s.optional) then add(b[1], b[2], "error") end
      end
   elseif s.kind == "obj" then
      for _, b in ipairs { { "nil", nil }, { "1", 1 }, { "'x'", "x" }, { "true", true },
                           { "a function", NOT_NUMBER[5][2] } } do
         if not (b[1] == "nil" and s.optional) then
            add(b[1], b[2], s.ok[b[1]] and "survive" or "error")
         end
      end
      if not s.table_ok then add("{}", NOT_NUMBER[3][2], "error") end
      for _, d in ipairs(s.other) do add(d[1], d[2], "error") end
      for _, d in ipairs(s.dead) do add(d[1], d[2], "error") end
   elseif s.kind == "operand" then
      not_numbers()
      for _, x in ipairs(EXTREMES) do add(x[1], x[2], "survive") end
      for _, d in ipairs(s.other) do add(d[1], d[2], "error") end
      for _, d in ipairs(s.dead) do add(d[1], d[2], "error") end
   end
   return out
end

-- ---- running a case ----------------------------------------------------------------------

-- Public functions, each with a function that calls it the way Lua names it
-- in argument errors, and back (filled in below, once the surface is
-- enumerated).
local NAMED, TARGETS = {}, {}

-- Call f with the n values in args; returns ok, results-or-message.
local function try(f, args, n)
   f = NAMED[f] or f
   return pcall(function() return pack(f(unpack(args, 1, n))) end)
end

-- A function calling container[key](...), so that Lua names it `key` in its
-- argument errors (a call through a local would be named after the local).
local function caller(container, key)
   local src = format("local T = ...\nreturn function(...) local r = table.pack(T[%q](...)) " ..
                      "return table.unpack(r, 1, r.n) end", key)
   return assert(load(src, "=(surface)", "t"))(container)
end

--[[
run(path, c, fn) -> list of problems (strings); empty when the case holds.
fn         the enumerated function's caller (through its table, so Lua names
           it in argument errors)
c.call     the function to call instead of fn
c.args     list of slots (see the top of this file)
c.check    function(results...) asserting what the valid call returned
c.name     a string or list: one must appear in each error message (default:
           the function's last name); false: no check
c.self     true when slot 1 is the object of a method of a Lua class: its
           errors need not name the function (Lua says "local 'self'"), and
           a string is not tried there
c.skip_probes  {[i] = true}: slot i only takes part in the valid call
c.any      a note: the function accepts anything; it is called with
           c.inputs (argument lists, default: odd values) and c.check
c.min_args the fewest arguments the function takes, when fewer than the
           required slots (sizes, dpo.arange(stop))
c.extra    function(t) for further checks: t.fails(label, f, ...),
           t.fails_any(...) (any message), t.fails_with(label, needle, f, ...),
           t.works(label, f, ...) -> results, t.survives(label, f, ...),
           t.problem(fmt, ...)
]]
local function run(path, c, fn)
   local problems = {}
   local function problem(fmtstr, ...) problems[#problems + 1] = format(fmtstr, ...) end
   local names = c.name
   if names == nil then names = { path:match("[^.]+$") } end
   if type(names) == "string" then names = { names } end
   -- Lua's own "attempt to index a nil value (local 'opts')" names the
   -- argument too, when the local is a parameter of the function
   if names and type(fn) == "function" and not c.call then
      local target = TARGETS[fn] or fn
      if debug.getinfo(target, "S").what == "Lua" then
         for i = 1, debug.getinfo(target, "u").nparams do
            local p = debug.getlocal(target, i)
            if p ~= "self" then names[#names + 1] = "local '" .. p .. "'" end
         end
      end
   end

   local function names_it(msg)
      if names == false then return true end
      for _, n in ipairs(names) do
         if msg:find(n, 1, true) then return true end
      end
      return false
   end

   local function expect_error(label, f, args, n, skip_name)
      local ok, r = try(f, args, n)
      if ok then
         problem("%s: expected an error, the call returned", label)
      elseif type(r) ~= "string" then
         problem("%s: the error is a %s, not a message", label, type(r))
      elseif not skip_name and not names_it(r) then
         problem("%s: the message does not name %s: %s", label, table.concat(names, " or "), r)
      end
   end

   local function expect_survive(label, f, args, n)
      local ok, r = try(f, args, n)
      if not ok and type(r) ~= "string" then
         problem("%s: the error is a %s, not a message", label, type(r))
      end
   end

   local t = {}
   function t.fails(label, f, ...)
      expect_error(label, f, pack(...), select("#", ...))
   end
   function t.fails_any(label, f, ...) -- an error whose message need not name the function
      expect_error(label, f, pack(...), select("#", ...), true)
   end
   function t.fails_with(label, needle, f, ...) -- an error naming needle (a file, say)
      local ok, r = try(f, pack(...), select("#", ...))
      if ok then
         problem("%s: expected an error, the call returned", label)
      elseif type(r) ~= "string" then
         problem("%s: the error is a %s, not a message", label, type(r))
      elseif not r:find(needle, 1, true) then
         problem("%s: the message does not name %s: %s", label, needle, r)
      end
   end
   function t.survives(label, f, ...)
      expect_survive(label, f, pack(...), select("#", ...))
   end
   function t.works(label, f, ...)
      local ok, r = try(f, pack(...), select("#", ...))
      if not ok then
         problem("%s: the call failed: %s", label, tostring(r))
         return nil
      end
      return unpack(r, 1, r.n)
   end
   t.problem = problem

   local f = c.call or fn
   if c.any then
      local inputs = c.inputs or { {}, { nil }, { 1 }, { "x" }, { {} }, { true }, { 0 / 0 },
                                   { math.huge }, { print }, { dpo.ones(1) }, { 1, 2, 3 } }
      for i, args in ipairs(inputs) do
         local ok, r = try(f, args, args.n or #args + (args[1] == nil and 1 or 0))
         if not ok then
            problem("accepts anything (%s), but input %d raised: %s", c.any, i, tostring(r))
         elseif c.check then
            local good, msg = pcall(c.check, unpack(r, 1, r.n))
            if not good then problem("input %d: %s", i, tostring(msg)) end
         end
      end
   end

   local slots = c.args or {}
   local n = #slots
   local function base()
      local a = {}
      for i, s in ipairs(slots) do a[i] = s.get() end
      return a
   end

   if c.args then
      -- the valid call
      local ok, r = try(f, base(), n)
      if not ok then
         problem("the valid call failed: %s", tostring(r))
      elseif c.check then
         local good, msg = pcall(c.check, unpack(r, 1, r.n))
         if not good then problem("the valid call returned wrong values: %s", tostring(msg)) end
      end

      -- each slot, each bad value
      for i, s in ipairs(slots) do
         local skip_name = c.self and i == 1
         local list = (c.skip_probes and c.skip_probes[i]) and {} or probes(s)
         for _, p in ipairs(list) do
            -- (a string is no object, but indexing one reads the string library
            -- without an error, so a Lua method may well run on it)
            if skip_name and p[1] == "'x'" then goto next_probe end
            local a = base()
            a[i] = p[2]()
            local label = format("argument %d = %s", i, p[1])
            if p[3] == "error" then
               expect_error(label, f, a, n, skip_name)
            else
               expect_survive(label, f, a, n)
            end
            ::next_probe::
         end
         if s.kind == "opts" and #list > 0 then
            for _, key in ipairs(sorted_keys(s.fields)) do
               for _, p in ipairs(probes(s.fields[key])) do
                  local a = base()
                  a[i][key] = p[2]()
                  local label = format("argument %d: %s = %s", i, key, p[1])
                  if p[3] == "error" then
                     expect_error(label, f, a, n)
                  else
                     expect_survive(label, f, a, n)
                  end
               end
            end
            if s.strict then
               local a = base()
               a[i].no_such_option = 1
               expect_error(format("argument %d: an unknown option", i), f, a, n)
            end
         end
      end

      -- too few and too many
      local required = 0
      for i, s in ipairs(slots) do
         if not s.optional and s.kind ~= "any" then required = i end
      end
      if c.min_args then required = c.min_args end
      if required > 0 then
         expect_error("no arguments", f, {}, 0, c.self)
         if required > 1 then
            expect_error(format("only %d of %d arguments", required - 1, required), f, base(),
                         required - 1)
         end
      end
      local a = base()
      a[n + 1] = {}
      expect_survive("one argument too many", f, a, n + 1)
   end

   if c.extra then
      local ok, msg = pcall(c.extra, t)
      if not ok then problem("extra checks: %s", tostring(msg)) end
   end
   return problems
end


-- ---- objects and files the cases use ------------------------------------------------------

local DIR = h.tmpdir()
local serial = 0
-- a new path for each call: what it is cut to at the zero byte does not exist
NUL_PATH = function()
   serial = serial + 1
   return format("%s/nul%d\0byte", DIR, serial)
end
-- a new path in DIR that does not exist yet
local function fresh_path(suffix)
   serial = serial + 1
   return format("%s/p%d%s", DIR, serial, suffix or "")
end

local TINY = { vocab_size = 257, n_ctx = 16, n_layer = 1, n_head = 1, n_embd = 8 }
local function model() return dpo.gpt.new(TINY) end
local function tok() return dpo.tokenizer.bytes() end
local PAIRS = {
   { prompt = "Hi", chosen = " yes", rejected = " no" },
   { prompt = "Yo", chosen = " a", rejected = " bb" },
   { prompt = "Hm", chosen = " ok", rejected = " nope" },
}
local function pair_list()
   local out = {}
   for i, p in ipairs(PAIRS) do out[i] = { prompt = p.prompt, chosen = p.chosen, rejected = p.rejected } end
   return out
end
local function ds() return dpo.data.dataset(pair_list()) end
local SHARED_TOK = tok()
local function tds() return ds():tokenize(SHARED_TOK, { max_length = 8 }) end
local function ft() return dpo.tensor { { 1, 2 }, { 3, 4 } } end
local function vec() return dpo.tensor { 1, 2, 3 } end
local function vec2() return dpo.tensor { 1, 2 } end
local function ids32() return dpo.tensor({ { 1, 2, 3, 4 }, { 5, 6, 7, 8 } }, "int32") end
local function leaf() return dpo.tensor({ 1, 2 }):requires_grad() end
local function with_grad()
   local p = dpo.tensor({ 1, 2 }):requires_grad()
   p.grad = dpo.tensor { 0.5, -0.5 }
   return p
end

-- dead objects: freed, closed by `<close>`, finished
local function freed_tensor()
   local t = dpo.ones(2)
   t:free()
   return t
end
local function closed_tensor()
   local t = dpo.ones(2)
   do local _ <close> = t end
   return t
end
local function closed_model()
   local m = model()
   do local _ <close> = m end
   return m
end
local function freed_tok()
   local t = tok()
   t:free()
   return t
end
local function closed_tok()
   local t = tok()
   do local _ <close> = t end
   return t
end

local DEAD_TENSORS = { { "a freed tensor", freed_tensor }, { "a tensor closed by <close>", closed_tensor } }
local A_TOKENIZER = { "a tokenizer", function() return SHARED_TOK end }
local A_TENSOR = { "a tensor", function() return dpo.ones(1) end }

local function TENSOR(make)
   return S.obj(make or ft, { dead = DEAD_TENSORS, other = { A_TOKENIZER } })
end
local function OPERAND(make)
   return S.operand(make or ft, { dead = DEAD_TENSORS, other = { A_TOKENIZER } })
end
local function MODEL(make)
   return S.obj(make or model, { dead = { { "a closed model", closed_model } }, other = { A_TENSOR } })
end
local function TOK(make)
   return S.obj(make or tok, { dead = { { "a freed tokenizer", freed_tok },
                                        { "a tokenizer closed by <close>", closed_tok } },
                               other = { A_TENSOR } })
end

-- files
local F = {}
F.pairs = DIR .. "/pairs.jsonl"
assert(dpo.data.write_jsonl(F.pairs, pair_list()))
F.hh = "tests/fixtures/data/hh_rules.jsonl"
F.st = DIR .. "/t.safetensors"
assert(dpo.save(F.st, { w = dpo.ones(2, 2) }, { note = "x" }))
F.tokjson = DIR .. "/tokenizer.json"
SHARED_TOK:save(F.tokjson)
F.vocab, F.merges = "tests/fixtures/tokenizer/tiny/vocab.json", "tests/fixtures/tokenizer/tiny/merges.txt"
F.model = DIR .. "/model"
model():save(F.model)
F.garbage = DIR .. "/garbage.bin"
h.write(F.garbage, "\1\2\3 not a file of any kind")
F.missing = DIR .. "/no/such/file"
F.metrics = DIR .. "/metrics.jsonl"
h.write(F.metrics, '{"step":1,"loss":0.5}\n')

-- every integer label but the fraction and the non-finite ones: what a
-- function that takes any integer accepts
local ANY_INT = { "-1", "math.maxinteger", "math.mininteger", "2^53", "-2^53" }
-- every number label but the non-finite ones (those a range check refuses)
local OUT_OF_RANGE = { "1e300", "-1e300", "math.maxinteger", "math.mininteger", "2^53", "-2^53",
                       "1.5", "-1" }
local NEGATIVE = { "-1", "-1e300", "math.mininteger", "-2^53" }

-- ---- the cases ------------------------------------------------------------------------------

local CASES, ORDER = {}, {}

-- case(path or {paths}, spec): the spec covers the function(s) at those paths
local function case(paths, spec)
   if type(paths) == "string" then paths = { paths } end
   spec.paths = paths
   for _, p in ipairs(paths) do
      assert(CASES[p] == nil, "two cases for " .. p)
      CASES[p] = spec
   end
   ORDER[#ORDER + 1] = spec
end

local function shape_is(t, want) assert.are.same(want, t:shape()) end

-- ---- tensors: constructors --------------------------------------------------------------------

for _, name in ipairs { "zeros", "ones", "empty", "rand", "randn" } do
   case("dpo." .. name, {
      args = { S.int(2), S.int(3) },
      min_args = 0, -- no size is a scalar
      check = function(t) shape_is(t, { 2, 3 }) end,
      extra = function(t)
         t.fails("a negative size in a table", dpo[name], { 2, -1 })
         t.fails("a fractional size in a table", dpo[name], { 2, 0.5 })
         t.fails("a NaN size in a table", dpo[name], { 0 / 0 })
         t.fails("sizes 2^40 x 2^40", dpo[name], 2 ^ 40, 2 ^ 40)
         t.fails("nine dimensions", dpo[name], 1, 1, 1, 1, 1, 1, 1, 1, 1)
         t.fails("a bad dtype", dpo[name], 2, "float64")
         t.fails("sizes after a size table", dpo[name], { 2 }, 3)
      end,
   })
end

case("dpo.tensor", {
   args = { S.obj(function() return { { 1, 2 } } end, { table_ok = true, ok = { "1" } }),
            S.opt(S.str("float32")) },
   check = function(t) shape_is(t, { 1, 2 }) end,
   extra = function(t)
      -- values are data: any number goes, and int32 saturates
      h.near(t.works("1e300 as int32", dpo.tensor, { 1e300, -1e300 }, "int32"),
             { 2147483647, -2147483648 })
      t.works("NaN as int32", dpo.tensor, { 0 / 0 }, "int32")
      t.works("math.maxinteger as float32", dpo.tensor, { math.maxinteger })
      t.fails("a ragged table", dpo.tensor, { { 1 }, { 1, 2 } })
      t.fails("a string inside", dpo.tensor, { 1, "2" })
      local deep = 1
      for _ = 1, 12 do deep = { deep } end
      t.fails("a table nested 12 deep", dpo.tensor, deep)
      t.fails("a freed tensor", dpo.tensor, freed_tensor())
   end,
})

case("dpo.full", {
   args = { S.tab({ 2, 2 }), S.num(1), S.opt(S.str("float32")) },
   check = function(t) h.near(t, { { 1, 1 }, { 1, 1 } }) end,
   extra = function(t)
      h.near(t.works("1e300 into int32", dpo.full, { 2 }, 1e300, "int32"), { 2147483647, 2147483647 })
      t.fails("a size table with a NaN", dpo.full, { 0 / 0 }, 1)
   end,
})

case("dpo.arange", {
   args = { S.fin(0), S.fin(4), S.opt(S.fin(1, { bad = { { "0", 0 } } })) },
   min_args = 1, -- arange(stop)
   check = function(t) h.near(t, { 0, 1, 2, 3 }) end,
   extra = function(t)
      t.fails("a stop too far for memory", dpo.arange, 0, 1e12)
      t.fails("four numbers", dpo.arange, 0, 1, 1, 1)
      t.fails("a bad dtype", dpo.arange, 3, "float64")
   end,
})

case("dpo.eye", {
   args = { S.int(2), S.opt(S.int(3)) },
   check = function(t) h.near(t, { { 1, 0, 0 }, { 0, 1, 0 } }) end,
})

case("dpo.randint", {
   args = { S.int(0, { ok = { "-1" } }), S.int(5), S.int(3, { skip = { "{}" } }) },
   min_args = 2, -- no size is a scalar
   check = function(t)
      assert.are.equal("int32", t:dtype())
      shape_is(t, { 3 })
   end,
   extra = function(t)
      t.fails("bounds beyond int32", dpo.randint, 0, 2 ^ 33, 2)
      t.fails("high below low", dpo.randint, 5, 1, 2)
   end,
})

for _, name in ipairs { "cat", "stack" } do
   case("dpo." .. name, {
      args = { S.tab(function() return { dpo.ones(2), dpo.zeros(2) } end),
               S.opt(S.int(1, { ok = { "-1" } })) },
      extra = function(t)
         t.fails("a list with a freed tensor", dpo[name], { dpo.ones(2), freed_tensor() })
         t.fails("a list with a number", dpo[name], { dpo.ones(2), 3 })
         t.fails("an empty list", dpo[name], {})
         local many = {}
         for i = 1, 300 do many[i] = dpo.ones(1) end
         t.fails("300 tensors", dpo[name], many)
      end,
   })
end

case("dpo.where", {
   args = { TENSOR(function() return dpo.tensor({ 1, 0 }, "int32") end), OPERAND(vec2), OPERAND(vec2) },
})

case("dpo.is_tensor", {
   any = "a predicate",
   check = function(r) assert.are.equal("boolean", type(r)) end,
   extra = function(t)
      assert.is_true(t.works("a tensor", dpo.is_tensor, dpo.ones(1)))
      assert.is_false(t.works("a freed tensor", dpo.is_tensor, freed_tensor()))
      assert.is_false(t.works("a tokenizer", dpo.is_tensor, SHARED_TOK))
      assert.is_false(t.works("a table", dpo.is_tensor, {}))
   end,
})

-- the generator: each call puts the state back
local function keeping_rng(fn)
   return function(...)
      local saved = dpo.rng_state()
      local r = pack(pcall(fn, ...))
      dpo.set_rng_state(saved)
      if not r[1] then error(r[2], 0) end
      return unpack(r, 2, r.n)
   end
end

case("dpo.manual_seed", {
   call = keeping_rng(function(...) return dpo.manual_seed(...) end),
   args = { S.int(7, { ok = ANY_INT }) },
})

case({ "dpo.initial_seed", "dpo.rng_state" }, {
   any = "no arguments; extra ones are ignored",
   call = function(...) return dpo.initial_seed(...), dpo.rng_state(...) end,
   check = function(seed, state)
      assert.are.equal("integer", math.type(seed))
      assert.are.equal("string", type(state))
   end,
})

case("dpo.set_rng_state", {
   call = keeping_rng(function(...) return dpo.set_rng_state(...) end),
   args = { S.str(dpo.rng_state()) },
   extra = function(t)
      local s = dpo.rng_state()
      t.fails("a state one byte short", keeping_rng(dpo.set_rng_state), s:sub(2))
      t.fails("an all-zero state", keeping_rng(dpo.set_rng_state), string.rep("\0", #s))
   end,
})

-- ---- tensors: methods -----------------------------------------------------------------------

local UNARY = { "abs", "exp", "sqrt", "rsqrt", "sigmoid", "tanh", "relu", "gelu", "silu",
                "logsigmoid", "softplus", "neg", "clone", "contiguous", "detach", "dim", "dtype", "numel",
                "shape", "is_contiguous", "is_leaf", "needs_grad", "grad_fn", "float", "int",
                "totable", "zero", "t", "zero_grad" }
for _, name in ipairs(UNARY) do
   case("dpo.Tensor." .. name, { args = { TENSOR() } })
end
case("dpo.Tensor.log", { args = { TENSOR() }, name = "log" })

case("dpo.Tensor.free", {
   args = { S.obj(ft, { other = { A_TOKENIZER } }) },
   extra = function(t)
      local x = dpo.ones(2)
      x:free()
      t.works("freeing twice", dpo.Tensor.free, x) -- as close() is: idempotent
      t.fails("using it after", dpo.Tensor.sum, x)
   end,
})

case("dpo.Tensor.item", {
   args = { TENSOR(function() return dpo.tensor { 5 } end) },
   check = function(v) assert.are.equal(5, v) end,
   extra = function(t) t.fails("two elements", dpo.Tensor.item, dpo.ones(2)) end,
})

for _, name in ipairs { "add", "sub", "mul", "div", "pow", "maximum", "minimum", "gt", "ge", "lt",
                        "le", "eq", "ne" } do
   case("dpo.Tensor." .. name, {
      args = { OPERAND(vec2), OPERAND(vec2) },
      extra = function(t)
         t.fails("two numbers", dpo.Tensor[name], 1, 2)
         t.fails("shapes that do not broadcast", dpo.Tensor[name], dpo.ones(2), dpo.ones(3))
         local i = dpo.tensor({ 7, -7 }, "int32")
         t.works("int32 by 0", dpo.Tensor[name], i, 0)
         t.works("int32 by int32 zeros", dpo.Tensor[name], i, dpo.tensor({ 0, 0 }, "int32"))
         t.works("int32 extremes", dpo.Tensor[name], dpo.tensor({ 2147483647, -2147483648 }, "int32"),
                 dpo.tensor({ -1, -1 }, "int32"))
      end,
   })
end

for _, name in ipairs { "mm", "matmul" } do
   case("dpo.Tensor." .. name, { args = { TENSOR(), TENSOR() } })
end

case("dpo.Tensor.equal", {
   args = { TENSOR(), TENSOR() },
   check = function(r) assert.is_true(r) end,
})

case("dpo.Tensor.allclose", {
   args = { TENSOR(), OPERAND(), S.opt(S.fin(1e-5, { ok = { "inf" }, bad = NEGATIVE })),
            S.opt(S.fin(1e-8, { ok = { "inf" }, bad = NEGATIVE })) },
   check = function(r) assert.is_true(r) end,
})

case("dpo.Tensor.clamp", {
   args = { TENSOR(), S.opt(S.fin(0, { ok = { "-inf" }, bad = { "1e300", "math.maxinteger", "2^53" } })),
            S.opt(S.fin(3, { ok = { "inf" }, bad = NEGATIVE })) },
   check = function(r) h.near(r, { { 1, 2 }, { 3, 3 } }) end,
   extra = function(t)
      t.fails("no bounds", dpo.Tensor.clamp, dpo.ones(2))
      t.fails("a NaN min alone", dpo.Tensor.clamp, dpo.ones(2), 0 / 0)
      t.fails("a NaN max alone", dpo.Tensor.clamp, dpo.ones(2), nil, 0 / 0)
   end,
})

case("dpo.Tensor.fill", {
   args = { TENSOR(), S.num(2) },
   extra = function(t)
      local i = dpo.zeros(2, "int32")
      h.near(t.works("1e300 into int32", dpo.Tensor.fill, i, 1e300), { 2147483647, 2147483647 })
      t.works("NaN into int32", dpo.Tensor.fill, i, 0 / 0)
      t.fails("a tensor that requires grad", dpo.Tensor.fill, leaf(), 1)
   end,
})

case("dpo.Tensor.copy", {
   args = { TENSOR(), TENSOR() },
   extra = function(t) t.fails("a source that does not fit", dpo.Tensor.copy, dpo.ones(2), dpo.ones(3)) end,
})

for _, name in ipairs { "reshape", "view" } do
   case("dpo.Tensor." .. name, {
      args = { TENSOR(), S.int(4, { ok = { "-1" } }) },
      check = function(r) shape_is(r, { 4 }) end,
      extra = function(t)
         t.fails("sizes whose product overflows", dpo.Tensor[name], dpo.ones(1), 2 ^ 62, 2 ^ 62, 0)
         t.fails("two -1", dpo.Tensor[name], dpo.ones(4), -1, -1)
         t.fails("nine sizes", dpo.Tensor[name], dpo.ones(1), 1, 1, 1, 1, 1, 1, 1, 1, 1)
         t.fails("a size table with NaN", dpo.Tensor[name], dpo.ones(1), { 0 / 0 })
      end,
   })
end

case("dpo.Tensor.transpose", {
   args = { TENSOR(), S.int(1, { ok = { "-1" } }), S.int(2, { ok = { "-1" } }) },
})
case("dpo.Tensor.narrow", {
   args = { TENSOR(), S.int(1, { ok = { "-1" } }), S.int(1), S.int(1) },
   check = function(r) h.near(r, { { 1, 2 } }) end,
})
case("dpo.Tensor.select", {
   args = { TENSOR(), S.int(1, { ok = { "-1" } }), S.int(1, { ok = { "-1" } }) },
   check = function(r) h.near(r, { 1, 2 }) end,
})
case("dpo.Tensor.unsqueeze", { args = { TENSOR(), S.int(1, { ok = { "-1" } }) } })
case("dpo.Tensor.squeeze", { args = { TENSOR(), S.opt(S.int(1, { ok = { "-1" } })) } })
case("dpo.Tensor.size", {
   args = { TENSOR(), S.opt(S.int(2, { ok = { "-1" } })) },
   check = function(n) assert.are.equal(2, n) end,
})
for _, name in ipairs { "sum", "mean", "max", "min", "argmax", "argmin" } do
   case("dpo.Tensor." .. name, { args = { TENSOR(), S.opt(S.int(1, { ok = { "-1" } })),
      S.opt(S.any(true)) } })
end
for _, name in ipairs { "softmax", "log_softmax", "logsumexp" } do
   case("dpo.Tensor." .. name, { args = { TENSOR(), S.opt(S.int(1, { ok = { "-1" } })) } })
end

case("dpo.Tensor.gather", {
   args = { TENSOR(), S.int(1, { ok = { "-1" } }),
            S.obj(function() return dpo.tensor({ { 1, 1 }, { 2, 2 } }, "int32") end,
                  { dead = DEAD_TENSORS, other = { A_TOKENIZER } }) },
   extra = function(t)
      t.fails("an index of 2^31", dpo.Tensor.gather, ft(), 1, { { 2 ^ 31 } })
      t.fails("a float index", dpo.Tensor.gather, ft(), 1, dpo.ones(2, 2))
   end,
})
case("dpo.Tensor.index_select", {
   args = { TENSOR(), S.int(1, { ok = { "-1" } }),
            S.obj(function() return { 2, 1 } end, { table_ok = true, dead = DEAD_TENSORS,
               other = { A_TOKENIZER } }) },
   check = function(r) h.near(r, { { 3, 4 }, { 1, 2 } }) end,
   extra = function(t)
      for _, x in ipairs(EXTREMES) do
         t.fails("an index entry " .. x[1], dpo.Tensor.index_select, ft(), 1, { x[2] })
      end
   end,
})

case("dpo.Tensor.to", {
   args = { TENSOR(), S.str("int32") },
   check = function(r) assert.are.equal("int32", r:dtype()) end,
})

case("dpo.Tensor.requires_grad", {
   args = { TENSOR(), S.opt(S.any(true)) },
   extra = function(t) t.fails("an int32 tensor", dpo.Tensor.requires_grad, dpo.ones(2, "int32")) end,
})

case("dpo.Tensor.backward", {
   args = { TENSOR(function() return (leaf() * 2):sum() end),
            S.opt(S.obj(function() return dpo.tensor(1) end, { dead = DEAD_TENSORS,
               other = { A_TOKENIZER } })) },
   extra = function(t)
      t.fails("a tensor outside any graph", dpo.Tensor.backward, dpo.ones(2))
      t.fails("a gradient of the wrong shape", dpo.Tensor.backward, (leaf() * 2):sum(), dpo.ones(3))
      local y = (leaf() * 2):sum()
      y:backward()
      t.fails("a second backward through a freed graph", dpo.Tensor.backward, y)
   end,
})

-- metamethods, through the operators that use them
local TMT = debug.getregistry()["dpo.Tensor"]
case("dpo.Tensor.__index", {
   extra = function(t)
      local x = ft()
      h.near(t.works("t[-1]", function() return x[-1] end), { 3, 4 })
      assert.is_nil(t.works("t.no_such_method", function() return x.no_such_method end))
      for _, k in ipairs(EXTREMES) do
         if k[1] ~= "-1" then t.fails("t[" .. k[1] .. "]", function() return x[k[2]] end) end
      end
      t.fails("t[1] of a freed tensor", function() return freed_tensor()[1] end)
      t.fails("t.grad of a freed tensor", function() return freed_tensor().grad end)
   end,
   name = "index",
})
case("dpo.Tensor.__newindex", {
   extra = function(t)
      local x = vec()
      t.works("t[-1] = 5", function() x[-1] = 5 end)
      for _, k in ipairs(EXTREMES) do
         if k[1] ~= "-1" then t.fails("t[" .. k[1] .. "] = 1", function() x[k[2]] = 1 end) end
      end
      t.fails("t[1] = 'x'", function() x[1] = "x" end)
      t.fails("t[1] = nil", function() x[1] = nil end)
      t.fails("t.grad = 1", function() x.grad = 1 end)
      t.fails("t.grad = a tensor of another shape", function() x.grad = dpo.ones(2) end)
      t.fails("t.foo = 1", function() x.foo = 1 end)
      t.fails("t[1] = 1 on a freed tensor", function() local f = freed_tensor(); f[1] = 1 end)
   end,
   name = false,
})
case("dpo.Tensor.__len", {
   args = { TENSOR() },
   name = false,
   extra = function(t) t.fails("a scalar", function() return #dpo.tensor(1) end) end,
})
case("dpo.Tensor.__tostring", {
   args = { TENSOR() },
   name = false,
   check = function(s) assert.are.equal("string", type(s)) end,
})
case("dpo.Tensor.__unm", {
   args = { TENSOR() },
   name = false,
   extra = function(t)
      t.fails("-t of a freed tensor", function() return -freed_tensor() end)
   end,
})
case("dpo.Tensor.__gc", {
   args = { S.obj(ft, { other = { A_TOKENIZER } }) },
   name = false,
   extra = function(t)
      local x = dpo.ones(2)
      TMT.__gc(x)
      t.works("twice", TMT.__gc, x)
      t.fails("a tokenizer", TMT.__gc, SHARED_TOK)
   end,
})

-- ---- autograd and the process ------------------------------------------------------------

local function keeping_grad_mode(fn)
   return function(...)
      local was = dpo.is_grad_enabled()
      local r = pack(pcall(fn, ...))
      dpo.set_grad_enabled(was)
      if not r[1] then error(r[2], 0) end
      return unpack(r, 2, r.n)
   end
end

for _, name in ipairs { "no_grad", "enable_grad" } do
   case("dpo." .. name, {
      args = { S.fn(function(x) return x end), S.opt(S.any(1)) },
      check = function(r) assert.are.equal(1, r) end,
      extra = function(t)
         local was = dpo.is_grad_enabled()
         t.fails_any("an error inside", dpo[name], function() error("inside") end)
         assert.are.equal(was, dpo.is_grad_enabled())
      end,
   })
end

case("dpo.set_grad_enabled", {
   any = "any value is a flag",
   inputs = { { true }, { false }, { 1 }, { "x" }, { {} } },
   call = keeping_grad_mode(function(...) return dpo.set_grad_enabled(...) end),
   check = function(r) assert.are.equal("boolean", type(r)) end,
   extra = function(t) t.fails("no argument", keeping_grad_mode(dpo.set_grad_enabled)) end,
})

case({ "dpo.is_grad_enabled", "dpo.get_num_threads", "dpo.clock", "dpo.autograd_ops" }, {
   any = "no arguments; extra ones are ignored",
   call = function(...)
      return dpo.is_grad_enabled(...), dpo.get_num_threads(...), dpo.clock(...), dpo.autograd_ops(...)
   end,
   check = function(g, n, c, ops)
      assert.are.equal("boolean", type(g))
      assert.is_true(math.type(n) == "integer" and n >= 1)
      assert.are.equal("number", type(c))
      assert.are.equal("table", type(ops))
   end,
})

case("dpo.set_num_threads", {
   call = function(...)
      local n = dpo.get_num_threads()
      local r = pack(pcall(dpo.set_num_threads, ...))
      dpo.set_num_threads(n)
      if not r[1] then error(r[2], 0) end
      return unpack(r, 2, r.n)
   end,
   args = { S.int(1) },
})

case("dpo.core.sgemm_direct", {
   args = { S.int(2), S.int(2), S.int(2), S.opt(S.int(1)) },
   check = function(s) assert.is_true(s >= 0) end,
   extra = function(t)
      -- each size is allowed, but not all three at 65536 (48 GiB of floats)
      t.fails("65536^3", core.sgemm_direct, 65536, 65536, 65536, 1)
   end,
})

-- the world of a data-parallel job: here a world of one (tests/spec/dist_spec.lua
-- runs under mpirun too)
case({ "dpo.dist.rank", "dpo.dist.size", "dpo.dist.is_main", "dpo.dist.local_size", "dpo.dist.barrier",
       "dpo.dist.stats", "dpo.dist.finalize" }, {
   any = "no arguments; extra ones are ignored",
   call = function(...)
      dpo.dist.barrier(...)
      dpo.dist.finalize(...) -- in a world of one: nothing to leave
      return dpo.dist.rank(...), dpo.dist.size(...), dpo.dist.is_main(...), dpo.dist.local_size(...),
         dpo.dist.stats(...)
   end,
   check = function(rank, size, main, lsize, stats)
      assert.are.same({ 0, 1, true, 1 }, { rank, size, main, lsize })
      assert.are.equal("number", type(stats.seconds))
   end,
})
case("dpo.dist.allreduce", {
   args = { S.obj(ft, { dead = DEAD_TENSORS, other = { A_TOKENIZER }, table_ok = true }),
            S.opt(S.str("mean")) },
   extra = function(t)
      t.fails("an int32 tensor", dpo.dist.allreduce, dpo.ones(2, "int32"))
      t.fails("a strided tensor", dpo.dist.allreduce, dpo.ones(2, 3):t())
      t.fails("an unknown op", dpo.dist.allreduce, dpo.ones(2), "min")
      t.fails("a list holding a string", dpo.dist.allreduce, { dpo.ones(2), "x" })
      local x = dpo.ones(4)
      t.fails("a list of overlapping tensors", dpo.dist.allreduce, { x, x:narrow(1, 2, 2) })
      t.works("an empty list", dpo.dist.allreduce, {})
   end,
})
case("dpo.dist.broadcast", {
   args = { TENSOR(), S.int(0) },
   extra = function(t)
      t.fails("a strided tensor", dpo.dist.broadcast, dpo.ones(2, 3):t(), 0)
      t.works("an int32 tensor", dpo.dist.broadcast, dpo.ones(2, "int32"), 0)
   end,
})
case("dpo.dist.allgather", {
   args = { S.any("x") },
   extra = function(t)
      t.fails("a table", dpo.dist.allgather, {})
      t.fails("a function", dpo.dist.allgather, print)
      t.fails("a tensor", dpo.dist.allgather, dpo.ones(1))
   end,
})
case("dpo.dist.sum", { args = { S.num(1.5) } })
case("dpo.dist.pending_signal", {
   any = "no arguments; extra ones are ignored",
   check = function(sig) assert.is_nil(sig) end,
})
case("dpo.dist.any", { args = { S.any(true) } })
case("dpo.dist.grads", {
   args = { S.tab(function() return model():parameters() end) },
   extra = function(t)
      t.fails("a list holding a string", dpo.dist.grads, { "x" })
      t.fails("a parameter without a gradient", dpo.dist.grads, { dpo.ones(2) })
   end,
})

-- signal traps: each trap is released again
case({ "dpo.trap_signals", "dpo.release_signals", "dpo.pending_signal" }, {
   any = "no arguments (pending_signal's one is a flag); extra ones are ignored",
   call = function(...)
      local depth = dpo.trap_signals(...)
      local sig = dpo.pending_signal(...)
      local left = dpo.release_signals(...)
      return depth, sig, left
   end,
   check = function(depth, sig, left)
      assert.are.equal(1, depth)
      assert.is_nil(sig)
      assert.are.equal(0, left)
   end,
   extra = function(t)
      -- releasing more than was trapped stays at 0
      assert.are.equal(0, t.works("an unmatched release", dpo.release_signals))
   end,
})

-- ---- safetensors and files ---------------------------------------------------------------------

case("dpo.save", {
   args = { S.path(function() return fresh_path(".safetensors") end),
            S.tab(function() return { w = dpo.ones(2) } end), S.opt(S.tab({ format = "pt" })),
            S.opt(S.tab({ dtype = "bfloat16" })) },
   check = function(r) assert.is_true(r) end,
   extra = function(t)
      local p = fresh_path(".safetensors")
      t.fails("an unknown dtype", dpo.save, p, { w = dpo.ones(1) }, nil, { dtype = "float64" })
      t.fails("a dtype that is a number", dpo.save, p, { w = dpo.ones(1) }, nil, { dtype = 2 })
      t.fails("an unknown option", dpo.save, p, { w = dpo.ones(1) }, nil, { dtyp = "float16" })
      t.fails("an empty name", dpo.save, p, { [""] = dpo.ones(1) })
      t.fails("a number name", dpo.save, p, { [1] = dpo.ones(1) })
      t.fails("a name with a zero byte", dpo.save, p, { ["a\0b"] = dpo.ones(1) })
      t.fails("a value that is not a tensor", dpo.save, p, { w = 1 })
      t.fails("a freed tensor", dpo.save, p, { w = freed_tensor() })
      t.fails("the name __metadata__", dpo.save, p, { __metadata__ = dpo.ones(1) })
      t.fails("a table as metadata value", dpo.save, p, { w = dpo.ones(1) }, { k = {} })
      t.fails("a number as metadata key", dpo.save, p, { w = dpo.ones(1) }, { [1] = "v" })
      t.works("NaN as metadata value", dpo.save, p, { w = dpo.ones(1) }, { k = 0 / 0 })
      -- an unwritable place is the environment's fault: nil and a message
      local ok, err = t.works("a missing directory", dpo.save, F.missing, { w = dpo.ones(1) })
      assert.is_nil(ok)
      assert.are.equal("string", type(err))
   end,
})

case("dpo.load", {
   args = { S.path(F.st) },
   check = function(ts, meta)
      h.near(ts.w, { { 1, 1 }, { 1, 1 } })
      assert.are.equal("x", meta.note)
   end,
   extra = function(t)
      for _, p in ipairs { F.missing, F.garbage, DIR } do
         local ok, err = t.works("the file " .. p, dpo.load, p)
         assert.is_nil(ok)
         assert.are.equal("string", type(err))
      end
   end,
})

local function st_reader() return assert(dpo.open_safetensors(F.st)) end
local function closed_reader()
   local r = st_reader()
   r:close()
   return r
end
local SELF_READER = function()
   return S.obj(st_reader, { dead = { { "a closed reader", closed_reader } }, other = { A_TENSOR } })
end

case("dpo.open_safetensors", {
   args = { S.path(F.st) },
   check = function(r) assert.are.equal("userdata", type(r)) end,
   extra = function(t)
      for _, p in ipairs { F.missing, F.garbage, DIR } do
         local ok, err = t.works("the file " .. p, dpo.open_safetensors, p)
         assert.is_nil(ok)
         assert.are.equal("string", type(err))
      end
   end,
})

case("dpo.SafetensorsReader.entries", {
   args = { SELF_READER() },
   check = function(list)
      assert.are.same({ { name = "w", dtype = "F32", shape = { 2, 2 } } }, list)
   end,
})

case("dpo.SafetensorsReader.read", {
   args = { SELF_READER(), S.str("w"), S.obj(function() return dpo.zeros(2, 2) end) },
   check = function(r) assert.is_true(r) end,
   extra = function(t)
      t.fails("a name the file lacks", st_reader().read, st_reader(), "v", dpo.zeros(2, 2))
      t.fails("a tensor of another shape", st_reader().read, st_reader(), "w", dpo.zeros(4))
      t.fails("an int32 tensor", st_reader().read, st_reader(), "w", dpo.zeros(2, 2):int())
      t.fails("a strided tensor", st_reader().read, st_reader(), "w", dpo.zeros(2, 2):t())
   end,
})

case("dpo.SafetensorsReader.close", {
   args = { S.obj(st_reader, { other = { A_TENSOR } }) },
   name = { "close", "__close", "__gc" },
   extra = function(t)
      local r = closed_reader()
      t.works("closing twice", r.close, r)
   end,
})

case("dpo.write_file", {
   args = { S.path(function() return fresh_path(".txt") end), S.str("text") },
   check = function(r) assert.is_true(r) end,
   extra = function(t)
      local ok, err = t.works("a missing directory", dpo.write_file, F.missing, "x")
      assert.is_nil(ok)
      assert.are.equal("string", type(err))
   end,
})

case("dpo.sync_dir", {
   args = { S.path(DIR) },
   check = function(r) assert.is_true(r) end,
   extra = function(t)
      local ok, err = t.works("a missing directory", dpo.sync_dir, F.missing)
      assert.is_nil(ok)
      assert.are.equal("string", type(err))
   end,
})

local function internal_gc(mtname)
   return {
      extra = function(t)
         local gc = debug.getregistry()[mtname].__gc
         t.fails("no argument", gc)
         t.fails("a number", gc, 1)
         t.fails("a tensor", gc, dpo.ones(1))
      end,
      name = { "__gc", "__close" },
   }
end
case("dpo.SafetensorsFile.__gc", internal_gc("dpo.SafetensorsFile"))
case("dpo.TokenizerIds.__gc", internal_gc("dpo.TokenizerIds"))

-- ---- the model -----------------------------------------------------------------------------------

local function gpt_config(extra)
   local f = { vocab_size = S.int(257), n_ctx = S.int(16), n_layer = S.int(1), n_head = S.int(1),
               n_embd = S.int(8), dropout = S.opt(S.fin(0, { bad = OUT_OF_RANGE })),
               seed = S.opt(S.int(3, { ok = ANY_INT })),
               layer_norm_epsilon = S.opt(S.fin(1e-5, { bad = { "-1", "-1e300", "math.mininteger",
                                                                "-2^53", "1e300" } })) }
   for k, v in pairs(extra or {}) do f[k] = v end
   return S.opts(f, { strict = true })
end

case({ "dpo.gpt.new", "dpo.gpt_new" }, {
   args = { gpt_config() },
   name = { "gpt.new", "gpt_new" },
   check = function(m) assert.are.equal(257, m:config().vocab_size) end,
   extra = function(t)
      t.fails("n_head not dividing n_embd", dpo.gpt.new, { vocab_size = 4, n_ctx = 4, n_layer = 1,
         n_head = 3, n_embd = 8 })
      t.fails("a model too large", dpo.gpt.new, { vocab_size = 10000000, n_ctx = 4, n_layer = 1,
         n_head = 1, n_embd = 65536 })
      t.fails("a number key", dpo.gpt.new, { vocab_size = 4, n_ctx = 4, n_layer = 1, n_head = 1,
         n_embd = 8, [1] = 2 })
   end,
})

case("dpo.gpt.load", {
   args = { S.path(F.model) },
   extra = function(t)
      -- a bad checkpoint is an error naming it (not nil, err)
      t.fails("a missing directory", dpo.gpt.load, F.missing)
      t.fails("a directory without a model", dpo.gpt.load, DIR)
      local d = fresh_path()
      assert(require("lfs").mkdir(d))
      h.write(d .. "/config.json", "{not json")
      t.fails("a config that is not JSON", dpo.gpt.load, d)
      h.write(d .. "/config.json",
         '{"model_type":"gpt2","vocab_size":1e300,"n_positions":4,"n_layer":1,"n_head":1,"n_embd":8}')
      t.fails("a config with a huge vocab_size", dpo.gpt.load, d)
      h.write(d .. "/config.json",
         '{"model_type":"gpt2","vocab_size":-3,"n_positions":4,"n_layer":1,"n_head":1,"n_embd":8}')
      t.fails("a config with a negative vocab_size", dpo.gpt.load, d)
      h.write(d .. "/config.json",
         '{"model_type":"gpt2","vocab_size":257,"n_positions":16,"n_layer":1,"n_head":1,"n_embd":8}')
      h.write(d .. "/model.safetensors", "garbage")
      t.fails("garbage weights", dpo.gpt.load, d)
   end,
})

local DEAD_MODEL = { dead = { { "a closed model", closed_model } }, other = { A_TENSOR } }
local function SELF_MODEL() return S.obj(model, DEAD_MODEL) end

for _, name in ipairs { "config", "eval", "freeze", "is_frozen", "is_training", "named_parameters",
                        "num_params", "parameters", "zero_grad", "dropout_state" } do
   case("dpo.GPT." .. name, { args = { SELF_MODEL() } })
end
case("dpo.GPT.clone", { args = { SELF_MODEL(), S.opt(S.any(true)) } })
case("dpo.GPT.train", { args = { SELF_MODEL(), S.opt(S.any(true)) } })
case("dpo.GPT.seed_dropout", { args = { SELF_MODEL(), S.int(5, { ok = ANY_INT }) } })
case("dpo.GPT.set_dropout_state", {
   args = { SELF_MODEL(), S.str(model():dropout_state()) },
   extra = function(t)
      local s = model():dropout_state()
      t.fails("a state one byte short", dpo.GPT.set_dropout_state, model(), s:sub(2))
      t.fails("a state of zeros", dpo.GPT.set_dropout_state, model(), string.rep("\0", #s))
   end,
})
case("dpo.GPT.__tostring", {
   args = { S.obj(model, { other = { A_TENSOR } }) },
   name = false,
   check = function(s) assert.are.equal("string", type(s)) end,
   extra = function(t)
      -- a closed model still prints, as a closed file does
      assert.are.equal("string", type(t.works("a closed model", tostring, closed_model())))
   end,
})
case("dpo.GPT.__gc", {
   args = { S.obj(model, { other = { A_TENSOR } }) },
   name = false,
   extra = function(t)
      local m = model()
      local p = m:parameters()[1]
      do local _ <close> = m end
      t.works("closing twice", debug.getregistry()["dpo.GPT"].__close, m)
      t.fails("a method after close", dpo.GPT.config, m)
      -- parameter tensors keep their storage
      t.works("a parameter of a closed model", function() return p:sum():item() end)
   end,
})

local function mask32() return dpo.tensor({ { 0, 1, 1, 1 }, { 0, 0, 1, 1 } }, "int32") end
case("dpo.GPT.logps", {
   args = { SELF_MODEL(), TENSOR(ids32), TENSOR(mask32) },
   check = function(lp, n)
      shape_is(lp, { 2 })
      h.near(n, { 3, 2 })
   end,
   extra = function(t)
      local m = model()
      local function ids(rows, dt) return dpo.tensor(rows, dt or "int32") end
      t.fails("an id of 257", m.logps, m, ids { { 1, 257 } }, ids { { 0, 1 } })
      t.fails("an id of -1", m.logps, m, ids { { 1, -1 } }, ids { { 0, 1 } })
      t.fails("float ids", m.logps, m, ids({ { 1, 2 } }, "float32"), ids { { 0, 1 } })
      t.fails("1-D ids", m.logps, m, ids { 1, 2 }, ids { 0, 1 })
      t.fails("a mask of another shape", m.logps, m, ids { { 1, 2 } }, ids { { 0, 1, 1 } })
      t.works("a float mask (nonzero is scored)", m.logps, m, ids { { 1, 2 } }, ids({ { 0, 1 } }, "float32"))
      -- 17 tokens score 16 positions, as many as n_ctx; 18 are too many
      local long = {}
      for i = 1, 17 do long[i] = 1 end
      t.works("17 tokens (n_ctx 16)", m.logps, m, ids { long }, ids { long })
      long[18] = 1
      t.fails("18 tokens (n_ctx 16)", m.logps, m, ids { long }, ids { long })
      t.survives("a mask of 2s", m.logps, m, ids { { 1, 2 } }, ids { { 2, 2 } })
      t.survives("a mask of -1s", m.logps, m, ids { { 1, 2 } }, ids { { -1, -1 } })
      t.survives("zero rows", m.logps, m, dpo.zeros(0, 4, "int32"), dpo.zeros(0, 4, "int32"))
      t.survives("zero columns", m.logps, m, dpo.zeros(2, 0, "int32"), dpo.zeros(2, 0, "int32"))
      t.survives("non-contiguous ids", m.logps, m, ids32():t(), mask32():t())
   end,
})

-- a list that lies about its length
local function lying(n, ...)
   return setmetatable({ ... }, { __len = function() return n end })
end

local function IDS(make)
   return S.obj(make or function() return dpo.tensor({ 1, 2, 3 }, "int32") end,
                { table_ok = false, dead = DEAD_TENSORS, other = { A_TOKENIZER } })
end
local function id_list_probes(t, fn, m, ...)
   t.fails("an empty list", fn, m, {}, ...)
   t.fails("an id of 257", fn, m, { 1, 257 }, ...)
   t.fails("an id of -1", fn, m, { -1 }, ...)
   t.fails("an id of 1.5", fn, m, { 1.5 }, ...)
   t.fails("an id of 2^31", fn, m, { 2 ^ 31 }, ...)
   t.fails("an id of math.maxinteger", fn, m, { math.maxinteger }, ...)
   t.fails("a string in the list", fn, m, { 1, "x" }, ...)
   t.fails("a list whose __len says -1", fn, m, lying(-1, 1), ...)
   t.fails("a list whose __len says math.maxinteger", fn, m, lying(math.maxinteger, 1), ...)
   t.fails("a list whose __len says 2^31", fn, m, lying(2 ^ 31, 1), ...)
   t.fails("a float tensor", fn, m, dpo.ones(3), ...)
   t.fails("a 2-D tensor of 2 rows", fn, m, ids32(), ...)
   local long = {}
   for i = 1, 40 do long[i] = 1 end
   t.fails("40 ids (n_ctx 16)", fn, m, long, ...)
end

case("dpo.GPT.next_logits", {
   args = { SELF_MODEL(), IDS() },
   check = function(r) shape_is(r, { 257 }) end,
   extra = function(t)
      local m = model()
      id_list_probes(t, m.next_logits, m)
      t.works("a [1, T] tensor", m.next_logits, m, dpo.tensor({ { 1, 2 } }, "int32"))
   end,
})

case("dpo.GPT.generate", {
   args = { SELF_MODEL(), IDS(),
            S.opt(S.opts({
               max_new_tokens = S.opt(S.int(2, { bad = { { "2^31 - 1", 2147483647 } } })),
               temperature = S.opt(S.fin(1, { bad = NEGATIVE })),
               top_k = S.opt(S.int(5)),
               top_p = S.opt(S.fin(0.9, { bad = OUT_OF_RANGE })),
               seed = S.opt(S.int(1, { ok = ANY_INT })),
               stop_ids = S.opt(S.int(7, { ok = { "-1", "math.maxinteger", "math.mininteger" },
                                           skip = { "{}" } })), -- (a list of ids is one too)
               use_cache = S.opt(S.any(true)),
            }, { strict = true })) },
   check = function(r) assert.are.equal("int32", r:dtype()) end,
   extra = function(t)
      local m = model()
      id_list_probes(t, m.generate, m, { max_new_tokens = 1 })
      t.fails("14 + 3 tokens (n_ctx 16)", m.generate, m, { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14 },
              { max_new_tokens = 3 })
      t.fails("stop_ids with a string", m.generate, m, { 1 }, { stop_ids = { 1, "x" } })
      t.works("max_new_tokens 0", m.generate, m, { 1 }, { max_new_tokens = 0 })
      t.works("top_k above the vocabulary", m.generate, m, { 1 }, { max_new_tokens = 1,
         top_k = 100000, temperature = 1 })
      t.works("without the cache", m.generate, m, { 1 }, { max_new_tokens = 2, use_cache = false })
   end,
})

case("dpo.GPT.save", {
   args = { S.obj(model, DEAD_MODEL), S.path(function() return fresh_path() end),
            S.opts({ dtype = S.opt(S.str("bfloat16")), max_shard_size = S.opt(S.any("1KB")) },
                   { optional = true, strict = true }) },
   self = true,
   check = function(r) assert.is_true(r) end,
   extra = function(t)
      t.fails("an unknown dtype", dpo.GPT.save, model(), fresh_path(), { dtype = "int8" })
      t.fails("a bad max_shard_size", dpo.GPT.save, model(), fresh_path(), { max_shard_size = "1 gb" })
      t.fails("a path that is a file", dpo.GPT.save, model(), F.garbage)
      t.fails("a directory that cannot be made", dpo.GPT.save, model(), F.missing)
   end,
})

-- ---- the Llama-family model (dpo.model, dpo.Llama) ---------------------------------------------

local LTINY = { model_type = "llama", vocab_size = 257, hidden_size = 8, intermediate_size = 8,
                num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 1,
                max_position_embeddings = 16 }
local function lmodel() return dpo.model.new(LTINY) end
local function closed_lmodel()
   local m = lmodel()
   do local _ <close> = m end
   return m
end
F.lmodel = DIR .. "/lmodel"
lmodel():save(F.lmodel)
local DEAD_LMODEL = { dead = { { "a closed model", closed_lmodel } }, other = { A_TENSOR } }
local function SELF_LMODEL() return S.obj(lmodel, DEAD_LMODEL) end

case({ "dpo.llama_new", "dpo.core.llama_new" }, {
   args = { S.opts({ vocab_size = S.int(257), hidden_size = S.int(8), intermediate_size = S.int(8),
                     num_hidden_layers = S.int(1), num_attention_heads = S.int(2),
                     num_key_value_heads = S.opt(S.int(1)), head_dim = S.opt(S.int(4)),
                     max_position_embeddings = S.opt(S.int(16)), sliding_window = S.opt(S.int(0, { ok = { "0" } })),
                     rms_norm_eps = S.opt(S.fin(1e-6, { bad = { "-1", "1e300" } })),
                     rope_theta = S.opt(S.fin(10000, { bad = { "-1" } })),
                     rope_type = S.opt(S.str("linear")), rope_factor = S.opt(S.fin(2, { bad = { "-1" } })),
                     tie_word_embeddings = S.opt(S.bool(true)), qkv_bias = S.opt(S.bool(true)),
                     o_bias = S.opt(S.bool(true)), mlp_bias = S.opt(S.bool(true)), qk_norm = S.opt(S.bool(true)),
                     initializer_range = S.opt(S.fin(0.02, { bad = { "-1", "1e300" } })),
                     seed = S.opt(S.int(3, { ok = ANY_INT })) }, { strict = true }) },
   name = { "llama_new", "dpo.model.new" },
   check = function(m) assert.are.equal(257, m:config().vocab_size) end,
   extra = function(t)
      t.fails("kv heads not dividing heads", core.llama_new, { vocab_size = 4, hidden_size = 8,
         intermediate_size = 8, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 3 })
      t.fails("an odd head_dim", core.llama_new, { vocab_size = 4, hidden_size = 8,
         intermediate_size = 8, num_hidden_layers = 1, num_attention_heads = 2, head_dim = 3 })
      t.fails("an unknown rope_type", core.llama_new, { vocab_size = 4, hidden_size = 8,
         intermediate_size = 8, num_hidden_layers = 1, num_attention_heads = 2, rope_type = "yarn" })
      t.fails("a model too large", core.llama_new, { vocab_size = 10000000, hidden_size = 65536,
         intermediate_size = 8, num_hidden_layers = 1, num_attention_heads = 2 })
   end,
})

case("dpo.model.new", {
   -- fields are Hugging Face's, each with a default (a probe leaving hidden_size out would
   -- build a 4096-wide model): a whole config here, bad fields in extra and llama_spec
   args = { S.tab(function()
      local c = {}
      for k, v in pairs(LTINY) do c[k] = v end
      return c
   end) },
   check = function(m) assert.are.equal(257, m:config().vocab_size) end,
   extra = function(t)
      t.fails("an unknown model_type", dpo.model.new, { model_type = "gemma" })
      t.fails("hidden_act gelu", dpo.model.new, { model_type = "llama", hidden_act = "gelu" })
      t.fails("rope_scaling dynamic", dpo.model.new, { model_type = "llama", vocab_size = 4, hidden_size = 8,
         intermediate_size = 8, num_hidden_layers = 1, num_attention_heads = 2,
         rope_scaling = { rope_type = "dynamic", factor = 2 } })
      for _, k in ipairs { "vocab_size", "hidden_size", "num_hidden_layers" } do
         for _, v in ipairs { -1, 0.5, 1e300, 0 / 0, "8" } do
            local c = {}
            for key, x in pairs(LTINY) do c[key] = x end
            c[k] = v
            t.fails(("%s = %s"):format(k, tostring(v)), dpo.model.new, c)
         end
      end
      t.works("a gpt2 config", dpo.model.new, { model_type = "gpt2", vocab_size = 8, n_ctx = 4, n_layer = 1,
         n_head = 1, n_embd = 4 })
   end,
})

case("dpo.model.load", {
   args = { S.path(F.lmodel), S.opt(S.tab({})) },
   extra = function(t)
      t.fails("a missing directory", dpo.model.load, F.missing)
      t.fails("a directory without a model", dpo.model.load, DIR)
      t.fails("an unknown option", dpo.model.load, F.lmodel, { dtype = "x" })
      t.works("a gpt2 directory", dpo.model.load, F.model)
   end,
})

case("dpo.model.hf_config", {
   args = { SELF_LMODEL() },
   check = function(c) assert.are.equal("llama", c.model_type) end,
})

case("dpo.model.is_model", {
   any = "a predicate",
   check = function(r) assert.are.equal("boolean", type(r)) end,
   extra = function(t)
      assert.is_true(t.works("a Llama", dpo.model.is_model, lmodel()))
      assert.is_true(t.works("a GPT", dpo.model.is_model, model()))
      assert.is_false(t.works("a closed model", dpo.model.is_model, closed_lmodel()))
      assert.is_false(t.works("a tensor", dpo.model.is_model, dpo.ones(1)))
   end,
})

for _, name in ipairs { "config", "eval", "freeze", "is_frozen", "is_training", "named_parameters",
                        "num_params", "parameters", "zero_grad", "dropout_state", "lora",
                        "base_hash" } do
   case("dpo.Llama." .. name, { args = { SELF_LMODEL() } })
end
case("dpo.Llama.clone", { args = { SELF_LMODEL(), S.opt(S.any(true)) } })
case("dpo.Llama.train", { args = { SELF_LMODEL(), S.opt(S.any(true)) } })
case("dpo.Llama.seed_dropout", { args = { SELF_LMODEL(), S.int(5, { ok = ANY_INT }) } })
case("dpo.Llama.set_dropout_state", {
   args = { SELF_LMODEL(), S.str(lmodel():dropout_state()) },
   extra = function(t)
      local s = lmodel():dropout_state()
      t.fails("a state one byte short", dpo.Llama.set_dropout_state, lmodel(), s:sub(2))
      t.fails("a state of zeros", dpo.Llama.set_dropout_state, lmodel(), string.rep("\0", #s))
   end,
})
case("dpo.Llama.__tostring", {
   args = { S.obj(lmodel, { other = { A_TENSOR } }) },
   name = false,
   check = function(s) assert.are.equal("string", type(s)) end,
   extra = function(t)
      assert.are.equal("string", type(t.works("a closed model", tostring, closed_lmodel())))
   end,
})
case("dpo.Llama.__gc", {
   args = { S.obj(lmodel, { other = { A_TENSOR } }) },
   name = false,
   extra = function(t)
      local m = lmodel()
      local p = m:parameters()[1]
      do local _ <close> = m end
      t.works("closing twice", debug.getregistry()["dpo.Llama"].__close, m)
      t.fails("a method after close", dpo.Llama.config, m)
      t.works("a parameter of a closed model", function() return p:sum():item() end)
   end,
})
case("dpo.Llama.logps", {
   args = { SELF_LMODEL(), TENSOR(ids32), TENSOR(mask32) },
   check = function(lp, n)
      shape_is(lp, { 2 })
      h.near(n, { 3, 2 })
   end,
   extra = function(t)
      local m = lmodel()
      local function ids(rows, dt) return dpo.tensor(rows, dt or "int32") end
      t.fails("an id of 257", m.logps, m, ids { { 1, 257 } }, ids { { 0, 1 } })
      t.fails("float ids", m.logps, m, ids({ { 1, 2 } }, "float32"), ids { { 0, 1 } })
      t.fails("a mask of another shape", m.logps, m, ids { { 1, 2 } }, ids { { 0, 1, 1 } })
      local long = {}
      for i = 1, 17 do long[i] = 1 end
      t.works("17 tokens (16 positions)", m.logps, m, ids { long }, ids { long })
      long[18] = 1
      t.fails("18 tokens (16 positions)", m.logps, m, ids { long }, ids { long })
      t.survives("zero rows", m.logps, m, dpo.zeros(0, 4, "int32"), dpo.zeros(0, 4, "int32"))
      t.survives("zero columns", m.logps, m, dpo.zeros(2, 0, "int32"), dpo.zeros(2, 0, "int32"))
      t.survives("non-contiguous ids", m.logps, m, ids32():t(), mask32():t())
   end,
})
case("dpo.Llama.next_logits", {
   args = { SELF_LMODEL(), IDS() },
   check = function(r) shape_is(r, { 257 }) end,
   extra = function(t)
      local m = lmodel()
      id_list_probes(t, m.next_logits, m)
   end,
})
case("dpo.Llama.generate", {
   args = { SELF_LMODEL(), IDS(),
            S.opt(S.opts({
               max_new_tokens = S.opt(S.int(2, { bad = { { "2^31 - 1", 2147483647 } } })),
               temperature = S.opt(S.fin(1, { bad = NEGATIVE })),
               top_k = S.opt(S.int(5)),
               top_p = S.opt(S.fin(0.9, { bad = OUT_OF_RANGE })),
               seed = S.opt(S.int(1, { ok = ANY_INT })),
               stop_ids = S.opt(S.int(7, { ok = { "-1", "math.maxinteger", "math.mininteger" },
                                           skip = { "{}" } })),
               use_cache = S.opt(S.any(true)),
            }, { strict = true })) },
   check = function(r) assert.are.equal("int32", r:dtype()) end,
   extra = function(t)
      local m = lmodel()
      id_list_probes(t, m.generate, m, { max_new_tokens = 1 })
      t.works("max_new_tokens 0", m.generate, m, { 1 }, { max_new_tokens = 0 })
      t.works("without the cache", m.generate, m, { 1 }, { max_new_tokens = 2, use_cache = false })
   end,
})
case("dpo.Llama.save", {
   args = { S.obj(lmodel, DEAD_LMODEL), S.path(function() return fresh_path() end), S.opt(S.tab({})) },
   self = true,
   check = function(r) assert.is_true(r) end,
   extra = function(t)
      t.fails("a path that is a file", dpo.Llama.save, lmodel(), F.garbage)
      t.fails("a directory that cannot be made", dpo.Llama.save, lmodel(), F.missing)
      t.fails("an unknown option", dpo.Llama.save, lmodel(), fresh_path(), { dtyp = "float32" })
   end,
})

case("dpo.gpt.source", {
   args = { S.obj(function() return dpo.gpt.load(F.model) end, DEAD_MODEL) },
   check = function(dir) assert.are.equal(F.model, dir) end,
})

-- ---- LoRA adapters -------------------------------------------------------------------------------

local function lora_model() return dpo.lora.apply(model(), { r = 2 }) end
local LORA_MODEL = S.obj(lora_model, DEAD_MODEL)
F.lora = DIR .. "/lora"
dpo.lora.save(lora_model(), F.lora)
local function lora_opts(c_side)
   return S.opts({ r = S.opt(S.int(2)), alpha = S.opt(S.fin(4)),
                   dropout = S.opt(S.fin(0, { bad = OUT_OF_RANGE })),
                   use_rslora = S.opt(S.bool(true)), seed = S.opt(S.int(1, { ok = ANY_INT })),
                   target_modules = S.opt(S.any({ "c_attn" })) },
                 { strict = true, optional = not c_side })
end
case("dpo.lora.apply", {
   args = { S.obj(model, DEAD_MODEL), lora_opts(false) },
   check = function(m) assert.are.equal(2, m:lora().r) end,
   extra = function(t)
      t.fails("adapters twice", dpo.lora.apply, lora_model(), {})
      t.works("a Llama", dpo.lora.apply, lmodel(), { target_modules = "all-linear" })
      t.fails("a target a Llama lacks", dpo.lora.apply, lmodel(), { target_modules = { "c_attn" } })
      t.fails("a target GPT-2 lacks", dpo.lora.apply, model(), { target_modules = { "q_proj" } })
      t.fails("a target that is a number", dpo.lora.apply, model(), { target_modules = { 1 } })
      t.fails("a huge rank", dpo.lora.apply, model(), { r = 100000 })
   end,
})
case("dpo.GPT.lora_apply", {
   args = { SELF_MODEL(), lora_opts(true) },
   extra = function(t)
      t.fails("target_modules a number", dpo.GPT.lora_apply, model(), { target_modules = 3 })
      t.fails("r = 0", dpo.GPT.lora_apply, model(), { r = 0 })
   end,
})
case("dpo.GPT.lora", { args = { SELF_MODEL() } })
case("dpo.GPT.base_hash", { args = { SELF_MODEL() } })
case("dpo.GPT.lora_enable", {
   args = { LORA_MODEL, S.any(false) },
   check = function(was) assert.is_true(was) end,
   extra = function(t) t.fails("a model without adapters", dpo.GPT.lora_enable, model(), true) end,
})
case("dpo.GPT.lora_merge", {
   args = { LORA_MODEL },
   extra = function(t) t.fails("a model without adapters", dpo.GPT.lora_merge, model()) end,
})
local function llora_model() return dpo.lora.apply(lmodel(), { r = 2 }) end
local LLORA_MODEL = S.obj(llora_model, DEAD_LMODEL)
case("dpo.Llama.lora_apply", {
   args = { SELF_LMODEL(), S.opts({ r = S.opt(S.int(2)), alpha = S.opt(S.fin(4)),
                                     dropout = S.opt(S.fin(0, { bad = OUT_OF_RANGE })),
                                     use_rslora = S.opt(S.bool(true)),
                                     seed = S.opt(S.int(1, { ok = ANY_INT })),
                                     target_modules = S.opt(S.any({ "q_proj" })) },
                                   { strict = true }) },
   extra = function(t)
      t.fails("target_modules a number", dpo.Llama.lora_apply, lmodel(), { target_modules = 3 })
      t.fails("r = 0", dpo.Llama.lora_apply, lmodel(), { r = 0 })
      t.fails("adapters twice", dpo.Llama.lora_apply, llora_model(), {})
   end,
})
case("dpo.Llama.lora_enable", {
   args = { LLORA_MODEL, S.any(false) },
   check = function(was) assert.is_true(was) end,
   extra = function(t) t.fails("a model without adapters", dpo.Llama.lora_enable, lmodel(), true) end,
})
case("dpo.Llama.lora_merge", {
   args = { LLORA_MODEL },
   extra = function(t) t.fails("a model without adapters", dpo.Llama.lora_merge, lmodel()) end,
})
case("dpo.model.source", {
   args = { S.obj(function() return dpo.model.load(F.lmodel) end, DEAD_LMODEL) },
   check = function(dir) assert.are.equal(F.lmodel, dir) end,
   extra = function(t)
      t.works("a GPT", dpo.model.source, dpo.gpt.load(F.model))
      t.works("a new model", dpo.model.source, lmodel())
   end,
})
case("dpo.lora.config", {
   args = { LORA_MODEL },
   check = function(c) assert.are.same({ "c_attn" }, c.target_modules) end,
})
case("dpo.lora.disabled", {
   args = { LORA_MODEL, S.fn(function() return 7 end) },
   check = function(v) assert.are.equal(7, v) end,
   extra = function(t) t.fails("a model without adapters", dpo.lora.disabled, model(), noop) end,
})
case("dpo.lora.merge", {
   args = { LORA_MODEL },
   extra = function(t) t.fails("a model without adapters", dpo.lora.merge, model()) end,
})
case("dpo.lora.save", {
   args = { LORA_MODEL, S.path(function() return fresh_path() end),
            S.opts({ base_model_name_or_path = S.opt(S.str("gpt2")) }, { strict = true, optional = true }) },
   check = function(r) assert.is_true(r) end,
   extra = function(t)
      t.fails("a model without adapters", dpo.lora.save, model(), fresh_path())
      t.fails("a path that is a file", dpo.lora.save, lora_model(), F.garbage)
   end,
})
case("dpo.lora.load", {
   args = { S.obj(model, DEAD_MODEL), S.path(F.lora) },
   check = function(m) assert.are.equal(2, m:lora().r) end,
   extra = function(t)
      t.fails("a missing directory", dpo.lora.load, model(), F.missing)
      t.fails("a directory without adapters", dpo.lora.load, model(), DIR)
      t.fails("a model checkpoint", dpo.lora.load, model(), F.model)
   end,
})

-- ---- tokenizers ----------------------------------------------------------------------------------

case({ "dpo.tokenizer.load", "dpo.core.tokenizer.load" }, {
   args = { S.path(F.tokjson) },
   check = function(t) assert.are.equal(257, t:vocab_size()) end,
   extra = function(t)
      -- a bad file is an error naming it
      for _, p in ipairs { F.missing, F.garbage, F.st } do
         t.fails_with("the file " .. p, p, dpo.tokenizer.load, p)
      end
   end,
})

case({ "dpo.tokenizer.from_files", "dpo.core.tokenizer.from_files" }, {
   args = { S.path(F.vocab), S.path(F.merges) },
   extra = function(t)
      t.fails_with("a merges file that is not one", F.garbage, dpo.tokenizer.from_files, F.vocab, F.garbage)
      t.fails_with("a vocabulary that is not one", F.garbage, dpo.tokenizer.from_files, F.garbage, F.merges)
   end,
})

case({ "dpo.tokenizer.bytes", "dpo.core.tokenizer.bytes" }, {
   any = "no arguments; extra ones are ignored",
   call = function(...) return dpo.tokenizer.bytes(...) end,
   check = function(t) assert.are.equal(257, t:vocab_size()) end,
})

case({ "dpo.tokenizer.pretokenize", "dpo.core.tokenizer.pretokenize" }, {
   args = { S.str("Hello world's") },
   check = function(r) assert.are.same({ "Hello", " world", "'s" }, r) end,
   extra = function(t) t.works("invalid UTF-8", dpo.tokenizer.pretokenize, "\255\254 x\0") end,
})

case("dpo.tokenizer.train", {
   args = { S.obj(function() return { "aaa bbb aaa bbb ab ab" } end, { ok = { "'x'" } }),
            S.opt(S.opts({ vocab_size = S.opt(S.int(260)),
                           min_frequency = S.opt(S.int(1, { ok = { "math.maxinteger" } })),
                           special_tokens = S.opt(S.tab({ "<|endoftext|>" })) }, { strict = true })) },
   check = function(t) assert.are.equal(260, t:vocab_size()) end,
   extra = function(t)
      t.fails("a corpus with a number", dpo.tokenizer.train, { "a", 1 })
      t.fails("files that are a number", dpo.tokenizer.train, { files = 1 })
      t.fails_with("a missing file", F.missing, dpo.tokenizer.train, { files = { F.missing } })
      t.fails("a file path with a zero byte", dpo.tokenizer.train, { files = { NUL_PATH() } })
      t.fails("a special token that is a table", dpo.tokenizer.train, "aa", { special_tokens = { {} } })
      t.fails("5000 special tokens", dpo.tokenizer.train, "aa",
              { special_tokens = (function()
                 local l = {}
                 for i = 1, 5000 do l[i] = "<" .. i .. ">" end
                 return l
              end)(), vocab_size = 6000 })
   end,
})

case("dpo.core.tokenizer.train", {
   args = { S.tab({ "aaa bbb aaa" }), S.tab({}), S.int(258), S.int(1, { ok = { "math.maxinteger", "2^53" } }),
            S.tab({ "<|endoftext|>" }) },
   name = { "train", "vocab_size" },
   extra = function(t)
      t.fails("a vocab_size below 256", core.tokenizer.train, { "aa" }, {}, 10, 1, {})
      t.fails("a text that is a number", core.tokenizer.train, { 1 }, {}, 300, 1, {})
      t.fails("a path with a zero byte", core.tokenizer.train, {}, { NUL_PATH() }, 300, 1, {})
   end,
})

local TOKM = debug.getregistry()["dpo.Tokenizer"]
local TM = TOKM.__methods
local function SELF_TOK() return TOK() end

for _, name in ipairs { "vocab_size", "special_tokens" } do
   case("dpo.Tokenizer." .. name, { args = { SELF_TOK() } })
end
case("dpo.Tokenizer.free", { args = { S.obj(tok, { other = { A_TENSOR } }) } })

case("dpo.Tokenizer.encode", {
   args = { SELF_TOK(), S.str("hi"), S.opt(S.tab({ special = true })) },
   check = function(r) h.near(r, { 104, 105 }) end,
   extra = function(t)
      t.works("invalid UTF-8 and zero bytes", TM.encode, tok(), "\255\0\254")
      t.works("an empty text", TM.encode, tok(), "")
   end,
})

case("dpo.Tokenizer.encode_batch", {
   args = { SELF_TOK(), S.tab({ "a", "bc" }), S.opt(S.tab({ special = false })) },
   check = function(r) assert.are.equal(2, #r) end,
   extra = function(t)
      t.fails("a list with a number", TM.encode_batch, tok(), { "a", 1 })
      t.fails("a list with a table", TM.encode_batch, tok(), { {} })
      t.works("an empty list", TM.encode_batch, tok(), {})
      t.fails("a list with a hole", TM.encode_batch, tok(), { "a", nil, "c" })
      t.fails("a list whose __len says -1", TM.encode_batch, tok(), lying(-1, "a"))
      t.fails("a list whose __len says math.maxinteger", TM.encode_batch, tok(), lying(math.maxinteger, "a"))
   end,
})

case("dpo.Tokenizer.decode", {
   args = { SELF_TOK(), S.obj(function() return { 104, 105 } end, { table_ok = true, dead = DEAD_TENSORS,
                                                                     other = { A_TOKENIZER } }),
            S.opt(S.tab({ skip_special = true })) },
   check = function(s) assert.are.equal("hi", s) end,
   extra = function(t)
      local k = tok()
      for _, x in ipairs(EXTREMES) do t.fails("an id " .. x[1], TM.decode, k, { x[2] }) end
      t.fails("an id of 257", TM.decode, k, { 257 })
      t.fails("a string id", TM.decode, k, { "a" })
      t.fails("a float tensor with 1.5", TM.decode, k, dpo.tensor { 1.5 })
      t.fails("a float tensor with 1e30", TM.decode, k, dpo.tensor { 1e30 })
      t.fails("an int32 tensor with -1", TM.decode, k, dpo.tensor({ -1 }, "int32"))
      t.works("a 2-D int32 tensor", TM.decode, k, dpo.tensor({ { 104 }, { 105 } }, "int32"))
      t.works("a non-contiguous tensor", TM.decode, k, dpo.tensor({ { 104, 105 }, { 104, 105 } },
         "int32"):t())
      t.fails("a list whose __len says -1", TM.decode, k, lying(-1, 104))
      t.fails("a list whose __len says math.maxinteger", TM.decode, k, lying(math.maxinteger, 104))
      t.fails("a list whose __len says 3 of 1", TM.decode, k, lying(3, 104))
   end,
})

case("dpo.Tokenizer.id_to_token", {
   -- an id outside the vocabulary is nil, as token_to_id gives nil for an unknown token
   args = { SELF_TOK(), S.int(104, { ok = ANY_INT }) },
   check = function(s) assert.are.equal("h", s) end,
})
case("dpo.Tokenizer.token_to_id", {
   args = { SELF_TOK(), S.str("h") },
   check = function(id) assert.are.equal(104, id) end,
})
case("dpo.Tokenizer.save", {
   args = { SELF_TOK(), S.path(function() return fresh_path(".json") end) },
   extra = function(t) t.fails_with("a missing directory", F.missing, TM.save, tok(), F.missing) end,
})
local function chat_tok()
   return dpo.tokenizer.bytes():set_chat_template("{% for m in messages %}{{ m.role }}:{{ m.content }}{% endfor %}")
end
case("dpo.Tokenizer.chat_template", {
   args = { S.obj(chat_tok, { other = { A_TENSOR }, dead = { { "a freed tokenizer", freed_tok } } }) },
   check = function(s) assert.are.equal("string", type(s)) end,
})
case("dpo.Tokenizer.set_chat_template", {
   args = { S.obj(tok, { other = { A_TENSOR }, dead = { { "a freed tokenizer", freed_tok } } }),
            S.opt(S.str("{{ 1 }}")), S.opt(S.str("source")) },
   extra = function(t) t.fails("a template with a syntax error", TM.set_chat_template, tok(), "{{ (") end,
})
case("dpo.Tokenizer.apply_chat_template", {
   args = { S.obj(chat_tok, { other = { A_TENSOR }, dead = { { "a freed tokenizer", freed_tok } } }),
            S.tab({ { role = "user", content = "hi" } }),
            S.opt(S.tab({ add_generation_prompt = true })) },
   check = function(s) assert.are.equal("user:hi", s) end,
   extra = function(t)
      t.fails("no template", TM.apply_chat_template, tok(), { { role = "user", content = "hi" } })
      t.fails("a message without a role", TM.apply_chat_template, chat_tok(), { { content = "hi" } })
      t.works("tokenize", TM.apply_chat_template, chat_tok(), { { role = "user", content = "hi" } },
              { tokenize = true })
   end,
})
case("dpo.Tokenizer.__index", {
   name = false,
   extra = function(t)
      local k = tok()
      assert.are.equal(256, t.works("eos_id", function() return k.eos_id end))
      assert.is_nil(t.works("a missing method", function() return k.no_such end))
      assert.is_nil(t.works("a number key", function() return k[1] end))
      t.fails("eos_id of a freed tokenizer", function() return freed_tok().eos_id end)
      t.fails("encode of a freed tokenizer", function() return freed_tok():encode("a") end)
   end,
})
case("dpo.Tokenizer.__newindex", {
   name = false,
   extra = function(t)
      local k = tok()
      t.works("pad_id = 0", function() k.pad_id = 0 end)
      t.works("pad_id = nil", function() k.pad_id = nil end)
      for _, x in ipairs(EXTREMES) do t.fails("pad_id = " .. x[1], function() k.pad_id = x[2] end) end
      t.fails("pad_id = 257 (outside the vocabulary)", function() k.pad_id = 257 end)
      t.fails("pad_id = 'x'", function() k.pad_id = "x" end)
      t.fails("a field that is not a role", function() k.foo = 1 end)
      t.fails("a number field", function() k[1] = 1 end)
      t.fails("eos_id of a freed tokenizer", function() local f = freed_tok(); f.eos_id = 1 end)
   end,
})
case("dpo.Tokenizer.__tostring", {
   args = { S.obj(tok, { other = { A_TENSOR } }) },
   name = false,
   check = function(s) assert.are.equal("string", type(s)) end,
   extra = function(t) assert.are.equal("string", type(t.works("a freed one", tostring, freed_tok()))) end,
})
case("dpo.Tokenizer.__gc", {
   args = { S.obj(tok, { other = { A_TENSOR } }) },
   name = false,
   extra = function(t)
      local k = tok()
      k:free()
      t.works("freeing twice", TM.free, k)
   end,
})

-- ---- the data engine (dpo.core.data) -------------------------------------------------------------

local RM = debug.getregistry()["dpo.JsonlReader"]
local WM = debug.getregistry()["dpo.JsonlWriter"]
local PM = debug.getregistry()["dpo.TokenPairs"]

local function reader() return (assert(core.data.open(F.pairs))) end
local function closed_reader()
   local r = reader()
   r:close()
   return r
end
local function scoped_reader()
   local r = reader()
   do local _ <close> = r end
   return r
end
local function writer() return (assert(core.data.writer(fresh_path(".jsonl")))) end
local function aborted_writer()
   local w = writer()
   w:abort()
   return w
end
local function committed_writer()
   local w = writer()
   assert(w:commit())
   return w
end
local function scoped_writer()
   local w = writer()
   do local _ <close> = w end
   return w
end
local function store()
   local s = core.data.pairs(0)
   local function l(...) return { dpo.tensor({ ... }, "int32") } end
   s:add(l(1, 2), l(3), l(4, 5), { max_length = 8, max_prompt_length = 4, eos_id = 9 })
   return s
end
local function freed_store()
   local s = store()
   PM.__gc(s)
   return s
end

local SELF_READER = S.obj(reader, { dead = { { "a closed reader", closed_reader },
                                             { "a reader closed by <close>", scoped_reader } },
                                    other = { A_TENSOR } })
local SELF_WRITER = S.obj(writer, { dead = { { "an aborted writer", aborted_writer },
                                             { "a committed writer", committed_writer },
                                             { "a writer closed by <close>", scoped_writer } },
                                    other = { A_TENSOR } })
local SELF_STORE = S.obj(store, { dead = { { "a freed store", freed_store } }, other = { A_TENSOR } })

case("dpo.core.data.open", {
   args = { S.path(F.pairs) },
   name = "open",
   extra = function(t)
      for _, p in ipairs { F.missing, DIR } do
         local ok, err = t.works("the path " .. p, core.data.open, p)
         assert.is_nil(ok)
         assert.are.equal("string", type(err))
      end
   end,
})
case("dpo.JsonlReader.read", {
   args = { SELF_READER },
   check = function(line, n)
      assert.are.equal("string", type(line))
      assert.are.equal(1, n)
   end,
})
for _, name in ipairs { "gzip", "offset", "buffer_size" } do
   case("dpo.JsonlReader." .. name, { args = { SELF_READER } })
end
case({ "dpo.JsonlReader.close", "dpo.JsonlReader.__gc" }, {
   args = { S.obj(reader, { other = { A_TENSOR } }) },
   extra = function(t)
      -- closing is idempotent, as for io files' __gc; reading after it raises
      local r = closed_reader()
      t.works("closing twice", RM.__index.close, r)
      t.fails("read after close", RM.__index.read, r)
   end,
   name = false,
})
case("dpo.JsonlReader.__tostring", {
   args = { S.obj(reader, { other = { A_TENSOR } }) },
   name = false,
   extra = function(t) assert.are.equal("dpo.JsonlReader (closed)", t.works("closed", tostring,
      closed_reader())) end,
})

case("dpo.core.data.writer", {
   args = { S.path(function() return fresh_path(".jsonl") end), S.opt(S.any(true)) },
   name = "writer",
   extra = function(t)
      local ok, err = t.works("a missing directory", core.data.writer, F.missing)
      assert.is_nil(ok)
      assert.are.equal("string", type(err))
   end,
})
case("dpo.JsonlWriter.write", {
   args = { SELF_WRITER, S.str("{}\n") },
   min_args = 1, -- any number of strings
   extra = function(t)
      t.fails("a table among strings", WM.__index.write, writer(), "a", {}, "b")
      t.works("no strings", WM.__index.write, writer())
   end,
})
case("dpo.JsonlWriter.commit", {
   args = { SELF_WRITER },
   check = function(r) assert.is_true(r) end,
})
case({ "dpo.JsonlWriter.abort", "dpo.JsonlWriter.__gc" }, {
   args = { S.obj(writer, { other = { A_TENSOR } }) },
   name = false,
   extra = function(t)
      t.works("aborting twice", WM.__index.abort, aborted_writer())
      t.works("aborting a committed writer", WM.__index.abort, committed_writer())
   end,
})

case("dpo.core.data.pairs", {
   args = { S.int(0) },
   name = "pairs",
})

local function pair_lists(n)
   local p, c, r = {}, {}, {}
   for i = 1, n do
      p[i], c[i], r[i] = dpo.tensor({ 1, 2 }, "int32"), dpo.tensor({ 3 }, "int32"), dpo.tensor({ 4,
         5 }, "int32")
   end
   return p, c, r
end
case("dpo.TokenPairs.add", {
   args = { SELF_STORE, S.tab(function() return (pair_lists(1)) end),
            S.tab(function() return select(2, pair_lists(1)) end),
            S.tab(function() return select(3, pair_lists(1)) end),
            S.opts { max_length = S.int(8), max_prompt_length = S.int(4),
                     truncation = S.opt(S.str("keep_start")),
                     eos_id = S.opt(S.int(9)), bos_id = S.opt(S.int(1)) } },
   extra = function(t)
      local add = PM.__index.add
      local o = { max_length = 8, max_prompt_length = 4 }
      local p, c, r = pair_lists(2)
      t.fails("lists of different lengths", add, store(), p, { c[1] }, r, o)
      t.fails("a float tensor", add, store(), { dpo.ones(2) }, { c[1] }, { r[1] }, o)
      t.fails("a 2-D tensor", add, store(), { ids32() }, { c[1] }, { r[1] }, o)
      t.fails("a freed tensor", add, store(), { freed_tensor() }, { c[1] }, { r[1] }, o)
      t.fails("a number in a list", add, store(), { 1 }, { c[1] }, { r[1] }, o)
      t.fails("max_prompt_length >= max_length", add, store(), p, c, r, { max_length = 4,
         max_prompt_length = 4 })
      t.fails("a bad truncation", add, store(), p, c, r, { max_length = 8, max_prompt_length = 4,
         truncation = "x" })
      t.fails("a non-contiguous id tensor", add, store(), { dpo.tensor({ { 1, 2 }, { 3, 4 } },
         "int32"):t():select(1, 1) },
              { c[1] }, { r[1] }, o)
   end,
})
case("dpo.TokenPairs.collate", {
   args = { SELF_STORE, S.tab({ 1 }), S.opt(S.any(true)) },
   check = function(ids, mask) assert.are.equal("int32", ids:dtype()) end,
   extra = function(t)
      for _, x in ipairs(EXTREMES) do t.fails("a row " .. x[1], PM.__index.collate, store(), { x[2] }) end
      t.fails("row 2 of 1", PM.__index.collate, store(), { 2 })
      t.fails("an empty list", PM.__index.collate, store(), {})
      t.fails("a string row", PM.__index.collate, store(), { "x" })
   end,
})
case("dpo.TokenPairs.part", {
   args = { SELF_STORE, S.int(1), S.int(2) },
   check = function(r) h.near(r, { 3, 9 }) end,
   extra = function(t) t.fails("part 4", PM.__index.part, store(), 1, 4) end,
})
for _, name in ipairs { "tokens", "pad_id", "__len", "__tostring" } do
   case("dpo.TokenPairs." .. name, { args = { name == "__tostring" and S.obj(store,
      { other = { A_TENSOR } }) or SELF_STORE },
                                     name = name:sub(1, 2) ~= "__" and name })
end
case("dpo.TokenPairs.__gc", {
   args = { S.obj(store, { other = { A_TENSOR } }) },
   name = false,
   extra = function(t) t.works("twice", PM.__gc, freed_store()) end,
})

-- ---- dpo.data ---------------------------------------------------------------------------------

local quiet = function() end
local READ_OPTS = function(extra)
   local f = { on_error = S.opt(S.str("skip")), limit = S.opt(S.int(10, { ok = { "math.maxinteger" } })),
               warn = S.opt(S.fn(quiet)) }
   for k, v in pairs(extra or {}) do f[k] = v end
   return S.opt(S.opts(f))
end
local function missing_is_nil(t, fn)
   local ok, err = t.works("a missing file", fn, F.missing)
   assert.is_nil(ok)
   assert.are.equal("string", type(err))
end

case("dpo.data.jsonl", {
   args = { S.path(F.pairs), READ_OPTS() },
   extra = function(t)
      missing_is_nil(t, dpo.data.jsonl)
      -- the reader behind the loop: read to the end, then closed
      local _, r = dpo.data.jsonl(F.pairs, { warn = false })
      for _ in dpo.data.jsonl(F.pairs) do break end
      r:close()
      assert.is_nil(t.works("a record after close", r.record, r))
      t.works("closing twice", r.close, r)
   end,
})
case("dpo.data.hh", {
   args = { S.path(F.hh), READ_OPTS { chosen = S.opt(S.str("chosen")), rejected = S.opt(S.str("rejected")),
                                      check_prompt = S.opt(S.any(true)) } },
   extra = function(t) missing_is_nil(t, dpo.data.hh) end,
})
case("dpo.data.pairs", {
   args = { S.path(F.pairs), READ_OPTS { prompt = S.opt(S.str("prompt")), chosen = S.opt(S.str("chosen")),
                                         rejected = S.opt(S.str("rejected")) } },
   check = function(d) assert.are.equal(3, #d) end,
   extra = function(t) missing_is_nil(t, dpo.data.pairs) end,
})
case("dpo.data.dataset", {
   args = { S.tab(pair_list), S.opt(S.str("mine")) },
   extra = function(t)
      t.fails("a pair without a prompt", dpo.data.dataset, { { chosen = "a", rejected = "b" } })
      t.fails("a pair that is a string", dpo.data.dataset, { "x" })
   end,
})
case("dpo.data.is_dataset", {
   any = "a predicate",
   check = function(r) assert.are.equal("boolean", type(r)) end,
   extra = function(t) assert.is_true(t.works("a dataset", dpo.data.is_dataset, ds())) end,
})
case("dpo.data.write_jsonl", {
   args = { S.path(function() return fresh_path(".jsonl") end),
            S.obj(pair_list, { table_ok = true, ok = { "a function" } }), -- a list or an iterator
            S.opt(S.opts { gzip = S.opt(S.any(true)), keys = S.opt(S.tab({ "prompt" })) }) },
   check = function(r) assert.is_true(r) end,
   extra = function(t)
      local p = fresh_path(".jsonl")
      t.fails("a record with a function", dpo.data.write_jsonl, p, { { f = print } })
      t.fails_any("an iterator that raises (its own message)", dpo.data.write_jsonl, p,
         function() error("boom") end)
      t.fails("keys with a table", dpo.data.write_jsonl, p, { { a = 1 } }, { keys = { {} } })
      local ok, err = t.works("a missing directory", dpo.data.write_jsonl, F.missing, {})
      assert.is_nil(ok)
      assert.are.equal("string", type(err))
   end,
})

local DS = dpo.data.Dataset
local function SELF_DS(make) return S.obj(make or ds, { table_ok = true }) end

case("dpo.data.Dataset.__len", { args = { SELF_DS() }, self = true,
   check = function(n) assert.are.equal(3, n) end })
case("dpo.data.Dataset.__tostring", { args = { SELF_DS() }, self = true })
case({ "dpo.data.Dataset.is_tokenized", "dpo.data.Dataset.tokenizer", "dpo.data.Dataset.iter",
       "dpo.data.Dataset.stats" }, {
   args = { SELF_DS() },
   self = true,
   call = function(d)
      return DS.is_tokenized(d), DS.tokenizer(d), DS.iter(d), DS.stats(d)
   end,
})
case("dpo.data.Stats.__tostring", {
   args = { S.obj(function() return tds():stats() end, { table_ok = true }) },
   self = true,
   check = function(s) assert.are.equal("string", type(s)) end,
})
case("dpo.data.Dataset.get", {
   -- an index outside the list is nil, as for a Lua list
   args = { SELF_DS(), S.int(1, { ok = ANY_INT }) },
   self = true,
   check = function(p) assert.are.equal("Hi", p.prompt) end,
})
case("dpo.data.Dataset.filter", {
   args = { SELF_DS(), S.obj(function() return function() return true end end, { ok = { "a function" } }),
            S.opt(S.str("keep")) },
   self = true,
   extra = function(t)
      t.works("a dpo.filters filter", DS.filter, ds(), dpo.filters.distinct())
      t.fails_any("a predicate that raises", DS.filter, ds(), function() error("boom") end)
   end,
})
case("dpo.data.Dataset.map", {
   args = { SELF_DS(), S.fn(function(p) return p end) },
   self = true,
   extra = function(t)
      t.fails("a function returning a string", DS.map, ds(), function() return "x" end)
      t.fails("a function returning a pair without chosen", DS.map, ds(),
         function() return { prompt = "a", rejected = "b" } end)
   end,
})
case("dpo.data.Dataset.shuffle", { args = { SELF_DS(), S.opt(S.int(1, { ok = ANY_INT })) }, self = true })
case("dpo.data.Dataset.take", { args = { SELF_DS(), S.int(2, { ok = { "math.maxinteger" } }) }, self = true })
case("dpo.data.Dataset.split", {
   args = { SELF_DS(), S.fin(0.5, { bad = OUT_OF_RANGE }), S.opt(S.int(1, { ok = ANY_INT })) },
   self = true,
})
case("dpo.data.Dataset.tokenize", {
   args = { SELF_DS(), TOK(function() return SHARED_TOK end),
            S.opt(S.opts { max_length = S.opt(S.int(8)), max_prompt_length = S.opt(S.int(4)),
                           truncation = S.opt(S.str("keep_start")), add_eos = S.opt(S.any(true)) }) },
   self = true,
   check = function(d) assert.is_true(d:is_tokenized()) end,
   extra = function(t)
      local k = tok()
      k.eos_id = nil
      t.fails("a tokenizer without eos", DS.tokenize, ds(), k)
      t.fails("encode_batch returning nonsense", DS.tokenize, ds(),
              { encode_batch = function() return { 1, 2 } end, eos_id = 1 })
      t.fails("encode_batch returning ids out of int32", DS.tokenize, ds(), {
         eos_id = 1,
         encode_batch = function(_, texts)
            local out = {}
            for i = 1, #texts do out[i] = { 2 ^ 40 } end
            return out
         end,
      })
   end,
})

local function SELF_TDS() return S.obj(tds, { table_ok = true }) end
local SHARED_TDS = tds()
case("dpo.data.Dataset.collate", {
   args = { S.obj(function() return SHARED_TDS end, { table_ok = true }),
            S.tab(function() return { SHARED_TDS:get(1), SHARED_TDS:get(3) } end),
            S.opt(S.opts { sft = S.opt(S.any(true)) }) },
   self = true,
   check = function(b) assert.are.equal(2, b.size) end,
   extra = function(t)
      t.fails("an untokenized dataset", DS.collate, ds(), { ds():get(1) })
      t.fails("a pair with row 99", DS.collate, SHARED_TDS, { { row = 99 } })
      t.fails("a pair with row 1.5", DS.collate, SHARED_TDS, { { row = 1.5 } })
      t.fails("a pair of another dataset", DS.collate, SHARED_TDS, { tds():get(1) })
   end,
})
local BATCH_OPTS = S.opt(S.opts { shuffle = S.opt(S.any(true)), seed = S.opt(S.int(1, { ok = ANY_INT })),
                                  epoch = S.opt(S.int(1, { ok = ANY_INT })), drop_last = S.opt(S.any(true)),
                                  sft = S.opt(S.any(true)), skip = S.opt(S.int(0,
                                     { ok = { "math.maxinteger" } })) })
case("dpo.data.Dataset.batches", {
   args = { SELF_TDS(), S.int(2, { ok = { "math.maxinteger" } }), BATCH_OPTS },
   self = true,
   check = function(it) assert.are.equal(2, it().size) end,
   extra = function(t) t.fails("an untokenized dataset", DS.batches, ds(), 2) end,
})
case("dpo.data.Dataset.num_batches", {
   args = { SELF_TDS(), S.int(2, { ok = { "math.maxinteger" } }), BATCH_OPTS },
   self = true,
   check = function(n) assert.are.equal(1, n) end, -- 3 pairs, drop_last
})
case("dpo.data.Dataset.save", {
   args = { SELF_DS(), S.path(function() return fresh_path(".jsonl") end) },
   self = true,
   check = function(r) assert.is_true(r) end,
})

-- the reader behind dpo.data.jsonl's loop
local function lua_reader()
   local _, r = dpo.data.jsonl(F.pairs, { warn = false })
   return r
end
local LR = getmetatable(lua_reader())
case({ "dpo.data.Reader.line", "dpo.data.Reader.record", "dpo.data.Reader.summary",
       "dpo.data.Reader.is_closed", "dpo.data.Reader.close" }, {
   args = { S.obj(lua_reader, { table_ok = true }) },
   self = true,
   call = function(r) return LR.line(r), LR.record(r), LR.summary(r), LR.is_closed(r), LR.close(r) end,
})
case("dpo.data.Reader.bad", {
   args = { S.obj(lua_reader, { table_ok = true }), S.opt(S.any(3)), S.any("why") },
   self = true,
   extra = function(t)
      local r = lua_reader()
      r.on_error = "error"
      t.fails_any("on_error = 'error'", LR.bad, r, 1, "why")
   end,
})

-- ---- dpo.jinja ---------------------------------------------------------------------------------

local J = dpo.jinja
case("dpo.jinja.compile", {
   args = { S.str("{{ x }}"), S.opt(S.str("name")) },
   check = function(t) assert.is_true(J.is_template(t)) end,
   extra = function(t)
      t.fails_with("a syntax error", "name:1:", J.compile, "{{ (", "name")
      t.fails_with("an unsupported tag", "unsupported construct", J.compile, "{% include 'x' %}")
   end,
})
case("dpo.jinja.render", {
   args = { S.str("{{ x }}"), S.opt(S.tab({ x = 1 })), S.opt(S.str("name")) },
   check = function(s) assert.are.equal("string", type(s)) end,
   extra = function(t)
      t.fails_with("raise_exception", "boom", J.render, "{{ raise_exception('boom') }}")
      t.fails_with("a function value that raises", "oops", J.render, "{{ f() }}",
                   { f = function() error("oops") end })
   end,
})
case("dpo.jinja.Template.render", {
   args = { S.obj(function() return J.compile("{{ x }}") end, { table_ok = true }), S.opt(S.tab({ x = 1 })) },
   self = true,
   check = function(s) assert.are.equal("1", s) end,
})
case({ "dpo.jinja.list", "dpo.jinja.dict" }, {
   args = { S.tab(function() return {} end) },
   call = function(x) return J.list(x), J.dict(x == nil and x or {}) end,
   name = { "list", "dict" },
   extra = function(t)
      t.fails("a table with a metatable", J.list, setmetatable({}, {}))
      t.fails("keys that are not a list", J.dict, {}, 5)
   end,
})
case("dpo.jinja.is_template", {
   any = "any value",
   check = function(r) assert.are.equal("boolean", type(r)) end,
})
case("dpo.jinja.tojson", {
   args = { S.any({ a = 1 }), S.opt(S.tab({ indent = 2 })) },
   check = function(s) assert.are.equal('{\n  "a": 1\n}', s) end,
   extra = function(t)
      t.fails("a coroutine", J.tojson, coroutine.create(print))
      t.fails("an indent that is a table", J.tojson, 1, { indent = {} })
   end,
})

-- ---- dpo.filters ---------------------------------------------------------------------------------

local A_PAIR = { prompt = "\n\nHuman: hi\n\nAssistant:", chosen = " a", rejected = " b" }
local function applies(f)
   -- a filter made here must work on a pair
   local fn = f.make()
   assert.are.equal("boolean", type((fn(A_PAIR))))
end

case("dpo.filters.new", {
   args = { S.str("mine"), S.fn(function() return function() return true end end) },
   check = applies,
})
case("dpo.filters.is_filter", {
   any = "a predicate",
   check = function(r) assert.are.equal("boolean", type(r)) end,
   extra = function(t) assert.is_true(t.works("a filter", dpo.filters.is_filter, dpo.filters.distinct())) end,
})
case({ "dpo.filters.distinct", "dpo.filters.hh_clean" }, {
   any = "no arguments; extra ones are ignored",
   call = function(...) return dpo.filters.distinct(...), dpo.filters.hh_clean(...) end,
   check = function(a, b)
      applies(a)
      applies(b)
   end,
})
case("dpo.filters.dedupe", {
   args = { S.opt(S.obj(function() return "prompt" end, { ok = { "a function" } })) },
   check = applies,
   extra = function(t)
      t.fails("the key 'x'", dpo.filters.dedupe, "x")
      t.works("a key function", dpo.filters.dedupe, function(p) return p.prompt end)
   end,
})
for _, name in ipairs { "max_tokens", "min_response_tokens" } do
   case("dpo.filters." .. name, {
      args = { S.int(5, { ok = { "math.maxinteger" } }) },
      extra = function(t)
         t.fails("0", dpo.filters[name], 0)
         -- on an untokenized pair the filter raises, naming itself
         local fn = dpo.filters[name](5).make()
         t.fails("an untokenized pair", fn, A_PAIR)
      end,
   })
end
case("dpo.filters.max_length_ratio", {
   args = { S.fin(2, { bad = { "-1", "-1e300", "math.mininteger", "-2^53" } }) },
   check = applies,
   extra = function(t) t.fails("0", dpo.filters.max_length_ratio, 0) end,
})
for _, name in ipairs { "matches", "excludes" } do
   case("dpo.filters." .. name, {
      args = { S.str("a"), S.opt(S.opts { fields = S.opt(S.obj(function() return "chosen" end,
         { table_ok = true })),
                                         plain = S.opt(S.any(true)) }) },
      check = applies,
      extra = function(t)
         t.fails("a malformed pattern", dpo.filters[name], "%")
         t.fails("a field set 'x'", dpo.filters[name], "a", { fields = "x" })
         t.fails("a field list with a number", dpo.filters[name], "a", { fields = { 1 } })
      end,
   })
end
case("dpo.filters.hh_turns", {
   args = { S.str("\n\nHuman: hi\n\nAssistant: yo") },
   check = function(roles, contents)
      assert.are.same({ "Human", "Assistant" }, roles)
      assert.are.same({ " hi", " yo" }, contents)
   end,
})
local FM = getmetatable(dpo.filters.distinct())
case("dpo.filters.Filter.__call", {
   args = { S.obj(function() return dpo.filters.distinct() end, { table_ok = true }), S.tab(A_PAIR) },
   self = true,
   name = { "pair", "dpo.filters" },
})
case("dpo.filters.Filter.__tostring", {
   args = { S.obj(function() return dpo.filters.distinct() end, { table_ok = true }) },
   self = true,
   check = function(s) assert.are.equal("dpo.filters.distinct", s) end,
})

-- ---- dpo.losses ---------------------------------------------------------------------------------

local function t2(a, b) return function() return dpo.tensor { a, b } end end
local LOSS_TENSOR = function(make) return S.obj(make, { dead = DEAD_TENSORS, other = { A_TOKENIZER } }) end
local LOSS_ARGS = {
   pi_c = function() return LOSS_TENSOR(t2(-1, -2)) end, pi_r = function() return LOSS_TENSOR(t2(-2, -3)) end,
   ref_c = function() return LOSS_TENSOR(t2(-1.5, -2)) end,
      ref_r = function() return LOSS_TENSOR(t2(-1.5, -2.5)) end,
   n_c = function() return LOSS_TENSOR(t2(2, 3)) end, n_r = function() return LOSS_TENSOR(t2(3, 2)) end,
}
local SMOOTHING = S.opt(S.fin(0.1, { bad = OUT_OF_RANGE }))
local LOSS_OPTIONS = {
   cdpo = { label_smoothing = SMOOTHING }, robust = { label_smoothing = SMOOTHING },
   ipo = { average = S.opt(S.bool(false)) },
   exo_pair = { label_smoothing = S.opt(S.fin(0.1, { bad = OUT_OF_RANGE })) },
   bco_pair = { delta = S.opt(S.fin(0.5)) },
   aot = { label_smoothing = SMOOTHING }, aot_unpaired = { label_smoothing = SMOOTHING },
   discopop = { tau = S.opt(S.fin(0.05, { bad = NEGATIVE })) },
   rpo = { alpha = S.opt(S.fin(1, { bad = NEGATIVE })) },
   simpo = { gamma = S.opt(S.fin(0.5)), label_smoothing = SMOOTHING, alpha = S.opt(S.fin(0.5,
      { bad = NEGATIVE })) },
   cpo = { alpha = S.opt(S.fin(1, { bad = NEGATIVE })), label_smoothing = SMOOTHING },
}
local NO_REF = { simpo = true, cpo = true, orpo = true, sft = true }
for _, name in ipairs(dpo.losses.list()) do
   local f = { beta = S.opt(S.fin(0.1, { bad = NEGATIVE })) }
   local keys = { "pi_c", "pi_r", "ref_c", "ref_r", "n_c", "n_r" }
   for _, k in ipairs(keys) do
      local s = LOSS_ARGS[k]()
      -- each loss names what it needs; the rest are optional
      s.optional = true
      f[k] = s
   end
   if NO_REF[name] then f.ref_c, f.ref_r = nil, nil end
   for k, v in pairs(LOSS_OPTIONS[name] or {}) do f[k] = v end
   case("dpo.losses." .. name, {
      args = { S.opts(f, { strict = true }) },
      check = function(loss, m)
         assert.is_true(dpo.is_tensor(loss))
         assert.are.equal("table", type(m))
      end,
      extra = function(t)
         local a = { pi_c = dpo.tensor { -1, -2 }, pi_r = dpo.tensor { -2, -3 },
            ref_c = dpo.tensor { -1, -2 },
                     ref_r = dpo.tensor { -2, -2 }, n_c = dpo.tensor { 1, 2 }, n_r = dpo.tensor { 1, 2 } }
         if NO_REF[name] then a.ref_c, a.ref_r = nil, nil end
         local function with(k, v)
            local c = {}
            for kk, vv in pairs(a) do c[kk] = vv end
            c[k] = v
            return c
         end
         t.fails("pi_c missing", dpo.losses[name], with("pi_c", nil))
         t.fails("pi_c of 3 elements", dpo.losses[name], with("pi_c", dpo.tensor { 1, 2, 3 }))
         t.fails("pi_c 2-D", dpo.losses[name], with("pi_c", dpo.ones(2, 1)))
         t.fails("pi_c int32", dpo.losses[name], with("pi_c", dpo.tensor({ 1, 2 }, "int32")))
         t.fails("pi_c empty", dpo.losses[name], { pi_c = dpo.zeros(0), pi_r = dpo.zeros(0),
                                                    ref_c = dpo.zeros(0), ref_r = dpo.zeros(0),
                                                    n_c = dpo.zeros(0), n_r = dpo.zeros(0) })
         t.works("NaN log-probs (data)", dpo.losses[name], with("pi_c", dpo.tensor { 0 / 0, -1 }))
      end,
   })
end

case("dpo.losses.list", {
   any = "no arguments; extra ones are ignored",
   check = function(l) assert.is_true(#l >= 20) end,
})
local GOOD_LOSS_ARGS = function()
   return { pi_c = dpo.tensor { -1, -2 }, pi_r = dpo.tensor { -2, -3 }, ref_c = dpo.tensor { -1, -2 },
            ref_r = dpo.tensor { -2, -2 }, n_c = dpo.tensor { 1, 2 }, n_r = dpo.tensor { 1, 2 } }
end
case("dpo.losses.reference_free", {
   args = { S.fn(dpo.losses.sigmoid) },
   name = { "reference_free", "dpo.losses" },
   check = function(fn) assert.is_true(dpo.is_tensor((fn(GOOD_LOSS_ARGS())))) end,
   extra = function(t)
      local fn = dpo.losses.reference_free(dpo.losses.sigmoid)
      t.fails("its loss with no arguments", fn)
      t.fails("its loss with a string", fn, "x")
      t.fails("its loss without pi_c", fn, { pi_r = dpo.ones(2) })
      t.fails("its loss with a freed pi_c", fn, { pi_c = freed_tensor(), pi_r = dpo.ones(2) })
   end,
})
case("dpo.losses.weighted", {
   args = { S.tab(function() return { { fn = dpo.losses.sigmoid, weight = 0.5 },
      { fn = dpo.losses.sft } } end) },
   name = { "weighted", "dpo.losses" },
   check = function(fn) assert.is_true(dpo.is_tensor((fn(GOOD_LOSS_ARGS())))) end,
   extra = function(t)
      local w = dpo.losses.weighted
      t.fails("an empty list", w, {})
      t.fails("an entry without fn", w, { { weight = 1 } })
      t.fails("an entry that is a number", w, { 1 })
      for _, x in ipairs { { "NaN", 0 / 0 }, { "inf", math.huge }, { "'x'", "x" } } do
         t.fails("a weight " .. x[1], w, { { fn = dpo.losses.sigmoid, weight = x[2] } })
      end
      t.fails("a name that is a number", w, { { fn = dpo.losses.sigmoid, name = 1 } })
      local fn = w { { fn = dpo.losses.sigmoid } }
      t.fails("its loss with no arguments", fn)
      t.fails("its loss with a bad tensor", fn, { pi_c = 1 })
      t.fails("an entry fn returning a number", w { { fn = function() return 1 end } }, GOOD_LOSS_ARGS())
   end,
})

-- ---- dpo.schedules ---------------------------------------------------------------------------------

-- a schedule must refuse a step that is not a number
local function schedule_steps(t, s, name)
   for _, x in ipairs { { "nil", nil }, { "'x'", "x" }, { "{}", {} }, { "NaN", 0 / 0 } } do
      t.fails("the schedule at step " .. x[1], s, x[2])
   end
   for _, x in ipairs(EXTREMES) do
      if x[1] ~= "NaN" then
         local v = t.works("the schedule at step " .. x[1], s, x[2])
         if v ~= nil and v ~= v then t.problem("%s at step %s is NaN", name, x[1]) end
      end
   end
end

local S_LR = S.fin(1e-3, { bad = NEGATIVE })
local S_COUNT = function(v) return S.int(v, { ok = { "math.maxinteger" } }) end

case({ "dpo.schedules.lr.constant", "dpo.schedules.constant", "dpo.schedules.beta.constant" }, {
   args = { S.fin(0.5) },
   check = function(s) assert.are.equal(0.5, s(1)) end,
   extra = function(t) schedule_steps(t, dpo.schedules.constant(0.5), "constant") end,
})
case({ "dpo.schedules.lr.linear_warmup", "dpo.schedules.linear_warmup" }, {
   args = { S_LR, S_COUNT(10) },
   check = function(s) assert.are.equal(1e-4, s(1)) end,
   extra = function(t) schedule_steps(t, dpo.schedules.linear_warmup(1, 10), "linear_warmup") end,
})
case({ "dpo.schedules.lr.warmup_linear", "dpo.schedules.warmup_linear" }, {
   args = { S_LR, S.int(10), S_COUNT(100) },
   extra = function(t)
      t.fails("total = warmup", dpo.schedules.warmup_linear, 1, 10, 10)
      schedule_steps(t, dpo.schedules.warmup_linear(1, 10, 100), "warmup_linear")
   end,
})
case({ "dpo.schedules.lr.cosine", "dpo.schedules.cosine" }, {
   args = { S_LR, S.int(10), S_COUNT(100), S.opt(S.opts({ min_lr = S.opt(S.fin(0,
      { bad = NEGATIVE })) }, { strict = true })) },
   name = "cosine",
   extra = function(t)
      t.fails("min_lr above lr", dpo.schedules.cosine, 1, 0, 10, { min_lr = 2 })
      schedule_steps(t, dpo.schedules.cosine(1, 10, 100), "cosine")
   end,
})
case({ "dpo.schedules.beta.linear", "dpo.schedules.linear" }, {
   args = { S.fin(0.1), S.fin(0.5), S_COUNT(10) },
   extra = function(t) schedule_steps(t, dpo.schedules.linear(0.1, 0.5, 10), "linear") end,
})
case("dpo.schedules.beta.cosine", {
   args = { S.fin(0.1), S.fin(0.5), S_COUNT(10) },
   name = "cosine",
   extra = function(t) schedule_steps(t, dpo.schedules.beta.cosine(0.1, 0.5, 10), "beta.cosine") end,
})
case({ "dpo.schedules.beta.step", "dpo.schedules.step" }, {
   args = { S.fin(0.1), S.opts({ at = S.tab({ 5, 10 }), values = S.tab({ 0.2, 0.3 }) }, { strict = true }) },
   name = "step",
   extra = function(t)
      local st = dpo.schedules.step
      t.fails("at and values of different lengths", st, 0.1, { at = { 5 }, values = {} })
      t.fails("at not ascending", st, 0.1, { at = { 5, 5 }, values = { 1, 2 } })
      t.fails("at with 0", st, 0.1, { at = { 0 }, values = { 1 } })
      t.fails("at with NaN", st, 0.1, { at = { 0 / 0 }, values = { 1 } })
      t.fails("values with NaN", st, 0.1, { at = { 1 }, values = { 0 / 0 } })
      t.fails("values with a string", st, 0.1, { at = { 1 }, values = { "x" } })
      schedule_steps(t, st(0.1, { at = { 5 }, values = { 0.2 } }), "step")
   end,
})
case({ "dpo.schedules.beta.adaptive", "dpo.schedules.adaptive" }, {
   args = { S.fin(0.1, { bad = { "-1", "-1e300", "math.mininteger", "-2^53" } }),
            S.opts({ target_margin = S.fin(1), rate = S.opt(S.fin(0.5, { bad = NEGATIVE })),
                     min = S.opt(S.fin(0.01, { bad = NEGATIVE })), max = S.opt(S.fin(1e300,
                        { bad = NEGATIVE })) },
                   { strict = true }) },
   name = "adaptive",
   extra = function(t)
      t.fails("min above max", dpo.schedules.adaptive, 0.1, { target_margin = 1, min = 2, max = 1 })
      local s = dpo.schedules.adaptive(0.1, { target_margin = 1 })
      schedule_steps(t, s, "adaptive")
      for _, m in ipairs { 0 / 0, math.huge, -math.huge, "x", {} } do
         local v = t.works("metrics with a margin " .. tostring(m), s, 2, { ["rewards/margins"] = m })
         if not (type(v) == "number" and v == v and v > 0 and v < math.huge) then
            t.problem("adaptive gave %s for a margin %s", tostring(v), tostring(m))
         end
      end
      t.works("metrics that are a string", s, 2, "x")
   end,
})

-- ---- optimizers: the raw steps (dpo.optim_*) ---------------------------------------------------

local function pt() return dpo.tensor { 1, 2 } end
local function gt() return dpo.tensor { 0.1, -0.2 } end
local STEP_T = function(make) return S.obj(make or pt, { dead = DEAD_TENSORS, other = { A_TOKENIZER } }) end
local OPT_T = function() return S.opt(STEP_T(function() return dpo.zeros(2) end)) end

case("dpo.optim_sgd_step", {
   args = { STEP_T(), STEP_T(gt), OPT_T(), S.any(true), S.fin(0.1), S.fin(0.9), S.fin(0), S.fin(0),
            S.any(false), S.any(false) },
   extra = function(t)
      local f = dpo.optim_sgd_step
      t.fails("a gradient of another shape", f, pt(), dpo.ones(3), nil, true, 0.1, 0, 0, 0, false, false)
      t.fails("an int32 parameter", f, dpo.tensor({ 1, 2 }, "int32"), gt(), nil, true, 0.1, 0, 0, 0,
         false, false)
      t.fails("a buffer of another shape", f, pt(), gt(), dpo.ones(3), true, 0.1, 0.9, 0, 0, false, false)
      t.fails("a non-contiguous parameter", f, ft():t(), ft(), nil, true, 0.1, 0, 0, 0, false, false)
   end,
})
case("dpo.optim_adamw_step", {
   args = { STEP_T(), STEP_T(gt), STEP_T(function() return dpo.zeros(2) end),
      STEP_T(function() return dpo.zeros(2) end),
            OPT_T(), S.int(1, { ok = { "math.maxinteger", "2^53" } }), S.fin(1e-3), S.fin(0.9), S.fin(0.999),
            S.fin(1e-8), S.fin(0.01), S.any(false), S.any(false) },
   name = { "optim_adamw_step", "adamw_step" },
   extra = function(t)
      t.fails("step 0", dpo.optim_adamw_step, pt(), gt(), dpo.zeros(2), dpo.zeros(2), nil, 0, 1e-3,
         0.9, 0.999, 1e-8, 0, false, false)
      t.fails("a state of another shape", dpo.optim_adamw_step, pt(), gt(), dpo.zeros(3),
         dpo.zeros(2), nil, 1, 1e-3, 0.9, 0.999, 1e-8, 0, false, false)
   end,
})
case("dpo.optim_rmsprop_step", {
   args = { STEP_T(), STEP_T(gt), STEP_T(function() return dpo.zeros(2) end), OPT_T(), OPT_T(), S.fin(1e-2),
            S.fin(0.99), S.fin(1e-8), S.fin(0), S.fin(0.9), S.any(false), S.any(false) },
})
local function with_grads() return { with_grad(), with_grad() } end
case("dpo.optim_grad_norm", {
   args = { S.tab(with_grads), S.opt(S.fin(2, { ok = { "inf" }, bad = NEGATIVE })) },
   check = function(n) assert.is_true(math.abs(n - 1) < 1e-6) end,
   extra = function(t)
      t.fails("a list with a number", dpo.optim_grad_norm, { 1 })
      t.fails("a list with a freed tensor", dpo.optim_grad_norm, { freed_tensor() })
      t.fails("norm_type 0", dpo.optim_grad_norm, with_grads(), 0)
   end,
})
case("dpo.optim_grad_scale", {
   args = { S.tab(with_grads), S.fin(0.5) },
   extra = function(t) t.fails("a list with a number", dpo.optim_grad_scale, { 1 }, 0.5) end,
})
case("dpo.optim_clip_coef", {
   args = { S.fin(2, { ok = { "inf" }, bad = NEGATIVE }), S.fin(1, { ok = { "inf" }, bad = NEGATIVE }) },
   check = function(c) assert.is_true(c > 0.49 and c < 0.51) end,
})

-- ---- dpo.optim ----------------------------------------------------------------------------------

local function params() return { leaf(), dpo.ones(3):requires_grad() } end
local PARAMS = S.obj(params, { table_ok = false, other = { A_TENSOR } })
local NONNEG = function(v) return S.opt(S.fin(v, { bad = NEGATIVE })) end
local UNIT = function(v) return S.opt(S.fin(v, { bad = OUT_OF_RANGE })) end
local function BOOL(v) return S.opt(S.bool(v)) end
local OPTIM_OPTS = {
   sgd = { lr = NONNEG(0.1), momentum = NONNEG(0.9), dampening = UNIT(0), weight_decay = NONNEG(0),
           nesterov = BOOL(false), maximize = BOOL(false) },
   adamw = { lr = NONNEG(0.1), betas = S.opt(S.tab({ 0.9, 0.99 })), eps = NONNEG(1e-8),
             weight_decay = NONNEG(0.01), amsgrad = BOOL(false), maximize = BOOL(false) },
   rmsprop = { lr = NONNEG(0.1), alpha = UNIT(0.99), eps = NONNEG(1e-8), weight_decay = NONNEG(0),
               momentum = NONNEG(0), centered = BOOL(false), maximize = BOOL(false) },
}
for kind, opts in pairs(OPTIM_OPTS) do
   case("dpo.optim." .. kind, {
      args = { PARAMS, S.opt(S.opts(opts, { strict = true })) },
      extra = function(t)
         local f = dpo.optim[kind]
         t.fails("an empty list", f, {})
         t.fails("a list with a number", f, { 1 })
         t.fails("a list with a freed tensor", f, { freed_tensor() })
         t.fails("the same tensor twice", f, (function() local p = leaf(); return { p, p } end)())
         t.fails("an int32 tensor", f, { dpo.ones(2, "int32") })
         t.fails("a tensor that does not require grad", f, { dpo.ones(2) })
         t.fails("a computed tensor", f, { leaf() * 2 })
         t.fails("a list with a string key", f, { leaf(), x = 1 })
         if kind == "adamw" then
            for _, b in ipairs { { 0.9 }, { 0.9, 1 }, { 0.9, 0 / 0 }, { "a", "b" } } do
               t.fails("betas " .. table.concat((function()
                  local s = {}
                  for i, v in ipairs(b) do s[i] = tostring(v) end
                  return s
               end)(), ","), f, params(), { betas = b })
            end
         end
      end,
   })
end

local function norm_params() return { with_grad(), with_grad() } end
case("dpo.optim.grad_norm", {
   args = { S.obj(norm_params, { table_ok = false, ok = {} }), S.opt(S.fin(2, { ok = { "inf" },
      bad = NEGATIVE })) },
   check = function(n) assert.is_true(math.abs(n - 1) < 1e-6) end,
   extra = function(t) t.works("'inf'", dpo.optim.grad_norm, norm_params(), "inf") end,
})
case("dpo.optim.clip_grad_norm", {
   args = { S.obj(norm_params, { table_ok = false }), S.fin(0.5, { ok = { "inf" }, bad = NEGATIVE }),
            S.opt(S.fin(2, { ok = { "inf" }, bad = NEGATIVE })) },
   extra = function(t)
      -- a non-finite norm is reported, the gradients left alone (the trainer skips the step)
      local p = dpo.tensor({ 1 }):requires_grad()
      p.grad = dpo.tensor { 0 / 0 }
      local n = t.works("a NaN gradient", dpo.optim.clip_grad_norm, { p }, 1)
      assert.is_true(n ~= n)
      p.grad = dpo.tensor { math.huge }
      assert.are.equal(math.huge, t.works("an infinite gradient", dpo.optim.clip_grad_norm, { p }, 1))
   end,
})

local function opt() return dpo.optim.sgd({ with_grad() }, { lr = 0.1 }) end
local OPT_SELF = S.obj(opt, { table_ok = true })
local OM = getmetatable(opt())
local OI = OM.__index
case("dpo.Optimizer.zero_grad", { args = { OPT_SELF, S.opt(S.any(true)) }, self = true })
case("dpo.Optimizer.step", {
   args = { OPT_SELF, S.opt(S.fn(function() return 1 end)) },
   self = true,
   name = "dpo.optim", -- "dpo.optim.sgd: ..."
   check = function(r) assert.are.equal(1, r) end,
   extra = function(t)
      local o = opt()
      rawset(o, "lr", 0 / 0)
      t.fails("lr set to NaN", OI.step, o)
      t.fails_any("a closure that raises", OI.step, opt(), function() error("boom") end)
   end,
})
case("dpo.Optimizer.get_lr", { args = { OPT_SELF }, self = true,
   check = function(v) assert.are.equal(0.1, v) end })
case("dpo.Optimizer.set_lr", { args = { OPT_SELF, S.fin(0.2, { bad = NEGATIVE }) }, self = true,
   name = "dpo.optim" })
case("dpo.Optimizer.state_dict", { args = { OPT_SELF }, self = true })
case("dpo.Optimizer.load_state_dict", {
   args = { OPT_SELF, S.tab(function() local o = opt(); o:step(); return o:state_dict() end) },
   self = true,
   name = "load_state_dict",
   extra = function(t)
      local function sd(edit)
         local o = dpo.optim.sgd({ with_grad() }, { lr = 0.1, momentum = 0.9 })
         o:step()
         local s = o:state_dict()
         edit(s)
         return s
      end
      local o = dpo.optim.sgd({ with_grad() }, { lr = 0.1, momentum = 0.9 })
      t.fails("another kind", OI.load_state_dict, o, sd(function(s) s.optimizer = "adamw" end))
      t.fails("an lr of NaN", OI.load_state_dict, o, sd(function(s) s.param_groups[1].lr = 0 / 0 end))
      t.fails("a state for parameter 1e300", OI.load_state_dict, o, sd(function(s) s.state[1e300] = {} end))
      t.fails("a buffer of another shape", OI.load_state_dict, o,
              sd(function(s) s.state[1].momentum_buffer = dpo.ones(5) end))
      t.fails("a freed buffer", OI.load_state_dict, o,
              sd(function(s) s.state[1].momentum_buffer = freed_tensor() end))
      t.fails("no param_groups", OI.load_state_dict, o, sd(function(s) s.param_groups = nil end))
      t.fails("a step of 1.5", OI.load_state_dict, dpo.optim.adamw({ with_grad() }),
              (function()
                 local a = dpo.optim.adamw({ with_grad() })
                 a:step()
                 local s = a:state_dict()
                 s.state[1].step = 1.5
                 return s
              end)())
   end,
})
case("dpo.Optimizer.__newindex", {
   name = false,
   extra = function(t)
      local o = opt()
      t.works("lr = 0.5", function() o.lr = 0.5 end)
      t.fails("an unknown option", function() o.foo = 1 end)
      t.fails("a number key", function() o[1] = 1 end)
      o.lr = "x" -- checked at the next step
      t.fails("a step after lr = 'x'", OI.step, o)
   end,
})
case("dpo.Optimizer.__tostring", { args = { OPT_SELF }, self = true,
   check = function(s) assert.are.equal("string", type(s)) end })

-- ---- dpo.nn ---------------------------------------------------------------------------------------

local nn = dpo.nn
local function lin() return nn.Linear(2, 3) end
-- a module made by make (a class or a function)
local function MOD(make)
   make = make or lin
   return S.obj(function() return make() end, { table_ok = true })
end
local X = function() return dpo.ones(4, 2) end

case("dpo.gradcheck", {
   args = { S.fn(function(x) return (x * x):sum() end), S.tab(function() return { leaf() } end),
            S.opt(S.opts { eps = S.opt(S.fin(1e-3, { bad = { "-1", "-1e300", "math.mininteger", "-2^53" } })),
                           atol = S.opt(S.fin(1e-3, { bad = NEGATIVE })), rtol = S.opt(S.fin(1e-2,
                              { bad = NEGATIVE })),
                           seed = S.opt(S.int(0, { ok = ANY_INT })) }) },
   check = function(ok) assert.is_true(ok) end,
   extra = function(t)
      local g = dpo.gradcheck
      t.fails("no input that requires grad", g, function(x) return x:sum() end, { dpo.ones(2) })
      t.fails("an input that is a number", g, function(x) return x end, { 1 })
      t.fails("a freed input", g, function(x) return x end, { freed_tensor() })
      t.fails("fn returning a number", g, function() return 1 end, { leaf() })
      t.fails_any("fn that raises", g, function() error("boom") end, { leaf() })
   end,
})

case("dpo.nn.class", {
   args = { S.str("Mine"), S.opt(S.tab(nn.Module)) },
   check = function(cls) assert.are.equal("dpo.nn.Mine", cls.__name) end,
   extra = function(t)
      t.fails("a parent that is not a class", nn.class, "Mine", { 1 })
      t.fails("a name with a dot", nn.class, "a.b")
   end,
})
case("dpo.nn.Module.__init", {
   -- the base class is not made itself; the classes without an __init of
   -- their own (ReLU, ...) use it
   any = "no arguments; extra ones are ignored",
   call = function(...) return nn.ReLU(...) end,
})
case("dpo.nn.Module.__call", {
   args = { MOD(), TENSOR(X) },
   self = true,
   name = "Linear",
})
case({ "dpo.nn.Module.__tostring", "dpo.nn.Module.__repr" }, {
   args = { MOD() },
   self = true,
   call = function(m) return nn.Module.__tostring(m), nn.Module.__repr(m) end,
})
case("dpo.nn.Module.forward", {
   -- the base class's forward raises by design: a subclass defines its own
   extra = function(t) t.fails("a class without forward", nn.Module.forward, nn.class("Bare")(),
      dpo.ones(1)) end,
})
case("dpo.nn.Module.register_parameter", {
   args = { MOD(), S.str("extra"), S.obj(function() return dpo.ones(2) end, { dead = DEAD_TENSORS,
      other = { A_TOKENIZER } }) },
   self = true,
   extra = function(t)
      t.fails("a name with a dot", nn.Module.register_parameter, lin(), "a.b", dpo.ones(1))
      t.fails("an int32 tensor", nn.Module.register_parameter, lin(), "w2", dpo.ones(1, "int32"))
   end,
})
case("dpo.nn.Module.register_module", {
   args = { MOD(), S.str("child"), MOD() },
   self = true,
   extra = function(t)
      t.fails("a name with a dot", nn.Module.register_module, lin(), "a.b", lin())
      t.works("an integer name", nn.Module.register_module, lin(), 1, lin())
      t.fails("a table name", nn.Module.register_module, lin(), {}, lin())
      t.fails("a module that is an empty table", nn.Module.register_module, lin(), "c", {})
   end,
})
for _, name in ipairs { "children", "parameters", "num_parameters", "eval", "zero_grad", "state_dict" } do
   case("dpo.nn.Module." .. name, { args = { MOD() }, self = true })
end
case("dpo.nn.Module.named_parameters", { args = { MOD(), S.opt(S.str("pre")) }, self = true })
case("dpo.nn.Module.train", { args = { MOD(), S.opt(S.any(false)) }, self = true })
case("dpo.nn.Module.apply", { args = { MOD(), S.fn(function() end) }, self = true })
case("dpo.nn.Module.load_state_dict", {
   args = { MOD(), S.tab(function() return lin():state_dict() end),
      S.opt(S.opts { strict = S.opt(S.any(true)) }) },
   self = true,
   extra = function(t)
      local m = lin()
      local sd = m:state_dict()
      sd.weight = dpo.ones(5)
      t.fails("a wrong shape", nn.Module.load_state_dict, m, sd)
      sd = m:state_dict()
      sd.weight = freed_tensor()
      t.fails("a freed tensor", nn.Module.load_state_dict, m, sd)
      sd = m:state_dict()
      sd.extra = dpo.ones(1)
      t.fails("an unexpected key", nn.Module.load_state_dict, m, sd)
      t.fails("a missing key", nn.Module.load_state_dict, m, {})
   end,
})

case("dpo.nn.Linear.__init", {
   args = { S.int(2), S.int(3), S.opt(S.opts({ bias = S.opt(S.bool(true)) }, { strict = true })) },
   call = function(...) return nn.Linear(...) end,
   name = { "dpo.nn.Linear", "too large" },
})
case("dpo.nn.Linear.__repr", { args = { MOD() }, self = true })
case("dpo.nn.Linear.forward", {
   args = { MOD(), TENSOR(X) },
   self = true,
   name = "Linear",
   extra = function(t)
      t.fails("an input of width 3", nn.Linear.forward, lin(), dpo.ones(4, 3))
      t.fails("a scalar", nn.Linear.forward, lin(), dpo.tensor(1))
      t.works("an int32 input", nn.Linear.forward, lin(), dpo.ones(4, 2, "int32"))
   end,
})
local function emb() return nn.Embedding(5, 3) end
case("dpo.nn.Embedding.__init", {
   args = { S.int(5), S.int(3) },
   call = function(...) return nn.Embedding(...) end,
   name = { "dpo.nn.Embedding", "too large" },
})
case("dpo.nn.Embedding.__repr", { args = { MOD(emb) }, self = true })
case("dpo.nn.Embedding.forward", {
   args = { MOD(emb), S.obj(function() return dpo.tensor({ 1, 2 }, "int32") end,
                            { table_ok = true, dead = DEAD_TENSORS, other = { A_TOKENIZER } }) },
   self = true,
   name = "Embedding",
   extra = function(t)
      for _, x in ipairs(EXTREMES) do t.fails("an id " .. x[1], nn.Embedding.forward, emb(), { x[2] }) end
      t.fails("an id of 0", nn.Embedding.forward, emb(), { 0 })
      t.fails("a float tensor", nn.Embedding.forward, emb(), dpo.ones(2))
   end,
})
local function ln() return nn.LayerNorm(2) end
case("dpo.nn.LayerNorm.__init", {
   args = { S.int(2), S.opt(S.opts({ eps = S.opt(S.fin(1e-5, { bad = NEGATIVE })),
                                     elementwise_affine = S.opt(S.bool(true)) }, { strict = true })) },
   call = function(...) return nn.LayerNorm(...) end,
   name = { "dpo.nn.LayerNorm", "too large" },
})
case("dpo.nn.LayerNorm.__repr", { args = { MOD(ln) }, self = true })
case("dpo.nn.LayerNorm.forward", {
   args = { MOD(ln), TENSOR(X) }, self = true, name = "LayerNorm",
   extra = function(t) t.fails("an input of width 3", nn.LayerNorm.forward, ln(), dpo.ones(4, 3)) end,
})
local function drop() return nn.Dropout(0.5, { seed = 1 }) end
case("dpo.nn.Dropout.__init", {
   args = { S.opt(S.fin(0.5, { bad = OUT_OF_RANGE })),
            S.opt(S.opts({ seed = S.opt(S.int(1, { ok = ANY_INT })) }, { strict = true })) },
   call = function(...) return nn.Dropout(...) end,
   name = "dpo.nn.Dropout",
})
case("dpo.nn.Dropout.__repr", { args = { MOD(drop) }, self = true })
case("dpo.nn.Dropout.reseed", { args = { MOD(drop), S.int(3, { ok = ANY_INT }) }, self = true })
case("dpo.nn.Dropout.forward", { args = { MOD(drop), TENSOR(X) }, self = true, name = "Dropout" })
for _, name in ipairs { "ReLU", "GELU", "Tanh", "Sigmoid", "LogSigmoid", "Identity" } do
   case("dpo.nn." .. name .. ".forward", {
      args = { MOD(nn[name]), TENSOR(X) }, self = true, name = name,
   })
end
for _, name in ipairs { "Softmax", "LogSoftmax" } do
   case("dpo.nn." .. name .. ".__init", {
      args = { S.opt(S.int(-1, { ok = { "-1", "math.maxinteger", "math.mininteger" } })) },
      call = function(...) return nn[name](...) end,
      name = "dpo.nn." .. name,
      extra = function(t) t.fails("dim 0", nn[name], 0) end,
   })
   case("dpo.nn." .. name .. ".__repr", { args = { MOD(nn[name]) }, self = true })
   case("dpo.nn." .. name .. ".forward", {
      args = { MOD(nn[name]), TENSOR(X) }, self = true, name = { name, "softmax" },
      extra = function(t) t.fails("a dim beyond the input", nn[name].forward, nn[name](5), dpo.ones(2)) end,
   })
end
local function seq() return nn.Sequential(nn.Linear(2, 3), nn.ReLU()) end
case("dpo.nn.Sequential.__init", {
   args = { S.obj(lin, { table_ok = true }) },
   call = function(...) return nn.Sequential(...) end,
   name = "dpo.nn.Sequential",
   min_args = 0, -- an empty Sequential
   extra = function(t)
      t.fails("a list with a number", nn.Sequential, { lin(), 1 })
      t.fails("a module then a string", nn.Sequential, lin(), "x")
   end,
})
case("dpo.nn.Sequential.add", { args = { MOD(seq), MOD() }, self = true, name = "Sequential" })
case("dpo.nn.Sequential.__len", { args = { MOD(seq) }, self = true })
case("dpo.nn.Sequential.forward", {
   args = { MOD(seq), TENSOR(X) }, self = true, name = "Linear",
})
local function mlp() return nn.MLP({ 2, 4, 2 }) end
case("dpo.nn.MLP.__init", {
   args = { S.tab({ 2, 4, 2 }), S.opt(S.opts({ activation = S.opt(S.str("tanh")),
                                               dropout = S.opt(S.fin(0.1, { bad = OUT_OF_RANGE })),
                                               bias = S.opt(S.bool(true)),
                                               seed = S.opt(S.int(1, { ok = { "-1",
                                                  "math.mininteger", "math.maxinteger" } })) },
                                             { strict = true })) },
   call = function(...) return nn.MLP(...) end,
   name = { "dpo.nn.MLP", "too large" },
   extra = function(t)
      t.fails("one size", nn.MLP, { 2 })
      for _, x in ipairs(EXTREMES) do t.fails("a size " .. x[1], nn.MLP, { 2, x[2] }) end
   end,
})
case("dpo.nn.MLP.__repr", { args = { MOD(mlp) }, self = true })
case("dpo.nn.MLP.forward", { args = { MOD(mlp), TENSOR(X) }, self = true, name = "Linear" })

-- ---- dpo.log --------------------------------------------------------------------------------------

local log = dpo.log
case("dpo.log.clock_str", {
   name = { "clock_str", "dpo.log" },
   -- a time that is not finite prints as "?"
   args = { S.fin(65, { ok = { "NaN", "inf" } }) },
   check = function(s) assert.are.equal("1:05", s) end,
})
case("dpo.log.encode", {
   name = { "encode", "dpo.log" },
   args = { S.tab({ step = 1, loss = 0.5 }) },
   check = function(s) assert.are.equal('{"step":1,"loss":0.5}', s) end,
   extra = function(t)
      t.fails("a record with a function", log.encode, { f = print })
      t.works("non-finite numbers (null)", log.encode, { a = 0 / 0, b = math.huge })
   end,
})
case("dpo.log.unescape_slashes", {
   name = { "unescape_slashes", "dpo.log" }, args = { S.str("a\\/b") },
      check = function(s) assert.are.equal("a/b", s) end })
case("dpo.log.is_tty", {
   any = "a predicate on streams",
   check = function(r) assert.are.equal("boolean", type(r)) end,
})
case("dpo.log.memory", {
   any = "no arguments; extra ones are ignored",
   check = function(r) assert.are.equal("dpo.log.Run", getmetatable(r).__name) end,
})
case("dpo.log.mkdirs", {
   name = { "mkdirs", "dpo.log" },
   args = { S.path(function() return fresh_path("/a/b") end) },
   check = function(r) assert.is_true(r) end,
   extra = function(t)
      local ok, err = t.works("a path under a file", log.mkdirs, F.garbage .. "/x")
      assert.is_nil(ok)
      assert.are.equal("string", type(err))
   end,
})
case("dpo.log.rmtree", {
   name = { "rmtree", "dpo.log" },
   args = { S.path(function() local p = fresh_path(); log.mkdirs(p .. "/x"); return p end) },
   check = function(r) assert.is_true(r) end,
   extra = function(t)
      -- a zero byte in the path of a directory that exists and is not empty,
      -- run with a bound on the calls: unbounded, it recursed until the
      -- process ran out of memory
      local d = fresh_path()
      log.mkdirs(d .. "/x")
      local calls = 0
      local co = coroutine.create(log.rmtree)
      debug.sethook(co, function()
         calls = calls + 1
         if calls > 10000 then error("runaway", 0) end
      end, "c")
      local ok, err = coroutine.resume(co, d .. "\0tail")
      if not ok and err == "runaway" then
         t.problem("rmtree(a non-empty directory's path .. '\\0tail') recursed without end")
      elseif ok then
         t.problem("rmtree(a path with a zero byte) returned %s instead of raising", tostring(err))
      end
   end,
})
case("dpo.log.read", {
   name = { "read", "dpo.log" },
   args = { S.path(F.metrics) },
   check = function(r) assert.are.equal(0.5, r[1].loss) end,
   extra = function(t)
      local ok, err = t.works("a missing file", log.read, F.missing)
      assert.is_nil(ok)
      assert.are.equal("string", type(err))
      ok, err = t.works("a file that is not JSON lines", log.read, F.garbage)
      assert.is_nil(ok)
   end,
})
case("dpo.log.open", {
   name = { "open", "dpo.log" },
   args = { S.path(function() return fresh_path() end),
            S.opt(S.opts { overwrite = S.opt(S.any(true)), config = S.opt(S.tab({ a = 1 })) }) },
   check = function(run) run:close() end,
   extra = function(t)
      t.fails("a path that is a file", log.open, F.garbage)
      t.fails("a directory that cannot be made", log.open, F.garbage .. "/x")
   end,
})
case("dpo.log.progress", {
   name = { "progress", "dpo.log" },
   args = { S.opt(S.opts { total = S.opt(S.int(3)), phase = S.opt(S.str("t")), mode = S.opt(S.str("off")),
                           every = S.opt(S.int(1)), first = S.opt(S.int(0, { ok = { "-1" } })),
                           width = S.opt(S.int(10)), stream = S.opt(S.any(io.stderr)) }) },
   extra = function(t) t.fails("a mode 'x'", log.progress, { mode = "x" }) end,
})

local function mem_run() return log.memory() end
local function file_run() return log.open(fresh_path()) end
local function closed_run()
   local r = file_run()
   r:close()
   return r
end
local function scoped_run()
   local r = file_run()
   do local _ <close> = r end
   return r
end
local RUN = getmetatable(mem_run())
case("dpo.log.Run.log", {
   name = { "log", "dpo.log" },
   args = { S.obj(file_run, { table_ok = true, dead = { { "a closed run", closed_run },
                                                        { "a run closed by <close>", scoped_run } } }),
            S.tab({ step = 1 }) },
   self = true,
   extra = function(t) t.fails("a record with a function", RUN.log, file_run(), { f = print }) end,
})
case({ "dpo.log.Run.elapsed", "dpo.log.Run.__tostring" }, {
   args = { S.obj(mem_run, { table_ok = true }) }, self = true,
   call = function(r) return RUN.elapsed(r), RUN.__tostring(r) end,
})
case("dpo.log.Run.close", {
   args = { S.obj(file_run, { table_ok = true }) }, self = true,
   extra = function(t) t.works("closing twice", RUN.close, closed_run()) end,
})

local function bar() return log.progress { total = 3, mode = "off" } end
local function line_bar()
   local f = io.open(fresh_path(".txt"), "w")
   return log.progress { total = 3, mode = "lines", stream = f }
end
local PR = getmetatable(bar())
case("dpo.log.Progress.update", {
   name = { "update", "dpo.log" },
   args = { S.obj(line_bar, { table_ok = true }), S.int(1, { ok = { "-1", "math.maxinteger",
      "math.mininteger" } }),
            S.opt(S.tab({ loss = 0.5 })) },
   self = true,
   name = "update",
})
case("dpo.log.Progress.status", {
   name = { "status", "dpo.log" },
   args = { S.obj(bar, { table_ok = true }), S.int(1, { ok = { "-1", "math.maxinteger",
      "math.mininteger" } }),
            S.opt(S.tab({ loss = 0.5 })) },
   self = true,
   name = "status",
})
case("dpo.log.Progress.print", {
   name = { "print", "dpo.log" },
   args = { S.obj(line_bar, { table_ok = true }), S.str("text") }, self = true,
})
case("dpo.log.Progress.finish", { args = { S.obj(bar, { table_ok = true }) }, self = true })

-- ---- dpo.eval ---------------------------------------------------------------------------------------

local ev = dpo.eval
local SELF_TDS_ARG = S.obj(function() return SHARED_TDS end, { table_ok = false })
local EVAL_OPTS = S.opt(S.opts({ batch_size = S.opt(S.int(2, { ok = { "math.maxinteger" } })),
                                 max_pairs = S.opt(S.int(2, { ok = { "math.maxinteger" } })),
                                 beta = S.opt(S.fin(0.1, { bad = NEGATIVE })),
                                 loss = S.opt(S.obj(function() return "ipo" end, { ok = {} })),
                                 loss_options = S.opt(S.tab({})),
                                 ref_logps = S.opt(S.fn(function(ps) return dpo.zeros(#ps),
                                    dpo.zeros(#ps) end)) },
                               { strict = true }))

case("dpo.eval.resolve_loss", {
   args = { S.opt(S.obj(function() return "ipo" end, { ok = { "a function" } })) },
   name = "loss",
   check = function(fn) assert.are.equal(dpo.losses.ipo, fn) end,
   extra = function(t)
      t.fails("the name 'list'", ev.resolve_loss, "list")
      t.fails("an unknown name", ev.resolve_loss, "nope")
   end,
})
case("dpo.eval.preferences", {
   args = { MODEL(), S.opt(MODEL()), SELF_TDS_ARG, EVAL_OPTS },
   check = function(m) assert.are.equal(2, m.pairs) end, -- max_pairs
   extra = function(t)
      t.works("ref false", ev.preferences, model(), false, SHARED_TDS)
      t.fails("an untokenized dataset", ev.preferences, model(), false, ds())
      t.fails("an empty dataset", ev.preferences, model(), false, SHARED_TDS:take(0))
      t.fails("a loss that returns nothing", ev.preferences, model(), false, SHARED_TDS, { loss = noop })
      t.fails("ref_logps returning strings", ev.preferences, model(), nil, SHARED_TDS,
              { ref_logps = function() return "a", "b" end })
   end,
})
case("dpo.eval.nll", {
   args = { MODEL(), SELF_TDS_ARG, S.opt(S.opts({ batch_size = S.opt(S.int(2,
      { ok = { "math.maxinteger" } })),
                                                  max_pairs = S.opt(S.int(2,
                                                     { ok = { "math.maxinteger" } })) },
                                                { strict = true })) },
   check = function(m) assert.are.equal(2, m.pairs) end,
})
case("dpo.eval.samples", {
   args = { MODEL(), TOK(function() return SHARED_TOK end), S.tab({ "Hi", { prompt = "Yo", chosen = "a" } }),
            S.opt(S.opts({ ref = S.opt(MODEL()), max_new_tokens = S.opt(S.int(2)),
                           temperature = S.opt(S.fin(0, { bad = NEGATIVE })), top_k = S.opt(S.int(3)),
                           top_p = S.opt(S.fin(0.9, { bad = OUT_OF_RANGE })),
                           seed = S.opt(S.int(1, { ok = ANY_INT })),
                           max_prompt_tokens = S.opt(S.int(4, { ok = { "math.maxinteger" } })) },
                         { strict = true })) },
   check = function(list) assert.are.equal(2, #list) end,
   extra = function(t)
      t.fails("a prompt that is a number", ev.samples, model(), SHARED_TOK, { 1 })
      t.fails("max_new_tokens above n_ctx", ev.samples, model(), SHARED_TOK, { "Hi" },
         { max_new_tokens = 40 })
   end,
})
local SAMPLES = { { prompt = "\n\nHuman: hi\n\nAssistant:", policy = " yo", reference = " hey",
   chosen = " a" } }
case("dpo.eval.format_samples", {
   args = { S.tab(SAMPLES), S.opt(S.opts { policy_name = S.opt(S.str("p")), ref_name = S.opt(S.str("r")) }) },
   check = function(s) assert.is_truthy(s:find("hi", 1, true)) end,
   extra = function(t)
      t.fails("an entry without a prompt", ev.format_samples, { { policy = "x" } })
      t.fails("an entry that is a string", ev.format_samples, { "x" })
   end,
})
case("dpo.eval.last_turn", {
   args = { S.str("\n\nHuman: hi\n\nAssistant:") },
   check = function(s) assert.are.equal("hi", s) end,
})

-- ---- dpo.report -------------------------------------------------------------------------------------

local rep = dpo.report
local RECORDS = { { step = 1, phase = "sft", loss = 1.5 }, { step = 2, phase = "sft", loss = 0.5 },
                  { step = 3, phase = "dpo", loss = 0 / 0, ["rewards/accuracies"] = 0.5 } }
local REPORT_OPTS = function()
   return S.opt(S.opts({ title = S.opt(S.str("t")), subtitle = S.opt(S.str("s")),
                         records = S.opt(S.tab(RECORDS)),
                         table = S.opt(S.tab({ columns = { "", "a" }, rows = { { "x", 0.5 } } })),
                         samples = S.opt(S.tab(SAMPLES)), policy_name = S.opt(S.str("p")),
                         ref_name = S.opt(S.str("r")), facts = S.opt(S.tab({ { "data", "x" } })),
                         config = S.opt(S.tab({ "a=1" })), charts = S.opt(S.tab(rep.CHARTS)),
                         samples_title = S.opt(S.str("x")) },
                       { strict = true }))
end
case("dpo.report.num", {
   any = "any value prints",
   check = function(s) assert.are.equal("string", type(s)) end,
})
case("dpo.report.chart", {
   args = { S.tab(rep.CHARTS[1]), S.tab(RECORDS), S.opt(S.opts({ phases = S.opt(S.tab({})) },
      { strict = true })) },
   check = function(svg) assert.is_truthy(svg:find("<svg", 1, true)) end,
   extra = function(t)
      t.fails("a spec without series", rep.chart, { title = "x" }, RECORDS)
      t.fails("a series without a key", rep.chart, { title = "x", series = { {} } }, RECORDS)
      t.fails("records that are numbers", rep.chart, rep.CHARTS[1], { 1, 2 })
      assert.is_nil(t.works("no finite value", rep.chart, rep.CHARTS[1], { { step = 1, loss = 0 / 0 } }))
      t.works("huge values", rep.chart, rep.CHARTS[1], { { step = 1, loss = 1e300 }, { step = 2e300,
         loss = -1e300 } })
   end,
})
case("dpo.report.html", {
   args = { REPORT_OPTS() },
   check = function(s) assert.is_truthy(s:find("<html", 1, true)) end,
   extra = function(t)
      t.fails("a sample without a prompt", rep.html, { samples = { { policy = "x" } } })
      t.fails("a table row that is a number", rep.html, { table = { rows = { 1 } } })
      t.fails("a fact that is a string", rep.html, { facts = { "x" } })
   end,
})
case("dpo.report.write", {
   args = { S.path(function() return fresh_path(".html") end), REPORT_OPTS() },
   extra = function(t) t.fails("a missing directory", rep.write, F.missing, {}) end,
})
case("dpo.report.text_table", {
   args = { S.tab({ columns = { "", "a" }, rows = { { "x", 0.5 } }, caption = "c" }) },
   check = function(s) assert.is_truthy(s:find("0.5", 1, true)) end,
   extra = function(t)
      t.fails("rows that are numbers", rep.text_table, { rows = { 1 } })
      t.fails("columns that are a string", rep.text_table, { columns = "x" })
   end,
})

-- ---- dpo.train ------------------------------------------------------------------------------------

local tr = dpo.train
local function ckpt()
   local d = fresh_path()
   tr.save_checkpoint(d, { model = model(), tokenizer = SHARED_TOK, optimizer = opt(),
                           state = { format = "x" } })
   return d
end
F.ckpt = ckpt()

case("dpo.train.hex", {
   name = { "hex", "dpo.train" }, args = { S.str("\0\255") },
      check = function(s) assert.are.equal("00ff", s) end })
case("dpo.train.unhex", {
   name = { "unhex", "dpo.train" }, args = { S.str("00ff") },
      check = function(s) assert.are.equal("\0\255", s) end })
case("dpo.train.data_key", {
   name = { "data_key", "dpo.train" },
   args = { S.obj(function() return SHARED_TDS end, { table_ok = false }) },
   check = function(k) assert.are.equal(16, #k) end,
})
case("dpo.train.weights_key", {
   name = { "weights_key", "dpo.train" },
   args = { MODEL() },
   check = function(k) assert.are.equal(16, #k) end,
})
case("dpo.train.save_checkpoint", {
   name = { "save_checkpoint", "dpo.train" },
   args = { S.path(function() return fresh_path() end),
            S.opts { model = MODEL(), tokenizer = S.opt(TOK()), optimizer = S.opt(S.obj(opt,
               { table_ok = false })),
                     state = S.opt(S.tab({ a = 1 })), ref = S.opt(MODEL()) } },
   extra = function(t)
      t.fails("a state with a function", tr.save_checkpoint, fresh_path(), { model = model(),
         state = { f = print } })
      t.fails("a directory that cannot be made", tr.save_checkpoint, F.garbage .. "/x", { model = model() })
   end,
})
case("dpo.train.load_checkpoint", {
   name = { "load_checkpoint", "dpo.train" },
   args = { S.path(F.ckpt) },
   check = function(c) assert.are.equal(257, c.model:config().vocab_size) end,
   extra = function(t)
      t.fails("a missing directory", tr.load_checkpoint, F.missing)
      t.fails("a directory that is no checkpoint", tr.load_checkpoint, DIR)
      local d = ckpt()
      h.write(d .. "/trainer_state.json", "{broken")
      t.fails("a broken trainer_state.json", tr.load_checkpoint, d)
   end,
})
case("dpo.train.checkpoints", {
   name = { "checkpoints", "dpo.train" },
   args = { S.path(DIR) },
   check = function(l) assert.are.equal("table", type(l)) end,
})
case("dpo.train.latest_checkpoint", {
   name = { "latest_checkpoint", "dpo.train" },
   args = { S.path(function() local d = fresh_path(); tr.save_checkpoint(d .. "/checkpoint-3",
      { model = model(),
                                                                 state = { format = "x" } }); return d end),
            S.opt(S.fn(noop)) },
   extra = function(t)
      local ok, err = t.works("a missing directory", tr.latest_checkpoint, F.missing)
      assert.is_nil(ok)
      assert.are.equal("string", type(err))
   end,
})

local function train_opts(kind)
   local f = {
      data = S.obj(tds, { table_ok = false }), eval_data = S.opt(S.obj(tds, { table_ok = false })),
      batch_size = S.opt(S.int(1, { ok = { "math.maxinteger" } })),
      -- (the maximal integers would run for ever if accepted)
      grad_accum = S.opt(S.int(1, { skip = { "math.maxinteger" } })),
      max_steps = S.opt(S.int(1, { skip = { "math.maxinteger" } })),
      optimizer = S.opt(S.obj(function() return "sgd" end)),
      optimizer_options = S.opt(S.tab({})),
      lr = S.opt(S.fin(1e-3, { bad = NEGATIVE })),
      max_grad_norm = S.opt(S.fin(1, { ok = { "inf" }, bad = NEGATIVE })),
      shuffle = S.opt(S.any(true)), seed = S.opt(S.int(1, { ok = ANY_INT })),
      eval_every = S.opt(S.int(1, { ok = { "math.maxinteger" } })),
      eval_pairs = S.opt(S.int(1, { ok = { "math.maxinteger" } })),
      eval_batch_size = S.opt(S.int(2, { ok = { "math.maxinteger" } })),
      log_every = S.opt(S.int(1, { ok = { "math.maxinteger" } })),
      save_every = S.opt(S.int(1, { ok = { "math.maxinteger" } })),
      max_bad_steps = S.opt(S.int(1, { ok = { "math.maxinteger" } })),
      global_step = S.opt(S.int(0)),
      phase = S.opt(S.str("p")), progress = S.opt(S.str("off")), quiet = S.opt(S.any(true)),
      save = S.opt(S.any(false)), dropout = S.opt(S.any(false)),
      on_log = S.opt(S.fn(noop)), on_eval = S.opt(S.fn(noop)),
      tokenizer = S.opt(TOK()), run = S.opt(S.obj(mem_run, { table_ok = false })),
   }
   f.quiet, f.save = S.any(true), S.any(false)
   if kind == "dpo" then
      f.policy = MODEL()
      f.ref = S.opt(MODEL())
      f.loss = S.opt(S.obj(function() return "ipo" end))
      f.loss_options = S.opt(S.tab({}))
      f.beta = S.opt(S.fin(0.1, { bad = NEGATIVE }))
   else
      f.model = MODEL()
   end
   return S.opts(f, { strict = true })
end
for _, kind in ipairs { "sft", "dpo" } do
   case("dpo.train." .. kind, {
      args = { train_opts(kind) },
      name = { "dpo.train." .. kind },
      check = function(r) assert.are.equal(1, r.steps) end,
      extra = function(t)
         local base = { data = tds(), max_steps = 1, quiet = true, save = false }
         base[kind == "dpo" and "policy" or "model"] = model()
         local function with(k, v)
            local c = {}
            for kk, vv in pairs(base) do c[kk] = vv end
            c[k] = v
            return c
         end
         t.fails("a frozen model", tr[kind], with(kind == "dpo" and "policy" or "model", model():freeze()))
         t.fails("an empty dataset", tr[kind], with("data", tds():take(0)))
         t.fails("an untokenized dataset", tr[kind], with("data", ds()))
         t.fails("an unknown optimizer", tr[kind], with("optimizer", "adam"))
         t.fails_with("an lr schedule giving NaN", "lr", tr[kind], with("lr", function() return 0 / 0 end))
         t.fails_with("an out directory that is a file", F.garbage, tr[kind], with("out", F.garbage))
         t.fails("a resume directory that is no checkpoint", tr[kind], with("resume", DIR))
      end,
   })
end

-- ---- dpo.cli ----------------------------------------------------------------------------------------

local cli = dpo.cli
local SPEC = { { "n", 1, "a number" }, { "name", "x", "a name", choices = { "x", "y" } }, { "flag",
   false, "a flag" } }
case("dpo.cli.closest", {
   name = { "closest", "dpo.cli" },
   args = { S.str("nme"), S.tab({ "name", "n" }) },
   check = function(s) assert.are.equal("name", s) end,
   extra = function(t) t.fails("candidates with a number", cli.closest, "a", { 1 }) end,
})
case("dpo.cli.dump", {
   name = { "dump", "dpo.cli" },
   args = { S.tab(function() return cli.try_parse({ "--n=2" }, SPEC) end) },
   check = function(l) assert.are.same({ "flag=false", "n=2", "name=x" }, l) end,
})
case("dpo.cli.help", {
   name = { "help", "dpo.cli" },
   args = { S.tab(SPEC), S.opt(S.tab({ n = 3 })) },
   check = function(s) assert.is_truthy(s:find("--n=3", 1, true)) end,
   extra = function(t)
      t.fails("a default for an unknown option", cli.help, SPEC, { nope = 1 })
      t.fails("an option without a name", cli.help, { { nil, 1, "x" } })
   end,
})
case("dpo.cli.try_parse", {
   name = { "try_parse", "dpo.cli" },
   args = { S.opt(S.tab({ "--n=2", "--no-flag" })), S.tab(SPEC), S.opt(S.tab({ n = 3 })) },
   check = function(o) assert.are.equal(2, o.n) end,
   extra = function(t)
      for _, argv in ipairs { { "--n=x" }, { "--nope" }, { "stray" }, { "--name=z" }, { 1 }, { "--n" },
                              { "--n=nan" }, { "--n=1e999" } } do
         local o, msg = t.works("argv " .. tostring(argv[1]), cli.try_parse, argv, SPEC)
         if o ~= nil or type(msg) ~= "string" then
            t.problem("argv %s: expected nil and a message", tostring(argv[1]))
         end
      end
   end,
})
case("dpo.cli.parse", {
   name = { "parse", "dpo.cli" },
   -- a bad command line ends the process (status 2) by design; only the
   -- spec's misuse raises here, and try_parse above covers the command lines
   args = { S.opt(S.tab({ "--n=2" })), S.tab(SPEC), S.opt(S.tab({ n = 3 })) },
   skip_probes = { [1] = true, [3] = true },
   check = function(o) assert.are.equal(2, o.n) end,
})

-- ---- the run ------------------------------------------------------------------------------------

-- Functions of files this spec does not fix, whose case shows a fault to
-- mend there: the case runs, and its problems are reported as pending until
-- the fault is gone (then the entry must go, or the test fails).
local KNOWN = {
}

describe("the public surface", function()
   teardown(function() h.cleanup() end)

   local functions = enumerate()

   it("has a case for every public function", function()
      local missing, stale, exists = {}, {}, {}
      for _, e in ipairs(functions) do
         local covered = false
         for _, p in ipairs(e.paths) do
            exists[p] = true
            if CASES[p] then covered = true end
         end
         if not covered then missing[#missing + 1] = table.concat(e.paths, " = ") end
      end
      for p in pairs(CASES) do
         if not exists[p] then stale[#stale + 1] = p end
      end
      table.sort(missing)
      table.sort(stale)
      if #missing > 0 or #stale > 0 then
         error(format("%d public functions have no case in tests/spec/surface_spec.lua:\n  %s\n" ..
                      "%d cases name no public function:\n  %s", #missing,
                      table.concat(missing, "\n  "), #stale, table.concat(stale, "\n  ")), 0)
      end
   end)

   -- the function a path names, and how to call it so Lua names it
   local at = {}
   for _, e in ipairs(functions) do
      for p, where in pairs(e.at) do at[p] = { fn = e.fn, call = caller(where[1], where[2]) } end
      NAMED[e.fn] = at[e.paths[1]].call
      for p in pairs(e.at) do TARGETS[at[p].call] = e.fn end
   end

   -- DPO_SURFACE_ONLY=pattern[,pattern...]: run only the cases whose first
   -- path matches one of the Lua patterns (when chasing one function)
   local only = os.getenv("DPO_SURFACE_ONLY")
   local function selected(path)
      if not only then return true end
      for pat in only:gmatch("[^,]+") do
         if path:find(pat) then return true end
      end
      return false
   end
   for _, c in ipairs(ORDER) do
      local path = c.paths[1]
      if selected(path) then it(table.concat(c.paths, ", "), function()
         local target = at[path]
         assert(target or c.call or not c.args, path .. " is not a public function")
         local problems = run(path, c, target and target.call)
         local known = KNOWN[path]
         if known then
            if #problems == 0 then
               error(path .. " is listed in KNOWN but has no problem left: remove it from the list", 0)
            end
            -- (busted's pending does not print its text: the details go to stderr)
            io.stderr:write(format("%s: known, to be mended there (%s):\n  %s\n", path, known,
                                   table.concat(problems, "\n  ")))
            pending(format("known (%s)", known))
            return
         end
         if #problems > 0 then
            error(format("%d problems:\n  %s", #problems, table.concat(problems, "\n  ")), 0)
         end
      end) end
   end
end)
