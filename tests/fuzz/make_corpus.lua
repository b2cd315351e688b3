-- make_corpus.lua: the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/),
-- small valid files and a few broken ones. Run from the top of the repository:
--     dpolua tests/fuzz/make_corpus.lua
-- Every file comes from the literals below and the fixtures of tests/fixtures
-- (gzip through zlib, level 9, no name or time), so running it again gives the
-- same bytes. Inputs that once crashed a target are kept beside these, named
-- crash-*, and are not written here.
local lfs = require "lfs"
local core = require "dpo.core"

local root = "tests/fuzz/corpus"

local function mkdir(d)
   if lfs.attributes(d, "mode") ~= "directory" then assert(lfs.mkdir(d)) end
end

local function read(path)
   local f = assert(io.open(path, "rb"))
   local s = f:read("a")
   f:close()
   return s
end

local function write(target, name, bytes)
   mkdir(root .. "/" .. target)
   local f = assert(io.open(root .. "/" .. target .. "/" .. name, "wb"))
   f:write(bytes)
   f:close()
end

-- gzip through dpolua's writer (zlib); the same bytes give the same file.
local function gzip(bytes)
   local tmp = os.tmpname()
   local w = assert(core.data.writer(tmp, true))
   w:write(bytes)
   assert(w:commit())
   local s = read(tmp)
   os.remove(tmp)
   return s
end

mkdir(root)

-- ---- safetensors ------------------------------------------------------------------------

-- A file of: the 8-byte length of header, header, then data.
local function st(header, data)
   return string.pack("<I8", #header) .. header .. (data or "")
end

local function entry(name, dtype, shape, b, e)
   return string.format('"%s":{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}', name, dtype,
                        table.concat(shape, ","), b, e)
end

-- the writer's own files
do
   local tmp = os.tmpname()
   local w = dpo.tensor({ { 1, -2.5, 3 }, { 0.25, 1e-3, -0 } })
   local b = dpo.tensor({ 0.5, 1.5, -1 })
   assert(dpo.save(tmp, { ["h.0.w"] = w, ["h.0.b"] = b }, { format = "pt", step = "3" }))
   write("safetensors", "f32_meta.safetensors", read(tmp))
   assert(dpo.save(tmp, { ids = dpo.tensor({ { 1, 2 }, { 3, -4 } }, "int32"),
                          empty = dpo.zeros(0, 3), scalar = dpo.tensor(7) }))
   write("safetensors", "i32_empty_scalar.safetensors", read(tmp))
   os.remove(tmp)
end

-- every dtype the reader converts, two elements each
local dtypes = {
   { "F16", string.pack("<I2I2", 0x3c00, 0xfc00) },           -- 1, -inf
   { "BF16", string.pack("<I2I2", 0x3f80, 0x7fc1) },          -- 1, nan
   { "F64", string.pack("<dd", 1e300, -2.5) },
   { "F8_E4M3", "\x38\x7f" }, { "F8_E5M2", "\x3c\xff" },
   { "BOOL", "\x00\x01" }, { "U8", "\x00\xff" }, { "I8", "\x80\x7f" },
   { "I16", string.pack("<i2i2", -32768, 32767) }, { "U16", string.pack("<I2I2", 0, 65535) },
   { "I32", string.pack("<i4i4", -1, 2147483647) }, { "U32", string.pack("<I4I4", 7, 2147483647) },
   { "I64", string.pack("<i8i8", -2147483648, 5) }, { "U64", string.pack("<I8I8", 0, 2147483647) },
}
do
   local parts, data = {}, {}
   local at = 0
   for _, d in ipairs(dtypes) do
      parts[#parts + 1] = entry("t_" .. d[1], d[1], { 2 }, at, at + #d[2])
      data[#data + 1] = d[2]
      at = at + #d[2]
   end
   write("safetensors", "all_dtypes.safetensors",
         st("{" .. table.concat(parts, ",") .. "}", table.concat(data)))
end
-- F32 at an offset not a multiple of 4 (converted, not a view), a gap, trailing bytes
write("safetensors", "unaligned.safetensors",
      st("{" .. entry("a", "F32", { 1, 2 }, 1, 9) .. "," .. entry("b", "I32", { 1 }, 12, 16) ..
         ',"__metadata__":{"k":"v","a":"b"}}', string.rep("\x3f", 20)))
-- broken: header past the end, overlap, unknown and unsupported dtypes, shapes
write("safetensors", "bad_hlen.safetensors", string.pack("<I8", 1000) .. "{}")
write("safetensors", "bad_overlap.safetensors",
      st("{" .. entry("a", "F32", { 2 }, 0, 8) .. "," .. entry("b", "F32", { 2 }, 4, 12) .. "}",
         string.rep("\0", 12)))
write("safetensors", "bad_dtype.safetensors",
      st("{" .. entry("a", "C64", { 1 }, 0, 8) .. "," .. entry("b", "Q4", { 1 }, 8, 9) .. "}",
         string.rep("\0", 9)))
write("safetensors", "zero_dim.safetensors",
      st("{" .. entry("a", "F32", { 0, 1099511627776, 1099511627776 }, 0, 0) .. "}"))
write("safetensors", "bad_json.safetensors", st('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]', "1234"))
write("safetensors", "truncated.safetensors",
      st("{" .. entry("a", "F32", { 4 }, 0, 16) .. "}", "\0\0\0\0"))

-- ---- JSONL and HH -------------------------------------------------------------------------

local enc = require("cjson").new().encode
local function hh(chosen, rejected)
   return '{"chosen":' .. enc(chosen) .. ',"rejected":' .. enc(rejected) .. "}\n"
end
local function H(s) return "\n\nHuman: " .. s end
local function A(s) return "\n\nAssistant: " .. s end

local fixtures = "tests/fixtures/data/"
for _, name in ipairs { "hh_rules.jsonl", "hh_dirty.jsonl", "pairs.jsonl", "crlf.jsonl",
                        "bad_utf8.jsonl", "bad_fields.jsonl", "three.jsonl.gz",
                        "truncated.jsonl.gz", "corrupt.jsonl.gz" } do
   write("hh", name, read(fixtures .. name))
end
local dialogues = table.concat {
   hh(H "Hi" .. A "Hello! How can I help?" .. H "Name a color." .. A "Green.",
      H "Hi" .. A "Hello! How can I help?" .. H "Name a color." .. A "No."),
   hh(H "Caf\u{e9} \u{1F600}?" .. A "Oui.", H "Caf\u{e9} \u{1F600}?" .. A " "),
   hh(H "x" .. A "same", H "x" .. A "same"),
   '{"prompt":"Q: 1+1?","chosen":" 2","rejected":" 3"}\n',
   '[1,2]\n', 'null\n', '{"chosen":1}\n',
}
write("hh", "mixed.jsonl.gz", gzip(dialogues))
-- two gzip members one after the other, a byte order mark, no final newline
write("hh", "two_members.jsonl.gz", gzip(hh(H "a" .. A "b", H "a" .. A "c")) ..
      gzip(hh(H "d" .. A "e", H "d" .. A "f")))
write("hh", "bom_no_newline.jsonl", "\xEF\xBB\xBF" .. hh(H "a" .. A "b", H "a" .. A "c"):sub(1, -2))

-- ---- tokenizers ---------------------------------------------------------------------------

local tiny = "tests/fixtures/tokenizer/"
write("tokenizer_json", "tiny.json", read(tiny .. "tiny.json"))
do
   local tmp = os.tmpname()
   local tok = dpo.tokenizer.train({ "the cat sat on the mat, the cat's hat. \u{e9}t\u{e9} \u{4e2d}\u{6587}",
                                     "low lower lowest newer wider 12 345 6789" },
                                   { vocab_size = 256 + 24 + 2, special_tokens = { "<|endoftext|>", "<pad>" } })
   tok:save(tmp)
   write("tokenizer_json", "trained.json", read(tmp))
   os.remove(tmp)
end
-- merges as pairs, added tokens with every flag, unk, ignore_merges, no regex
write("tokenizer_json", "flags.json", [[
{"added_tokens":[{"id":5,"content":"<mask>","lstrip":true,"rstrip":true,"special":true},
 {"id":6,"content":"hi","single_word":true,"special":false}],
 "pre_tokenizer":{"type":"ByteLevel","add_prefix_space":true,"use_regex":false},
 "decoder":{"type":"ByteLevel"},
 "model":{"type":"BPE","unk_token":"a","ignore_merges":true,
  "vocab":{"a":0,"b":1,"ab":2,"Ġ":3,"Ġab":4,"<mask>":5,"hi":6},"merges":[["a","b"],"Ġ ab"]}}
]])
-- the stages of today's files: Llama 2's (normalizer, byte fallback, template,
-- decoders) and Llama 3's (a Split regex before ByteLevel)
write("tokenizer_json", "sentencepiece.json", [[
{"added_tokens":[{"id":0,"content":"<unk>","special":true},{"id":1,"content":"<s>","special":true},
 {"id":9,"content":"[X]","normalized":true,"special":false}],
 "normalizer":{"type":"Sequence","normalizers":[{"type":"NFKC"},{"type":"Prepend","prepend":"\u2581"},
  {"type":"Replace","pattern":{"String":" "},"content":"\u2581"}]},
 "pre_tokenizer":{"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},
  {"type":"Metaspace","replacement":"\u2581","prepend_scheme":"first","split":true}]},
 "post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},
  {"Sequence":{"id":"A","type_id":0}}],"special_tokens":{"<s>":{"id":"<s>","ids":[1],"tokens":["<s>"]}}},
 "decoder":{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"\u2581"},"content":" "},
  {"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]},
 "model":{"type":"BPE","unk_token":"<unk>","fuse_unk":true,"byte_fallback":true,
  "vocab":{"<unk>":0,"<s>":1,"\u2581":2,"a":3,"b":4,"\u2581a":5,"<0x41>":6,"<0x62>":7,"ab":8,"[X]":9},
  "merges":["\u2581 a","a b"]}}
]])
write("tokenizer_json", "split_regex.json", [[
{"added_tokens":[{"id":7,"content":"<|x|>","special":true}],
 "pre_tokenizer":{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":
  "(?i:'s|'t)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
  "behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"use_regex":false}]},
 "decoder":{"type":"ByteLevel"},"normalizer":{"type":"NFC"},
 "model":{"type":"BPE","ignore_merges":true,"vocab":{"a":0,"b":1,"ab":2,"\u0120":3,"\u0120ab":4,"1":5,"12":6,"<|x|>":7,"2":8},
  "merges":[["a","b"],"\u0120 ab","1 2"]}}
]])
write("tokenizer_json", "bad_model.json",
      '{"model":{"type":"WordPiece","vocab":{}},"pre_tokenizer":{"type":"ByteLevel"}}')
write("tokenizer_json", "bad_dropout.json",
      '{"model":{"type":"BPE","dropout":0.1,"vocab":{"a":0},"merges":[]},"pre_tokenizer":{"type":"ByteLevel"}}')

-- vocab.json NUL merges.txt [NUL special_tokens_map.json NUL added_tokens.json NUL tokenizer_config.json]
write("tokenizer_files", "tiny.bin", read(tiny .. "tiny/vocab.json") .. "\0" .. read(tiny .. "tiny/merges.txt"))
write("tokenizer_files", "small_all.bin", table.concat({
   '{"a":0,"b":1,"ab":2,"<|endoftext|>":3,"\\u0120":4,"\\u0120ab":5}',
   "#version: 0.2\r\na b\r\n\u{120} ab",
   '{"eos_token":{"content":"<|endoftext|>"},"pad_token":null}',
   '{"<extra>":6}',
   '{"bos_token":"<|endoftext|>","unk_token":"a"}',
}, "\0"))
write("tokenizer_files", "bad_merge.bin", '{"a":0,"b":1}\0a  b\n')
write("tokenizer_files", "bad_ids.bin", '{"a":0,"b":0,"c":-1}\0')

-- ---- texts for encode ---------------------------------------------------------------------

write("encode", "english.txt", "Hello world! It's 2024; we'll see, they'd know. I'm   here\n\n\tok?")
write("encode", "specials.txt", "<|endoftext|>x <mask> y<|im_start|>user\n<|im_end|><|endoftext")
write("encode", "utf8.txt", "caf\u{e9} na\u{ef}ve \u{4e2d}\u{6587} \u{1F468}\u{200D}\u{1F469} " ..
      "e\u{301} \u{661}\u{662}\u{663} \u{2028}\u{85}\u{feff}\u{a0}x \u{2019}s \u{1F600}")
-- invalid UTF-8: lone continuation, overlong, surrogate, past U+10FFFF, cut sequences
write("encode", "bad_utf8.txt", "a\x80b \xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 \xe4\xb8 \xf0\x9f\x98 \xff\xfe z\xc3")
write("encode", "long_word.txt", string.rep("ab", 80) .. " " .. string.rep("\u{e9}", 70) ..
      string.rep(" ", 40) .. "x" .. string.rep("\n", 5))
write("encode", "contractions.txt", "'s 'S 't 're 've 'm 'll 'd ''s don't DON'T 1'2 x'y")
