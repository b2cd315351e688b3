-- tok:chat_template(), tok:set_chat_template(), tok:apply_chat_template()
-- (lua/dpo/tokenizer.lua): where the template comes from, and the rendered
-- text against Python's jinja2 rendering as transformers' apply_chat_template
-- does (tests/chat/render.py: messages, tools, documents=None,
-- add_generation_prompt, the special tokens, extra variables).
local h = dofile("tests/spec/helper.lua")
local ref = dofile("tests/chat/reference.lua")
local cjson = require("cjson")

local TINY = "tests/fixtures/tokenizer/tiny.json"
local SPECIAL = { bos_token = "<|endoftext|>", eos_token = "<|endoftext|>", pad_token = "<mask>" }

-- A tokenizer directory: tiny.json as tokenizer.json, a tokenizer_config.json
-- naming the special tokens and holding `config_template` (a string or a
-- list), and chat_template.jinja when `file_template` is given.
local function tokdir(config_template, file_template)
   local dir = h.tmpdir()
   h.write(dir .. "/tokenizer.json", h.read(TINY))
   local cfg = { bos_token = SPECIAL.bos_token, eos_token = SPECIAL.eos_token, pad_token = SPECIAL.pad_token }
   cfg.chat_template = config_template
   h.write(dir .. "/tokenizer_config.json", cjson.encode(cfg))
   if file_template then h.write(dir .. "/chat_template.jinja", file_template) end
   return dir
end

local MSGS = {
   { role = "system", content = "Be brief." },
   { role = "user", content = "Hi <|endoftext|> there" },
   { role = "assistant", content = "Hello." },
   { role = "user", content = { { type = "text", text = "Parts," }, { type = "text", text = " two." } } },
}

teardown(function() h.cleanup() end)

describe("tok:chat_template()", function()
   it("reads tokenizer_config.json's chat_template", function()
      local t = "{% for m in messages %}{{ m.content }}{% endfor %}"
      local dir = tokdir(t)
      assert.are.equal(t, dpo.tokenizer.load(dir):chat_template())
      assert.are.equal(t, dpo.tokenizer.load(dir .. "/tokenizer.json"):chat_template())
   end)
   it("takes the \"default\" of a list of templates", function()
      local dir = tokdir({ { name = "tool_use", template = "T" }, { name = "default", template = "D" } })
      assert.are.equal("D", dpo.tokenizer.load(dir):chat_template())
      dir = tokdir({ { name = "tool_use", template = "T" } })
      h.errors(function() dpo.tokenizer.load(dir) end, 'without a "default" template', true)
   end)
   it("prefers chat_template.jinja", function()
      assert.are.equal("F", dpo.tokenizer.load(tokdir("C", "F")):chat_template())
   end)
   it("is saved beside the tokenizer as chat_template.jinja, and loads back", function()
      local tok = dpo.tokenizer.load(tokdir("{{ 'T' }}"))
      local out = h.tmpdir()
      tok:save(out .. "/tokenizer.json")
      assert.are.equal("{{ 'T' }}", h.read(out .. "/chat_template.jinja"))
      assert.are.equal("{{ 'T' }}", (dpo.tokenizer.load(out .. "/tokenizer.json"):chat_template()))
      local plain = h.tmpdir()
      dpo.tokenizer.bytes():save(plain .. "/tokenizer.json")
      assert.is_nil(io.open(plain .. "/chat_template.jinja"))
      h.errors(function() tok:save({}) end, "bad argument #2 to 'save'", true)
   end)

   it("is nil without one, and set_chat_template sets or removes it", function()
      local tok = dpo.tokenizer.load(tokdir(nil))
      assert.is_nil(tok:chat_template())
      assert.are.equal(tok, tok:set_chat_template("X"))
      assert.are.equal("X", tok:chat_template())
      tok:set_chat_template(nil)
      assert.is_nil(tok:chat_template())
      assert.is_nil(dpo.tokenizer.bytes():chat_template())
      h.errors(function() tok:set_chat_template("{% for %}") end, "set_chat_template: chat template:1:", true)
   end)
end)

describe("tok:apply_chat_template()", function()
   local TEMPLATES = { "qwen3", "gemma3", "llama3", "smollm2", "llama2", "mistral", "llama31_tools" }
   local convs = {
      { MSGS[2] },
      { MSGS[1], MSGS[2] },
      { MSGS[1], MSGS[2], MSGS[3], MSGS[4] },
      { MSGS[2], MSGS[3] },
   }
   local cases, calls = {}, {}
   for _, name in ipairs(TEMPLATES) do
      local text = ref.fixture(name .. ".jinja")
      for ci, conv in ipairs(convs) do
         for _, gen in ipairs { false, true } do
            local extra = ci == 3 and { enable_thinking = false, date_string = "1 Jan 2025" } or nil
            cases[#cases + 1] = { template = text, chat = { messages = conv, add_generation_prompt = gen,
                                                             special = SPECIAL, extra = extra } }
            local opts = { add_generation_prompt = gen }
            for k, v in pairs(extra or {}) do opts[k] = v end
            calls[#calls + 1] = { name = name, text = text, conv = conv, opts = opts }
         end
      end
   end
   local results

   it("renders as transformers does, for each template and conversation", function()
      results = results or ref.render(cases)
      local same, failed = 0, {}
      for i, c in ipairs(calls) do
         local tok = dpo.tokenizer.load(tokdir(c.text))
         local ok, got = pcall(tok.apply_chat_template, tok, c.conv, c.opts)
         local want = results[i]
         if want.ok and ok and got == want.out then
            same = same + 1
         elseif not want.ok and not ok then
            same = same + 1
         else
            failed[#failed + 1] = string.format("%s #%d: jinja2 %s, dpo %s", c.name, i,
               want.ok and string.format("%q", want.out) or ("raised " .. want.error),
               ok and string.format("%q", got) or ("raised " .. tostring(got)))
         end
      end
      assert.are.equal(#calls, same, table.concat(failed, "\n"))
   end)

   it("gives the ids of the text with special tokens recognized and none added", function()
      local tok = dpo.tokenizer.load(tokdir(ref.fixture("llama2.jinja")))
      local text = tok:apply_chat_template({ MSGS[2], MSGS[3] })
      local ids = tok:apply_chat_template({ MSGS[2], MSGS[3] }, { tokenize = true })
      assert.are.same(tok:encode(text, { special = true }):totable(), ids:totable())
      assert.are.equal("<|endoftext|>[INST] Hi", text:sub(1, 22))
      assert.are.equal(279, ids:totable()[1]) -- bos_token's text is the one token, not its bytes
   end)

   it("passes tools and extra variables to the template", function()
      local tok = dpo.tokenizer.load(tokdir("{{ tools|tojson }}|{{ documents }}|{{ x }}|{{ add_generation_prompt }}|{{ pad_token }}|{{ unk_token is defined }}"))
      assert.are.equal('null|None|7|False|<mask>|False', tok:apply_chat_template({ MSGS[2] }, { x = 7 }))
      assert.are.equal('[{"name": "f"}]|None||True|<mask>|False',
                       tok:apply_chat_template({ MSGS[2] }, { tools = { { name = "f" } }, add_generation_prompt = true }))
      assert.are.equal("over", tok:apply_chat_template({ MSGS[2] }, { chat_template = "over" }))
   end)

   it("raises the template's raise_exception message, and names bad arguments", function()
      local tok = dpo.tokenizer.load(tokdir(ref.fixture("gemma3.jinja")))
      h.errors(function() tok:apply_chat_template({ MSGS[3], MSGS[2] }) end,
               "Conversation roles must alternate user/assistant/user/assistant/...", true)
      h.errors(function() dpo.tokenizer.bytes():apply_chat_template({ MSGS[2] }) end,
               "the tokenizer has no chat template", true)
      h.errors(function() tok:apply_chat_template("hi") end, "a list of messages expected", true)
      h.errors(function() tok:apply_chat_template({ { content = "x" } }) end, "message 1 has no role", true)
      h.errors(function() tok:apply_chat_template({ { role = "user", content = 5 } }) end,
               "content is a number", true)
      h.errors(function() tok:apply_chat_template({ MSGS[2] }, 5) end, "options table expected", true)
   end)
end)
