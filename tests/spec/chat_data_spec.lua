-- Conversational preference data (lua/dpo/data.lua): TRL's explicit and
-- implicit prompt formats in dpo.data.pairs, HH dialogues as messages in
-- dpo.data.hh(path, {messages = true}), and tokenization through a chat
-- template: the prompt rendered with add_generation_prompt, each response
-- what the template adds for it, checked against Python's jinja2
-- (tests/chat/render.py) and against the byte tokenizer's ids by hand.
local h = dofile("tests/spec/helper.lua")
local ref = dofile("tests/chat/reference.lua")
local data = dpo.data
local cjson = require "cjson"

local dir
local function file(name, records)
   local p = dir .. "/" .. name
   local lines = {}
   for i, r in ipairs(records) do lines[i] = type(r) == "string" and r or cjson.encode(r) end
   h.write(p, table.concat(lines, "\n") .. "\n")
   return p
end

local function msg(role, content) return { role = role, content = content } end

local U1, A1, U2 = msg("user", "What is 2+2?"), msg("assistant", "4."), msg("user", "And 3+3?")
local GOOD, BAD = msg("assistant", "6."), msg("assistant", "Seven.")

-- ChatML with a BOS of its own: <|endoftext|> is the byte tokenizer's one
-- special token (id 256, also its eos and bos).
local CHATML = "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|endoftext|>\n{% endfor %}" ..
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"

local function bytes_tok(template)
   return dpo.tokenizer.bytes():set_chat_template(template or CHATML, "chatml.jinja")
end

local function ids(t) return t:totable() end

setup(function() dir = h.tmpdir() end)
teardown(function() h.cleanup() end)

describe("dpo.data.pairs reads TRL's conversational formats", function()
   it("explicit prompt", function()
      local ds = assert(data.pairs(file("explicit.jsonl", {
         { prompt = { U1, A1, U2 }, chosen = { GOOD }, rejected = { BAD } },
      })))
      assert.are.equal(1, #ds)
      local p = ds:get(1)
      assert.are.same({ U1, A1, U2 }, p.messages.prompt)
      assert.are.same({ GOOD }, p.messages.chosen)
      assert.are.same({ BAD }, p.messages.rejected)
      assert.are.equal("user: What is 2+2?\n\nassistant: 4.\n\nuser: And 3+3?", p.prompt)
      assert.are.equal("6.", p.chosen)
      assert.are.equal("Seven.", p.rejected)
   end)

   it("implicit prompt: the longest common prefix of whole messages", function()
      local ds = assert(data.pairs(file("implicit.jsonl", {
         { chosen = { U1, A1, U2, GOOD }, rejected = { U1, A1, U2, BAD } },
         -- the sides part at the first assistant turn: the prompt is one message
         { chosen = { U1, A1 }, rejected = { U1, msg("assistant", "5.") } },
      })))
      assert.are.equal(2, #ds)
      assert.are.same({ U1, A1, U2 }, ds:get(1).messages.prompt)
      assert.are.same({ GOOD }, ds:get(1).messages.chosen)
      assert.are.same({ BAD }, ds:get(1).messages.rejected)
      assert.are.same({ U1 }, ds:get(2).messages.prompt)
      assert.are.same({ msg("assistant", "5.") }, ds:get(2).messages.rejected)
   end)

   it("content as a list of parts", function()
      local parts = { role = "user", content = { { type = "text", text = "Hi " }, { type = "text", text = "you" } } }
      local ds = assert(data.pairs(file("parts.jsonl", { { prompt = { parts }, chosen = { GOOD }, rejected = { BAD } } })))
      assert.are.equal("user: Hi you", ds:get(1).prompt)
   end)

   it("drops empty and identical responses, and names bad records", function()
      local errs = {}
      local ds = assert(data.pairs(file("mixed.jsonl", {
         { prompt = { U1 }, chosen = { msg("assistant", "  ") }, rejected = { BAD } },
         { chosen = { U1, GOOD }, rejected = { U1, GOOD } },
         { prompt = { U1 }, chosen = { { content = "no role" } }, rejected = { BAD } },
         { prompt = "a string", chosen = { GOOD }, rejected = { BAD } },
         { prompt = { U1 }, chosen = { GOOD }, rejected = "text" },
         { prompt = { U1 }, chosen = { GOOD }, rejected = { BAD } },
      }), { warn = function(m) errs[#errs + 1] = m end }))
      assert.are.equal(1, #ds)
      local st = ds:stats()
      assert.are.equal(1, st.dropped.empty_response)
      assert.are.equal(1, st.dropped.identical_responses)
      assert.are.equal(3, st.errors)
      assert.matches("mixed.jsonl:3: field 'chosen': message 1 has no role", st.error_examples[1], 1, true)
      assert.matches("mixed.jsonl:4: field 'prompt' is not a list of messages", st.error_examples[2], 1, true)
      assert.matches("mixed.jsonl:5: field 'rejected' is not a list of messages", st.error_examples[3], 1, true)
   end)

   it("saves conversational pairs as messages, which read back the same", function()
      local ds = assert(data.pairs(file("save.jsonl", { { prompt = { U1, A1, U2 }, chosen = { GOOD }, rejected = { BAD } } })))
      local out = dir .. "/saved.jsonl"
      assert(ds:save(out))
      local back = assert(data.pairs(out))
      assert.are.same(ds:get(1).messages, back:get(1).messages)
   end)
end)

describe("dpo.data.hh(path, {messages = true})", function()
   it("turns dialogues into messages", function()
      local p = file("hh.jsonl", {
         { chosen = "\n\nHuman: Hi\n\nthere\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: Bye now.",
           rejected = "\n\nHuman: Hi\n\nthere\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: Go away." },
         { chosen = "\n\nHuman: A\n\nAssistant: x", rejected = "\n\nHuman: B\n\nAssistant: y" },
         { chosen = "\n\nHuman: A\n\nAssistant: x", rejected = "\n\nHuman: A\n\nAssistant: x" },
         { chosen = "\n\nHuman: only a question", rejected = "\n\nHuman: only a question" },
      })
      local ds = assert(data.hh(p, { messages = true, warn = false }))
      assert.are.equal(1, #ds)
      local m = ds:get(1).messages
      assert.are.same({ msg("user", "Hi\n\nthere"), msg("assistant", "Hello!"), msg("user", "Bye") }, m.prompt)
      assert.are.same({ msg("assistant", "Bye now.") }, m.chosen)
      assert.are.same({ msg("assistant", "Go away.") }, m.rejected)
      local st = ds:stats()
      assert.are.equal(1, st.dropped.prompt_mismatch)
      assert.are.equal(1, st.dropped.identical_responses)
      assert.are.equal(1, st.errors)
      assert.are.equal("hh messages", st.steps[1].format)
   end)
end)

describe("tokenizing conversational pairs through a chat template", function()
   local function explicit()
      return assert(data.pairs(file("tok.jsonl", {
         { prompt = { U1, A1, U2 }, chosen = { GOOD }, rejected = { BAD } },
         { prompt = { msg("user", "Say <|endoftext|> please") }, chosen = { msg("assistant", "ok") },
           rejected = { msg("assistant", "no") } },
      })))
   end

   it("renders prompt and responses as the template does, with one BOS", function()
      local tok = bytes_tok()
      local ds = explicit():tokenize(tok, { max_length = 256 })
      local p = ds:get(1)
      local prompt = "<|endoftext|><|im_start|>user\nWhat is 2+2?<|endoftext|>\n<|im_start|>assistant\n4.<|endoftext|>\n" ..
                     "<|im_start|>user\nAnd 3+3?<|endoftext|>\n<|im_start|>assistant\n"
      assert.are.equal(prompt, p.prompt)
      assert.are.equal("6.<|endoftext|>\n", p.chosen)
      assert.are.equal("Seven.<|endoftext|>\n", p.rejected)
      assert.is_true(p.chat)
      -- the ids by hand: the bytes, with <|endoftext|> as 256, then the EOS
      local b = ds:collate({ p })
      local row = ids(b.ids)[1]
      local want = { 256 }
      local function bytes(s) for i = 1, #s do want[#want + 1] = s:byte(i) end end
      bytes("<|im_start|>user\nWhat is 2+2?"); want[#want + 1] = 256
      bytes("\n<|im_start|>assistant\n4."); want[#want + 1] = 256
      bytes("\n<|im_start|>user\nAnd 3+3?"); want[#want + 1] = 256
      bytes("\n<|im_start|>assistant\n")
      local n_prompt = #want
      bytes("6."); want[#want + 1] = 256
      bytes("\n"); want[#want + 1] = 256 -- the EOS added after the response
      assert.are.same(want, table.move(row, 1, #want, 1, {}))
      assert.are.equal(n_prompt, p.n_prompt)
      assert.are.equal(#want - n_prompt, p.n_chosen)
      assert.are.equal(256, row[1])
      assert.are_not.equal(256, row[2]) -- the template's BOS, not doubled
      -- special-token text in a message becomes the special token, as in transformers
      assert.matches("Say <|endoftext|> please", ds:get(2).prompt, 1, true)
      local st = ds:stats()
      assert.are.equal("chatml.jinja", st.chat_template.source)
      assert.are.equal(2, st.chat_template.pairs)
      assert.matches("2 pairs rendered by the chat template of chatml.jinja", tostring(st), 1, true)
   end)

   it("gives the texts jinja2 gives for the real templates", function()
      local cases, got = {}, {}
      local special = { bos_token = "<|endoftext|>", eos_token = "<|endoftext|>" }
      for _, name in ipairs { "qwen3", "gemma3", "smollm2", "mistral" } do
         local text = ref.fixture(name .. ".jinja")
         local ds = explicit():tokenize(bytes_tok(text), { max_length = 1024 })
         for i = 1, #ds do
            local p, m = ds:get(i), explicit():get(i).messages
            local full = { table.unpack(m.prompt) }
            full[#full + 1] = m.chosen[1]
            cases[#cases + 1] = { template = text, chat = { messages = m.prompt, add_generation_prompt = true, special = special } }
            cases[#cases + 1] = { template = text, chat = { messages = full, add_generation_prompt = false, special = special } }
            got[#got + 1] = { name = name, prompt = p.prompt, whole = p.prompt .. p.chosen }
         end
      end
      local res = ref.render(cases)
      for k, g in ipairs(got) do
         assert.is_true(res[2 * k - 1].ok and res[2 * k].ok, g.name)
         assert.are.equal(res[2 * k - 1].out, g.prompt, g.name)
         assert.are.equal(res[2 * k].out, g.whole, g.name)
      end
   end)

   it("applies today's truncation to the rendered texts", function()
      local ds = explicit():tokenize(bytes_tok(), { max_length = 40, max_prompt_length = 20 })
      local p = ds:get(1)
      assert.are.equal(20, p.n_prompt)
      assert.is_true(p.n_prompt_full > 20)
      assert.is_true(p.n_prompt + math.max(p.n_chosen, p.n_rejected) <= 40)
   end)

   it("takes opts.chat_template and opts.template_vars", function()
      local ds = explicit():tokenize(dpo.tokenizer.bytes(), {
         chat_template = "{% for m in messages %}{{ tag }}{{ m.content }};{% endfor %}", template_vars = { tag = "#" } })
      assert.are.equal("#What is 2+2?;#4.;#And 3+3?;", ds:get(1).prompt)
      assert.are.equal("#6.;", ds:get(1).chosen)
      assert.are.equal("opts.chat_template", ds:stats().chat_template.source)
   end)

   it("raises naming the pair without a template or when the prompt is not a prefix", function()
      h.errors(function() explicit():tokenize(dpo.tokenizer.bytes()) end,
               "tokenize: pair 1 is conversational (messages) but the tokenizer has no chat template", true)
      local odd = "{% if add_generation_prompt %}G{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"
      h.errors(function() explicit():tokenize(bytes_tok(odd)) end,
               "tokenize: pair 1: the chat template's rendering of the prompt is not the start of its " ..
               "rendering with the chosen response", true)
      h.errors(function() explicit():tokenize(bytes_tok("{{ raise_exception('no ' ~ messages[0].role) }}")) end,
               "tokenize: pair 1: no user", true)
   end)

   it("leaves string pairs as they were", function()
      local ds = data.dataset({ { prompt = "Q <|endoftext|>", chosen = " a", rejected = " b" } })
      local p = ds:tokenize(bytes_tok()):get(1)
      assert.is_nil(p.chat)
      assert.are.equal(15, p.n_prompt) -- special-token text stays text in plain pairs
   end)
end)
