-- The bindings as a loadable module under the stock lua5.4 interpreter:
-- lua5.4 tests/module_check.lua BUILD_DIR LUA_DIR
local build, luadir = arg[1], arg[2]
package.cpath = build .. "/?.so;" .. package.cpath
package.path = luadir .. "/?.lua;" .. luadir .. "/?/init.lua;" .. package.path

local dpo = require "dpo"
local c = dpo.ones(2, 2):mm(dpo.ones(2, 2))
assert(c:equal(dpo.full({2, 2}, 2)), "ones(2,2) mm ones(2,2) should be all 2s")
assert(tostring(c):find("[dpo.Tensor float32 of size 2x2]", 1, true), tostring(c))
local ok, err = pcall(function() return dpo.zeros(2, 3) + dpo.zeros(4) end)
assert(not ok and err:find("shapes 2x3 and 4 do not broadcast", 1, true), err)
-- a model forward starts OpenMP's worker threads; the interpreter unloads C
-- modules at exit, which must not pull the code from under them
local m = dpo.gpt.new{ vocab_size = 50, n_ctx = 16, n_layer = 1, n_head = 2, n_embd = 8 }
local ids = dpo.tensor({ { 1, 2, 3, 4 } }, "int32")
assert(m:logps(ids, ids):numel() == 1)
print("module: 4 passed, 0 failed")
