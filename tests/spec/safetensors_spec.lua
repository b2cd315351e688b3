-- dpo.save and dpo.load: safetensors files seen from Lua.
--
-- Round trips of what the writer writes (F32, I32, scalars, empty and strided
-- tensors, metadata); the bytes of a written file checked by an independent
-- reader written here (string.unpack and lua-cjson); files in the other dtypes
-- built byte by byte, their expected values written from the definitions of
-- the formats; malformed files, each refused with its own message; the atomic
-- writer (an old file survives any failed save, no temporary file remains);
-- misuse, which raises.
local h = dofile("tests/spec/helper.lua")
local read_file, write_file, listing = h.read, h.write, h.listing
local cjson = require "cjson"
local lfs = require "lfs"

-- ---- files and directories -------------------------------------------------------

local function shell_quote(s)
   return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function tmpdir()
   local p = assert(io.popen("mktemp -d"))
   local d = p:read("l")
   p:close()
   return d
end

-- A safetensors file from a header text and a data section, byte by byte.
local function st_bytes(header, data)
   return string.pack("<I8", #header) .. header .. (data or "")
end

-- The independent reader: the length, the JSON header, the data section.
local function read_st(path)
   local s = read_file(path)
   local n = string.unpack("<I8", s)
   local text = s:sub(9, 8 + n)
   return { n = n, text = text, header = cjson.decode(text), data = s:sub(9 + n), size = #s }
end

local function floats(bytes)
   local r = {}
   for i = 1, #bytes, 4 do r[#r + 1] = string.unpack("<f", bytes, i) end
   return r
end

local function ints(bytes)
   local r = {}
   for i = 1, #bytes, 4 do r[#r + 1] = string.unpack("<i4", bytes, i) end
   return r
end

-- The float32 nearest x, as C's (float) cast gives it.
local function f32(x)
   return (string.unpack("<f", string.pack("<f", x)))
end

-- The interpreter running these specs, for subprocesses.
local function dpolua_path()
   local env = os.getenv("DPOLUA")
   if env and env ~= "" then return env end
   local exe = lfs.symlinkattributes("/proc/self/exe", "target")
   if exe and exe:match("dpolua$") then return exe end
   return "build/dpolua"
end

-- Exact comparison of a list of numbers, NaN matching NaN and -0 told from 0.
local function same_values(got, want)
   assert.are.equal(#want, #got)
   for i = 1, #want do
      local g, w = got[i], want[i]
      if w ~= w then
         assert.is_true(g ~= g, "element " .. i .. ": expected nan, got " .. tostring(g))
      else
         assert.are.equal(w, g, "element " .. i)
         if w == 0 then
            assert.are.equal(1 / w, 1 / g, "element " .. i .. ": sign of zero")
         end
      end
   end
end

describe("dpo.save and dpo.load", function()
   local dir

   before_each(function()
      dir = tmpdir()
   end)

   after_each(function()
      os.execute("rm -rf " .. shell_quote(dir))
   end)

   -- ---- round trips ---------------------------------------------------------------

   describe("round trip", function()
      it("keeps F32 and I32 tensors and string metadata", function()
         local path = dir .. "/m.safetensors"
         local w = dpo.tensor { { 1.5, -2, 3 }, { 4, 5.25, -6 } }
         local ids = dpo.tensor({ -7, 0, 2147483647, -2147483648 }, "int32")
         assert.is_true(dpo.save(path, { w = w, ids = ids }, { format = "pt", note = "caf\u{e9}" }))
         local t, meta = dpo.load(path)
         assert.are.same({ "ids", "w" }, (function()
            local k = {}
            for name in pairs(t) do k[#k + 1] = name end
            table.sort(k)
            return k
         end)())
         assert.are.equal("float32", t.w:dtype())
         assert.are.same({ 2, 3 }, t.w:shape())
         assert.are.same({ { 1.5, -2, 3 }, { 4, 5.25, -6 } }, t.w:totable())
         assert.are.equal("int32", t.ids:dtype())
         assert.are.same({ -7, 0, 2147483647, -2147483648 }, t.ids:totable())
         assert.are.same({ format = "pt", note = "caf\u{e9}" }, meta)
      end)

      it("keeps 0-d scalars and empty tensors", function()
         local path = dir .. "/s.safetensors"
         assert.is_true(dpo.save(path, {
            s = dpo.tensor(-0.75),
            i = dpo.tensor(42, "int32"),
            e = dpo.zeros(0, 3),
            ei = dpo.zeros({ 2, 0 }, "int32"),
         }))
         local t = dpo.load(path)
         assert.are.same({}, t.s:shape())
         assert.are.equal(-0.75, t.s:item())
         assert.are.same({}, t.i:shape())
         assert.are.equal("int32", t.i:dtype())
         assert.are.equal(42, t.i:item())
         assert.are.same({ 0, 3 }, t.e:shape())
         assert.are.equal(0, t.e:numel())
         assert.are.same({ 2, 0 }, t.ei:shape())
         assert.are.equal("int32", t.ei:dtype())
      end)

      it("packs non-contiguous inputs", function()
         local path = dir .. "/nc.safetensors"
         local a = dpo.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
         local at = a:t()
         local col = a:narrow(2, 2, 2)
         local ia = dpo.tensor({ { 1, 2 }, { 3, 4 } }, "int32"):t()
         assert.is_false(at:is_contiguous())
         assert.is_false(col:is_contiguous())
         assert.is_true(dpo.save(path, { at = at, col = col, ia = ia }))
         local t = dpo.load(path)
         assert.are.same({ { 1, 4 }, { 2, 5 }, { 3, 6 } }, t.at:totable())
         assert.are.same({ { 2, 3 }, { 5, 6 } }, t.col:totable())
         assert.are.same({ { 1, 3 }, { 2, 4 } }, t.ia:totable())
         local st = read_st(path)
         assert.are.same({ 1, 4, 2, 5, 3, 6 },
                         floats(st.data:sub(st.header.at.data_offsets[1] + 1,
                                            st.header.at.data_offsets[2])))
      end)

      it("saves numbers in metadata as tostring writes them, and no metadata as {}", function()
         local path = dir .. "/meta.safetensors"
         local x = dpo.ones(2)
         assert.is_true(dpo.save(path, { x = x }, { step = 42, lr = 0.5, name = "run" }))
         local _, meta = dpo.load(path)
         assert.are.same({ step = "42", lr = "0.5", name = "run" }, meta)
         assert.is_true(dpo.save(path, { x = x }))
         local _, none = dpo.load(path)
         assert.are.same({}, none)
         assert.is_nil(read_st(path).header.__metadata__)
         assert.is_true(dpo.save(path, {}))
         local t, m = dpo.load(path)
         assert.are.same({}, t)
         assert.are.same({}, m)
      end)

      it("gives tensors that can be changed in memory without touching the file", function()
         local path = dir .. "/rw.safetensors"
         assert.is_true(dpo.save(path, { w = dpo.tensor { 1, 2, 3 } }))
         local before = read_file(path)
         local t = dpo.load(path)
         t.w:fill(9)
         assert.are.same({ 9, 9, 9 }, t.w:totable())
         assert.are.equal(before, read_file(path))
         assert.are.same({ 1, 2, 3 }, dpo.load(path).w:totable())
         -- the tensor outlives everything else of the load
         local w = dpo.load(path).w
         collectgarbage()
         collectgarbage()
         assert.are.same({ 1, 2, 3 }, (w * 2 / 2):totable())
      end)
   end)

   -- ---- the bytes of a written file ----------------------------------------------------

   describe("a written file", function()
      it("is read by an independent reader: names, dtypes, shapes, offsets, bytes", function()
         local path = dir .. "/ind.safetensors"
         local b = dpo.tensor { { 0.1, 0.2 }, { 0.3, 0.4 }, { 0.5, 0.6 } }
         local a = dpo.tensor({ 5, -6, 7 }, "int32")
         local s = dpo.tensor(3.25)
         assert.is_true(dpo.save(path, { b = b, a = a, s = s }, { who = "spec" }))
         local st = read_st(path)
         local hd = st.header
         assert.are.same({ who = "spec" }, hd.__metadata__)
         -- packed in name order: a, b, s
         assert.are.same({ dtype = "I32", shape = { 3 }, data_offsets = { 0, 12 } }, hd.a)
         assert.are.same({ dtype = "F32", shape = { 3, 2 }, data_offsets = { 12, 36 } }, hd.b)
         assert.are.equal("F32", hd.s.dtype)
         assert.are.equal(0, #hd.s.shape)
         assert.are.same({ 36, 40 }, hd.s.data_offsets)
         assert.are.equal(40, #st.data)
         assert.are.same({ 5, -6, 7 }, ints(st.data:sub(1, 12)))
         assert.are.same({ f32(0.1), f32(0.2), f32(0.3), f32(0.4), f32(0.5), f32(0.6) },
                         floats(st.data:sub(13, 36)))
         assert.are.same({ 3.25 }, floats(st.data:sub(37, 40)))
      end)

      it("has its header padded with spaces to a multiple of 8, metadata first", function()
         local path = dir .. "/pad.safetensors"
         for len = 1, 9 do
            local name = string.rep("n", len)
            assert.is_true(dpo.save(path, { [name] = dpo.ones(1) }, { k = "v" }))
            local st = read_st(path)
            assert.are.equal(0, st.n % 8)
            local json = string.format('{"__metadata__":{"k":"v"},"%s":{"dtype":"F32",' ..
                                        '"shape":[1],"data_offsets":[0,4]}}', name)
            assert.are.equal(json, st.text:sub(1, #json))
            assert.are.equal(string.rep(" ", st.n - #json), st.text:sub(#json + 1))
            assert.is_true(st.n - #json < 8)
            assert.are.equal(8 + st.n + 4, st.size)
         end
      end)

      it("escapes names and metadata as JSON strings", function()
         local path = dir .. "/esc.safetensors"
         local name = 'h.0 "q" \\ \t/\u{3b1}'
         assert.is_true(dpo.save(path, { [name] = dpo.ones(1) }, { ['a"b'] = "line\nnext" }))
         local st = read_st(path)
         assert.is_not_nil(st.header[name])
         assert.are.equal("line\nnext", st.header.__metadata__['a"b'])
         local t, meta = dpo.load(path)
         assert.are.same({ 1 }, t[name]:totable())
         assert.are.equal("line\nnext", meta['a"b'])
      end)
   end)

   -- ---- atomic writes ----------------------------------------------------------------------

   describe("writing", function()
      it("replaces an existing file and leaves no temporary file", function()
         local path = dir .. "/m.safetensors"
         write_file(path, "old contents")
         assert.is_true(dpo.save(path, { x = dpo.ones(3) }))
         assert.are.same({ "m.safetensors" }, listing(dir))
         assert.are.same({ 1, 1, 1 }, dpo.load(path).x:totable())
         assert.is_true(dpo.save(path, { y = dpo.zeros(2) }))
         assert.are.same({ "m.safetensors" }, listing(dir))
         local t = dpo.load(path)
         assert.is_nil(t.x)
         assert.are.same({ 0, 0 }, t.y:totable())
      end)

      it("returns nil and 'path: reason' for a missing directory", function()
         local path = dir .. "/missing/m.safetensors"
         local ok, msg = dpo.save(path, { x = dpo.ones(1) })
         assert.is_nil(ok)
         assert.are.equal(path .. ": No such file or directory", msg)
         assert.are.same({}, listing(dir))
      end)

      it("returns nil and 'path: reason' when the parent is a regular file", function()
         write_file(dir .. "/file", "x")
         local path = dir .. "/file/m.safetensors"
         local ok, msg = dpo.save(path, { x = dpo.ones(1) })
         assert.is_nil(ok)
         assert.are.equal(path .. ": Not a directory", msg)
         assert.are.same({ "file" }, listing(dir))
         assert.are.equal("x", read_file(dir .. "/file"))
      end)

      it("fails on a target that is a directory, leaving it and no temporary file", function()
         local target = dir .. "/target"
         assert.is_true(lfs.mkdir(target))
         write_file(target .. "/keep", "kept")
         local ok, msg = dpo.save(target, { x = dpo.ones(4) })
         assert.is_nil(ok)
         assert.are.equal(target .. ": Is a directory", msg)
         assert.are.same({ "target" }, listing(dir))
         assert.are.equal("kept", read_file(target .. "/keep"))
      end)

      it("keeps the old file when a write fails half-way (file size limit)", function()
         local path = dir .. "/old.safetensors"
         assert.is_true(dpo.save(path, { old = dpo.tensor { 1, 2, 3 } }, { v = "1" }))
         local before = read_file(path)
         local script = dir .. "/child.lua"
         write_file(script, string.format([[
local ok, msg = dpo.save(%q, { big = dpo.zeros(4096) })
io.write(tostring(ok), "|", tostring(msg))
]], path))
         -- 1 block of 512 bytes; SIGXFSZ ignored so that write() fails with EFBIG
         local cmd = string.format("trap '' XFSZ; ulimit -f 1; exec %s %s",
                                   shell_quote(dpolua_path()), shell_quote(script))
         local p = assert(io.popen("sh -c " .. shell_quote(cmd) .. " 2>&1"))
         local out = p:read("a")
         p:close()
         os.remove(script)
         assert.are.equal("nil|" .. path .. ": File too large", out)
         assert.are.equal(before, read_file(path))
         assert.are.same({ "old.safetensors" }, listing(dir))
         local t, meta = dpo.load(path)
         assert.are.same({ 1, 2, 3 }, t.old:totable())
         assert.are.same({ v = "1" }, meta)
      end)
   end)

   -- ---- misuse --------------------------------------------------------------------------------

   describe("misuse raises", function()
      local function bad(k, fname, detail)
         return h.escape(string.format("bad argument #%d to '%s' (%s", k, fname, detail))
      end

      it("a path that is not a string", function()
         h.errors(function() dpo.save(nil, {}) end, bad(1, "save", "string expected, got nil"))
         h.errors(function() dpo.load({}) end, bad(1, "load", "string expected, got table"))
         h.errors(function() dpo.load() end, bad(1, "load", "string expected, got no value"))
         h.errors(function() dpo.load("a\0b") end, bad(1, "load", "path contains a zero byte"))
         h.errors(function() dpo.load("") end, bad(1, "load", "empty path"))
      end)

      it("tensors that are not a table", function()
         h.errors(function() dpo.save(dir .. "/x", dpo.ones(2)) end,
                  bad(2, "save", "table expected, got dpo.Tensor"))
         h.errors(function() dpo.save(dir .. "/x") end, bad(2, "save", "table expected, got no value"))
      end)

      it("a value that is not a tensor, or a freed one", function()
         h.errors(function() dpo.save(dir .. "/x", { w = 3 }) end,
                  bad(2, "save", "value for 'w' is a number, not a dpo.Tensor"))
         h.errors(function() dpo.save(dir .. "/x", { w = { 1, 2 } }) end,
                  bad(2, "save", "value for 'w' is a table, not a dpo.Tensor"))
         local t = dpo.ones(2)
         t:free()
         h.errors(function() dpo.save(dir .. "/x", { w = t }) end,
                  bad(2, "save", "tensor 'w' has been freed"))
      end)

      it("names that are not non-empty strings", function()
         h.errors(function() dpo.save(dir .. "/x", { dpo.ones(2) }) end,
                  bad(2, "save", "tensor names must be strings, got a number"))
         h.errors(function() dpo.save(dir .. "/x", { [true] = dpo.ones(2) }) end,
                  bad(2, "save", "tensor names must be strings, got a boolean"))
         h.errors(function() dpo.save(dir .. "/x", { [""] = dpo.ones(2) }) end,
                  bad(2, "save", "tensor names must not be empty"))
         h.errors(function() dpo.save(dir .. "/x", { __metadata__ = dpo.ones(2) }) end,
                  bad(2, "save", "the name '__metadata__' is reserved"))
         h.errors(function() dpo.save(dir .. "/x", { ["a\0b"] = dpo.ones(2) }) end,
                  bad(2, "save", "tensor name 'a' contains a zero byte"))
         h.errors(function() dpo.save(dir .. "/x", { ["\xff"] = dpo.ones(2) }) end,
                  bad(2, "save", "tensor name '\xff' is not valid UTF-8"))
      end)

      it("metadata that is not a table of strings", function()
         local t = { x = dpo.ones(1) }
         h.errors(function() dpo.save(dir .. "/x", t, "meta") end,
                  bad(3, "save", "table expected, got string"))
         h.errors(function() dpo.save(dir .. "/x", t, { k = true }) end,
                  bad(3, "save", "metadata value for 'k' is a boolean (expected a string or number)"))
         h.errors(function() dpo.save(dir .. "/x", t, { k = {} }) end,
                  bad(3, "save", "metadata value for 'k' is a table"))
         h.errors(function() dpo.save(dir .. "/x", t, { "v" }) end,
                  bad(3, "save", "metadata keys must be strings, got a number"))
         h.errors(function() dpo.save(dir .. "/x", t, { k = "\xfe" }) end,
                  bad(3, "save", "metadata value for 'k' is not valid UTF-8"))
      end)

      it("and writes nothing when it raises", function()
         pcall(dpo.save, dir .. "/x", { w = 3 })
         pcall(dpo.save, dir .. "/x", { x = dpo.ones(1) }, { k = true })
         assert.are.same({}, listing(dir))
      end)
   end)

   -- ---- other dtypes ---------------------------------------------------------------------------

   describe("loads", function()
      -- one tensor of dtype dt, shape, raw bytes
      local function one(dt, shape, bytes)
         local header = cjson.encode({ x = { dtype = dt, shape = shape,
                                             data_offsets = { 0, #bytes } } })
         local path = dir .. "/" .. dt .. ".safetensors"
         write_file(path, st_bytes(header, bytes))
         return path
      end

      local function u16s(list)
         local parts = {}
         for i, v in ipairs(list) do parts[i] = string.pack("<I2", v) end
         return table.concat(parts)
      end

      local function bytes(list)
         return string.char(table.unpack(list))
      end

      it("F16 as float32, exactly (normals, subnormals, infinities, nan, -0)", function()
         -- value = (-1)^s * 2^(e-15) * (1 + m/1024); e = 0: (-1)^s * 2^-14 * m/1024
         local bits = { 0x3C00, 0xC000, 0x7BFF, 0x3555, 0x0001, 0x03FF, 0x0400, 0x7C00, 0xFC00,
                        0x7E00, 0x8000, 0x0000 }
         local want = { 1, -2, 65504, (1 + 0x155 / 1024) / 4, 2 ^ -24, 1023 * 2 ^ -24, 2 ^ -14,
                        math.huge, -math.huge, 0 / 0, -0.0, 0.0 }
         local t = dpo.load(one("F16", { 12 }, u16s(bits))).x
         assert.are.equal("float32", t:dtype())
         same_values(t:totable(), want)
      end)

      it("BF16 as float32, exactly", function()
         -- the top 16 bits of a float32: 0x3F80 = 1, 0x0001 = 2^-133 (subnormal)
         local bits = { 0x3F80, 0xC000, 0x4049, 0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x8000, 0x0080 }
         local want = { 1, -2, 3.140625, math.huge, -math.huge, 0 / 0, 2 ^ -133, -0.0, 2 ^ -126 }
         local t = dpo.load(one("BF16", { 3, 3 }, u16s(bits))).x
         assert.are.same({ 3, 3 }, t:shape())
         same_values(t:reshape(9):totable(), want)
      end)

      it("F64 as float32, rounded to nearest", function()
         local vals = { 0.1, -2.5, 1e300, -1e300, 1e-50, 3.4028234663852886e38 }
         local want = { f32(0.1), -2.5, math.huge, -math.huge, 0.0, 3.4028234663852886e38 }
         local raw = {}
         for i, v in ipairs(vals) do raw[i] = string.pack("<d", v) end
         local t = dpo.load(one("F64", { 6 }, table.concat(raw))).x
         assert.are.equal("float32", t:dtype())
         same_values(t:totable(), want)
      end)

      it("I64 as int32 within range", function()
         local vals = { 0, 1, -1, 2147483647, -2147483648 }
         local raw = {}
         for i, v in ipairs(vals) do raw[i] = string.pack("<i8", v) end
         local t = dpo.load(one("I64", { 5 }, table.concat(raw))).x
         assert.are.equal("int32", t:dtype())
         assert.are.same(vals, t:totable())
      end)

      it("I64 out of the int32 range as an error naming the tensor", function()
         local raw = string.pack("<i8<i8", 1, 2147483648)
         local path = one("I64", { 2 }, raw)
         local ok, msg = dpo.load(path)
         assert.is_nil(ok)
         assert.are.equal(path .. ": tensor 'x' (I64) holds 2147483648 at element 2, " ..
                          "outside the int32 range", msg)
         ok, msg = dpo.load(one("I64", { 1 }, string.pack("<i8", -2147483649)))
         assert.is_nil(ok)
         assert.matches("tensor 'x' %(I64%) holds %-2147483649 at element 1", msg)
         ok, msg = dpo.load(one("U64", { 1 }, string.pack("<i8", -1)))
         assert.is_nil(ok)
         assert.matches("tensor 'x' %(U64%) holds 18446744073709551615", msg)
      end)

      it("small integers and BOOL as int32", function()
         local cases = {
            { "U8", bytes { 0, 200, 255 }, { 0, 200, 255 } },
            { "I8", bytes { 0x80, 0xFF, 0x7F }, { -128, -1, 127 } },
            { "BOOL", bytes { 0, 1, 1 }, { 0, 1, 1 } },
            { "I16", string.pack("<i2<i2<i2", -32768, 32767, -2), { -32768, 32767, -2 } },
            { "U16", string.pack("<I2<I2<I2", 0, 65535, 7), { 0, 65535, 7 } },
            { "U32", string.pack("<I4<I4<I4", 0, 7, 2147483647), { 0, 7, 2147483647 } },
            { "U64", string.pack("<I8<I8<I8", 0, 9, 2147483647), { 0, 9, 2147483647 } },
         }
         for _, c in ipairs(cases) do
            local t = dpo.load(one(c[1], { 3 }, c[2])).x
            assert.are.equal("int32", t:dtype(), c[1])
            assert.are.same(c[3], t:totable(), c[1])
         end
      end)

      it("FP8 (E4M3 and E5M2) as float32", function()
         -- E4M3: bias 7, no infinities, 0x7E = 1.75 * 2^8 = 448, S.1111.111 = nan
         local t = dpo.load(one("F8_E4M3", { 5 }, bytes { 0x38, 0x7E, 0x7F, 0x01, 0xB8 })).x
         same_values(t:totable(), { 1, 448, 0 / 0, 2 ^ -9, -1 })
         -- E5M2: the top byte of an F16
         t = dpo.load(one("F8_E5M2", { 4 }, bytes { 0x3C, 0x7C, 0x01, 0xC0 })).x
         same_values(t:totable(), { 1, math.huge, 2 ^ -16, -2 })
      end)

      it("F32 at an offset that is not 4-byte aligned", function()
         local header = '{"x":{"dtype":"F32","shape":[2],"data_offsets":[2,10]}}'
         header = header .. string.rep(" ", (8 - #header % 8) % 8)
         local path = dir .. "/mis.safetensors"
         write_file(path, st_bytes(header, "\0\0" .. string.pack("<f<f", 1.5, -0.25)))
         same_values(dpo.load(path).x:totable(), { 1.5, -0.25 })
      end)

      it("files with gaps, trailing bytes and unknown entry keys (ignored)", function()
         local header = '{"b":{"dtype":"I32","shape":[1],"data_offsets":[8,12],"extra":[1]},' ..
                        '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
         local path = dir .. "/gaps.safetensors"
         write_file(path, st_bytes(header, string.pack("<f", 2) .. "gap!" ..
                                           string.pack("<i4", -3) .. "trailing"))
         local t = dpo.load(path)
         assert.are.same({ 2 }, t.a:totable())
         assert.are.same({ -3 }, t.b:totable())
      end)

      it("a missing file as nil and 'path: reason'", function()
         local ok, msg = dpo.load(dir .. "/none.safetensors")
         assert.is_nil(ok)
         assert.are.equal(dir .. "/none.safetensors: No such file or directory", msg)
         ok, msg = dpo.load(dir)
         assert.is_nil(ok)
         assert.are.equal(dir .. ": not a regular file", msg)
      end)
   end)

   -- ---- malformed files -------------------------------------------------------------------------

   describe("refuses a malformed file:", function()
      local F = '{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}'
      local data24 = string.rep("\0", 24)
      local function entry(fields)
         return '{"t":{' .. fields .. '}}'
      end
      local cases = {
         { "empty file", "", "file is empty" },
         { "3-byte file", "abc", "file is 3 bytes, too short for the 8-byte header length" },
         { "header length past the end", string.pack("<I8", 100) .. "{}",
           "header length 100 runs past the end of the file (2 bytes after the length)" },
         { "header length 2^63", string.pack("<i8", math.mininteger) .. "{}",
           "header length 9223372036854775808 runs past the end of the file" },
         { "header length 2^64-1", string.pack("<i8", -1) .. "{}",
           "header length 18446744073709551615 runs past the end of the file" },
         { "bad JSON", st_bytes('{"w": {"dtype": "F32",'), "header is not valid JSON" },
         { "invalid UTF-8 in the header", st_bytes('{"\xff":1}'), "header is not valid JSON" },
         { "a NUL byte in the header", st_bytes('{\0}'), "header is not valid JSON" },
         { "duplicate names", st_bytes('{"a":{},"a":{}}'), "duplicate object key" },
         { "header not an object", st_bytes("[1,2,3]"), "header is an array, not a JSON object" },
         { "entry not an object", st_bytes('{"t":"F32"}'),
           "tensor 't' is described by a string, not an object" },
         { "unknown dtype", st_bytes(entry('"dtype":"F33","shape":[1],"data_offsets":[0,4]'),
                                     "\0\0\0\0"),
           "tensor 't' has unknown dtype 'F33'" },
         { "unsupported dtype", st_bytes(entry('"dtype":"C64","shape":[1],"data_offsets":[0,8]'),
                                         string.rep("\0", 8)),
           "tensor 't' has unsupported dtype 'C64'" },
         { "missing dtype", st_bytes(entry('"shape":[1],"data_offsets":[0,4]'), "\0\0\0\0"),
           "tensor 't' has no \"dtype\"" },
         { "shape/offset mismatch", st_bytes(F:gsub("24%]", "12]"), string.rep("\0", 12)),
           "tensor 'w' has data_offsets [0, 12] but shape 2x3 of F32 needs 24 bytes" },
         { "offsets past the data end",
           st_bytes(entry('"dtype":"F32","shape":[2],"data_offsets":[16,24]'), data24:sub(1, 8)),
           "tensor 't' has data_offsets [16, 24] past the end of the 8-byte data section" },
         { "truncated data section", st_bytes(F, data24:sub(1, 20)),
           "tensor 'w' has data_offsets [0, 24] past the end of the 20-byte data section" },
         { "overlapping ranges",
           st_bytes('{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},' ..
                    '"b":{"dtype":"I32","shape":[2],"data_offsets":[12,20]}}', data24),
           "tensors 'a' [0, 16] and 'b' [12, 20] overlap" },
         { "begin after end", st_bytes(entry('"dtype":"F32","shape":[1],"data_offsets":[8,4]'),
                                       data24),
           "tensor 't' has data_offsets [8, 4] whose begin is after its end" },
         { "negative offsets", st_bytes(entry('"dtype":"F32","shape":[1],"data_offsets":[-4,0]'),
                                        data24),
           "tensor 't' has negative data_offsets [-4, 0]" },
         { "offsets not a pair", st_bytes(entry('"dtype":"F32","shape":[1],"data_offsets":[0]'),
                                          data24),
           "tensor 't' has \"data_offsets\" that are not a pair of integers [begin, end]" },
         { "negative shape", st_bytes(entry('"dtype":"F32","shape":[2,-3],"data_offsets":[0,24]'),
                                      data24),
           "tensor 't' has a negative size -3 in its shape" },
         { "shape not an array", st_bytes(entry('"dtype":"F32","shape":6,"data_offsets":[0,24]'),
                                          data24),
           "tensor 't' has a \"shape\" that is not an array" },
         { "shape of reals", st_bytes(entry('"dtype":"F32","shape":[6.0],"data_offsets":[0,24]'),
                                      data24),
           "tensor 't' has size 1 of its shape a real number, not an integer" },
         { "shape whose size overflows",
           st_bytes(entry('"dtype":"F32","shape":[4294967296,4294967296,4294967296],' ..
                          '"data_offsets":[0,24]'), data24),
           "tensor 't' has shape 4294967296x4294967296x4294967296, too large to hold" },
         { "too many dimensions",
           st_bytes(entry('"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]'),
                    data24),
           "tensor 't' has 9 dimensions (at most 8)" },
         { "metadata not an object", st_bytes('{"__metadata__":"v1"}'),
           "\"__metadata__\" is a string, not an object" },
         { "metadata with a non-string value", st_bytes('{"__metadata__":{"a":"x","step":3}}'),
           "\"__metadata__\" value for 'step' is an integer, not a string" },
      }

      for _, c in ipairs(cases) do
         it(c[1], function()
            local path = dir .. "/bad.safetensors"
            write_file(path, c[2])
            local ok, msg = dpo.load(path)
            assert.is_nil(ok)
            assert.are.equal("string", type(msg))
            assert.are.equal(path .. ": ", msg:sub(1, #path + 2))
            if not msg:find(c[3], 1, true) then
               error(string.format("message\n  %s\ndoes not contain\n  %s", msg, c[3]))
            end
         end)
      end

      it("each with its own message", function()
         local seen, n = {}, 0
         for _, c in ipairs(cases) do
            local path = dir .. "/bad.safetensors"
            write_file(path, c[2])
            local _, msg = dpo.load(path)
            msg = msg:sub(#path + 3)
            assert.is_nil(seen[msg], "two cases give: " .. msg)
            seen[msg] = true
            n = n + 1
         end
         assert.is_true(n >= 12)
      end)
   end)
end)
