-- The `dpolua` command line, run as a real subprocess: options, `arg`,
-- stdin, shebang scripts, error reports and exit codes, compared with what
-- `lua` does. The binary is $DPOLUA (absolute path), else build/dpolua.

local function shell_quote(s)
   return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function abspath(p)
   if p:sub(1, 1) == "/" then return p end
   local pipe = io.popen("pwd")
   local pwd = pipe:read("l")
   pipe:close()
   return pwd .. "/" .. p
end

local h = dofile("tests/spec/helper.lua")
local read_file, write_file = h.read, h.write

local DPOLUA = abspath(os.getenv("DPOLUA") or "build/dpolua")

local function tmpdir()
   local p = io.popen("mktemp -d")
   local d = p:read("l")
   p:close()
   return d
end

-- Run dpolua with `args` (a string already quoted for sh). opts: stdin
-- (text fed to it), env (name -> value), cwd, cmd (a whole command line to
-- run instead of "dpolua args"). Returns { code, out, err }.
local function run(args, opts)
   opts = opts or {}
   local out, err, inp = os.tmpname(), os.tmpname(), os.tmpname()
   write_file(inp, opts.stdin or "")
   local env = { "env -u LUA_INIT -u LUA_INIT_5_4 -u DPOLUA_PATH" }
   for k, v in pairs(opts.env or {}) do env[#env + 1] = k .. "=" .. shell_quote(v) end
   local cmd = opts.cmd or (shell_quote(DPOLUA) .. " " .. (args or ""))
   local line = table.concat(env, " ") .. " " .. cmd
   if opts.cwd then line = "cd " .. shell_quote(opts.cwd) .. " && " .. line end
   line = "(" .. line .. ") <" .. inp .. " >" .. out .. " 2>" .. err
   local _, _, code = os.execute(line)
   local r = { code = code, out = read_file(out), err = read_file(err) }
   os.remove(out)
   os.remove(err)
   os.remove(inp)
   return r
end

local function script(text)
   local path = os.tmpname()
   write_file(path, text)
   return path
end

describe("dpolua command line", function()
   it("exists and is executable", function()
      local f = io.open(DPOLUA, "rb")
      assert.is_not_nil(f, "no dpolua binary at " .. DPOLUA .. " (set DPOLUA)")
      f:close()
   end)

   it("-v prints the version line and exits 0", function()
      local r = run("-v")
      assert.equals(0, r.code)
      assert.matches("^dpolua %d+%.%d+%.%d+ %(Lua 5%.4%.%d+", r.out)
      assert.equals("", r.err)
      local r2 = run("--version")
      assert.equals(0, r2.code)
      assert.equals(r.out, r2.out)
   end)

   it("-h lists the options on stdout and exits 0", function()
      for _, opt in ipairs { "-h", "--help" } do
         local r = run(opt)
         assert.equals(0, r.code)
         assert.matches("usage: dpolua %[options%] %[script %[args%]%]", r.out)
         assert.matches("\n  %-e stat ", r.out)
         assert.matches("\n  %-l mod ", r.out)
         assert.matches("\n  %-i ", r.out)
         assert.matches("\n  %-E ", r.out)
      end
   end)

   it("-e runs a statement", function()
      local r = run("-e 'print(1+1)'")
      assert.equals(0, r.code)
      assert.equals("2\n", r.out)
      local r2 = run("-e 'x = 20' -e 'print(x + 1)'")
      assert.equals("21\n", r2.out)
   end)

   it("gives a script its arguments in arg and ...", function()
      local s = script("print(arg[0], arg[1], arg[2], #arg, select('#', ...), ...)\n" ..
         "print(arg[-1] == os.getenv('DPOLUA_UNDER_TEST'))\n")
      local r = run(shell_quote(s) .. " one 'two words'", { env = { DPOLUA_UNDER_TEST = DPOLUA } })
      os.remove(s)
      assert.equals(0, r.code)
      assert.equals(s .. "\tone\ttwo words\t2\t2\tone\ttwo words\ntrue\n", r.out)
   end)

   it("puts the interpreter's options at negative indices of arg", function()
      local s = script("print(arg[-3] == os.getenv('DPOLUA_UNDER_TEST'), arg[-2], arg[-1], arg[0], arg[1])\n")
      local r = run("-e 'x=1' " .. shell_quote(s) .. " a", { env = { DPOLUA_UNDER_TEST = DPOLUA } })
      os.remove(s)
      assert.equals(0, r.code)
      assert.equals("true\t-e\tx=1\t" .. s .. "\ta\n", r.out)
   end)

   it("runs stdin for '-', with arguments", function()
      local r = run("- a b", { stdin = "print(arg[0], ...)\n" })
      assert.equals(0, r.code)
      assert.equals("-\ta\tb\n", r.out)
   end)

   it("runs stdin when it is not a terminal and there are no arguments", function()
      local r = run("", { stdin = "print('from stdin', 6 * 7)\n" })
      assert.equals(0, r.code)
      assert.equals("from stdin\t42\n", r.out)
   end)

   it("runs a script starting with a shebang line", function()
      local dir = tmpdir()
      local path = dir .. "/hello"
      write_file(path, "#!/usr/bin/env dpolua\nprint('shebang ok', type(dpo), ...)\n")
      assert.is_true(os.execute("chmod +x " .. shell_quote(path)))
      local r = run(shell_quote(path) .. " x")
      assert.equals(0, r.code)
      assert.equals("shebang ok\ttable\tx\n", r.out)
      -- and executed directly, with dpolua found on PATH
      assert.is_true(os.execute("ln -s " .. shell_quote(DPOLUA) .. " " .. shell_quote(dir .. "/dpolua")))
      local r2 = run(nil, { cmd = "env PATH=" .. shell_quote(dir .. ":" .. os.getenv("PATH")) .. " "
         .. shell_quote(path) .. " y" })
      assert.equals(0, r2.code)
      assert.equals("shebang ok\ttable\ty\n", r2.out)
      os.execute("rm -rf " .. shell_quote(dir))
   end)

   it("reports a script error with its location and a traceback, exit 1", function()
      local s = script("local function f()\n   error('boom')\nend\nf()\n")
      local r = run(shell_quote(s))
      os.remove(s)
      assert.equals(1, r.code)
      assert.matches("^dpolua: .+:%d+: boom\n", r.err)
      assert.matches("^dpolua: " .. s:gsub("%p", "%%%0") .. ":2: boom", r.err)
      assert.truthy(r.err:find("stack traceback", 1, true))
      assert.equals("", r.out)
   end)

   it("reports an error object that is not a string", function()
      local r = run("-e 'error({})'")
      assert.equals(1, r.code)
      assert.matches("^dpolua: %(error object is a table value%)", r.err)
      local r2 = run("-e 'error(setmetatable({}, {__tostring = function() return \"custom error\" end}))'")
      assert.equals(1, r2.code)
      assert.matches("^dpolua: custom error\n", r2.err)
   end)

   it("reports errors in -e code and syntax errors in scripts", function()
      local r = run("-e 'local x = nil + 1'")
      assert.equals(1, r.code)
      assert.matches("^dpolua: %(command line%):1: attempt to perform arithmetic on a nil value", r.err)
      local s = script("x = = 1\n")
      local r2 = run(shell_quote(s))
      os.remove(s)
      assert.equals(1, r2.code)
      assert.matches("^dpolua: .+:1: unexpected symbol near '='", r2.err)
   end)

   it("reports a missing script file", function()
      local r = run("/nonexistent/script.lua")
      assert.equals(1, r.code)
      assert.matches("^dpolua: cannot open /nonexistent/script%.lua", r.err)
   end)

   it("rejects an unknown option with usage, exit 1", function()
      local r = run("-x")
      assert.equals(1, r.code)
      assert.matches("^dpolua: unrecognized option '%-x'\n", r.err)
      assert.matches("usage: dpolua", r.err)
      assert.equals("", r.out)
      local r2 = run("--frobnicate")
      assert.equals(1, r2.code)
      assert.matches("unrecognized option '%-%-frobnicate'", r2.err)
      local r3 = run("-e")
      assert.equals(1, r3.code)
      assert.matches("^dpolua: '%-e' needs argument", r3.err)
   end)

   it("-l requires a module into a global", function()
      local dir = tmpdir()
      write_file(dir .. "/mymod.lua", "return { answer = 42 }\n")
      local env = { LUA_PATH = dir .. "/?.lua;;" }
      local r = run("-l mymod -e 'print(mymod.answer)'", { env = env })
      assert.equals(0, r.code)
      assert.equals("42\n", r.out)
      local r2 = run("-l m=mymod -e 'print(m.answer, mymod)'", { env = env })
      assert.equals(0, r2.code)
      assert.equals("42\tnil\n", r2.out)
      local r3 = run("-l no_such_module_here")
      assert.equals(1, r3.code)
      assert.matches("^dpolua: module 'no_such_module_here' not found", r3.err)
      os.execute("rm -rf " .. shell_quote(dir))
   end)

   it("searches DPOLUA_PATH before its own modules", function()
      local dir = tmpdir()
      assert.is_true(os.execute("mkdir " .. shell_quote(dir .. "/dpo")))
      write_file(dir .. "/dpo/repl.lua", "return 'shadowed dpo.repl'\n")
      local r = run("-e 'print((require \"dpo.repl\"))'", { env = { DPOLUA_PATH = dir .. "/?.lua" } })
      assert.equals(0, r.code)
      assert.equals("shadowed dpo.repl\n", r.out)
      local r2 = run("-E -e 'print(type(require \"dpo.repl\"))'", { env = { DPOLUA_PATH = dir .. "/?.lua" } })
      assert.equals("table\n", r2.out)
      os.execute("rm -rf " .. shell_quote(dir))
   end)

   it("has the global dpo, the same table as require 'dpo'", function()
      local s = script("print(type(dpo), dpo == require('dpo'), type(require('dpo.core')))\n")
      local r = run(shell_quote(s))
      os.remove(s)
      assert.equals(0, r.code)
      assert.equals("table\ttrue\ttable\n", r.out)
   end)

   it("runs LUA_INIT first, and -E ignores it", function()
      local env = { LUA_INIT = "print('init ran')" }
      local r = run("-e 'print(\"main\")'", { env = env })
      assert.equals(0, r.code)
      assert.equals("init ran\nmain\n", r.out)
      local r2 = run("-E -e 'print(\"main\")'", { env = env })
      assert.equals(0, r2.code)
      assert.equals("main\n", r2.out)
      local s = script("print('init file ran')\n")
      local r3 = run("-e 'print(\"main\")'", { env = { LUA_INIT_5_4 = "@" .. s } })
      os.remove(s)
      assert.equals("init file ran\nmain\n", r3.out)
   end)

   it("turns warnings on with -W", function()
      local r = run("-W -e 'warn(\"careful\")'")
      assert.equals(0, r.code)
      assert.matches("Lua warning: careful", r.err)
      local r2 = run("-e 'warn(\"careful\")'")
      assert.equals("", r2.err)
   end)

   it("stops handling options at --", function()
      local s = script("print(...)\n")
      local r = run("-- " .. shell_quote(s) .. " -x")
      os.remove(s)
      assert.equals(0, r.code)
      assert.equals("-x\n", r.out)
   end)

   it("finds its modules from another working directory", function()
      local r = run("-e 'print(dpo ~= nil, require(\"dpo.repl\") ~= nil)'", { cwd = "/tmp" })
      assert.equals(0, r.code)
      assert.equals("true\ttrue\n", r.out)
   end)

   it("runs the prompt after a script with -i, reading stdin", function()
      local s = script("answer = 41\n")
      local r = run("-i " .. shell_quote(s), { stdin = "answer + 1\n" })
      os.remove(s)
      assert.equals(0, r.code)
      assert.matches("\n42\n", r.out)
   end)
end)
