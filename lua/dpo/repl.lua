-- dpo.repl: what the interactive prompt uses to print results and to
-- complete names. core/cli/repl.c calls `show(...)` with the values a line
-- returned and `complete(word)` when Tab is pressed. Neither calls a
-- user function nor triggers an __index function: both read tables raw.

local repl = {}

local MAX_DEPTH = 2   -- tables nested deeper print as {...}
local MAX_ITEMS = 50  -- entries shown per table before "..."
local WIDTH = 80      -- a table fitting in this many columns prints on one line

local keywords = {
   "and", "break", "do", "else", "elseif", "end", "false", "for", "function",
   "goto", "if", "in", "local", "nil", "not", "or", "repeat", "return", "then",
   "true", "until", "while",
}
local is_keyword = {}
for _, k in ipairs(keywords) do is_keyword[k] = true end

-- The metatable of v, even when protected by __metatable.
local getmt = debug and debug.getmetatable or getmetatable

local function is_name(s)
   return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil and not is_keyword[s]
end

-- tostring that never raises; a multi-line result (a tensor) becomes its
-- last line when `summary` is set, e.g. "[dpo.Tensor float32 of size 3x4]".
local function safe_tostring(v, summary)
   local ok, s = pcall(tostring, v)
   if not ok then return "<" .. type(v) .. ": error in __tostring: " .. tostring(s) .. ">" end
   if type(s) ~= "string" then return "<" .. type(v) .. ">" end
   if summary and s:find("\n") then
      local last
      for line in s:gmatch("[^\n]+") do
         if line:match("%S") then last = line end
      end
      s = last or s
   end
   return s
end

-- Order for table keys: numbers first (by value), then strings, then the rest.
local type_rank = { number = 1, string = 2, boolean = 3 }
local function key_less(a, b)
   local ta, tb = type(a), type(b)
   local ra, rb = type_rank[ta] or 4, type_rank[tb] or 4
   if ra ~= rb then return ra < rb end
   if ta == "number" or ta == "string" then return a < b end
   return safe_tostring(a) < safe_tostring(b)
end

local render

local function render_key(k, seen)
   if is_name(k) then return k end
   return "[" .. render(k, MAX_DEPTH, seen, "") .. "]"
end

-- The text of a table: {1, 2, 3} for a sequence, { a = 1 } for a short
-- record, one entry per line otherwise.
local function render_table(t, depth, seen, indent)
   if seen[t] then return "<cycle: " .. safe_tostring(t) .. ">" end
   local mt = getmt(t)
   if type(mt) == "table" and rawget(mt, "__tostring") ~= nil then
      return safe_tostring(t, depth > 0)
   end
   if next(t) == nil then return "{}" end
   if depth >= MAX_DEPTH then return "{...}" end
   seen[t] = true
   local n = rawlen(t)
   local keys, count = {}, 0
   for k in next, t do
      count = count + 1
      if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
   end
   table.sort(keys, key_less)

   local items, shown = {}, 0
   local inner = indent .. "  "
   for i = 1, n do
      if shown >= MAX_ITEMS then break end
      items[#items + 1] = render(rawget(t, i), depth + 1, seen, inner)
      shown = shown + 1
   end
   for _, k in ipairs(keys) do
      if shown >= MAX_ITEMS then break end
      items[#items + 1] = render_key(k, seen) .. " = " .. render(rawget(t, k), depth + 1, seen, inner)
      shown = shown + 1
   end
   if shown < count then items[#items + 1] = "..." end
   seen[t] = nil

   local oneline = "{" .. table.concat(items, ", ") .. "}"
   if #keys > 0 then oneline = "{ " .. table.concat(items, ", ") .. " }" end
   if #indent + #oneline <= WIDTH and not oneline:find("\n") then return oneline end
   if #keys == 0 and not table.concat(items):find("\n") then
      -- a long sequence of short items: fill lines up to WIDTH
      local lines, line = {}, inner
      for i, item in ipairs(items) do
         local piece = item .. (i < #items and "," or "")
         if #line > #inner and #line + 1 + #piece > WIDTH then
            lines[#lines + 1] = line
            line = inner .. piece
         else
            line = line .. (#line > #inner and " " or "") .. piece
         end
      end
      lines[#lines + 1] = line
      return "{\n" .. table.concat(lines, "\n") .. "\n" .. indent .. "}"
   end
   return "{\n" .. inner .. table.concat(items, ",\n" .. inner) .. "\n" .. indent .. "}"
end

-- The text of any value; `depth` is how deep inside tables it sits.
function render(v, depth, seen, indent)
   local tv = type(v)
   if tv == "string" then
      if depth == 0 then return v end
      return (string.format("%q", v):gsub("\\\n", "\\n"))
   elseif tv == "table" then
      return render_table(v, depth, seen, indent)
   end
   return safe_tostring(v, depth > 0)
end

-- Print each value on its own line: strings as they are, tables
-- pretty-printed, everything else through tostring.
-- ARGS: any number of values (nils included). RETURNS: nothing.
function repl.show(...)
   local n = select("#", ...)
   for i = 1, n do
      local v = select(i, ...)
      io.write(render(v, 0, {}, ""), "\n")
   end
   io.flush()
end

-- Raw field lookup: the value itself for tables, then the __index tables
-- (and __methods tables) of the metatable chain. Never calls anything.
local function lookup(v, key)
   local visited = {}
   while v ~= nil and not visited[v] do
      visited[v] = true
      if type(v) == "table" then
         local x = rawget(v, key)
         if x ~= nil then return x end
      end
      local mt = getmt(v)
      if type(mt) ~= "table" then return nil end
      local methods = rawget(mt, "__methods")
      if type(methods) == "table" and rawget(methods, key) ~= nil then
         return rawget(methods, key)
      end
      local idx = rawget(mt, "__index")
      if type(idx) ~= "table" then return nil end
      v = idx
   end
   return nil
end

-- All string keys reachable from v the way lookup goes: key -> value,
-- the nearest one winning.
local function fields(v)
   local out, visited = {}, {}
   local function add(t)
      for k, x in next, t do
         if type(k) == "string" and out[k] == nil then out[k] = x end
      end
   end
   while v ~= nil and not visited[v] do
      visited[v] = true
      if type(v) == "table" then add(v) end
      local mt = getmt(v)
      if type(mt) ~= "table" then break end
      local methods = rawget(mt, "__methods")
      if type(methods) == "table" then add(methods) end
      local idx = rawget(mt, "__index")
      if type(idx) ~= "table" then break end
      v = idx
   end
   return out
end

local function suffix(x)
   local t = type(x)
   if t == "function" then return "(" end
   if t == "table" then return "." end
   return ""
end

-- Candidates for the word before the cursor, each a whole word with its
-- suffix: "(" after a function, "." after a table.
-- ARGS: word, e.g. "dpo.zer", "t:si", "pri". RETURNS: sorted list of strings.
function repl.complete(word)
   word = tostring(word or "")
   local result, have = {}, {}
   local function add(s)
      if not have[s] then
         have[s] = true
         result[#result + 1] = s
      end
   end

   local prefix, sep, partial = word:match("^(.*)([.:])([%w_]*)$")
   if not prefix then
      partial = word
      for k, x in pairs(fields(_G)) do
         if is_name(k) and k:sub(1, #partial) == partial then add(k .. suffix(x)) end
      end
      for _, k in ipairs(keywords) do
         if k:sub(1, #partial) == partial then add(k) end
      end
      table.sort(result)
      return result
   end

   local v = _G
   for name in (prefix .. "."):gmatch("([^.:]*)[.:]") do
      if not is_name(name) then return result end
      v = lookup(v, name)
      if v == nil then return result end
   end
   local hide_meta = partial:sub(1, 2) ~= "__"
   for k, x in pairs(fields(v)) do
      if is_name(k) and k:sub(1, #partial) == partial and not (hide_meta and k:sub(1, 2) == "__")
         and (sep == "." or type(x) == "function") then
         add(prefix .. sep .. k .. suffix(x))
      end
   end
   table.sort(result)
   return result
end

return repl
