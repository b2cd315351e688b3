-- dpo.data (lua/dpo/data.lua, core/data/jsonl.c, core/bind/l_data.c): reading JSONL and
-- gzip JSONL, the HH-RLHF and plain pair formats, bad input in both on_error
-- modes, datasets, tokenization with the original DPO truncation rules, and
-- collated batches.
--
-- The fixtures are tests/fixtures/data/*, written by make_fixtures.lua there.
-- The byte tokenizer (one token a byte, EOS 256) makes token counts easy to
-- check by hand. The whole file must also pass under AddressSanitizer.
local h = dofile("tests/spec/helper.lua")
local read, write = h.read, h.write
local lfs = require "lfs"

local FIX = "tests/fixtures/data/"
local data, filters = dpo.data, dpo.filters
local C = require("dpo.core").data

local function tmpdir()
   local p = os.tmpname()
   os.remove(p)
   assert(lfs.mkdir(p))
   return p
end

local function rmtree(p)
   for name in lfs.dir(p) do
      if name ~= "." and name ~= ".." then
         local q = p .. "/" .. name
         if lfs.attributes(q, "mode") == "directory" then rmtree(q) else os.remove(q) end
      end
   end
   lfs.rmdir(p)
end



-- Every record of path as a list, with the "file:line" of each.
local function records(path, opts)
   local out, where = {}, {}
   for rec, w in assert(data.jsonl(path, opts)) do
      out[#out + 1] = rec
      where[#where + 1] = w
   end
   return out, where
end

-- The warnings a read gives, as a list.
local function collecting()
   local got = {}
   return got, function(msg) got[#got + 1] = msg end
end

local function list(t)
   return t:totable()
end

local function pair(p, c, r)
   return { prompt = p, chosen = c, rejected = r }
end

local bytes = dpo.tokenizer.bytes()
local EOS = 256

-- The ids of s under the byte tokenizer.
local function b(s)
   local t = {}
   for i = 1, #s do t[i] = s:byte(i) end
   return t
end

local function cat(...)
   local out = {}
   for _, t in ipairs { ... } do
      for _, v in ipairs(t) do out[#out + 1] = v end
   end
   return out
end

-- ---- reading ------------------------------------------------------------------------

describe("dpo.data.jsonl", function()
   it("streams records from plain and gzip files, naming file:line", function()
      local recs, where = records(FIX .. "three.jsonl.gz")
      assert.are.equal(3, #recs)
      assert.are.equal("\n\nHuman: One?\n\nAssistant: 1.", recs[1].chosen)
      assert.are.same({ FIX .. "three.jsonl.gz:1", FIX .. "three.jsonl.gz:2",
                        FIX .. "three.jsonl.gz:3" }, where)
      local plain = records(FIX .. "hh_rules.jsonl")
      assert.are.equal(10, #plain)
   end)

   it("knows gzip by its magic bytes, not by the name", function()
      local a = records(FIX .. "gzip_named.jsonl")
      local z = records(FIX .. "plain_named.jsonl.gz")
      assert.are.equal(2, #a)
      assert.are.same(a, z)
      local r1 = assert(C.open(FIX .. "gzip_named.jsonl"))
      local r2 = assert(C.open(FIX .. "plain_named.jsonl.gz"))
      assert.is_true(r1:gzip())
      assert.is_false(r2:gzip())
      r1:close()
      r2:close()
   end)

   it("handles CRLF, a byte order mark, blank lines and a last line without newline", function()
      local recs, where = records(FIX .. "crlf.jsonl")
      assert.are.equal(3, #recs)
      assert.are.equal("\n\nHuman: Three?\n\nAssistant: 4.", recs[3].rejected)
      assert.are.equal(FIX .. "crlf.jsonl:4", where[3]) -- line 3 was blank
      local it, reader = data.jsonl(FIX .. "crlf.jsonl")
      for _ in it, reader, nil, reader do end
      assert.are.equal(1, reader.blank_lines)
      assert.are.equal(0, reader.skipped)
      -- the raw lines: no "\r" and no mark
      local r = assert(C.open(FIX .. "crlf.jsonl"))
      local line = r:read()
      assert.are.equal("{", line:sub(1, 1))
      assert.is_nil(line:find("\r", 1, true))
      r:close()
   end)

   it("reads lines of any length and streams with a bounded buffer", function()
      local recs = records(FIX .. "long.jsonl.gz")
      assert.are.equal(2, #recs)
      assert.are.equal(#"\n\nHuman: Say a lot.\n\nAssistant: " + 3 * 699051, #recs[1].chosen)
      -- many short lines: the buffer does not grow
      local dir = tmpdir()
      local path = dir .. "/many.jsonl.gz"
      local rows = {}
      for i = 1, 20000 do rows[i] = { chosen = ("x"):rep(100 + i % 50), id = i } end
      assert(data.write_jsonl(path, rows))
      local r = assert(C.open(path))
      local n, size0 = 0, r:buffer_size()
      while r:read() do n = n + 1 end
      assert.are.equal(20000, n)
      assert.are.equal(size0, r:buffer_size())
      r:close()
      -- and the iterator keeps nothing: the Lua heap stays flat
      collectgarbage()
      local before = collectgarbage("count")
      local count = 0
      for rec in data.jsonl(path) do count = count + #rec.chosen end
      collectgarbage()
      assert.is_true(collectgarbage("count") - before < 512, "heap grew while streaming")
      assert.is_true(count > 2000000)
      rmtree(dir)
   end)

   it("reads a directory's data files in name order", function()
      local _, where = records(FIX .. "dir")
      assert.are.same({ FIX .. "dir/01.jsonl:1", FIX .. "dir/02.jsonl.gz:1",
                        FIX .. "dir/02.jsonl.gz:2" }, where)
      local ds = assert(data.hh(FIX .. "dir"))
      assert.are.equal(3, #ds)
      assert.are.equal(2, ds:stats().steps[1].files)
   end)

   it("returns nil and 'path: reason' for a file or directory that cannot be read", function()
      local it, err = data.jsonl(FIX .. "missing.jsonl")
      assert.is_nil(it)
      assert.are.equal(FIX .. "missing.jsonl: No such file or directory", err)
      local ds, err2 = data.hh(FIX .. "missing.jsonl")
      assert.is_nil(ds)
      assert.are.equal(FIX .. "missing.jsonl: No such file or directory", err2)
      local ds3, err3 = data.pairs(FIX .. "empty_dir")
      assert.is_nil(ds3)
      assert.matches("empty_dir: no data files", err3, 1, true)
   end)

   it("closes the file when a loop breaks", function()
      local it, reader = data.jsonl(FIX .. "three.jsonl.gz")
      for _ in it, reader, nil, reader do break end
      assert.is_true(reader:is_closed())
      local it2, reader2 = data.jsonl(FIX .. "three.jsonl.gz")
      pcall(function()
         for _ in it2, reader2, nil, reader2 do error("stop") end
      end)
      assert.is_true(reader2:is_closed())
   end)

   it("honours limit", function()
      local recs = records(FIX .. "hh_rules.jsonl", { limit = 4 })
      assert.are.equal(4, #recs)
      assert.are.equal(2, #assert(data.hh(FIX .. "hh_rules.jsonl", { limit = 2 })))
   end)

   it("raises on misuse", function()
      h.errors(function() data.jsonl(42) end, "bad argument #1 to 'jsonl' (path expected", true)
      h.errors(function() data.jsonl(FIX .. "three.jsonl.gz", { on_error = "ignore" }) end,
               "on_error must be 'skip' or 'error', got ignore", true)
      h.errors(function() data.hh(FIX .. "three.jsonl.gz", { limit = -1 }) end,
               "limit must be a non-negative integer", true)
      h.errors(function() data.hh(FIX .. "three.jsonl.gz", "x") end,
               "bad argument #2 to 'hh' (options table expected, got string)", true)
   end)

   it("only ever reads its input", function()
      local before = {}
      for name in lfs.dir(FIX) do
         local p = FIX .. name
         if lfs.attributes(p, "mode") == "file" then
            before[name] = { read(p), lfs.attributes(p, "modification") }
         end
      end
      for _, f in ipairs { "three.jsonl.gz", "truncated.jsonl.gz", "corrupt.jsonl.gz",
                           "bad_json.jsonl", "crlf.jsonl", "empty.jsonl" } do
         data.hh(FIX .. f, { warn = false })
      end
      local after = {}
      for name in lfs.dir(FIX) do
         local p = FIX .. name
         if lfs.attributes(p, "mode") == "file" then after[name] = true end
      end
      for name, v in pairs(before) do
         assert.are.equal(v[1], read(FIX .. name), name .. " changed")
         assert.are.equal(v[2], lfs.attributes(FIX .. name, "modification"), name)
         after[name] = nil
      end
      assert.is_nil(next(after), "a file appeared")
   end)
end)

-- ---- bad input --------------------------------------------------------------------------

describe("bad input", function()
   -- file, reader, good records, the first error in full
   local cases = {
      { "bad_json.jsonl", "hh", 3,
        FIX .. "bad_json.jsonl:2: invalid JSON: Expected value but found T_END at character 60" },
      { "bad_fields.jsonl", "hh", 2, FIX .. "bad_fields.jsonl:2: missing field 'rejected'" },
      { "bad_utf8.jsonl", "hh", 3, FIX .. "bad_utf8.jsonl:2: invalid UTF-8 at byte 42" },
      { "empty.jsonl", "hh", 0, FIX .. "empty.jsonl: empty file" },
      { "blank.jsonl", "pairs", 0, FIX .. "blank.jsonl: empty file" },
      { "truncated.jsonl.gz", "hh", 19,
        FIX .. "truncated.jsonl.gz:20: truncated gzip stream (unexpected end of file)" },
      { "corrupt.jsonl.gz", "hh", 0,
        FIX .. "corrupt.jsonl.gz:1: corrupt gzip stream (incorrect data check)" },
   }
   for _, c in ipairs(cases) do
      local file, reader, good, first = c[1], c[2], c[3], c[4]
      it(file .. ": skipped and counted by default, raised with on_error = 'error'", function()
         local got, warn = collecting()
         local ds = assert(data[reader](FIX .. file, { warn = warn }))
         assert.are.equal(good, #ds)
         local st = ds:stats()
         assert.is_true(st.errors >= 1)
         assert.are.equal(first, st.error_examples[1])
         assert.are.equal(1, #got)
         assert.matches(FIX .. file .. ": skipped " .. st.errors .. " bad record", got[1], 1, true)
         assert.matches(first, got[1], 1, true)
         local ok, msg = pcall(data[reader], FIX .. file, { on_error = "error" })
         assert.is_false(ok)
         assert.are.equal(first, msg)
      end)
   end

   it("names each bad field and record kind", function()
      local ds = assert(data.hh(FIX .. "bad_fields.jsonl", { warn = false }))
      local st = ds:stats()
      assert.are.equal(6, st.errors)
      assert.are.same({
         FIX .. "bad_fields.jsonl:2: missing field 'rejected'",
         FIX .. "bad_fields.jsonl:3: field 'chosen' is a number, not a string",
         FIX .. "bad_fields.jsonl:4: field 'chosen' is null, not a string",
         FIX .. "bad_fields.jsonl:5: expected a JSON object, got an array",
         FIX .. "bad_fields.jsonl:6: expected a JSON object, got a number",
      }, st.error_examples)
      -- the sixth is counted, not listed
      local ok, msg = pcall(function()
         local it, reader = data.jsonl(FIX .. "bad_fields.jsonl", { on_error = "error" })
         for _ in it, reader, nil, reader do end
      end)
      assert.is_true(ok, msg) -- every line is JSON: jsonl itself has nothing to object to
      local okp, msgp = pcall(data.pairs, FIX .. "bad_fields.jsonl", { on_error = "error" })
      assert.is_false(okp)
      assert.are.equal(FIX .. "bad_fields.jsonl:1: missing field 'prompt'", msgp)
   end)

   it("refuses a chosen text without an assistant turn", function()
      local got, warn = collecting()
      local ds = data.hh(FIX .. "bad_fields.jsonl", { warn = warn })
      assert.are.equal(6, ds:stats().errors) -- five listed above, and line 8
      assert.matches("; ...)", got[1], 1, true)
      local dir = tmpdir()
      local lines = {}
      for l in io.lines(FIX .. "bad_fields.jsonl") do lines[#lines + 1] = l end
      write(dir .. "/one.jsonl", lines[8] .. "\n")
      local ok, msg = pcall(data.hh, dir .. "/one.jsonl", { on_error = "error" })
      rmtree(dir)
      assert.is_false(ok)
      assert.are.equal(dir .. "/one.jsonl:1: no \"\\n\\nAssistant:\" in field 'chosen'", msg)
   end)

   it("lists the first five bad records and counts the rest", function()
      local got, warn = collecting()
      local ds = assert(data.hh(FIX .. "many_bad.jsonl", { warn = warn }))
      assert.are.equal(1, #ds)
      local st = ds:stats()
      assert.are.equal(8, st.errors)
      assert.are.equal(5, #st.error_examples)
      assert.matches("many_bad.jsonl: skipped 8 bad records (" .. FIX .. "many_bad.jsonl:1: invalid JSON",
                     got[1], 1, true)
      assert.matches("; %.%.%.%)$", got[1])
      assert.matches("skipped 8 bad records", tostring(st), 1, true)
   end)

   it("rejects every kind of invalid UTF-8, and lone surrogate escapes", function()
      local ds = assert(data.hh(FIX .. "bad_utf8.jsonl", { warn = false }))
      local st = ds:stats()
      assert.are.equal(4, st.errors)
      assert.matches(":4: invalid UTF-8 at byte 41", st.error_examples[2], 1, true) -- overlong
      assert.matches(":5: invalid UTF-8 at byte 41", st.error_examples[3], 1, true) -- surrogate
      assert.matches(":6: invalid JSON: .*unicode escape", st.error_examples[4])
      assert.are.equal(" Oui.", ds:get(2).chosen) -- valid UTF-8 passes
   end)

   it("keeps the records before a truncated gzip stream and goes on with the next file", function()
      local dir = tmpdir()
      write(dir .. "/a.jsonl.gz", read(FIX .. "truncated.jsonl.gz"))
      write(dir .. "/b.jsonl.gz", read(FIX .. "three.jsonl.gz"))
      local ds = assert(data.hh(dir, { warn = false }))
      assert.are.equal(19 + 3, #ds)
      assert.are.equal(1, ds:stats().errors)
      rmtree(dir)
   end)

   it("never crashes on random bytes", function()
      local dir = tmpdir()
      local state = 7
      local function rnd()
         state = (state * 1103515245 + 12345) % 2147483648
         return state >> 16
      end
      local good = read(FIX .. "three.jsonl.gz")
      for k = 1, 40 do
         local s = {}
         local n = 1 + rnd() % 300
         for i = 1, n do s[i] = string.char(rnd() % 256) end
         local body = table.concat(s)
         if k % 2 == 0 then -- a gzip stream with damage inside
            local at = 11 + rnd() % (#good - 12)
            body = good:sub(1, at) .. body:sub(1, 3) .. good:sub(at + 4)
         end
         write(dir .. "/r.jsonl", body)
         local ds = data.hh(dir .. "/r.jsonl", { warn = false })
         assert.is_true(data.is_dataset(ds))
         local ok, msg = pcall(data.pairs, dir .. "/r.jsonl", { on_error = "error" })
         if not ok then assert.matches("^" .. h.escape(dir) .. "/r.jsonl:?%d*: ", msg) end
      end
      rmtree(dir)
   end)
end)

-- ---- HH-RLHF -------------------------------------------------------------------------------

describe("dpo.data.hh", function()
   it("splits at the last \\n\\nAssistant: of chosen and keeps each reply's bytes", function()
      local ds = assert(data.hh(FIX .. "hh_rules.jsonl"))
      assert.are.equal(6, #ds)
      assert.are.same(pair("\n\nHuman: What is 2 plus 2?\n\nAssistant:", " 2 plus 2 is 4.", " Go away."),
                      ds:get(1))
      assert.are.same(pair("\n\nHuman: Hi!\n\nAssistant: Hello! How can I help?\n\nHuman: What color " ..
                           "is grass?\n\nAssistant:", " Grass is green.", " Who cares?"), ds:get(2))
      assert.are.same(pair("\n\nHuman: Who are you?\n\nAssistant:", " Assistant: that is my name.",
                           " Nobody."), ds:get(3))
      assert.are.same(pair("\n\nHuman: Say hi.\n\nAssistant:", "  Hi!\n", " No."), ds:get(4))
      assert.are.same(pair("\n\nHuman: Café?\n\nAssistant:", " Un café ✓", " Non."), ds:get(5))
      -- row 10: the rejected side runs on; hh keeps it (hh_clean does not)
      assert.are.equal(" Friday.\n\nHuman: Really?\n\nAssistant: Yes.", ds:get(6).rejected)
   end)

   it("drops prompt mismatches, empty and identical replies, counted by reason", function()
      local ds = assert(data.hh(FIX .. "hh_rules.jsonl"))
      local st = ds:stats()
      assert.are.same({ prompt_mismatch = 1, empty_response = 2, identical_responses = 1 }, st.dropped)
      assert.are.equal(0, st.errors)
      local read_step = st.steps[1]
      assert.are.equal(10, read_step.records)
      assert.are.same({ FIX .. "hh_rules.jsonl:6" }, read_step.dropped_at.prompt_mismatch)
      assert.are.same({ FIX .. "hh_rules.jsonl:7", FIX .. "hh_rules.jsonl:8" },
                      read_step.dropped_at.empty_response)
      local text = tostring(st)
      assert.matches("dropped: empty_response 2, identical_responses 1, prompt_mismatch 1", text, 1, true)
   end)

   it("with check_prompt = false slices each side at its own last turn", function()
      local ds = assert(data.hh(FIX .. "hh_dirty.jsonl", { check_prompt = false }))
      assert.are.equal(10, #ds)
      local p9 = ds:get(9)
      assert.are.equal(" 7.", p9.chosen)
      assert.are.equal(" 8.", p9.rejected)
      assert.are.equal("\n\nHuman: Hi!\n\nAssistant: Go away.\n\nHuman: What is 6 plus 1?\n\nAssistant:",
                       p9.rejected_prompt)
      assert.is_nil(ds:get(1).rejected_prompt)
      local strict = assert(data.hh(FIX .. "hh_dirty.jsonl"))
      assert.are.equal(8, #strict)
      assert.are.same({ prompt_mismatch = 2 }, strict:stats().dropped)
   end)

   it("reads other field names", function()
      local dir = tmpdir()
      write(dir .. "/x.jsonl", '{"good": "\\n\\nHuman: A?\\n\\nAssistant: B.", "bad": "\\n\\nHuman: A?\\n\\nAssistant: C."}\n')
      local ds = assert(data.hh(dir .. "/x.jsonl", { chosen = "good", rejected = "bad" }))
      assert.are.same(pair("\n\nHuman: A?\n\nAssistant:", " B.", " C."), ds:get(1))
      rmtree(dir)
   end)
end)

describe("dpo.data.pairs", function()
   it("reads {prompt, chosen, rejected}, dropping identical and empty replies", function()
      local ds = assert(data.pairs(FIX .. "pairs.jsonl"))
      assert.are.equal(3, #ds)
      assert.are.same(pair("Q: 1+1=?\nA:", " 2", " 3"), ds:get(1))
      assert.are.same(pair("", "Hello.", "Go away."), ds:get(2))
      assert.are.same(pair("Q: snow?", " white", " black"), ds:get(3))
      assert.are.same({ identical_responses = 1, empty_response = 1 }, ds:stats().dropped)
   end)

   it("takes the field names as options", function()
      local got, warn = collecting()
      local ds = assert(data.pairs(FIX .. "pairs_fields.jsonl",
                                   { prompt = "question", chosen = "good", rejected = "bad", warn = warn }))
      assert.are.equal(2, #ds)
      assert.are.same(pair("3+3?", " 6", " 7"), ds:get(2))
      assert.are.equal(FIX .. "pairs_fields.jsonl:3: missing field 'bad'", ds:stats().error_examples[1])
   end)
end)

-- ---- datasets ---------------------------------------------------------------------------

local function numbered(n, prompts)
   local t = {}
   for i = 1, n do
      local p = prompts and ("p" .. (i % prompts)) or ("p" .. i)
      t[i] = pair(p, " good " .. i, " bad " .. i)
   end
   return data.dataset(t, "numbered")
end

describe("datasets", function()
   it("have a length, iterate in order and chain", function()
      local ds = numbered(10)
      assert.are.equal(10, #ds)
      local seen = {}
      for p, i in ds:iter() do seen[#seen + 1] = i .. p.chosen end
      assert.are.same("1 good 1", seen[1])
      assert.are.equal(10, #seen)
      local even = ds:filter(function(p) return tonumber(p.chosen:match("%d+")) % 2 == 0 end, "even")
      assert.are.equal(5, #even)
      assert.are.equal(10, #ds) -- the parent is unchanged
      assert.are.equal(3, #even:take(3))
      assert.are.equal(5, #even:take(50))
      assert.are.equal(" good 4", even:take(2):get(2).chosen)
      assert.matches("dpo.Dataset %(5 pairs%)", tostring(even))
   end)

   it("map transforms pairs and nil drops them", function()
      local ds = numbered(4):map(function(p)
         if p.prompt == "p2" then return nil end
         return pair(p.prompt:upper(), p.chosen, p.rejected)
      end)
      assert.are.equal(3, #ds)
      assert.are.equal("P3", ds:get(2).prompt)
      assert.are.same({ map = 1 }, ds:stats().dropped)
      h.errors(function() numbered(2):map(function() return { prompt = 1 } end) end,
               "map: pair 1: field 'prompt' is a number, not a string", true)
   end)

   it("shuffle is a seeded permutation", function()
      local ds = numbered(50)
      local a, b, c = ds:shuffle(1), ds:shuffle(1), ds:shuffle(2)
      local function order(d)
         local t = {}
         for p in d:iter() do t[#t + 1] = p.prompt end
         return table.concat(t, ",")
      end
      assert.are.equal(order(a), order(b))
      assert.are_not.equal(order(a), order(c))
      assert.are_not.equal(order(a), order(ds))
      local sorted = {}
      for p in a:iter() do sorted[#sorted + 1] = tonumber(p.prompt:sub(2)) end
      table.sort(sorted)
      for i = 1, 50 do assert.are.equal(i, sorted[i]) end
   end)

   it("split keeps prompts on one side, by seed", function()
      local ds = numbered(200, 40) -- 40 prompts, 5 pairs each
      local a, b = ds:split(0.25, 3)
      assert.are.equal(200, #a + #b)
      assert.are.equal(50, #a) -- 10 of 40 prompts
      local in_a = {}
      for p in a:iter() do in_a[p.prompt] = true end
      for p in b:iter() do assert.is_nil(in_a[p.prompt]) end
      local a2 = ds:split(0.25, 3)
      local a3 = ds:split(0.25, 4)
      assert.are.same(a._pairs, a2._pairs)
      assert.are_not.same(a._pairs, a3._pairs)
      h.errors(function() ds:split(1.5) end, "bad argument #1 to 'split' (fraction in [0, 1]", true)
   end)

   it("stats report every step", function()
      local ds = numbered(20):filter(function(p) return p.prompt ~= "p3", "three" end, "not3")
         :shuffle(5):take(10)
      local st = ds:stats()
      assert.are.equal(10, st.pairs)
      assert.are.same({ not3 = 1 }, st.removed)
      assert.are.same({ "list", "filter", "shuffle", "take" },
                      { st.steps[1].step, st.steps[2].step, st.steps[3].step, st.steps[4].step })
      assert.are.same({ three = 1 }, st.steps[2].reasons)
      local text = tostring(st)
      assert.matches("filter    not3: removed 1 of 20 (three 1)", text, 1, true)
      assert.matches("take      10 of 19", text, 1, true)
   end)

   it("dataset() checks its pairs; misuse raises", function()
      h.errors(function() data.dataset({ { prompt = "a", chosen = "b" } }) end,
               "dataset: pair 1: field 'rejected' is a nil, not a string", true)
      h.errors(function() numbered(3):take(-1) end, "bad argument #1 to 'take'", true)
      h.errors(function() numbered(3):shuffle(1.5) end, "seed must be an integer", true)
      h.errors(function() numbered(3):filter(42) end, "bad argument #1 to 'filter'", true)
      h.errors(function() numbered(3):batches(2) end,
               "batches: the dataset is not tokenized (call ds:tokenize(tok, opts) first)", true)
   end)

   it("save writes pairs that dpo.data.pairs reads back", function()
      local dir = tmpdir()
      local ds = assert(data.hh(FIX .. "hh_rules.jsonl"))
      for _, name in ipairs { "/p.jsonl", "/p.jsonl.gz" } do
         assert(ds:save(dir .. name))
         local back = assert(data.pairs(dir .. name))
         assert.are.same(ds._pairs, back._pairs)
      end
      local r = assert(C.open(dir .. "/p.jsonl.gz"))
      assert.is_true(r:gzip())
      r:close()
      local ok, err = ds:save(dir .. "/no/such/dir/p.jsonl")
      assert.is_nil(ok)
      assert.matches("p.jsonl: No such file or directory", err, 1, true)
      rmtree(dir)
   end)
end)

-- ---- tokenization --------------------------------------------------------------------------

describe("ds:tokenize", function()
   it("tokenizes prompt and replies apart and appends EOS to each reply", function()
      local ds = data.dataset { pair("Q?", " yes", " no") }:tokenize(bytes)
      local p = ds:get(1)
      assert.are.same({ 2, 5, 4 }, { p.n_prompt, p.n_chosen, p.n_rejected })
      assert.are.same({ 2, 5, 4 }, { p.n_prompt_full, p.n_chosen_full, p.n_rejected_full })
      local bt = ds:collate { p }
      assert.are.same({ cat(b "Q? yes", { EOS }), cat(b "Q? no", { EOS }, { EOS }) }, list(bt.ids))
      assert.are.same({ { 0, 0, 1, 1, 1, 1, 1 }, { 0, 0, 1, 1, 1, 1, 0 } }, list(bt.mask))
      assert.are.same({ 2, 2 }, list(bt.prompt_lengths))
      assert.are.same({ 5, 4 }, list(bt.response_lengths))
      assert.are.equal("int32", bt.ids:dtype())
      assert.are.equal("int32", bt.mask:dtype())
   end)

   it("cuts the prompt to max_prompt_length, keeping its end or its start", function()
      local ds = data.dataset { pair("0123456789", " abc", " de") }
      -- 10 + 5 (" abc" + EOS) = 15 > 12: prompt to 6
      local e = ds:tokenize(bytes, { max_length = 12, max_prompt_length = 6 })
      local s = ds:tokenize(bytes, { max_length = 12, max_prompt_length = 6, truncation = "keep_start" })
      assert.are.same({ cat(b "456789 abc", { EOS }), cat(b "456789 de", { EOS }, { EOS }) },
                      list(e:collate({ e:get(1) }).ids))
      assert.are.same(cat(b "012345 abc", { EOS }), list(s:collate({ s:get(1) }).ids)[1])
      assert.are.equal(1, e:stats().steps[2].prompt_cut)
      assert.are.equal(0, e:stats().steps[2].response_cut)
      -- fits: nothing is cut, even though the prompt is longer than max_prompt_length
      local f = ds:tokenize(bytes, { max_length = 15, max_prompt_length = 6 })
      assert.are.equal(10, f:get(1).n_prompt)
   end)

   it("then cuts the replies to fit, and a cut reply loses its EOS", function()
      local ds = data.dataset { pair("0123456789", " abcdefgh", " xy") }
      local t = ds:tokenize(bytes, { max_length = 10, max_prompt_length = 4 })
      local p = t:get(1)
      assert.are.same({ 4, 6, 4 }, { p.n_prompt, p.n_chosen, p.n_rejected })
      assert.are.same({ 10, 10, 4 }, { p.n_prompt_full, p.n_chosen_full, p.n_rejected_full })
      local bt = t:collate { p }
      assert.are.same({ b "6789 abcde", cat(b "6789 xy", { EOS }, { EOS, EOS }) }, list(bt.ids))
      assert.are.same({ 1, 1 }, { t:stats().steps[2].prompt_cut, t:stats().steps[2].response_cut })
   end)

   it("drops a pair left with an empty reply and counts it", function()
      local ds = data.dataset { pair("a", "", " b"), pair("c", " d", " e") }
      local t = ds:tokenize(bytes, { add_eos = false })
      assert.are.equal(1, #t)
      assert.are.same({ empty_response = 1 }, t:stats().dropped)
      assert.are.equal(2, #ds:tokenize(bytes)) -- with EOS the reply is not empty
   end)

   it("puts a bos token where the prompt is empty", function()
      local t = data.dataset { pair("", "hi", "no") }:tokenize(bytes)
      assert.are.same({ EOS, 104, 105, EOS }, list(t:collate({ t:get(1) }).ids)[1])
      assert.are.equal(1, t:get(1).n_prompt)
      assert.are.equal(0, t:get(1).n_prompt_full)
   end)

   it("encodes special-token text in the data as text", function()
      local t = data.dataset { pair("x", "<|endoftext|>", "y") }:tokenize(bytes)
      assert.are.equal(#"<|endoftext|>" + 1, t:get(1).n_chosen)
   end)

   it("works with a BPE tokenizer and with any object that has encode_batch", function()
      local tiny = dpo.tokenizer.load("tests/fixtures/tokenizer/tiny.json")
      local ds = assert(data.hh(FIX .. "hh_rules.jsonl"))
      local t = ds:tokenize(tiny)
      for p in t:iter() do
         assert.are.equal(tiny:encode(p.prompt, { special = false }):size(1), p.n_prompt)
         assert.are.equal(tiny:encode(p.chosen, { special = false }):size(1) + 1, p.n_chosen)
      end
      local calls = 0
      local fake = {
         eos_id = 9, pad_id = 0,
         encode_batch = function(_, texts)
            calls = calls + 1
            local out = {}
            for i, s in ipairs(texts) do
               out[i] = {}
               for k = 1, #s do out[i][k] = 1 + s:byte(k) % 8 end
            end
            return out
         end,
      }
      local f = ds:tokenize(fake, { max_length = 64 })
      assert.are.equal(1, calls) -- one call for the whole (small) dataset
      local bt = f:collate { f:get(1) }
      assert.are.equal(9, list(bt.ids)[1][f:get(1).n_prompt + f:get(1).n_chosen])
      h.errors(function() ds:tokenize({}) end, "bad argument #1 to 'tokenize'", true)
      h.errors(function() ds:tokenize({ encode_batch = fake.encode_batch }) end,
               "the tokenizer has no eos_id", true)
      h.errors(function() ds:tokenize(bytes, { max_length = 8, max_prompt_length = 8 }) end,
               "max_prompt_length must be an integer in 1..7", true)
      h.errors(function() ds:tokenize(bytes, { truncation = "middle" }) end,
               "truncation must be 'keep_end' or 'keep_start'", true)
   end)

   it("survives filters, shuffles and splits; map forgets the tokens", function()
      local t = numbered(12):tokenize(bytes)
      assert.is_true(t:filter(function() return true end):is_tokenized())
      assert.is_true(t:shuffle(1):take(3):is_tokenized())
      local m = t:map(function(p) return p end)
      assert.is_false(m:is_tokenized())
      assert.is_nil(m:get(1).row)
      assert.is_number(t:get(1).row) -- the tokenized parent still has its rows
   end)
end)

-- ---- batches -------------------------------------------------------------------------------

describe("ds:batches", function()
   local ds = numbered(23):tokenize(bytes)

   it("collates chosen rows first, then rejected, right-padded with the pad id", function()
      local t = data.dataset { pair("ab", " x", " long reply"), pair("c", " yy", " z") }:tokenize(bytes)
      local it = t:batches(2)
      local bt = it()
      assert.is_nil(it())
      assert.are.equal(2, bt.size)
      local function rep(v, n)
         local t = {}
         for i = 1, n do t[i] = v end
         return t
      end
      assert.are.same({ 4, 14 }, bt.ids:shape())
      assert.are.same({
         cat(b "ab x", { EOS }, rep(EOS, 9)),
         cat(b "c yy", { EOS }, rep(EOS, 9)),
         cat(b "ab long reply", { EOS }),
         cat(b "c z", { EOS }, rep(EOS, 10)),
      }, list(bt.ids))
      assert.are.same({ 2, 1, 2, 1 }, list(bt.prompt_lengths))
      assert.are.same({ 3, 4, 12, 3 }, list(bt.response_lengths))
      local m = list(bt.mask)
      assert.are.same(cat(rep(0, 2), rep(1, 3), rep(0, 9)), m[1])
      assert.are.same(cat(rep(0, 1), rep(1, 4), rep(0, 9)), m[2])
      assert.are.same(cat(rep(0, 2), rep(1, 12)), m[3])
      assert.are.same(cat(rep(0, 1), rep(1, 3), rep(0, 10)), m[4])
      for r = 1, 4 do
         local s = 0
         for _, v in ipairs(m[r]) do s = s + v end
         assert.are.equal(list(bt.response_lengths)[r], s)
      end
      -- a tokenizer's own pad id pads
      local padded = data.dataset { pair("a", " b", " ccc") }
         :tokenize({ eos_id = 2, pad_id = 7, encode_batch = function(_, texts)
            local out = {}
            for i, s in ipairs(texts) do out[i] = dpo.tensor(b(s), "int32") end
            return out
         end })
      assert.are.same({ 97, 32, 98, 2, 7, 7 }, list(padded:collate({ padded:get(1) }).ids)[1])
   end)

   it("has an SFT variant with the chosen rows only", function()
      local t = data.dataset { pair("ab", " x", " long reply") }:tokenize(bytes)
      local bt = t:batches(4, { sft = true })()
      assert.are.same({ 1, 5 }, bt.ids:shape())
      assert.are.same({ cat(b "ab x", { EOS }) }, list(bt.ids))
      assert.are.same({ { 0, 0, 1, 1, 1 } }, list(bt.mask))
      assert.is_true(bt.sft)
   end)

   it("covers the dataset in order, with a short last batch unless drop_last", function()
      local sizes, first = {}, {}
      for bt in ds:batches(5) do
         sizes[#sizes + 1] = bt.size
         first[#first + 1] = bt.pairs[1].prompt
      end
      assert.are.same({ 5, 5, 5, 5, 3 }, sizes)
      assert.are.same({ "p1", "p6", "p11", "p16", "p21" }, first)
      local n = 0
      for _ in ds:batches(5, { drop_last = true }) do n = n + 1 end
      assert.are.equal(4, n)
      assert.are.equal(5, ds:num_batches(5))
      assert.are.equal(4, ds:num_batches(5, { drop_last = true }))
   end)

   it("are identical across runs with the same seed and differ with another", function()
      local function run(seed, epoch)
         local out = {}
         for bt in ds:batches(4, { shuffle = true, seed = seed, epoch = epoch }) do
            out[#out + 1] = list(bt.ids)
         end
         return out
      end
      local a, b2 = run(7), run(7)
      assert.are.same(a, b2)
      assert.are_not.same(a, run(8))
      assert.are_not.same(a, run(7, 2)) -- each epoch its own order
      -- a shuffle is a permutation: every pair once
      local seen = 0
      for bt in ds:batches(4, { shuffle = true, seed = 7 }) do seen = seen + bt.size end
      assert.are.equal(23, seen)
   end)

   it("feed the model: logps counts equal the response lengths", function()
      local m = dpo.gpt.new { vocab_size = 257, n_ctx = 64, n_layer = 1, n_head = 2, n_embd = 8 }
      local t = assert(data.hh(FIX .. "hh_rules.jsonl")):tokenize(bytes, { max_length = 64 })
      for bt in t:batches(3) do
         local logps, counts = dpo.no_grad(function() return m:logps(bt.ids, bt.mask) end)
         assert.are.same({ 2 * bt.size }, logps:shape())
         h.near(counts, list(bt.response_lengths))
      end
   end)
end)

-- ---- the bundled sample ------------------------------------------------------------------

describe("the bundled HH sample", function()
   local SAMPLE = "examples/data/hh-sample/"

   it("loads, and the parser and filters catch its dirty rows", function()
      for _, split in ipairs { "train", "test" } do
         local ds = assert(data.hh(SAMPLE .. split .. ".jsonl.gz"))
         local st0 = ds:stats()
         assert.are.equal(0, st0.errors)
         assert.are.same({ prompt_mismatch = 1, empty_response = 1, identical_responses = 1 }, st0.dropped)
         local clean = ds:filter(filters.hh_clean()):filter(filters.dedupe())
         local st = clean:stats()
         assert.are.same({ roles_not_alternating = 1, empty_turn = 1, unequal_turns = 2 },
                         st.steps[2].reasons)
         assert.are.equal(1, st.steps[3].removed)
         assert.are.equal(#ds - 5, #clean)
      end
   end)

   it("has disjoint train and test prompts", function()
      local train = assert(data.hh(SAMPLE .. "train.jsonl.gz"))
      local test = assert(data.hh(SAMPLE .. "test.jsonl.gz"))
      assert.is_true(#train > 2000 and #test > 300)
      local seen = {}
      for p in train:iter() do seen[p.prompt] = true end
      for p in test:iter() do assert.is_nil(seen[p.prompt], p.prompt) end
   end)

   it("is what its script writes, byte for byte", function()
      local dir = tmpdir()
      local cmd = ("'%s' examples/data/make_hh_sample.lua --out='%s' > /dev/null"):format(
         os.getenv("DPOLUA") or "build/dpolua", dir)
      assert.is_true(os.execute(cmd) == true, cmd)
      for _, f in ipairs { "train.jsonl.gz", "test.jsonl.gz" } do
         assert.is_true(read(dir .. "/" .. f) == read(SAMPLE .. f), f .. " differs")
      end
      rmtree(dir)
   end)
end)
