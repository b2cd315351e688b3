-- dpo.tokenizer: text in, ids out, and back. BPE as GPT-2 and Hugging Face's
-- tokenizers do it; the work is in C (core/text/: bpe.c, and normalize.c,
-- pretok.c, postproc.c, decode.c for tokenizer.json's stages), this file
-- holds the options and their defaults.
--
--   local tok = dpo.tokenizer.load(path)
--       path: a tokenizer.json with a BPE model (Llama 2 and 3, Qwen2.5 and 3,
--       Gemma 2 and 3, Mistral, SmolLM2, GPT-2: the same ids as Hugging Face's
--       tokenizers), or a directory holding tokenizer.json, vocab.json +
--       merges.txt, or encoder.json + vocab.bpe (GPT-2's names). A directory's
--       tokenizer_config.json / special_tokens_map.json name eos/bos/pad/unk.
--       WordPiece and Unigram models raise an error naming the type.
--   dpo.tokenizer.from_files(vocab_json, merges_txt)
--   dpo.tokenizer.bytes()       ids 0..255 are the bytes, 256 is <|endoftext|>
--   dpo.tokenizer.train(corpus, {vocab_size = 8000, min_frequency = 2,
--                                special_tokens = {"<|endoftext|>"}})
--       corpus: a text, a list of texts, and/or `files = {path, ...}` (or one
--       path) read from disk: {"a text", "another", files = {"data.txt"}}.
--       Ids 0..255 are the bytes, then the merges, then the special tokens.
--   dpo.tokenizer.pretokenize(text)   GPT-2's pieces, a list of strings
--
--   tok:encode(text [, {special = true, add_special_tokens = true}])
--       -> int32 tensor of 0-based ids; add_special_tokens puts the
--       post-processor's tokens around them as Hugging Face's encode does
--       (Llama 2's and Gemma's BOS; GPT-2, Llama 3's file and Qwen add none);
--       special = false encodes special tokens' text as plain text
--   tok:encode_batch(texts [, opts])       -> {tensor, ...}, on all threads
--   tok:decode(ids [, {skip_special = false}]) -> string; ids a tensor or a table
--   tok:vocab_size(), tok:token_to_id(s), tok:id_to_token(id), tok:special_tokens()
--   tok.eos_id, tok.bos_id, tok.pad_id, tok.unk_id   nil when undefined; settable
--       (the strings: tok:id_to_token(tok.bos_id) ...)
--   tok:save(path)   a tokenizer.json Hugging Face reads; a directory gets
--                    tokenizer.json and tokenizer_config.json (the one read,
--                    chat_template included, with the roles updated)
--   tok:free(), or `local tok <close> = ...`
--
-- decode gives Hugging Face's decoded text; with a byte-level decoder (GPT-2,
-- Llama 3, Qwen) decode(encode(s)) == s for any bytes s, valid UTF-8 or not,
-- where Hugging Face would write U+FFFD for bytes that are not. Bad files raise
-- an error naming the file; an unknown id in decode names the id.
local core = require "dpo.core"

local C = core.tokenizer
local tokenizer = {}

tokenizer.load = C.load
tokenizer.from_files = C.from_files
tokenizer.bytes = C.bytes
tokenizer.pretokenize = C.pretokenize

local function argerror(k, msg)
   error(string.format("bad argument #%d to 'train' (%s)", k, msg), 3)
end

local function strings(list, what, k)
   local out = {}
   for i, v in ipairs(list) do
      if type(v) ~= "string" then
         argerror(k, string.format("%s %d is a %s, not a string", what, i, type(v)))
      end
      out[i] = v
   end
   return out
end

local TRAIN_OPTS = { vocab_size = true, min_frequency = true, special_tokens = true }

function tokenizer.train(corpus, opts)
   opts = opts or {}
   if type(opts) ~= "table" then argerror(2, "table of options expected, got " .. type(opts)) end
   for k in pairs(opts) do
      if not TRAIN_OPTS[k] then
         argerror(2, "unknown option '" .. tostring(k) ..
                  "' (options: min_frequency, special_tokens, vocab_size)")
      end
   end
   local texts, paths
   if type(corpus) == "string" then
      texts, paths = { corpus }, {}
   elseif type(corpus) == "table" then
      texts = strings(corpus, "text", 1)
      local files = corpus.files
      if type(files) == "string" then files = { files } end
      if files ~= nil and type(files) ~= "table" then
         argerror(1, "files must be a path or a list of paths, not a " .. type(files))
      end
      paths = strings(files or {}, "path", 1)
   else
      argerror(1, "a text, a list of texts or {files = ...} expected, got " .. type(corpus))
   end
   if #texts == 0 and #paths == 0 then argerror(1, "the corpus is empty") end
   local special = opts.special_tokens or { "<|endoftext|>" }
   if type(special) ~= "table" then
      argerror(2, "special_tokens must be a list of strings, not a " .. type(special))
   end
   special = strings(special, "special token", 2)
   local vocab_size = opts.vocab_size or 8000
   if math.type(vocab_size) ~= "integer" or vocab_size < 256 + #special then
      argerror(2, string.format("vocab_size must be an integer >= %d (256 bytes + %d special " ..
                                "tokens), not %s", 256 + #special, #special, tostring(vocab_size)))
   end
   local min_frequency = opts.min_frequency or 2
   if math.type(min_frequency) ~= "integer" or min_frequency < 0 then
      argerror(2, "min_frequency must be a non-negative integer, not " .. tostring(min_frequency))
   end
   return C.train(texts, paths, vocab_size, min_frequency, special)
end

return tokenizer
