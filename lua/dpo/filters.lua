-- dpo.filters: pair filters for ds:filter(...), each with a name and the
-- reasons it gives, which ds:stats() counts.
--
--   ds:filter(dpo.filters.hh_clean()):filter(dpo.filters.distinct())
--
--   distinct()               drop pairs whose two responses are identical
--   dedupe([key])            keep the first of pairs with the same key: "pair"
--                            (prompt, chosen and rejected; the default), "prompt"
--                            (one pair per prompt, as SFT wants), or a function
--                            pair -> string
--   max_tokens(n)            prompt + longer response at most n tokens before
--                            truncation (EOS included); tokenized datasets only
--   min_response_tokens(n)   both responses at least n tokens as scored
--                            (after truncation, EOS included); tokenized only
--   max_length_ratio(r)      longer response / shorter response at most r, in
--                            tokens when the pair is tokenized, else in characters
--   matches(pattern [, opts]) keep pairs where a field matches the Lua pattern
--   excludes(pattern [, opts]) drop pairs where a field matches
--                            opts.fields: "all" (default), "prompt", "chosen",
--                            "rejected", "responses", or a list of field names;
--                            opts.plain = true matches the text literally
--   hh_clean()               the dirty-row rules for HH-RLHF dialogues, by reason:
--                            unequal_turns (a response holds further turns, or
--                            the two sides have different turn counts),
--                            earlier_turns_differ, roles_not_alternating (the
--                            prompt is not Human/Assistant turns in turn, from a
--                            Human turn to the final "Assistant:"), empty_turn,
--                            identical_responses
--
-- Any Lua function pair -> keep [, reason] is a filter too. A filter made here
-- is a callable table {name, make}; ds:filter calls make() for a predicate
-- with fresh state (dedupe's memory), so one filter object serves many
-- datasets. dpo.filters.new(name, make) makes one.
local check = require "dpo.check"

local filters = {}

local find, sub, format = string.find, string.sub, string.format

local Filter = {}
Filter.__index = Filter
Filter.__name = "dpo.filters.Filter"

function Filter:__call(pair)
   if type(pair) ~= "table" then
      error(format("dpo.filters.%s: expected a pair table, got %s", tostring(self.name), type(pair)), 2)
   end
   local fn = rawget(self, "_fn")
   if not fn then
      fn = self.make()
      self._fn = fn
   end
   return fn(pair)
end

function Filter:__tostring()
   return "dpo.filters." .. self.name
end

local THIS = debug.getinfo(1, "S").source

-- Raise "dpo.filters.name: msg" at the first caller outside this file.
local function caller_error(name, msg)
   check.raise(THIS, format("dpo.filters.%s: %s", name, msg))
end

--[[
dpo.filters.new(name, make) -> a filter; make() returns a fresh predicate
pair -> keep [, reason].
]]
function filters.new(name, make)
   if type(name) ~= "string" then caller_error("new", "name must be a string") end
   if type(make) ~= "function" then caller_error("new", "make must be a function") end
   return setmetatable({ name = name, make = make }, Filter)
end

function filters.is_filter(x)
   return getmetatable(x) == Filter
end

local function stateless(name, pred)
   return filters.new(name, function() return pred end)
end

local function check_number(name, v, what, integer)
   if type(v) ~= "number" or not (v > 0 and v < math.huge)
      or (integer and math.type(v) ~= "integer") then
      caller_error(name, format("%s must be a positive %s, got %s", what,
                                integer and "integer" or "number", tostring(v)))
   end
end

local function need_tokens(name, pair)
   if pair.n_prompt == nil then
      error(format("dpo.filters.%s: the pair has no token counts (filter the dataset after " ..
                   "ds:tokenize)", name), 0)
   end
end

-- ---- simple filters ------------------------------------------------------------------

function filters.distinct()
   return stateless("distinct", function(pair)
      if pair.chosen == pair.rejected then return false, "identical_responses" end
      return true
   end)
end

function filters.dedupe(key)
   key = key or "pair"
   local name = "dedupe"
   if key == "prompt" then
      name = "dedupe(prompt)"
   elseif key ~= "pair" and type(key) ~= "function" then
      caller_error("dedupe", "key must be 'pair', 'prompt' or a function, got " .. tostring(key))
   end
   return filters.new(name, function()
      local seen = {}
      if key == "prompt" then
         return function(pair)
            if seen[pair.prompt] then return false, "duplicate" end
            seen[pair.prompt] = true
            return true
         end
      elseif key == "pair" then
         -- prompt -> set of chosen.."\0"..rejected: prompts are keys as they are
         return function(pair)
            local set = seen[pair.prompt]
            if not set then
               set = {}
               seen[pair.prompt] = set
            end
            local k = pair.chosen .. "\0" .. pair.rejected
            if set[k] then return false, "duplicate" end
            set[k] = true
            return true
         end
      end
      return function(pair)
         local k = key(pair)
         if seen[k] then return false, "duplicate" end
         seen[k] = true
         return true
      end
   end)
end

function filters.max_tokens(n)
   check_number("max_tokens", n, "n", true)
   local name = format("max_tokens(%d)", n)
   return stateless(name, function(pair)
      need_tokens(name, pair)
      local longer = math.max(pair.n_chosen_full, pair.n_rejected_full)
      if pair.n_prompt_full + longer > n then return false, "too_long" end
      return true
   end)
end

function filters.min_response_tokens(n)
   check_number("min_response_tokens", n, "n", true)
   local name = format("min_response_tokens(%d)", n)
   return stateless(name, function(pair)
      need_tokens(name, pair)
      if math.min(pair.n_chosen, pair.n_rejected) < n then return false, "short_response" end
      return true
   end)
end

local function chars(s)
   return utf8.len(s) or #s
end

function filters.max_length_ratio(r)
   check_number("max_length_ratio", r, "r")
   return stateless(format("max_length_ratio(%g)", r), function(pair)
      local a, b
      if pair.n_chosen_full then
         a, b = pair.n_chosen_full, pair.n_rejected_full
      else
         a, b = chars(pair.chosen), chars(pair.rejected)
      end
      if math.max(a, b) > r * math.max(1, math.min(a, b)) then return false, "length_ratio" end
      return true
   end)
end

local FIELD_SETS = {
   all = { "prompt", "chosen", "rejected" },
   responses = { "chosen", "rejected" },
   prompt = { "prompt" },
   chosen = { "chosen" },
   rejected = { "rejected" },
}

local function pattern_filter(name, pattern, opts, keep_on_match)
   if type(pattern) ~= "string" then
      caller_error(name, "pattern must be a string, got " .. type(pattern))
   end
   opts = opts or {}
   if type(opts) ~= "table" then caller_error(name, "options must be a table") end
   local plain = opts.plain and true or false
   if not plain then
      local ok, err = pcall(find, "", pattern)
      if not ok then caller_error(name, tostring(err):gsub("^.-: ", "")) end
   end
   local fields = opts.fields or "all"
   if type(fields) == "string" then
      local set = FIELD_SETS[fields]
      if not set then
         caller_error(name, "fields must be all, prompt, chosen, rejected, responses or a list, got " ..
                      fields)
      end
      fields = set
   elseif type(fields) ~= "table" then
      caller_error(name, "fields must be a string or a list of field names")
   else
      for i, f in ipairs(fields) do
         if type(f) ~= "string" then
            caller_error(name, format("fields[%d] must be a field name, got %s", i, type(f)))
         end
      end
   end
   local reason = keep_on_match and "no_match" or "match"
   return stateless(format("%s(%q)", name, pattern), function(pair)
      for _, f in ipairs(fields) do
         local s = pair[f]
         if type(s) == "string" and find(s, pattern, 1, plain) then
            if keep_on_match then return true end
            return false, reason
         end
      end
      if keep_on_match then return false, reason end
      return true
   end)
end

function filters.matches(pattern, opts)
   return pattern_filter("matches", pattern, opts, true)
end

function filters.excludes(pattern, opts)
   return pattern_filter("excludes", pattern, opts, false)
end

-- ---- hh_clean --------------------------------------------------------------------------

-- The turns of an HH text: roles {"Human", "Assistant", ...}, their contents,
-- and the text before the first turn. (Plain searches for "\n\n": a pattern
-- search would try every byte.)
local function turns(text)
   local roles, contents = {}, {}
   local pos, start, pre = 1, nil, nil
   while true do
      local s = find(text, "\n\n", pos, true)
      if not s then break end
      local role
      if sub(text, s + 2, s + 7) == "Human:" then
         role = "Human"
      elseif sub(text, s + 2, s + 11) == "Assistant:" then
         role = "Assistant"
      end
      if role then
         if start then
            contents[#contents + 1] = sub(text, start, s - 1)
         else
            pre = sub(text, 1, s - 1)
         end
         roles[#roles + 1] = role
         start = s + 3 + #role
         pos = start
      else
         pos = s + 1
      end
   end
   if start then
      contents[#contents + 1] = sub(text, start)
   else
      pre = text
   end
   return roles, contents, pre
end

local function blank(s)
   return not find(s, "%S")
end

local function has_turn(s)
   return find(s, "\n\nHuman:", 1, true) or find(s, "\n\nAssistant:", 1, true)
end

-- Is text[i..j] blank (nothing but white space)?
local function blank_range(text, i, j)
   local x = find(text, "%S", i)
   return not x or x > j
end

-- nil when the prompt is Human/Assistant turns in turn, from a Human turn to
-- a final empty "Assistant:", none of them empty; else the reason. One pass,
-- no strings made.
local function prompt_fault(text)
   local pos, n, start, expect = 1, 0, nil, "Human:"
   while true do
      local s = find(text, "\n\n", pos, true)
      if not s then break end
      local human = sub(text, s + 2, s + 7) == "Human:"
      if human or sub(text, s + 2, s + 11) == "Assistant:" then
         if (human and "Human:" or "Assistant:") ~= expect then return "roles_not_alternating" end
         if start then
            if blank_range(text, start, s - 1) then return "empty_turn" end
         elseif not blank_range(text, 1, s - 1) then
            return "roles_not_alternating" -- text before the first turn
         end
         n = n + 1
         expect = human and "Assistant:" or "Human:"
         start = s + (human and 8 or 12)
         pos = start
      else
         pos = s + 1
      end
   end
   -- the prompt ends with "\n\nAssistant:", its last turn empty by construction
   if n == 0 or expect ~= "Human:" or not blank_range(text, start, #text) then
      return "roles_not_alternating"
   end
end

local function hh_check(pair)
   local prompt, chosen, rejected = pair.prompt, pair.chosen, pair.rejected
   if has_turn(chosen) or has_turn(rejected) then return false, "unequal_turns" end
   local rp = pair.rejected_prompt
   if rp and rp ~= prompt then
      if #turns(rp) ~= #turns(prompt) then return false, "unequal_turns" end
      return false, "earlier_turns_differ"
   end
   local fault = prompt_fault(prompt)
   if fault then return false, fault end
   if blank(chosen) or blank(rejected) then return false, "empty_turn" end
   if chosen == rejected then return false, "identical_responses" end
   return true
end

function filters.hh_clean()
   return stateless("hh_clean", hh_check)
end

-- The turns of an HH text, for scripts that inspect dialogues:
-- dpo.filters.hh_turns(text) -> roles, contents.
function filters.hh_turns(text)
   if type(text) ~= "string" then caller_error("hh_turns", "text must be a string, got " .. type(text)) end
   local roles, contents = turns(text)
   return roles, contents
end

return filters
