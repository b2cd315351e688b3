-- The recipes and examples as a user runs them: real `dpolua` subprocesses
-- ($DPOLUA, else build/dpolua) with a handful of steps and a temporary --out,
-- checking exit codes, what they print and the files a run leaves.
local lfs = require "lfs"
local cjson = require "cjson"

local h = dofile("tests/spec/helper.lua")
local list = h.listing
local read, tmpdir = h.read, h.tmpdir
teardown(h.cleanup)

local shell_quote, DPOLUA = h.quote, h.DPOLUA

-- Temporary directories, removed when the file's tests are done.

-- Run `dpolua script args...`; returns {code, out, err}.
local function run(script, args)
   local out, err = os.tmpname(), os.tmpname()
   local parts = { "env -u LUA_INIT -u LUA_INIT_5_4 DPOLUA_PROGRESS=lines", shell_quote(DPOLUA),
                   shell_quote(script) }
   for _, a in ipairs(args or {}) do parts[#parts + 1] = shell_quote(a) end
   local line = table.concat(parts, " ") .. " </dev/null >" .. out .. " 2>" .. err
   local _, _, code = os.execute(line)
   local r = { code = code, out = read(out), err = read(err) }
   os.remove(out)
   os.remove(err)
   return r
end

local function has(text, s)
   return text:find(s, 1, true) ~= nil
end

-- A short hh.lua run: a few steps of each phase, few pairs, short samples.
local SHORT = { "--sft.steps=4", "--dpo.steps=4", "--eval_pairs=16", "--samples=1",
                "--max_new_tokens=4", "--eval_every=0", "--log_every=2" }

local function short(extra)
   local args = {}
   for i, a in ipairs(SHORT) do args[i] = a end
   for _, a in ipairs(extra) do args[#args + 1] = a end
   return args
end

describe("recipes/hh.lua", function()
   it("lists its options with their defaults", function()
      local r = run("recipes/hh.lua", { "--help" })
      assert.are.equal(0, r.code)
      for _, s in ipairs{ "--data=examples/data/hh-sample", "--model=\"\"", "--out=runs/hh",
                          "--dpo.beta=0.1", "(also --beta)", "--dpo.loss=sigmoid", "(also --loss)",
                          "--sft.steps=500, or 0 (one epoch) with --model", "--dpo.steps=",
                          "--batch_size=16, or 8 with --model", "--dpo.lr=5e-4, or 1e-6 with --model",
                          "(also --lr)", "--seed=0", "--threads=0", "--overwrite=false" } do
         assert.is_true(has(r.out, s), s)
      end
   end)

   it("stops on an unknown option with the closest name (status 2)", function()
      local r = run("recipes/hh.lua", { "--dpo.betta=0.2" })
      assert.are.equal(2, r.code)
      assert.is_true(has(r.err, "unknown option --dpo.betta (did you mean --dpo.beta?)"), r.err)
      local r2 = run("recipes/hh.lua", { "--sft.steps=many" })
      assert.are.equal(2, r2.code)
      assert.is_true(has(r2.err, "--sft.steps expects a number, got 'many'"), r2.err)
   end)

   it("renders the dialogues through --chat_template and shows a rendered prompt", function()
      local dir = tmpdir() .. "/chat"
      local r = run("recipes/hh.lua", { "--sft.steps=1", "--dpo.steps=1", "--eval_pairs=4", "--samples=1",
                                        "--max_new_tokens=2", "--eval_every=0", "--out=" .. dir,
                                        "--chat_template=tests/fixtures/chat/smollm2.jinja" })
      assert.are.equal(0, r.code, r.err)
      assert.is_true(has(r.out, "chat template: tests/fixtures/chat/smollm2.jinja; the first prompt as rendered:\n" ..
                                "<|im_start|>system\nYou are a helpful AI assistant named SmolLM"), r.out)
      local html = read(dir .. "/report.html")
      assert.is_true(has(html, "<b>chat template</b>tests/fixtures/chat/smollm2.jinja"))
      assert.is_true(has(html, "<b>example prompt</b>&lt;|im_start|&gt;system\\nYou are"))
      local bad = run("recipes/hh.lua", { "--out=" .. dir .. "2", "--chat_template=/no/such/file.jinja" })
      assert.are_not.equal(0, bad.code)
      assert.is_true(has(bad.err, "--chat_template: /no/such/file.jinja"), bad.err)
   end)

   it("runs SFT, DPO and the evaluation, and leaves the run's files", function()
      local dir = tmpdir() .. "/hh"
      local r = run("recipes/hh.lua", short{ "--out=" .. dir })
      assert.are.equal(0, r.code, r.err)
      for _, s in ipairs{ "== SFT: 4 steps ==", "== DPO (sigmoid, beta 0.1): 4 steps ==",
                          "reward accuracy, reference SFT", "reward margin, reference SFT",
                          "Samples (greedy, held-out prompts)", "/report.html" } do
         assert.is_true(has(r.out, s), s)
      end
      assert.is_true(has(r.err, "dpo eval at step 8 (16 pairs)"), r.err)
      assert.are.same({ "checkpoint-4", "checkpoint-8", "metrics.jsonl", "report.html", "run.json" },
                      list(dir))
      assert.are.same({ "config.json", "model.safetensors", "optimizer.safetensors", "tokenizer.json",
                        "trainer_state.json" }, list(dir .. "/checkpoint-8"))
      local state = cjson.decode(read(dir .. "/checkpoint-8/trainer_state.json"))
      assert.are.equal("dpo", state.phase)
      assert.are.equal(8, state.global_step)
      assert.are.equal(dir .. "/checkpoint-4", state.reference.source)
      local html = read(dir .. "/report.html")
      assert.is_true(has(html, "<svg") and has(html, "reward accuracy, reference SFT"))
      local phases = {}
      for line in io.lines(dir .. "/metrics.jsonl") do
         phases[cjson.decode(line).phase] = true
      end
      assert.are.same({ sft = true, dpo = true }, phases)
      assert.are.equal(4, cjson.decode(read(dir .. "/run.json"))["sft.steps"])

      -- the same --out again: refused, unless --overwrite
      local again = run("recipes/hh.lua", short{ "--out=" .. dir })
      assert.are.equal(1, again.code)
      assert.is_true(has(again.err, "already exists"), again.err)
      assert.is_true(has(again.err, "--overwrite"), again.err)
      local over = run("recipes/hh.lua", short{ "--out=" .. dir, "--overwrite", "--dpo.ref=sync",
                                               "--dpo.sync_tau=2" })
      assert.are.equal(0, over.code, over.err)
      local synced = cjson.decode(read(dir .. "/checkpoint-8/trainer_state.json"))
      assert.are.equal("sync", synced.reference.mode)
      assert.are.equal(8, synced.reference.last_sync)
   end)

   it("starts from a Hugging Face directory with the original DPO HH settings", function()
      local root = tmpdir()
      local tok = dpo.tokenizer.bytes()
      local m = dpo.gpt.new{ vocab_size = tok:vocab_size(), n_ctx = 512, n_layer = 1, n_head = 2,
                             n_embd = 8, dropout = 0.1 }
      m:save(root .. "/gpt2")
      tok:save(root .. "/gpt2")
      local r = run("recipes/hh.lua", { "--model=" .. root .. "/gpt2", "--out=" .. root .. "/run",
                                        "--sft.steps=2", "--dpo.steps=2", "--eval_pairs=8",
                                        "--samples=1", "--max_new_tokens=2" })
      assert.are.equal(0, r.code, r.err)
      local o = cjson.decode(read(root .. "/run/run.json"))
      assert.are.equal(0.1, o["dpo.beta"])
      assert.are.equal(1e-6, o["dpo.lr"])
      assert.are.equal("rmsprop", o["dpo.optimizer"])
      assert.are.equal(150, o["dpo.warmup"])
      assert.are.equal(10, o.max_grad_norm)
      assert.are.equal(512, o.max_length)
      assert.are.equal(256, o.max_prompt_length)
      assert.are.equal(64, o.batch_size * o.grad_accum)
      local state = cjson.decode(read(root .. "/run/checkpoint-4/trainer_state.json"))
      assert.are.equal("rmsprop", state.optimizer.optimizer)
      -- the warmup of the original code: min(1, (k + 1) / 151) for update k = 0, 1, ...
      assert.is_true(math.abs(state.learning_rate - 2e-6 / 151) < 1e-15)
   end)

   it("caches precomputed reference log-probs next to the run", function()
      local root = tmpdir()
      local r = run("recipes/hh.lua", short{ "--out=" .. root .. "/a", "--dpo.ref=precompute" })
      assert.are.equal(0, r.code, r.err)
      local files = list(root .. "/cache")
      assert.are.equal(2, #files)
      assert.is_true(has(r.err, "reference log-probs of"), r.err)
   end)
end)

describe("recipes and examples", function()
   it("recipes/ipo.lua and recipes/cdpo.lua train with their losses", function()
      for _, name in ipairs{ "ipo", "cdpo" } do
         local dir = tmpdir() .. "/" .. name
         local r = run("recipes/" .. name .. ".lua", short{ "--out=" .. dir })
         assert.are.equal(0, r.code, r.err)
         assert.is_true(has(r.out, "== DPO (" .. name .. ","), r.out)
         assert.are.equal(name, cjson.decode(read(dir .. "/run.json"))["dpo.loss"])
      end
   end)

   it("examples/custom_loss.lua compares its loss with DPO", function()
      local dir = tmpdir() .. "/custom"
      local r = run("examples/custom_loss.lua", { "--sft.steps=3", "--dpo.steps=3", "--eval_pairs=8",
                                                  "--out=" .. dir })
      assert.are.equal(0, r.code, r.err)
      assert.is_true(has(r.out, "margin DPO (custom)") and has(r.out, "DPO (sigmoid)"), r.out)
      assert.is_true(has(r.out, "rewards/accuracies"))
      assert.are.equal("file", lfs.attributes(dir .. "/report.html", "mode"))
   end)

   it("examples/beta_schedule.lua logs the beta of each step", function()
      for _, schedule in ipairs{ "adaptive", "linear", "custom" } do
         local dir = tmpdir() .. "/beta"
         local r = run("examples/beta_schedule.lua", { "--sft.steps=3", "--dpo.steps=10",
                                                       "--eval_pairs=8", "--schedule=" .. schedule,
                                                       "--out=" .. dir })
         assert.are.equal(0, r.code, r.err)
         assert.is_true(has(r.out, "beta (" .. schedule .. " schedule)"), r.out)
         local betas = {}
         for line in io.lines(dir .. "/metrics.jsonl") do
            local rec = cjson.decode(line)
            if rec.beta then betas[#betas + 1] = rec.beta end
         end
         assert.are.equal(2, #betas)
         if schedule == "linear" then
            assert.is_true(math.abs(betas[2] - 0.4) < 1e-6)
         end
      end
   end)

   it("examples/filtering.lua counts what each filter removed", function()
      local out = tmpdir() .. "/kept.jsonl"
      local r = run("examples/filtering.lua", { "--save=" .. out })
      assert.are.equal(0, r.code, r.err)
      for _, s in ipairs{ "hh_clean", "long_enough", "rejected_not_evasive", "at_most_two_per_question",
                          "max_tokens(320)", "pairs read" } do
         assert.is_true(has(r.out, s), s)
      end
      local kept = tonumber(r.out:match("(%d+) left"))
      local n = 0
      for _ in io.lines(out) do n = n + 1 end
      assert.are.equal(kept, n)
   end)
end)
