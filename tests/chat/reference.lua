-- Python's jinja2 as transformers configures it, run from the specs:
--   local ref = dofile("tests/chat/reference.lua")
--   ref.render(cases) -> results
-- cases: a list of {template = text, vars = {...}} or {template = text, chat =
-- {messages, add_generation_prompt, special, extra, tools}} (see
-- tests/chat/render.py); results[i] = {ok = true, out = text} or {ok = false,
-- error = message}. The cases travel as JSON written by dpo.jinja.tojson, so
-- Python reads the values a template sees in dpo.jinja (1 and 1.0 stay apart,
-- dict keys keep their order). One python3 process renders all of them.
local cjson = require("cjson").new()
local jinja = require "dpo.jinja"

local ref = {}

ref.PYTHON = os.getenv("DPO_PYTHON") or "/usr/bin/python3"
ref.SCRIPT = "tests/chat/render.py"

local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

function ref.render(cases)
   local input, output = os.tmpname(), os.tmpname()
   local parts = {}
   for i, c in ipairs(cases) do
      local case = { template = c.template }
      if c.chat then case.chat = c.chat else case.vars = c.vars or {} end
      parts[i] = jinja.tojson(case)
   end
   local f = assert(io.open(input, "wb"))
   f:write("[", table.concat(parts, ",\n"), "]")
   f:close()
   local cmd = string.format("%s %s %s %s 2>&1", ref.PYTHON, ref.SCRIPT, quote(input), quote(output))
   local p = io.popen(cmd)
   local log = p:read("a")
   local ok = p:close()
   os.remove(input)
   if not ok then
      os.remove(output)
      error("tests/chat/render.py failed (is python3-jinja2 installed? tools/install-deps.sh):\n" .. log)
   end
   f = assert(io.open(output, "rb"))
   local results = cjson.decode(f:read("a"))
   f:close()
   os.remove(output)
   assert(#results == #cases, "render.py returned " .. #results .. " results for " .. #cases .. " cases")
   return results
end

-- The text of a fixture file.
function ref.fixture(name)
   local f = assert(io.open("tests/fixtures/chat/" .. name, "rb"))
   local s = f:read("a")
   f:close()
   return s
end

return ref
