-- Shared assertions for the tensor specs. Specs load it with
-- `local h = dofile("tests/spec/helper.lua")` (they run from the repository
-- root); .busted also names it as busted's helper, where loading it is
-- harmless: it only returns a table.
--
-- h.near(actual, expected [, tol]): actual is a dpo.Tensor, a number or a
--   plain nested table; expected is a number or a plain nested Lua table
--   computed independently. Checks the nesting (shape) and every element:
--   |got - want| <= tol * (1 + |want|) (tol defaults to 1e-5); an infinite
--   expected value must be matched exactly, a NaN by a NaN.
-- h.errors(fn [, pattern [, plain]]): calls fn under pcall, asserts it failed
--   and that the message matches the Lua pattern (or contains it literally
--   when plain is true); returns the message.
-- h.read(path), h.write(path, s): a whole file, in binary.
-- h.listing(dir): the names in dir, sorted, without "." and "..".
-- h.tmpdir(): a new temporary directory; h.cleanup() removes every one made
--   (call it from a teardown).
-- h.quote(s): s as one word of sh; h.abspath(p): p made absolute (specs run
--   from the repository root); h.DPOLUA: the dpolua under test ($DPOLUA, else
--   build/dpolua), absolute.
local luassert = require "luassert"
local has_busted, busted = pcall(require, "busted")

local h = {}

-- Fail the running test at the caller of the h.* function (a busted failure,
-- not an error), with msg as the whole message.
local function fail(msg)
   if has_busted and type(busted) == "table" and busted.fail then busted.fail(msg, 3) end
   luassert.is_true(false, msg)
end

local function is_tensor(x)
   return type(x) == "userdata" and dpo ~= nil and dpo.is_tensor(x)
end

local function fmt(v)
   if type(v) == "number" then return string.format("%.9g", v) end
   return tostring(v)
end

-- Walk got and want together; returns nil or a message naming the position.
local function compare(got, want, tol, path)
   local where = path == "" and "value" or ("element " .. path)
   if type(want) == "table" then
      if type(got) ~= "table" then
         return string.format("%s: got %s, expected a table of %d elements", where, fmt(got),
                              #want)
      end
      if #got ~= #want then
         return string.format("%s: got %d elements, expected %d", where, #got, #want)
      end
      for i = 1, #want do
         local msg = compare(got[i], want[i], tol, path .. "[" .. i .. "]")
         if msg then return msg end
      end
      return nil
   end
   if type(got) ~= "number" then
      return string.format("%s: got %s (%s), expected %s", where, fmt(got), type(got), fmt(want))
   end
   local ok
   if want ~= want then
      ok = got ~= got
   elseif want == math.huge or want == -math.huge then
      ok = got == want
   else
      ok = math.abs(got - want) <= tol * (1 + math.abs(want))
   end
   if not ok then
      return string.format("%s: got %s, expected %s (tol %g)", where, fmt(got), fmt(want), tol)
   end
   return nil
end

function h.near(actual, expected, tol)
   tol = tol or 1e-5
   if is_tensor(actual) then actual = actual:totable() end
   local msg = compare(actual, expected, tol, "")
   if msg then fail(msg) end
end

function h.errors(fn, pattern, plain)
   local ok, msg = pcall(fn)
   if ok then
      fail("expected an error" .. (pattern and (" matching '" .. pattern .. "'") or "") ..
           ", but the call succeeded")
   end
   if type(msg) ~= "string" then
      fail("expected a string error message, got " .. type(msg) .. ": " .. tostring(msg))
   end
   if pattern and not string.find(msg, pattern, 1, plain) then
      fail(string.format("error message\n  %s\ndoes not %s\n  %s", msg,
                         plain and "contain" or "match", pattern))
   end
   return msg
end

-- Escape Lua pattern magic characters, for messages with ( ) . - [ ] etc.
-- Whether tensor a is within atol + rtol * max|b| of b everywhere; also the
-- largest difference and max|b| (for messages).
function h.close(a, b, atol, rtol)
   local d = (a - b):abs():max():item()
   local s = b:abs():max():item()
   return d <= atol + rtol * s, d, s
end

-- Central differences of the scalar function L (eps 1e-2) against the
-- gradients already in the {name, tensor} pairs `named`, at the flat indices
-- (1-based) that pick(name, numel) lists: each must agree to 2e-3 + 2e-2
-- |numeric|. Returns the largest difference seen.
function h.fd_check(named, L, pick)
   local eps, worst = 1e-2, 0
   for _, np in ipairs(named) do
      local name = np[1]
      local flat, grad = np[2]:reshape(-1), np[2].grad:reshape(-1)
      for _, k in ipairs(pick(name, flat:numel())) do
         local v = flat[k]
         dpo.no_grad(function() flat[k] = v + eps end)
         local fp = L()
         dpo.no_grad(function() flat[k] = v - eps end)
         local fm = L()
         dpo.no_grad(function() flat[k] = v end)
         local num, ana = (fp - fm) / (2 * eps), grad[k]
         local err = math.abs(num - ana)
         worst = math.max(worst, err)
         assert(err <= 2e-3 + 2e-2 * math.abs(num),
            ("%s[%d]: analytic %g, numeric %g"):format(name, k, ana, num))
      end
   end
   return worst
end

-- A pick for h.fd_check: n indices drawn from dpo's generator per tensor.
function h.samples(n)
   return function(_, numel)
      local ks = {}
      for i = 1, n do ks[i] = dpo.randint(1, numel + 1, 1)[1] end
      return ks
   end
end

-- Whether two float32 tensors hold the same bits, element by element (and
-- the first index that differs).
function h.same_bits(a, b)
   local x, y = a:reshape(-1):totable(), b:reshape(-1):totable()
   if #x ~= #y then return false end
   for i = 1, #x do
      if string.pack("<f", x[i]) ~= string.pack("<f", y[i]) then return false, i end
   end
   return true
end

function h.escape(s)
   return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- ---- files ---------------------------------------------------------------

function h.read(path)
   local f = assert(io.open(path, "rb"))
   local s = f:read("a")
   f:close()
   return s
end

function h.write(path, s)
   local f = assert(io.open(path, "wb"))
   f:write(s)
   f:close()
end

function h.listing(dir)
   local names = {}
   for name in require("lfs").dir(dir) do
      if name ~= "." and name ~= ".." then names[#names + 1] = name end
   end
   table.sort(names)
   return names
end

-- ---- processes ---------------------------------------------------------------

function h.quote(s)
   return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

function h.abspath(p)
   if p:sub(1, 1) == "/" then return p end
   return require("lfs").currentdir() .. "/" .. p
end

h.DPOLUA = h.abspath(os.getenv("DPOLUA") or "build/dpolua")

local made = {}

function h.tmpdir()
   local p = io.popen("mktemp -d")
   local d = p:read("l")
   p:close()
   made[#made + 1] = d
   return d
end

local function rmtree(p)
   local lfs = require "lfs"
   if lfs.symlinkattributes(p, "mode") == "directory" then
      for name in lfs.dir(p) do
         if name ~= "." and name ~= ".." then rmtree(p .. "/" .. name) end
      end
      lfs.rmdir(p)
   else
      os.remove(p)
   end
end

function h.cleanup()
   for _, d in ipairs(made) do rmtree(d) end
   made = {}
end

return h
