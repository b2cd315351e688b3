-- dpo.jinja.lexer: template text as jinja2's lexer reads it (part of
-- dpo.jinja; internal, not a field of `dpo`).
--
--   lexer.lex(src) -> tokens   {t = kind, v = value, line = n} ...
--
-- Kinds: data, var_begin/var_end, block_begin/block_end and the expression
-- tokens between them (name, string, integer, float, op), then eof. Applies
-- what happens to text before the parser sees it: \r\n and \r read as \n,
-- one trailing newline dropped, whitespace control (- and +), trim_blocks
-- and lstrip_blocks, raw blocks, comments, string escapes. A fault raises
-- values.fail (a Fail table with the line), as every part of dpo.jinja does.
local V = require "dpo.jinja.values"

local sub, byte, find = string.sub, string.byte, string.find
local concat = table.concat
local fail, strip, repr = V.fail, V.strip, V.repr

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

return { lex = lex }
