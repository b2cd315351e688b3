-- dpo.data: preference data, from files to the batches a model consumes.
--
-- Reading (lines in C through zlib, JSON by lua-cjson):
--   dpo.data.jsonl(path [, opts])      for rec, where in dpo.data.jsonl(p) do ... end
--       streams the records of a .jsonl file, a gzip-compressed one (known by
--       its magic bytes, not its name) or a directory's *.jsonl, *.jsonl.gz,
--       *.ndjson(.gz) files in name order. `where` is "file:line". Memory stays
--       at one line and one read block. The loop closes the file on break.
--       The second value, the reader, holds the counts: reader.records,
--       reader.skipped, reader.blank_lines, reader.errors (the first few
--       "file:line: reason"), reader:summary(), reader:is_closed().
--   dpo.data.hh(path [, opts])         -> dataset | nil, "path: reason"
--       Anthropic HH-RLHF records {chosen, rejected} (whole dialogues) as pairs
--       {prompt, chosen, rejected}: the prompt is the chosen text up to and
--       including its last "\n\nAssistant:", the responses what follows (with
--       their leading space). Dropped and counted by reason: prompt_mismatch
--       (the rejected text does not start with that prompt), empty_response
--       (nothing but white space), identical_responses.
--       opts.check_prompt = false slices as the original DPO code did without
--       the check, each side at its own last "\n\nAssistant:"; the pair then
--       keeps `rejected_prompt` where it differs, for dpo.filters.hh_clean.
--   dpo.data.pairs(path [, opts])      -> dataset | nil, "path: reason"
--       records {prompt, chosen, rejected}; opts.prompt, opts.chosen,
--       opts.rejected name the fields (defaults: those names). Empty and
--       identical responses are dropped and counted as for hh.
--   dpo.data.dataset(list [, name])    a dataset of in-memory pairs
--   dpo.data.write_jsonl(path, records [, {gzip = path ends in ".gz"}])
--       -> true | nil, "path: reason"; atomic; top-level keys in sorted order
--
-- Reading options: on_error = "skip" (default: the bad record is skipped,
-- counted, and the first few are named in a summary) or "error" (the first
-- one raises "file:line: reason"); limit = n records at most; warn = a
-- function(msg) for the summary (default: a line on stderr), or false.
-- Bad input: malformed JSON, invalid UTF-8, a truncated or corrupt gzip
-- stream, an empty file, a record that is not an object, a missing or
-- non-string field. Files are only ever read.
--
-- A dataset is an immutable list of pair tables with chainable methods; each
-- returns a new dataset sharing the pair tables, and remembers the steps that
-- made it for :stats().
--   #ds, ds:get(i), for pair, i in ds:iter() do ... end
--   ds:filter(pred [, name])   pred(pair) -> keep [, reason]; a dpo.filters
--                              filter or any Lua function
--   ds:map(fn)                 fn(pair) -> a pair, or nil to drop it; the result
--                              is not tokenized (texts may have changed)
--   ds:shuffle([seed = 0]), ds:take(n)
--   ds:split(fraction [, seed = 0]) -> a, b: a holds `fraction` of the distinct
--                              prompts, b the rest; pairs sharing a prompt stay
--                              on one side; each side keeps the order of ds
--   ds:tokenize(tok, opts)     -> a tokenized dataset (below)
--   ds:batches(n [, opts])     iterator over collated batches (tokenized only)
--   ds:num_batches(n [, opts]) how many batches that iterator yields
--   ds:collate(list [, {sft}]) one batch of the given pairs of ds
--   ds:is_tokenized(), ds:tokenizer(), dpo.data.is_dataset(x)
--   ds:stats()                 what each step read, dropped, removed, cut
--   ds:save(path)              the pairs as {prompt, chosen, rejected} JSONL
--
-- Tokenization follows the original DPO code. opts: max_length (512),
-- max_prompt_length (max_length // 2), truncation = "keep_end" (of the
-- prompt) or "keep_start", add_eos = true. Prompt and responses are
-- tokenized apart (special-token text in the data stays text), EOS is added
-- after each response; when the prompt plus the longer response exceed
-- max_length the prompt is cut to max_prompt_length, then, if still too long,
-- the responses keep their first max_length - #prompt tokens (a cut response
-- loses its EOS). An empty prompt becomes the tokenizer's bos (else eos) token,
-- since a row's first token is never scored. Pairs left with an empty
-- response are dropped and counted. The texts go to tok:encode_batch a chunk
-- at a time and the ids into one C arena; no Lua loop touches a token.
-- Each tokenized pair gains row, n_prompt, n_chosen, n_rejected (tokens in
-- its rows, EOS included) and n_prompt_full, n_chosen_full, n_rejected_full
-- (before truncation).
--
-- Batches: ds:batches(n, {shuffle = false, seed = 0, epoch = 1, drop_last =
-- false, sft = false, skip = 0}) yields tables (skip: batches of the epoch
-- passed over first, as a resumed run does)
--   ids              int32 [2B, T]  rows 1..B prompt+chosen, B+1..2B prompt+rejected,
--                                   right-padded to the longest row with the
--                                   tokenizer's pad id (else eos)
--   mask             int32 [2B, T]  1 on response tokens (EOS included), else 0
--   prompt_lengths   int32 [2B]     prompt tokens of each row
--   response_lengths int32 [2B]     response tokens of each row (its mask sum)
--   pairs, size                     the B pair tables, B
-- With sft = true only the chosen rows: [B, T]. A seed gives the same batches on
-- every run; each epoch has its own permutation of the seed.
local core = require "dpo.core"
local check = require "dpo.check"
local cjson = require("cjson").new()
local lfs = require "lfs"

local C = core.data

local data = {}

local find, sub, format = string.find, string.sub, string.format
local MAX_EXAMPLES = 5 -- bad records named in a summary

-- ---- helpers ------------------------------------------------------------------

local THIS = debug.getinfo(1, "S").source

-- Raise msg at the first caller outside this file (the user's line).
local function raise(msg)
   check.raise(THIS, msg)
end

local function argerror(k, fname, msg)
   raise(format("bad argument #%d to '%s' (%s)", k, fname, msg))
end

local function check_opts(opts, k, fname)
   if opts == nil then return {} end
   if type(opts) ~= "table" then argerror(k, fname, "options table expected, got " .. type(opts)) end
   return opts
end

-- A seeded generator (splitmix64): rand(n) is uniform in 1..n, the same on
-- every machine, and leaves math.random and dpo's generator alone.
local function generator(seed, stream)
   local s = seed * 0x2545F4914F6CDD1D + (stream or 0) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019
   return function(n)
      s = s + 0x9E3779B97F4A7C15
      local z = s
      z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
      z = (z ~ (z >> 27)) * 0x94D049BB133111EB
      z = z ~ (z >> 31)
      return (z >> 11) % n + 1
   end
end

local function check_seed(seed, k, fname)
   if seed == nil then return 0 end
   if math.type(seed) ~= "integer" then
      argerror(k, fname, "seed must be an integer, got " .. tostring(seed))
   end
   return seed
end

-- A permutation of 1..n.
local function permutation(n, seed, stream)
   local rand, p = generator(seed, stream), {}
   for i = 1, n do p[i] = i end
   for i = n, 2, -1 do
      local j = rand(i)
      p[i], p[j] = p[j], p[i]
   end
   return p
end

local function copy(t)
   local c = {}
   for k, v in next, t do c[k] = v end
   return c
end

local function count(map, key, n)
   map[key] = (map[key] or 0) + (n or 1)
end

-- ---- reading lines and records --------------------------------------------------------

local DATA_SUFFIXES = { ".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz" }

local function is_data_file(name)
   if sub(name, 1, 1) == "." then return false end
   for _, s in ipairs(DATA_SUFFIXES) do
      if #name > #s and sub(name, -#s) == s then return true end
   end
   return false
end

-- The files of path: itself, or a directory's data files in name order.
local function list_files(path)
   if lfs.attributes(path, "mode") ~= "directory" then return { path } end
   local names = {}
   local ok, err = pcall(function()
      for name in lfs.dir(path) do
         if is_data_file(name) and lfs.attributes(path .. "/" .. name, "mode") == "file" then
            names[#names + 1] = name
         end
      end
   end)
   if not ok then return nil, path .. ": " .. tostring(err):gsub("^.-: ", "") end
   if #names == 0 then
      return nil, path .. ": no data files (*.jsonl, *.jsonl.gz, *.ndjson) in the directory"
   end
   table.sort(names)
   for i, name in ipairs(names) do names[i] = path .. "/" .. name end
   return names
end

local function default_warn(msg)
   io.stderr:write("dpo.data: ", msg, "\n")
end

-- The reader: the files of one path, read line by line, with the counts of
-- what was read and skipped.
local Reader = {}
Reader.__index = Reader
Reader.__name = "dpo.data.Reader"

-- A path argument: a string without zero bytes (the files are opened by C).
local function check_path(path, k, fname)
   if type(path) ~= "string" then argerror(k, fname, "path expected, got " .. type(path)) end
   if find(path, "\0", 1, true) then argerror(k, fname, "path contains a zero byte") end
end

-- A field-name option: nil or a string.
local function check_field(opts, key, fname)
   local v = opts[key]
   if v ~= nil and type(v) ~= "string" then
      argerror(2, fname, format("%s must be a field name, got %s", key, type(v)))
   end
end

local function open_reader(path, opts, fname)
   check_path(path, 1, fname)
   opts = check_opts(opts, 2, fname)
   local on_error = opts.on_error or "skip"
   if on_error ~= "skip" and on_error ~= "error" then
      argerror(2, fname, "on_error must be 'skip' or 'error', got " .. tostring(on_error))
   end
   local limit = opts.limit
   if limit ~= nil and (math.type(limit) ~= "integer" or limit < 0) then
      argerror(2, fname, "limit must be a non-negative integer, got " .. tostring(limit))
   end
   local warn = opts.warn
   if warn == nil then warn = default_warn end
   if warn ~= false and type(warn) ~= "function" then
      argerror(2, fname, "warn must be a function or false, got " .. type(warn))
   end
   local files, err = list_files(path)
   if not files then return nil, err end
   -- open the first file now, so that a missing file is reported here
   local first, msg = C.open(files[1])
   if not first then return nil, msg end
   return setmetatable({
      path = path, files = files, k = 1, file = files[1], cur = first, lines = 0,
      on_error = on_error, limit = limit, warn = warn,
      records = 0, skipped = 0, blank_lines = 0, errors = {},
   }, Reader)
end

-- A bad record (or file): raise, or count it and go on.
function Reader:bad(lineno, reason)
   local msg = lineno and format("%s:%d: %s", self.file, lineno, reason)
      or format("%s: %s", self.file, reason)
   if self.on_error == "error" then
      self:close()
      error(msg, 0)
   end
   self.skipped = self.skipped + 1
   if #self.errors < MAX_EXAMPLES then self.errors[#self.errors + 1] = msg end
end

-- The next non-blank line: line, lineno; nil at the end of the last file.
function Reader:line()
   while self.cur do
      local line, lineno, extra = self.cur:read()
      if line then
         if find(line, "%S") then
            self.lines = self.lines + 1
            return line, lineno
         end
         self.blank_lines = self.blank_lines + 1
      else
         if line == false then
            self:bad(extra, lineno) -- read(): false, reason, lineno
         elseif self.lines == 0 then
            self:bad(nil, "empty file")
         end
         self.cur:close()
         self.cur, self.lines = nil, 0
         while not self.cur and self.k < #self.files do
            self.k = self.k + 1
            self.file = self.files[self.k]
            local r, msg = C.open(self.file)
            if r then
               self.cur = r
            else
               self:bad(nil, (msg:gsub("^.-: ", ""))) -- the file vanished or is unreadable
            end
         end
      end
   end
   return nil
end

-- The next good record: value, lineno (self.file is its file); nil at the end.
function Reader:record()
   while true do
      if self.limit and self.records >= self.limit then
         self:close()
         return nil
      end
      local line, lineno = self:line()
      if not line then return nil end
      local ok, pos = utf8.len(line)
      if not ok then
         self:bad(lineno, format("invalid UTF-8 at byte %d", pos))
      else
         local good, rec = pcall(cjson.decode, line)
         if good then
            self.records = self.records + 1
            return rec, lineno
         end
         self:bad(lineno, "invalid JSON: " .. tostring(rec))
      end
   end
end

-- "skipped 2 bad records in p (first: a; b)", or nil when none was.
function Reader:summary()
   if self.skipped == 0 then return nil end
   local more = self.skipped > #self.errors and "; ..." or ""
   return format("%s: skipped %d bad record%s (%s%s)", self.path, self.skipped,
                 self.skipped == 1 and "" or "s", table.concat(self.errors, "; "), more)
end

function Reader:close()
   if self.cur then self.cur:close() end
   self.cur = nil
   self.k = #self.files
   if not self.reported then
      self.reported = true
      local s = self:summary()
      if s and self.warn then self.warn(s) end
   end
end

Reader.__close = Reader.close

function Reader:is_closed()
   return self.cur == nil
end

local function jsonl_next(reader)
   local rec, lineno = reader:record()
   if rec == nil then
      reader:close()
      return nil
   end
   return rec, reader.file .. ":" .. lineno
end

function data.jsonl(path, opts)
   local reader, err = open_reader(path, opts, "jsonl")
   if not reader then return nil, err end
   return jsonl_next, reader, nil, reader
end

-- ---- records to pairs ------------------------------------------------------------

-- The string field `name` of rec, or nil and the reason it is not one.
local function field(rec, name)
   local v = rec[name]
   if type(v) == "string" then return v end
   if v == nil then return nil, format("missing field '%s'", name) end
   if v == cjson.null then return nil, format("field '%s' is null, not a string", name) end
   return nil, format("field '%s' is a %s, not a string", name, type(v))
end

local function not_object(rec)
   if type(rec) ~= "table" then
      return "expected a JSON object, got " .. (rec == cjson.null and "null" or "a " .. type(rec))
   end
   if rec[1] ~= nil then return "expected a JSON object, got an array" end
end

local ASSISTANT = "\n\nAssistant:"

-- The end of the last "\n\nAssistant:" in s, or nil.
local function prompt_end(s)
   local at, from = nil, 1
   while true do
      local i, j = find(s, ASSISTANT, from, true)
      if not i then return at end
      at, from = j, i + 1
   end
end

local function blank(s)
   return not find(s, "%S")
end

local derive -- makes a dataset (below)

-- Read path with `parse(rec) -> pair | nil, drop_reason | false, bad_reason`.
local function read_pairs(path, opts, fname, format_name, parse)
   local reader, err = open_reader(path, opts, fname)
   if not reader then return nil, err end
   local list, dropped, where = {}, {}, {}
   local reader_close <close> = reader
   while true do
      local rec, lineno = reader:record()
      if rec == nil then break end
      local pair, why = parse(rec)
      if pair then
         list[#list + 1] = pair
      elseif pair == false then
         reader:bad(lineno, why)
      else
         count(dropped, why)
         local w = where[why] or {}
         where[why] = w
         if #w < 3 then w[#w + 1] = reader.file .. ":" .. lineno end
      end
   end
   reader:close()
   local step = {
      step = "read", format = format_name, path = path, files = #reader.files,
      records = reader.records, pairs = #list, skipped = reader.skipped,
      errors = reader.errors, blank_lines = reader.blank_lines, dropped = dropped,
      dropped_at = where,
   }
   return derive(nil, list, step)
end

--[[
dpo.data.hh(path [, opts]) -> dataset | nil, "path: reason"
opts: on_error, limit, warn (as jsonl); chosen, rejected (field names);
check_prompt = true.
]]
function data.hh(path, opts)
   opts = check_opts(opts, 2, "hh")
   check_field(opts, "chosen", "hh")
   check_field(opts, "rejected", "hh")
   local fc, fr = opts.chosen or "chosen", opts.rejected or "rejected"
   local check = opts.check_prompt ~= false
   return read_pairs(path, opts, "hh", "hh", function(rec)
      local bad = not_object(rec)
      if bad then return false, bad end
      local chosen, why = field(rec, fc)
      if not chosen then return false, why end
      local rejected
      rejected, why = field(rec, fr)
      if not rejected then return false, why end
      local e = prompt_end(chosen)
      if not e then return false, format("no \"\\n\\nAssistant:\" in field '%s'", fc) end
      local prompt = sub(chosen, 1, e)
      local c, r = sub(chosen, e + 1), nil
      local pair = { prompt = prompt, chosen = c }
      if find(rejected, prompt, 1, true) == 1 then -- starts with the prompt (no copy)
         r = sub(rejected, e + 1)
      elseif check then
         return nil, "prompt_mismatch"
      else
         local re = prompt_end(rejected)
         if not re then return false, format("no \"\\n\\nAssistant:\" in field '%s'", fr) end
         r = sub(rejected, re + 1)
         pair.rejected_prompt = sub(rejected, 1, re)
      end
      if blank(c) or blank(r) then return nil, "empty_response" end
      if c == r then return nil, "identical_responses" end
      pair.rejected = r
      return pair
   end)
end

--[[
dpo.data.pairs(path [, opts]) -> dataset | nil, "path: reason"
opts: on_error, limit, warn (as jsonl); prompt, chosen, rejected (field names).
]]
function data.pairs(path, opts)
   opts = check_opts(opts, 2, "pairs")
   for _, k in ipairs { "prompt", "chosen", "rejected" } do check_field(opts, k, "pairs") end
   local fp, fc, fr = opts.prompt or "prompt", opts.chosen or "chosen", opts.rejected or "rejected"
   return read_pairs(path, opts, "pairs", "pairs", function(rec)
      local bad = not_object(rec)
      if bad then return false, bad end
      local p, c, r, why
      p, why = field(rec, fp)
      if not p then return false, why end
      c, why = field(rec, fc)
      if not c then return false, why end
      r, why = field(rec, fr)
      if not r then return false, why end
      if blank(c) or blank(r) then return nil, "empty_response" end
      if c == r then return nil, "identical_responses" end
      return { prompt = p, chosen = c, rejected = r }
   end)
end

-- ---- writing ------------------------------------------------------------------------

local function encode_record(rec)
   if type(rec) ~= "table" then return cjson.encode(rec) end
   local keys = {}
   for k in next, rec do
      if type(k) == "string" then keys[#keys + 1] = k end
   end
   if #keys == 0 then return cjson.encode(rec) end
   table.sort(keys)
   local parts = {}
   for i, k in ipairs(keys) do parts[i] = cjson.encode(k) .. ":" .. cjson.encode(rec[k]) end
   return "{" .. table.concat(parts, ",") .. "}"
end

--[[
dpo.data.write_jsonl(path, records [, opts]) -> true | nil, "path: reason"
records: a list, or an iterator function returning records until nil.
opts.gzip: compress (default: when path ends in ".gz"); opts.keys: the key
order of each object (default: sorted).
]]
function data.write_jsonl(path, records, opts)
   check_path(path, 1, "write_jsonl")
   opts = check_opts(opts, 3, "write_jsonl")
   if opts.keys ~= nil then
      if type(opts.keys) ~= "table" then
         argerror(3, "write_jsonl", "keys must be a list of strings, got " .. type(opts.keys))
      end
      for i, k in ipairs(opts.keys) do
         if type(k) ~= "string" then
            argerror(3, "write_jsonl", format("keys[%d] is a %s, not a string", i, type(k)))
         end
      end
   end
   local nextrec
   if type(records) == "table" then
      local i = 0
      nextrec = function()
         i = i + 1
         return records[i]
      end
   elseif type(records) == "function" then
      nextrec = records
   else
      argerror(2, "write_jsonl", "a list or an iterator expected, got " .. type(records))
   end
   local gzip = opts.gzip
   if gzip == nil then gzip = sub(path, -3) == ".gz" end
   local keys = opts.keys
   local w, err = C.writer(path, gzip)
   if not w then return nil, err end
   local function line(rec)
      if not keys then return encode_record(rec) end
      local parts = {}
      for i, k in ipairs(keys) do
         parts[i] = cjson.encode(k) .. ":" .. cjson.encode(rec[k] == nil and cjson.null or rec[k])
      end
      return "{" .. table.concat(parts, ",") .. "}"
   end
   local n = 0
   local ok, msg = pcall(function()
      for rec in nextrec do
         n = n + 1
         local good, s = pcall(line, rec)
         if not good then -- a record JSON cannot hold: name it
            error({ format("write_jsonl: record %d: %s", n, (tostring(s):gsub("^.-:%d+: ", ""))) })
         end
         w:write(s, "\n")
      end
   end)
   if not ok then
      w:abort()
      if type(msg) == "table" then raise(msg[1]) end -- a record that is not JSON
      error(msg, 0) -- the iterator's own error, as it raised it
   end
   return w:commit()
end

-- ---- the dataset ---------------------------------------------------------------------

local Dataset = {}
Dataset.__index = Dataset
Dataset.__name = "dpo.Dataset"

-- The fields tokenization adds to a pair.
local TOKEN_FIELDS = { "row", "n_prompt", "n_chosen", "n_rejected", "n_prompt_full",
                       "n_chosen_full", "n_rejected_full" }

-- A dataset of list made from parent by step; tokenized = false forgets the
-- parent's tokens.
function derive(parent, list, step, tokenized)
   local log = {}
   for i, s in ipairs(parent and parent._log or {}) do log[i] = s end
   if step then log[#log + 1] = step end
   local ds = setmetatable({ _pairs = list, _log = log }, Dataset)
   if tokenized ~= false and parent and parent._store then
      ds._store, ds._tok, ds._tokopts = parent._store, parent._tok, parent._tokopts
   end
   return ds
end

local function check_pair(p, i, fname)
   if type(p) ~= "table" then raise(format("%s: pair %d is a %s, not a table", fname, i, type(p))) end
   for _, k in ipairs { "prompt", "chosen", "rejected" } do
      if type(p[k]) ~= "string" then
         raise(format("%s: pair %d: field '%s' is a %s, not a string", fname, i, k, type(p[k])))
      end
   end
end

--[[
dpo.data.dataset(list [, name]) -> dataset of the pairs in list (tables with
string fields prompt, chosen, rejected; other fields are kept).
]]
function data.dataset(list, name)
   if type(list) ~= "table" then argerror(1, "dataset", "list of pairs expected, got " .. type(list)) end
   if name ~= nil and type(name) ~= "string" then
      argerror(2, "dataset", "name must be a string, got " .. type(name))
   end
   for i = 1, #list do check_pair(list[i], i, "dataset") end
   local copied = table.move(list, 1, #list, 1, {})
   return derive(nil, copied, { step = "list", name = name or "list", pairs = #list })
end

function data.is_dataset(x)
   return getmetatable(x) == Dataset
end

function Dataset:__len()
   return #self._pairs
end

function Dataset:__tostring()
   return format("dpo.Dataset (%d pairs%s)", #self._pairs,
                 self._store and ", tokenized" or "")
end

-- ds:get(i) -> pair i, or nil outside 1..#ds (as for a Lua list)
function Dataset:get(i)
   if math.tointeger(i) == nil then argerror(1, "get", "integer expected, got " .. tostring(i)) end
   return self._pairs[i]
end

function Dataset:iter()
   local list, i = self._pairs, 0
   return function()
      i = i + 1
      local p = list[i]
      if p ~= nil then return p, i end
   end
end

function Dataset:is_tokenized()
   return self._store ~= nil
end

function Dataset:tokenizer()
   return self._tok
end

-- The predicate and name of a filter argument.
local function filter_fn(pred, name, k)
   if type(pred) == "function" then
      if name == nil then
         local info = debug.getinfo(pred, "S")
         name = format("function@%s:%d", info.short_src, info.linedefined)
      end
      return pred, name
   end
   if type(pred) == "table" and type(pred.make) == "function" then
      return pred.make(), name or pred.name or "filter"
   end
   local mt = getmetatable(pred)
   if mt and mt.__call then return pred, name or tostring(pred) end
   argerror(k, "filter", "a function or a dpo.filters filter expected, got " .. type(pred))
end

--[[
ds:filter(pred [, name]) -> dataset of the pairs for which pred(pair) is true.
pred may return a second value, the reason a pair goes, counted in :stats().
]]
function Dataset:filter(pred, name)
   local fn, fname = filter_fn(pred, name, 1)
   if name ~= nil and type(name) ~= "string" then
      argerror(2, "filter", "name must be a string, got " .. type(name))
   end
   local kept, reasons, removed = {}, {}, 0
   for _, p in ipairs(self._pairs) do
      local keep, why = fn(p)
      if keep then
         kept[#kept + 1] = p
      else
         removed = removed + 1
         if why ~= nil then count(reasons, tostring(why)) end
      end
   end
   return derive(self, kept, { step = "filter", name = fname, before = #self._pairs,
                               removed = removed, reasons = reasons })
end

--[[
ds:map(fn) -> dataset of fn(pair) for each pair; nil drops the pair. The
result must be a pair (string prompt, chosen, rejected); it is not tokenized.
]]
function Dataset:map(fn)
   if type(fn) ~= "function" then argerror(1, "map", "function expected, got " .. type(fn)) end
   local out, dropped = {}, 0
   for i, p in ipairs(self._pairs) do
      local q = fn(p)
      if q == nil then
         dropped = dropped + 1
      else
         check_pair(q, i, "map")
         if self._store and q.row ~= nil then
            if q == p then q = copy(p) end
            for _, k in ipairs(TOKEN_FIELDS) do q[k] = nil end
         end
         out[#out + 1] = q
      end
   end
   return derive(self, out, { step = "map", before = #self._pairs, dropped = dropped }, false)
end

function Dataset:shuffle(seed)
   seed = check_seed(seed, 1, "shuffle")
   local list, perm, out = self._pairs, permutation(#self._pairs, seed), {}
   for i, j in ipairs(perm) do out[i] = list[j] end
   return derive(self, out, { step = "shuffle", seed = seed })
end

function Dataset:take(n)
   if math.type(n) ~= "integer" or n < 0 then
      argerror(1, "take", "non-negative integer expected, got " .. tostring(n))
   end
   local m = math.min(n, #self._pairs)
   return derive(self, table.move(self._pairs, 1, m, 1, {}),
                 { step = "take", n = n, before = #self._pairs })
end

--[[
ds:split(fraction [, seed = 0]) -> a, b. The distinct prompts are shuffled
with seed and the first round(fraction * count) of them go to a: no prompt
is on both sides.
]]
function Dataset:split(fraction, seed)
   if type(fraction) ~= "number" or not (fraction >= 0 and fraction <= 1) then
      argerror(1, "split", "fraction in [0, 1] expected, got " .. tostring(fraction))
   end
   seed = check_seed(seed, 2, "split")
   local group, prompts = {}, {}
   for _, p in ipairs(self._pairs) do
      if group[p.prompt] == nil then
         prompts[#prompts + 1] = p.prompt
         group[p.prompt] = false
      end
   end
   local perm = permutation(#prompts, seed)
   local k = math.floor(fraction * #prompts + 0.5)
   for i = 1, k do group[prompts[perm[i]]] = true end
   local a, b = {}, {}
   for _, p in ipairs(self._pairs) do
      local side = group[p.prompt] and a or b
      side[#side + 1] = p
   end
   local n = #self._pairs
   return derive(self, a, { step = "split", part = 1, fraction = fraction, seed = seed, before = n }),
          derive(self, b, { step = "split", part = 2, fraction = 1 - fraction, seed = seed, before = n })
end

-- ---- tokenization ----------------------------------------------------------------------

local FATES = { [1] = "empty_response", [2] = "empty_prompt" }
local CHUNK = 4096 -- pairs per encode_batch call

-- The ids encode_batch gave for one text, as an int32 tensor; ids outside
-- 0..2^31-2 (which int32 would saturate) are an error.
local function as_ids(x)
   local t = core.is_tensor(x) and x or core.tensor(x, "int32")
   if t:dtype() ~= "int32" then t = t:int() end
   if t:numel() > 0 and (t:min():item() < 0 or t:max():item() >= 2147483647) then
      raise("tokenize: encode_batch gave an id outside 0..2147483646")
   end
   return t
end

-- Which pair store each tokenized pair belongs to (collate checks it).
local OWNER = setmetatable({}, { __mode = "k" })

--[[
ds:tokenize(tok, opts) -> tokenized dataset. tok: a dpo.Tokenizer, or any
object with encode_batch(texts) -> list of int32 tensors (or lists of ids)
and the fields eos_id, bos_id, pad_id.
]]
function Dataset:tokenize(tok, opts)
   local ok, enc = false, nil
   if type(tok) == "table" or type(tok) == "userdata" then
      ok, enc = pcall(function() return tok.encode_batch, tok.eos_id end) -- a freed one raises
   end
   if not ok or enc == nil then
      argerror(1, "tokenize", "a tokenizer with encode_batch expected, got " ..
               (ok and type(tok) or tostring(enc):gsub("^.-%((.*)%)$", "%1")))
   end
   opts = check_opts(opts, 2, "tokenize")
   local L = opts.max_length or 512
   if math.type(L) ~= "integer" or L < 2 or L > 2147483647 then
      argerror(2, "tokenize", "max_length must be an integer >= 2, got " .. tostring(L))
   end
   local P = opts.max_prompt_length or L // 2
   if math.type(P) ~= "integer" or P < 1 or P >= L then
      argerror(2, "tokenize", format("max_prompt_length must be an integer in 1..%d " ..
                                     "(below max_length), got %s", L - 1, tostring(P)))
   end
   local truncation = opts.truncation or "keep_end"
   if truncation ~= "keep_end" and truncation ~= "keep_start" then
      argerror(2, "tokenize", "truncation must be 'keep_end' or 'keep_start', got " ..
               tostring(truncation))
   end
   local add_eos = opts.add_eos ~= false
   local eos = tok.eos_id
   if add_eos and eos == nil then
      argerror(1, "tokenize", "the tokenizer has no eos_id (set tok.eos_id, or add_eos = false)")
   end
   local pad = tok.pad_id or eos or 0
   local copts = {
      max_length = L, max_prompt_length = P, truncation = truncation,
      eos_id = add_eos and eos or nil, bos_id = tok.bos_id or eos,
   }
   local store = C.pairs(pad)
   local list, out, n = self._pairs, {}, #self._pairs
   local dropped, cut_prompt, cut_response = {}, 0, 0
   local encode_opts = { special = false, add_special_tokens = false } -- BOS/EOS: copts
   for first = 1, n, CHUNK do
      local last = math.min(n, first + CHUNK - 1)
      local m, texts = last - first + 1, {}
      for j = 1, m do
         local p = list[first + j - 1]
         texts[j], texts[m + j], texts[2 * m + j] = p.prompt, p.chosen, p.rejected
      end
      local ids = tok:encode_batch(texts, encode_opts)
      if type(ids) ~= "table" or #ids ~= 3 * m then
         raise(format("tokenize: encode_batch returned a %s where a list of %d id lists was " ..
                      "expected", type(ids), 3 * m))
      end
      local ps, cs, rs = {}, {}, {}
      for j = 1, m do
         ps[j], cs[j], rs[j] = as_ids(ids[j]), as_ids(ids[m + j]), as_ids(ids[2 * m + j])
      end
      ids = nil
      local info = store:add(ps, cs, rs, copts)
      for j = 1, m do
         local b = (j - 1) * 10
         local fate = info[b + 1]
         if fate == 0 then
            local q = copy(list[first + j - 1])
            q.row = info[b + 2]
            OWNER[q] = store
            q.n_prompt, q.n_chosen, q.n_rejected = info[b + 3], info[b + 4], info[b + 5]
            q.n_prompt_full, q.n_chosen_full, q.n_rejected_full = info[b + 6], info[b + 7], info[b + 8]
            if info[b + 9] == 1 then cut_prompt = cut_prompt + 1 end
            if info[b + 10] == 1 then cut_response = cut_response + 1 end
            out[#out + 1] = q
         else
            count(dropped, FATES[fate] or "dropped")
         end
      end
   end
   local ds = derive(self, out, {
      step = "tokenize", before = n, max_length = L, max_prompt_length = P,
      truncation = truncation, add_eos = add_eos, prompt_cut = cut_prompt,
      response_cut = cut_response, dropped = dropped, tokens = store:tokens(),
   }, false)
   ds._store, ds._tok, ds._tokopts = store, tok, copts
   return ds
end

-- ---- batches ---------------------------------------------------------------------------

local function need_tokens(ds, fname)
   if not ds._store then
      raise(fname .. ": the dataset is not tokenized (call ds:tokenize(tok, opts) first)")
   end
end

--[[
ds:collate(list [, {sft = false}]) -> batch of the pairs in list (pairs of
this tokenized dataset).
]]
function Dataset:collate(list, opts)
   need_tokens(self, "collate")
   opts = check_opts(opts, 2, "collate")
   if type(list) ~= "table" or #list == 0 then
      argerror(1, "collate", "a non-empty list of pairs expected")
   end
   local rows = {}
   for i, p in ipairs(list) do
      rows[i] = type(p) == "table" and p.row
      if math.type(rows[i]) ~= "integer" or OWNER[p] ~= self._store then
         argerror(1, "collate", format("pair %d is not a tokenized pair of this dataset", i))
      end
   end
   local ids, mask, plen, rlen = self._store:collate(rows, opts.sft)
   return {
      ids = ids, mask = mask, prompt_lengths = plen, response_lengths = rlen,
      pairs = list, size = #list, sft = opts.sft and true or false,
   }
end

local function batch_opts(self, n, opts, fname)
   need_tokens(self, fname)
   if math.type(n) ~= "integer" or n < 1 then
      argerror(1, fname, "batch size must be a positive integer, got " .. tostring(n))
   end
   opts = check_opts(opts, 2, fname)
   local epoch = opts.epoch or 1
   if math.type(epoch) ~= "integer" then
      argerror(2, fname, "epoch must be an integer, got " .. tostring(epoch))
   end
   local skip = opts.skip or 0
   if math.type(skip) ~= "integer" or skip < 0 then
      argerror(2, fname, "skip must be an integer >= 0, got " .. tostring(skip))
   end
   return opts, check_seed(opts.seed, 2, fname), epoch
end

-- The number of batches ds:batches(n, opts) yields.
function Dataset:num_batches(n, opts)
   opts = batch_opts(self, n, opts, "num_batches")
   local total = #self._pairs
   return opts.drop_last and total // n or (total + n - 1) // n
end

--[[
ds:batches(n [, opts]) -> iterator of batches (see the top of this file).
]]
function Dataset:batches(n, opts)
   local seed, epoch
   opts, seed, epoch = batch_opts(self, n, opts, "batches")
   local list, total = self._pairs, #self._pairs
   local order = opts.shuffle and permutation(total, seed, epoch) or nil
   local drop_last, sft = opts.drop_last, opts.sft
   local at = math.min((opts.skip or 0) * n, total)
   return function()
      local B = math.min(n, total - at)
      if B <= 0 or (drop_last and B < n) then return nil end
      local chunk = {}
      for j = 1, B do chunk[j] = list[order and order[at + j] or at + j] end
      at = at + B
      return self:collate(chunk, { sft = sft })
   end
end

-- ---- statistics ------------------------------------------------------------------------

local function summary_of(list, field)
   local n, sum, max, min = #list, 0, 0, math.huge
   for _, p in ipairs(list) do
      local v = p[field]
      if type(v) == "string" then v = #v end
      sum = sum + v
      if v > max then max = v end
      if v < min then min = v end
   end
   if n == 0 then return { mean = 0, max = 0, min = 0 } end
   return { mean = sum / n, max = max, min = min }
end

local function reasons_str(map)
   local keys = {}
   for k in next, map do keys[#keys + 1] = k end
   table.sort(keys)
   for i, k in ipairs(keys) do keys[i] = format("%s %d", k, map[k]) end
   return table.concat(keys, ", ")
end

local Stats = {}
Stats.__index = Stats
Stats.__name = "dpo.data.Stats"

function Stats:__tostring()
   local out = { format("dpo.Dataset: %d pairs%s", self.pairs, self.tokenized and ", tokenized" or "") }
   local function line(head, text)
      out[#out + 1] = format("  %-9s %s", head, text)
   end
   for _, s in ipairs(self.steps) do
      if s.step == "read" then
         line("read", format("%s (%s%s): %d records, %d pairs", s.path, s.format,
                             s.files > 1 and format(", %d files", s.files) or "", s.records, s.pairs))
         if next(s.dropped) then line("", "dropped: " .. reasons_str(s.dropped)) end
         if s.skipped > 0 then
            line("", format("skipped %d bad record%s:", s.skipped, s.skipped == 1 and "" or "s"))
            for _, e in ipairs(s.errors) do line("", "  " .. e) end
         end
      elseif s.step == "list" then
         line("list", format("%s: %d pairs", s.name, s.pairs))
      elseif s.step == "filter" then
         local why = next(s.reasons) and " (" .. reasons_str(s.reasons) .. ")" or ""
         line("filter", format("%s: removed %d of %d%s", s.name, s.removed, s.before, why))
      elseif s.step == "map" then
         line("map", format("dropped %d of %d", s.dropped, s.before))
      elseif s.step == "take" then
         line("take", format("%d of %d", math.min(s.n, s.before), s.before))
      elseif s.step == "shuffle" then
         line("shuffle", format("seed %d", s.seed))
      elseif s.step == "split" then
         line("split", format("part %d (%.3g of the prompts, seed %d)", s.part, s.fraction, s.seed))
      elseif s.step == "tokenize" then
         line("tokenize", format("max_length %d, max_prompt_length %d, %s%s: %d tokens",
                                 s.max_length, s.max_prompt_length, s.truncation,
                                 s.add_eos and ", eos" or "", s.tokens))
         line("", format("prompt cut in %d pairs, responses cut in %d", s.prompt_cut, s.response_cut))
         if next(s.dropped) then line("", "dropped: " .. reasons_str(s.dropped)) end
      end
   end
   local function dist(head, t, unit)
      line(head, format("prompt %.1f (max %d), chosen %.1f (max %d), rejected %.1f (max %d) %s",
                        t.prompt.mean, t.prompt.max, t.chosen.mean, t.chosen.max,
                        t.rejected.mean, t.rejected.max, unit))
   end
   if self.pairs > 0 then dist("lengths", self.lengths, "bytes, mean") end
   if self.tokens and self.pairs > 0 then dist("tokens", self.tokens, "tokens, mean") end
   return table.concat(out, "\n")
end

--[[
ds:stats() -> a table (printable) with: pairs, tokenized, steps (what each
step did, in order), dropped (reason -> count over all steps), removed
(filter name -> count), errors (bad records skipped), error_examples,
lengths {prompt, chosen, rejected = {mean, max, min}} in bytes, and tokens
(the same in tokens, EOS included) when tokenized.
]]
function Dataset:stats()
   local st = {
      pairs = #self._pairs, tokenized = self._store ~= nil, steps = self._log,
      dropped = {}, removed = {}, errors = 0, error_examples = {},
   }
   for _, s in ipairs(self._log) do
      if s.dropped and type(s.dropped) == "table" then
         for k, v in next, s.dropped do count(st.dropped, k, v) end
      end
      if s.step == "map" and s.dropped > 0 then count(st.dropped, "map", s.dropped) end
      if s.step == "filter" then count(st.removed, s.name, s.removed) end
      if s.step == "read" then
         st.errors = st.errors + s.skipped
         for _, e in ipairs(s.errors) do st.error_examples[#st.error_examples + 1] = e end
      end
   end
   st.lengths = {
      prompt = summary_of(self._pairs, "prompt"),
      chosen = summary_of(self._pairs, "chosen"),
      rejected = summary_of(self._pairs, "rejected"),
   }
   if self._store then
      st.tokens = {
         prompt = summary_of(self._pairs, "n_prompt"),
         chosen = summary_of(self._pairs, "n_chosen"),
         rejected = summary_of(self._pairs, "n_rejected"),
      }
   end
   return setmetatable(st, Stats)
end

--[[
ds:save(path) -> true | nil, "path: reason": the pairs as JSONL records
{prompt, chosen, rejected} (gzip when path ends in ".gz"), readable by
dpo.data.pairs.
]]
function Dataset:save(path)
   check_path(path, 1, "save")
   local list, i = self._pairs, 0
   return data.write_jsonl(path, function()
      i = i + 1
      local p = list[i]
      if p then return { prompt = p.prompt, chosen = p.chosen, rejected = p.rejected } end
   end, { keys = { "prompt", "chosen", "rejected" } })
end

data.Dataset = Dataset

return data
