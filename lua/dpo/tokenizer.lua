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
--                    chat_template included, with the roles updated); with a chat
--                    template, a directory or a path ending in tokenizer.json
--                    also gets chat_template.jinja beside it (which
--                    transformers and load() read)
--   tok:free(), or `local tok <close> = ...`
--
-- Chat templates (rendered by dpo.jinja as transformers renders them):
--   tok:chat_template()  -> the template text and where it came from (a file's
--       path, or the name given to set_chat_template), or nil. load(path)
--       reads it from the directory's chat_template.jinja, else from
--       tokenizer_config.json's chat_template (a string, or a list of {name,
--       template}: "default").
--   tok:set_chat_template(text or nil [, source])  use this template (compiled
--       here, so a syntax error is raised now); source names it (default
--       "set_chat_template"); returns tok
--   tok:apply_chat_template(messages [, opts]) -> string, or ids when tokenize
--       messages: a list of {role = , content = } (content a string, or a list
--       of {type = "text", text = } parts; other fields are kept); opts:
--       add_generation_prompt = false, tokenize = false (ids: an int32 tensor,
--       encoded with special tokens recognized and none added), tools (a list,
--       else None), chat_template (a text to use instead of the tokenizer's);
--       any other field is a template variable. As transformers does, the
--       template sees messages, tools, documents (None), add_generation_prompt,
--       and bos_token, eos_token, pad_token, unk_token: the text of the
--       tokenizer's special tokens, where it has them.
--
-- decode gives Hugging Face's decoded text; with a byte-level decoder (GPT-2,
-- Llama 3, Qwen) decode(encode(s)) == s for any bytes s, valid UTF-8 or not,
-- where Hugging Face would write U+FFFD for bytes that are not. Bad files raise
-- an error naming the file; an unknown id in decode names the id.
local core = require "dpo.core"
local jinja = require "dpo.jinja"
local cjson = require("cjson").new()
local lfs = require "lfs"

local C = core.tokenizer
local tokenizer = {}

local format = string.format

-- Each tokenizer's chat template text (false: none) and its source, by tokenizer.
local TEMPLATES = setmetatable({}, { __mode = "k" })
local SOURCES = setmetatable({}, { __mode = "k" })
-- Compiled templates, by text.
local COMPILED = setmetatable({}, { __mode = "v" })

local function slurp(path)
   local f = io.open(path, "rb")
   if not f then return nil end
   local s = f:read("a")
   f:close()
   return s
end

-- The chat template of the tokenizer files at path (a directory, or a file in
-- one): chat_template.jinja, else tokenizer_config.json's chat_template.
local function find_template(path)
   local dir = path
   if lfs.attributes(path, "mode") ~= "directory" then dir = path:match("^(.*)/[^/]*$") or "." end
   local text = slurp(dir .. "/chat_template.jinja")
   if text then return text, dir .. "/chat_template.jinja" end
   local cfg = slurp(dir .. "/tokenizer_config.json")
   if not cfg then return nil end
   local ok, c = pcall(cjson.decode, cfg)
   if not ok or type(c) ~= "table" then return nil end -- the C loader names a bad file
   local t = c.chat_template
   if type(t) == "string" then return t, dir .. "/tokenizer_config.json" end
   if type(t) == "table" then
      for _, e in ipairs(t) do
         if type(e) == "table" and e.name == "default" and type(e.template) == "string" then
            return e.template, dir .. "/tokenizer_config.json"
         end
      end
      error(format("%s/tokenizer_config.json: chat_template is a list without a \"default\" template", dir), 3)
   end
   return nil
end

function tokenizer.load(path)
   local tok = C.load(path)
   local text, source = find_template(path)
   TEMPLATES[tok], SOURCES[tok] = text or false, source
   return tok
end
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

-- ---- chat templates ---------------------------------------------------------------------

local METHODS = debug.getregistry()["dpo.Tokenizer"].__methods

local function check_tok(tok, fname)
   if getmetatable(tok) ~= debug.getregistry()["dpo.Tokenizer"] then
      error(format("bad argument #1 to '%s' (dpo.Tokenizer expected, got %s)", fname, type(tok)), 3)
   end
   if not pcall(tok.vocab_size, tok) then
      error(format("bad argument #1 to '%s' (attempt to use a freed dpo.Tokenizer)", fname), 3)
   end
end

local function compiled(text)
   local t = COMPILED[text]
   if not t then
      t = jinja.compile(text, "chat template")
      COMPILED[text] = t
   end
   return t
end

-- tok:save(path): the C save, then the chat template beside it.
local C_METHODS = { save = METHODS.save }
function METHODS.save(tok, path)
   local r = C_METHODS.save(tok, path)
   local text = TEMPLATES[tok]
   if text and type(path) == "string" then
      local dir = lfs.attributes(path, "mode") == "directory" and path or path:match("^(.*)/tokenizer%.json$")
      if not dir and path == "tokenizer.json" then dir = "." end
      if dir then
         local ok, err = core.write_file(dir .. "/chat_template.jinja", text)
         if not ok then error("save: " .. tostring(err), 2) end
      end
   end
   return r
end

function METHODS.chat_template(tok)
   check_tok(tok, "chat_template")
   if not TEMPLATES[tok] then return nil end
   return TEMPLATES[tok], SOURCES[tok]
end

function METHODS.set_chat_template(tok, text, source)
   check_tok(tok, "set_chat_template")
   if text ~= nil and type(text) ~= "string" then
      error("bad argument #2 to 'set_chat_template' (template text or nil expected, got " .. type(text) .. ")", 2)
   end
   if text then
      local ok, err = pcall(compiled, text)
      if not ok then error("set_chat_template: " .. tostring(err), 2) end
   end
   if source ~= nil and type(source) ~= "string" then
      error("bad argument #3 to 'set_chat_template' (source name expected, got " .. type(source) .. ")", 2)
   end
   TEMPLATES[tok], SOURCES[tok] = text or false, text and (source or "set_chat_template") or nil
   return tok
end

-- The text of the token of role r, or nil.
local function token_text(tok, id)
   if id == nil then return nil end
   local ok, s = pcall(tok.id_to_token, tok, id)
   return ok and s or nil
end

local RESERVED = { add_generation_prompt = true, tokenize = true, chat_template = true, tools = true,
                   messages = true, documents = true }

local function check_messages(messages)
   if type(messages) ~= "table" or #messages == 0 and next(messages) ~= nil then
      error("bad argument #2 to 'apply_chat_template' (a list of messages expected, got " ..
            type(messages) .. ")", 3)
   end
   for i, m in ipairs(messages) do
      if type(m) ~= "table" then
         error(format("bad argument #2 to 'apply_chat_template' (message %d is a %s, not a table)", i, type(m)), 3)
      end
      if type(m.role) ~= "string" then
         error(format("bad argument #2 to 'apply_chat_template' (message %d has no role string)", i), 3)
      end
      local c = m.content
      if c ~= nil and c ~= jinja.none and c ~= cjson.null and type(c) ~= "string" and type(c) ~= "table" then
         error(format("bad argument #2 to 'apply_chat_template' (message %d: content is a %s, not a " ..
                      "string or a list of parts)", i, type(c)), 3)
      end
   end
end

--[[
tok:apply_chat_template(messages [, opts]) -> the rendered text, or its ids
(an int32 tensor) when opts.tokenize. See the top of this file.
]]
function METHODS.apply_chat_template(tok, messages, opts)
   check_tok(tok, "apply_chat_template")
   check_messages(messages)
   if opts ~= nil and type(opts) ~= "table" then
      error("bad argument #3 to 'apply_chat_template' (options table expected, got " .. type(opts) .. ")", 2)
   end
   opts = opts or {}
   local text = opts.chat_template
   if text ~= nil and type(text) ~= "string" then
      error("bad argument #3 to 'apply_chat_template' (chat_template must be a template text, got " ..
            type(text) .. ")", 2)
   end
   text = text or TEMPLATES[tok]
   if not text then
      error("apply_chat_template: the tokenizer has no chat template (set one with " ..
            "tok:set_chat_template(text), or pass opts.chat_template)", 2)
   end
   if opts.tools ~= nil and type(opts.tools) ~= "table" then
      error("bad argument #3 to 'apply_chat_template' (tools must be a list, got " .. type(opts.tools) .. ")", 2)
   end
   local vars = {
      bos_token = token_text(tok, tok.bos_id), eos_token = token_text(tok, tok.eos_id),
      pad_token = token_text(tok, tok.pad_id), unk_token = token_text(tok, tok.unk_id),
   }
   for k, v in pairs(opts) do
      if type(k) ~= "string" then
         error("bad argument #3 to 'apply_chat_template' (option keys must be names)", 2)
      end
      if not RESERVED[k] then vars[k] = v end
   end
   vars.messages = messages
   vars.tools = opts.tools or jinja.none
   vars.documents = jinja.none
   vars.add_generation_prompt = opts.add_generation_prompt and true or false
   local ok, t = pcall(compiled, text)
   if not ok then error(t, 2) end
   local ok2, s = pcall(t.render, t, vars)
   if not ok2 then error(s, 2) end
   if opts.tokenize then return tok:encode(s, { special = true, add_special_tokens = false }) end
   return s
end

return tokenizer
