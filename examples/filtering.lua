-- examples/filtering.lua: pair filters of your own, and what each removed.
--
--   dpolua examples/filtering.lua [--data=examples/data/hh-sample/train.jsonl.gz]
--                                 [--max_tokens=320] [--save=filtered.jsonl.gz]
--
-- A filter is a function pair -> keep [, reason]; ds:filter(fn, name) keeps
-- the pairs it accepts and counts the others by reason, and ds:stats() shows
-- every step: what was read and dropped while reading, what each filter
-- removed, and the token counts after tokenization. Filters from
-- dpo.filters (hh_clean, dedupe, max_tokens, excludes, ...) are the same kind
-- of thing, with their names and reasons built in.
local opts = dpo.cli.parse(arg, {
   name = "filtering.lua",
   usage = "dpolua examples/filtering.lua [--key=value ...]",
   { "data", "examples/data/hh-sample/train.jsonl.gz", "an HH-format file (or directory)" },
   { "min_chosen_words", 4, "drop pairs whose chosen reply is shorter than this" },
   { "max_tokens", 320, "drop pairs longer than this (prompt + longer reply, in tokens)" },
   { "save", "", "write the pairs that are left to this .jsonl(.gz) file" },
})

local ds = assert(dpo.data.hh(opts.data))

-- 1. A plain function: keep, or false and the reason it goes.
local function long_enough(pair)
   local words = select(2, pair.chosen:gsub("%S+", ""))
   if words < opts.min_chosen_words then return false, "chosen_too_short" end
   return true
end

-- 2. A filter with state, made with dpo.filters.new: make() returns a fresh
-- predicate each time the filter is applied, so one filter object serves
-- several datasets. Here: at most two pairs per final question.
local function last_question(pair)
   return pair.prompt:match(".*\n\nHuman:%s*(.-)\n\nAssistant:$") or pair.prompt
end
local at_most_two = dpo.filters.new("at_most_two_per_question", function()
   local seen = {}
   return function(pair)
      local q = last_question(pair)
      seen[q] = (seen[q] or 0) + 1
      if seen[q] > 2 then return false, "third_or_later" end
      return true
   end
end)

-- 3. Reasons from the data itself: drop pairs whose rejected reply only asks
-- a question back (to keep the pairs where it is wrong or rude instead), with
-- one reason per first word of that question.
local function rejected_not_evasive(pair)
   local q = pair.rejected:match("%f[%a]([%a']+)[^.!?]*%?%s*$")
   if q then return false, "asks_back:" .. q:lower() end
   return true
end

local filtered = ds
   :filter(dpo.filters.hh_clean())                          -- HH's dirty rows, by reason
   :filter(dpo.filters.dedupe())                            -- repeated pairs
   :filter(long_enough, "long_enough")
   :filter(rejected_not_evasive, "rejected_not_evasive")
   :filter(at_most_two)
   :filter(dpo.filters.excludes("stupid", { fields = "chosen", plain = true }))

-- Token-level filters work after tokenization.
local tok = dpo.tokenizer.bytes()
local tokenized = filtered:tokenize(tok, { max_length = 512 }):filter(dpo.filters.max_tokens(opts.max_tokens))

print(tokenized:stats())
print(("\n%d pairs read, %d left"):format(#ds, #tokenized))
for _, s in ipairs(tokenized:stats().steps) do
   if s.step == "filter" then print(("  %-34s removed %4d of %d"):format(s.name, s.removed, s.before)) end
end
if opts.save ~= "" then
   assert(tokenized:save(opts.save))
   print("saved " .. opts.save)
end
