-- dpo.filters (lua/dpo/filters.lua): each filter on pairs written for it,
-- the dirty-row rules of HH-RLHF on tests/fixtures/data/hh_dirty.jsonl, and
-- what ds:stats() reports of them.
local h = dofile("tests/spec/helper.lua")

local FIX = "tests/fixtures/data/"
local data, filters = dpo.data, dpo.filters
local bytes = dpo.tokenizer.bytes()

local function pair(p, c, r)
   return { prompt = p, chosen = c, rejected = r }
end

-- The prompts of ds's pairs, in order.
local function prompts(ds)
   local t = {}
   for p in ds:iter() do t[#t + 1] = p.prompt end
   return t
end

local function last_step(ds)
   local steps = ds:stats().steps
   return steps[#steps]
end

describe("dpo.filters", function()
   it("distinct drops identical replies", function()
      local ds = data.dataset { pair("a", " x", " x"), pair("b", " x", " y") }:filter(filters.distinct())
      assert.are.same({ "b" }, prompts(ds))
      assert.are.same({ identical_responses = 1 }, last_step(ds).reasons)
      assert.are.same({ distinct = 1 }, ds:stats().removed)
   end)

   it("dedupe keeps the first of equal pairs, or of equal prompts, or of any key", function()
      local ds = data.dataset {
         pair("a", " x", " y"), pair("a", " x", " y"), pair("a", " x", " z"), pair("b", " x", " y"),
      }
      assert.are.same({ "a", "a", "b" }, prompts(ds:filter(filters.dedupe())))
      assert.are.same({ "a", "b" }, prompts(ds:filter(filters.dedupe("prompt"))))
      local by_rejected = ds:filter(filters.dedupe(function(p) return p.rejected end))
      assert.are.same({ "a", "a" }, prompts(by_rejected))
      assert.are.same({ duplicate = 2 }, last_step(by_rejected).reasons)
      -- one filter object, fresh memory on every dataset
      local f = filters.dedupe()
      assert.are.equal(3, #ds:filter(f))
      assert.are.equal(3, #ds:filter(f))
      h.errors(function() filters.dedupe("chosen") end,
               "dpo.filters.dedupe: key must be 'pair', 'prompt' or a function", true)
   end)

   it("max_tokens and min_response_tokens count tokens (EOS included)", function()
      local ds = data.dataset {
         pair("12345", " ab", " c"),   -- 5 + 4 = 9
         pair("1", " abcdefgh", " cdefghij"), -- 1 + 10 = 11
         pair("12", " a", " bc"),      -- responses 3 and 4
      }:tokenize(bytes, { max_length = 8, max_prompt_length = 4 })
      -- before truncation: the first is 9 tokens, the second 11
      assert.are.same({ "12" }, prompts(ds:filter(filters.max_tokens(8))))
      assert.are.same({ "12345", "12" }, prompts(ds:filter(filters.max_tokens(9))))
      assert.are.same({ too_long = 2 }, last_step(ds:filter(filters.max_tokens(8))).reasons)
      -- after truncation: the second pair's replies were cut from 10 to 7 tokens
      assert.are.same({ "12345", "1", "12" }, prompts(ds:filter(filters.min_response_tokens(3))))
      assert.are.same({ "1" }, prompts(ds:filter(filters.min_response_tokens(4))))
      assert.are.same({ "1" }, prompts(ds:filter(filters.min_response_tokens(7))))
      assert.are.same({}, prompts(ds:filter(filters.min_response_tokens(8))))
      assert.are.same({ short_response = 3 },
                      last_step(ds:filter(filters.min_response_tokens(8))).reasons)
      local raw = data.dataset { pair("a", " b", " c") }
      h.errors(function() raw:filter(filters.max_tokens(8)) end,
               "dpo.filters.max_tokens(8): the pair has no token counts", true)
      h.errors(function() filters.max_tokens(0) end, "n must be a positive integer", true)
      h.errors(function() filters.min_response_tokens(1.5) end, "n must be a positive integer", true)
   end)

   it("max_length_ratio compares the replies, in characters or tokens", function()
      local ds = data.dataset {
         pair("a", " ok", " a much longer reply"),
         pair("b", " éé", " éééé"), -- 3 and 5 characters, 5 and 9 bytes
      }
      assert.are.same({ "b" }, prompts(ds:filter(filters.max_length_ratio(2))))
      assert.are.same({}, prompts(ds:filter(filters.max_length_ratio(1.5))))
      -- tokens (bytes here, EOS included): 6 and 10 for b
      local t = ds:tokenize(bytes)
      assert.are.same({ "b" }, prompts(t:filter(filters.max_length_ratio(1.7))))
      assert.are.same({}, prompts(t:filter(filters.max_length_ratio(1.6))))
      assert.are.same({ length_ratio = 2 }, last_step(t:filter(filters.max_length_ratio(1.6))).reasons)
   end)

   it("matches and excludes take Lua patterns or plain text, on chosen fields", function()
      local ds = data.dataset {
         pair("Q: 1+1?", " 2", " Go away."),
         pair("Q: colour?", " red", " 42"),
         pair("Say (hi)", " hi", " no"),
      }
      assert.are.same({ "Q: 1+1?", "Q: colour?" }, prompts(ds:filter(filters.matches("^Q:"))))
      assert.are.same({ "Q: colour?" }, prompts(ds:filter(filters.matches("%d%d", { fields = "responses" }))))
      assert.are.same({ "Q: 1+1?", "Say (hi)" },
                      prompts(ds:filter(filters.excludes("%d%d", { fields = { "rejected" } }))))
      assert.are.same({ "Say (hi)" }, prompts(ds:filter(filters.matches("(hi)", { plain = true, fields = "prompt" }))))
      local ex = ds:filter(filters.excludes("go away", { plain = true }))
      assert.are.equal(3, #ex) -- case matters
      local f = ds:filter(filters.excludes("Go away"))
      assert.are.same({ match = 1 }, last_step(f).reasons)
      assert.matches('excludes%("Go away"%)', last_step(f).name)
      h.errors(function() filters.matches("(") end, "dpo.filters.matches: ", true)
      h.errors(function() filters.matches("x", { fields = "answer" }) end,
               "fields must be all, prompt, chosen, rejected, responses or a list", true)
   end)

   it("any Lua function is a filter, with an optional reason", function()
      local ds = data.dataset { pair("a", " x", " y"), pair("bb", " x", " y") }
      local short = ds:filter(function(p) return #p.prompt < 2 end)
      assert.are.same({ "a" }, prompts(short))
      assert.matches("^function@.*filters_spec.lua:%d+$", last_step(short).name)
      local named = ds:filter(function(p)
         if #p.prompt > 1 then return false, "long prompt" end
         return true
      end, "short prompts")
      assert.are.same({ ["short prompts"] = 1 }, named:stats().removed)
      assert.matches("short prompts: removed 1 of 2 (long prompt 1)", tostring(named:stats()), 1, true)
      -- a filter called directly
      assert.is_true(filters.distinct()(pair("a", "b", "c")))
      assert.are.equal("dpo.filters.distinct", tostring(filters.distinct()))
      local custom = filters.new("nonempty prompt", function()
         return function(p) return p.prompt ~= "" end
      end)
      assert.are.equal(2, #ds:filter(custom))
      assert.are.same({ ["nonempty prompt"] = 0 }, ds:filter(custom):stats().removed)
   end)
end)

describe("dpo.filters.hh_clean", function()
   it("removes the dirty rows of HH by reason and keeps the clean ones", function()
      local ds = assert(data.hh(FIX .. "hh_dirty.jsonl"))
      assert.are.equal(8, #ds) -- rows 9 and 10 are prompt mismatches
      local clean = ds:filter(filters.hh_clean())
      assert.are.same({ roles_not_alternating = 2, empty_turn = 1, unequal_turns = 2 },
                      last_step(clean).reasons)
      assert.are.equal(3, #clean) -- rows 1, 7 (a duplicate of 1) and 8
      local once = clean:filter(filters.dedupe())
      assert.are.equal(2, #once)
      assert.are.same({ hh_clean = 5, dedupe = 1 }, once:stats().removed)
      local text = tostring(once:stats())
      assert.matches("hh_clean: removed 5 of 8 (empty_turn 1, roles_not_alternating 2, unequal_turns 2)",
                     text, 1, true)
   end)

   it("tells earlier turns that differ from different turn counts", function()
      local ds = assert(data.hh(FIX .. "hh_dirty.jsonl", { check_prompt = false }))
      local clean = ds:filter(filters.hh_clean())
      assert.are.same({ roles_not_alternating = 2, empty_turn = 1, unequal_turns = 3,
                        earlier_turns_differ = 1 }, last_step(clean).reasons)
      assert.are.equal(3, #clean)
   end)

   it("checks each rule on pairs written for it", function()
      local f = filters.hh_clean()
      local P = "\n\nHuman: Hi?\n\nAssistant:"
      local cases = {
         { pair(P, " Hello.", " Go."), true },
         { pair(P, " Hello.", " Go.\n\nHuman: x"), false, "unequal_turns" },
         { pair(P, " Hello.\n\nAssistant: again", " Go."), false, "unequal_turns" },
         { pair("\n\nAssistant: Hi?\n\nHuman: Hi\n\nAssistant:", " a", " b"), false, "roles_not_alternating" },
         { pair("\n\nHuman: Hi?", " a", " b"), false, "roles_not_alternating" },
         { pair("\n\nHuman: Hi?\n\nAssistant: x", " a", " b"), false, "roles_not_alternating" },
         { pair("", " a", " b"), false, "roles_not_alternating" },
         { pair("\n\nHuman:   \n\nAssistant:", " a", " b"), false, "empty_turn" },
         { pair("\n\nHuman: a\n\nAssistant:\n\nHuman: b\n\nAssistant:", " a", " b"), false, "empty_turn" },
         { pair(P, " ", " b"), false, "empty_turn" },
         { pair(P, " same", " same"), false, "identical_responses" },
         { pair("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:", " d", " e"), true },
         -- other "Name:" lines inside a turn are text
         { pair("\n\nHuman: Note:\n\nTodo: list\n\nAssistant:", " ok", " no"), true },
      }
      for i, c in ipairs(cases) do
         local ok, why = f(c[1])
         assert.are.equal(c[2], ok and true or false, "case " .. i)
         assert.are.equal(c[3], why, "case " .. i)
      end
   end)

   it("exposes the turn parser", function()
      local roles, contents = filters.hh_turns("\n\nHuman: a\n\nAssistant: b\n\nHuman: c")
      assert.are.same({ "Human", "Assistant", "Human" }, roles)
      assert.are.same({ " a", " b", " c" }, contents)
   end)
end)
