-- The interactive prompt, driven in a real terminal: each test starts
-- `dpolua` in a private tmux server (fixed 120x40 pane, HOME and
-- DPOLUA_HISTORY in a temporary folder), types keys and polls the screen
-- until what it expects shows up. Needs tmux; fails (never skips) without it.

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

local DPOLUA = abspath(os.getenv("DPOLUA") or "build/dpolua")
local TIMEOUT = 5 -- seconds to wait for the screen to show something

local function capture(cmd)
   local p = io.popen(cmd .. " 2>&1")
   local out = p:read("a")
   local ok, _, code = p:close()
   return out, ok and 0 or code
end

local function have_tmux()
   return os.execute("command -v tmux >/dev/null 2>&1") == true
end

local function clock()
   local p = io.popen("date +%s.%N")
   local t = tonumber(p:read("l"))
   p:close()
   return t or os.time()
end

-- A terminal running dpolua. Keys go in with send/type, the screen comes
-- back with screen(), and wait(pattern) polls until the pattern is there.
local Term = {}
Term.__index = Term

local function new_term(home, history)
   assert(have_tmux(), "repl_spec needs tmux to drive the prompt in a terminal: install tmux")
   local self = setmetatable({}, Term)
   self.server = string.format("dpolua_test_%d_%d", os.time(), math.random(1, 1e9))
   self.tmux = "env -u TMUX tmux -L " .. self.server .. " -f /dev/null"
   local inner = table.concat({
      "env -u LUA_INIT -u LUA_INIT_5_4 -u DPOLUA_PATH",
      "HOME=" .. shell_quote(home),
      "DPOLUA_HISTORY=" .. shell_quote(history),
      "INPUTRC=/dev/null",
      shell_quote(DPOLUA) .. ";",
      "echo \"[dpolua exited $?]\"; sleep 60",
   }, " ")
   local out, code = capture(self.tmux .. " new-session -d -s dpo -x 120 -y 40 " .. shell_quote(inner))
   assert(code == 0, "tmux new-session failed: " .. out)
   return self
end

function Term:screen()
   -- the whole pane including what scrolled off
   return (capture(self.tmux .. " capture-pane -p -J -S - -t dpo"))
end

function Term:type(text)
   local out, code = capture(self.tmux .. " send-keys -t dpo -l " .. shell_quote(text))
   assert(code == 0, "tmux send-keys failed: " .. out)
end

function Term:send(key) -- a key name: Enter, Tab, Up, C-c, C-d
   local out, code = capture(self.tmux .. " send-keys -t dpo " .. key)
   assert(code == 0, "tmux send-keys failed: " .. out)
end

function Term:line(text)
   self:type(text)
   self:send("Enter")
end

-- Poll the screen until `pattern` (a Lua pattern) matches; returns the
-- screen. Fails with the screen in the message after `timeout` seconds,
-- unless `soft` is set (then returns nil).
function Term:wait(pattern, timeout, soft)
   local deadline = clock() + (timeout or TIMEOUT)
   local s
   repeat
      s = self:screen()
      if s:find(pattern) then return s end
      os.execute("sleep 0.05")
   until clock() > deadline
   if soft then return nil end
   error(string.format("timed out waiting for %q; the screen was:\n%s", pattern, s), 2)
end

-- Wait until the screen ends with a fresh, empty prompt.
function Term:prompt()
   return self:wait("dpo> %s*$")
end

function Term:kill()
   os.execute(self.tmux .. " kill-server >/dev/null 2>&1")
end

local function tmpdir()
   local p = io.popen("mktemp -d")
   local d = p:read("l")
   p:close()
   return d
end

local function read_file(path)
   local f = io.open(path, "rb")
   if not f then return nil end
   local s = f:read("a")
   f:close()
   return s
end

describe("dpolua prompt", function()
   local dir, term

   setup(function()
      math.randomseed(os.time())
      assert(have_tmux(), "repl_spec needs tmux to drive the prompt in a terminal: install tmux")
   end)

   before_each(function()
      dir = tmpdir()
      term = new_term(dir, dir .. "/history")
   end)

   after_each(function()
      if term then term:kill() end
      term = nil
      if dir then os.execute("rm -rf " .. shell_quote(dir)) end
   end)

   it("shows a banner and the prompt", function()
      local s = term:prompt()
      assert.matches("dpolua %d+%.%d+%.%d+ %(Lua 5%.4", s)
      assert.matches("\ndpo> ", "\n" .. s)
   end)

   it("prints the value of an expression", function()
      term:prompt()
      term:line("1+1")
      term:wait("dpo> 1%+1\n2\ndpo> ")
      term:line("'a string', nil, 3.5")
      term:wait("\na string\nnil\n3%.5\ndpo> ")
      term:line("x = 41")
      term:line("x + 1, _")
      term:wait("dpo> x %+ 1, _\n42\na string\ndpo> ")
   end)

   it("prints tables like a reader would write them", function()
      term:prompt()
      term:line("{1, 2, 3}")
      term:wait("\n{1, 2, 3}\ndpo> ")
      term:line("{b = 'x', a = {1}}")
      term:wait("\n{ a = {1}, b = \"x\" }\ndpo> ")
   end)

   it("prints a tensor with its footer", function()
      term:prompt()
      term:line("t = dpo.randn(3,4)")
      term:wait("dpo> t = dpo%.randn%(3,4%)\ndpo> ")
      term:line("t")
      term:wait("%[dpo%.Tensor float32 of size 3x4%]")
   end)

   it("reports a syntax error and goes on", function()
      term:prompt()
      term:line("x = = 1")
      term:wait("dpolua: stdin:1: unexpected symbol near '='\ndpo> ")
      term:line("2+3")
      term:wait("dpo> 2%+3\n5\ndpo> ")
   end)

   it("reports an error raised by a tensor operation and goes on", function()
      term:prompt()
      term:line("dpo.zeros(2,3) + dpo.zeros(4)")
      term:wait("dpolua: [^\n]*do not broadcast")
      term:prompt()
      term:line("2+3")
      term:wait("dpo> 2%+3\n5\ndpo> ")
   end)

   it("reads continuation lines for an unfinished chunk", function()
      term:prompt()
      term:line("function f()")
      term:wait("dpo> function f%(%)\n%.%.> ")
      term:line("return 7 end")
      term:wait("%.%.> return 7 end\ndpo> ")
      term:line("f()")
      term:wait("dpo> f%(%)\n7\ndpo> ")
   end)

   it("stops a running computation on Ctrl-C and comes back", function()
      term:prompt()
      term:line("while true do end")
      term:wait("dpo> while true do end\n")
      term:send("C-c")
      if not term:wait("interrupted", 2, true) then
         term:send("C-c") -- the first one may have landed before the loop began
      end
      term:wait("interrupted")
      term:prompt()
      term:line("2+2")
      term:wait("dpo> 2%+2\n4\ndpo> ")
   end)

   it("drops the line being typed on Ctrl-C and keeps running", function()
      term:prompt()
      term:type("this is not lua")
      term:wait("dpo> this is not lua")
      term:send("C-c")
      term:wait("this is not lua[^\n]*\ndpo> %s*$")
      term:line("6*7")
      term:wait("dpo> 6%*7\n42\ndpo> ")
   end)

   it("completes a library field on Tab", function()
      term:prompt()
      term:type("string.for")
      term:send("Tab")
      term:wait("dpo> string%.format%(")
      term:line("'%d', 12)")
      term:wait("dpo> string%.format%('%%d', 12%)\n12\ndpo> ")
   end)

   it("completes a dpo function on Tab", function()
      term:prompt()
      term:type("dpo.zer")
      term:send("Tab")
      term:wait("dpo> dpo%.zero") -- at least the common part
      -- With several candidates (dpo.zero, dpo.zeros) readline lists them
      -- on a later Tab: the first one after a Tab that changed the line
      -- only rings the bell.
      for _ = 1, 2 do
         if term:wait("dpo%.zeros%(", 1, true) then break end
         term:send("Tab")
      end
      term:wait("dpo%.zeros%(")
   end)

   it("completes the methods of a tensor after ':'", function()
      term:prompt()
      term:line("t = dpo.zeros(2, 3)")
      term:prompt()
      term:type("t:resh")
      term:send("Tab")
      term:wait("dpo> t:reshape%(")
      term:line("3, 2)")
      term:wait("%[dpo%.Tensor float32 of size 3x2%]")
   end)

   it("exits on Ctrl-D with status 0", function()
      term:prompt()
      term:send("C-d")
      term:wait("%[dpolua exited 0%]")
   end)

   it("remembers the history of an earlier session", function()
      term:prompt()
      term:line("history_marker = 12345")
      term:wait("dpo> history_marker = 12345\ndpo> ")
      term:line("function g()")
      term:line("return 1 end")
      term:wait("%.%.> return 1 end\ndpo> ")
      term:send("C-d")
      term:wait("%[dpolua exited 0%]")
      local saved = read_file(dir .. "/history")
      assert.is_not_nil(saved, "no history file was written")
      assert.truthy(saved:find("history_marker = 12345", 1, true))
      assert.truthy(saved:find("function g()\nreturn 1 end", 1, true))
      term:kill()

      term = new_term(dir, dir .. "/history")
      term:prompt()
      term:send("Up")
      term:wait("dpo> function g%(%)\nreturn 1 end%s*$") -- a multi-line chunk comes back whole
      term:send("Up")
      term:wait("dpo> history_marker = 12345%s*$")
      term:send("Enter")
      term:line("history_marker + 1")
      term:wait("\n12346\ndpo> ")
   end)
end)
