-- Writes the tiny vocabulary the tokenizer spec checks by hand:
--   tests/fixtures/tokenizer/tiny/vocab.json + merges.txt   (GPT-2's layout)
--   tests/fixtures/tokenizer/tiny.json                       (tokenizer.json)
-- Ids 0..255 are the 256 byte tokens in byte order, written with GPT-2's
-- byte-to-unicode alphabet; then one token per merge below, in rank order.
-- tiny.json adds <|endoftext|> (special) and <mask> (lstrip, not special)
-- and writes its merges as pairs, the newer form of the format.
--   lua5.4 tests/tokenizer/make_tiny.lua      (from the repository root)

-- GPT-2's bytes_to_unicode
local byte_char = {}
do
   local n = 0
   for b = 0, 255 do
      local shown = (b >= 33 and b <= 126) or (b >= 0xA1 and b <= 0xAC) or b >= 0xAE
      byte_char[b] = utf8.char(shown and b or 256 + n)
      if not shown then n = n + 1 end
   end
end
local function bl(s) return (s:gsub(".", function(c) return byte_char[c:byte()] end)) end

-- merges in rank order, as raw strings
local merges = {
   { " ", "t" }, { "h", "e" }, { " t", "he" }, { "'", "s" }, { "'", "t" }, { "r", "e" },
   { "'", "re" }, { " ", " " }, { "  ", "  " }, { "\n", "\n" }, { "1", "2" }, { "12", "3" },
   { "l", "l" }, { "ll", "o" }, { "H", "e" }, { "He", "llo" }, { " ", "w" }, { " w", "o" },
   { " wo", "r" }, { " wor", "l" }, { " worl", "d" }, { "\xF0", "\x9F" }, { "\xE6", "\x97" },
}

local tokens = {}
for b = 0, 255 do tokens[#tokens + 1] = byte_char[b] end
for _, m in ipairs(merges) do tokens[#tokens + 1] = bl(m[1] .. m[2]) end

local function q(s) -- a JSON string (the tokens hold no control characters)
   return '"' .. s:gsub('[\\"]', "\\%0") .. '"'
end

local vocab = {}
for id, t in ipairs(tokens) do vocab[#vocab + 1] = string.format("  %s: %d", q(t), id - 1) end
local vocab_json = "{\n" .. table.concat(vocab, ",\n") .. "\n}\n"

local lines, pairs_json = { "#version: 0.2" }, {}
for _, m in ipairs(merges) do
   lines[#lines + 1] = bl(m[1]) .. " " .. bl(m[2])
   pairs_json[#pairs_json + 1] = string.format("      [%s, %s]", q(bl(m[1])), q(bl(m[2])))
end

local function write(path, s)
   local f = assert(io.open(path, "wb"))
   f:write(s)
   f:close()
end

local dir = "tests/fixtures/tokenizer/"
write(dir .. "tiny/vocab.json", vocab_json)
write(dir .. "tiny/merges.txt", table.concat(lines, "\n") .. "\n")

local n = #tokens
write(dir .. "tiny.json", table.concat({
   "{",
   '  "version": "1.0",',
   '  "truncation": null,',
   '  "padding": null,',
   '  "added_tokens": [',
   string.format('    {"id": %d, "content": "<|endoftext|>", "single_word": false, "lstrip": false, ' ..
                 '"rstrip": false, "normalized": false, "special": true},', n),
   string.format('    {"id": %d, "content": "<mask>", "single_word": false, "lstrip": true, ' ..
                 '"rstrip": false, "normalized": false, "special": false}', n + 1),
   "  ],",
   '  "normalizer": null,',
   '  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, ' ..
   '"use_regex": true},',
   '  "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, ' ..
   '"use_regex": true},',
   '  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, ' ..
   '"use_regex": true},',
   '  "model": {',
   '    "type": "BPE",',
   '    "dropout": null,',
   '    "unk_token": null,',
   '    "continuing_subword_prefix": "",',
   '    "end_of_word_suffix": "",',
   '    "fuse_unk": false,',
   '    "byte_fallback": false,',
   '    "vocab": ' .. vocab_json:gsub("\n$", ""):gsub("\n", "\n    ") .. ",",
   '    "merges": [',
   table.concat(pairs_json, ",\n"),
   "    ]",
   "  }",
   "}",
   "",
}, "\n"))
print(string.format("make_tiny.lua: %d tokens, %d merges", n, #merges))
