-- dpo.train, dpo.eval, dpo.log, dpo.report: the SFT and DPO loops on a tiny
-- model and a tiny synthetic preference set (byte tokenizer), so every case
-- runs in well under a second: the margin grows under every loss, gradient
-- accumulation matches one big batch, non-finite steps are skipped and then
-- stop the run, checkpoints round-trip, the reference modes (frozen copy,
-- precomputed and cached, TR-DPO sync) behave, and the files a run writes
-- have the promised names and contents.
local h = dofile("tests/spec/helper.lua")
local read, tmpdir = h.read, h.tmpdir
teardown(h.cleanup)
local lfs = require "lfs"
local cjson = require "cjson"

-- Temporary directories, removed when the file's tests are done.


-- Pairs whose preference a tiny model can learn: the chosen reply answers
-- with the right word, the rejected one is rude.
local WORDS = { "red", "blue", "green", "cat", "dog", "sun", "moon", "tree" }
local function pairs_list(n, offset)
   local list = {}
   for i = 1, n do
      local w = WORDS[(i + (offset or 0)) % #WORDS + 1]
      list[i] = {
         prompt = "\n\nHuman: say " .. w .. "\n\nAssistant:",
         chosen = " " .. w .. ".",
         rejected = " no, go away!",
      }
   end
   return list
end

local tok = dpo.tokenizer.bytes()
local TOKOPTS = { max_length = 48, max_prompt_length = 32 }
local train_ds = dpo.data.dataset(pairs_list(32)):tokenize(tok, TOKOPTS)
local test_ds = dpo.data.dataset(pairs_list(8, 3)):tokenize(tok, TOKOPTS)

local function tiny(seed)
   return dpo.gpt.new{ vocab_size = tok:vocab_size(), n_ctx = 48, n_layer = 1, n_head = 2, n_embd = 16,
                       seed = seed or 1 }
end

local function params_of(m)
   local out = {}
   for i, p in ipairs(m:parameters()) do out[i] = p:clone() end
   return out
end

local function max_diff(a, b)
   local d = 0
   for i = 1, #a do d = math.max(d, (a[i] - b[i]):abs():max():item()) end
   return d
end

describe("dpo.eval", function()
   it("gives ln 2, zero rewards and zero accuracy when policy = reference", function()
      local m = tiny()
      local ref = m:clone(true)
      local e = dpo.eval.preferences(m, ref, test_ds, { beta = 0.1, batch_size = 3 })
      h.near(e.loss, math.log(2), 1e-6)
      h.near(e["rewards/margins"], 0, 1e-6)
      h.near(e["rewards/chosen"], 0, 1e-6)
      assert.are.equal(0, e["rewards/accuracies"])
      assert.are.equal(8, e.pairs)
      assert.is_true(e["logps/chosen"] < 0 and e["logps/rejected"] < 0)
   end)

   it("takes precomputed reference log-probs, or none", function()
      local m = tiny()
      local ref = m:clone(true)
      local a = dpo.eval.preferences(m, ref, test_ds)
      local lookup = function(list)
         local c, r = {}, {}
         for i, p in ipairs(list) do
            local lp = ref:logps(test_ds:collate({ p }).ids, test_ds:collate({ p }).mask):totable()
            c[i], r[i] = lp[1], lp[2]
         end
         return dpo.tensor(c), dpo.tensor(r)
      end
      local b = dpo.eval.preferences(m, nil, test_ds, { ref_logps = lookup })
      h.near(b["rewards/margins"], a["rewards/margins"], 1e-5)
      local c = dpo.eval.preferences(m, false, test_ds, { beta = 0.5 })
      h.near(c["rewards/chosen"], 0.5 * c["logps/chosen"], 1e-5)
      h.errors(function() dpo.eval.preferences(m, nil, test_ds) end, "no reference")
   end)

   it("generates samples side by side", function()
      local m = tiny()
      local s = dpo.eval.samples(m, tok, { test_ds:get(1), "\n\nHuman: hi\n\nAssistant:" },
                                 { ref = m:clone(true), max_new_tokens = 5 })
      assert.are.equal(2, #s)
      assert.are.equal("string", type(s[1].policy))
      assert.are.equal(s[1].policy, s[1].reference) -- same weights, greedy
      assert.are.equal(test_ds:get(1).chosen, s[1].chosen)
      local text = dpo.eval.format_samples(s, { policy_name = "DPO", ref_name = "SFT" })
      assert.truthy(text:find("Human: say", 1, true))
      assert.truthy(text:find("DPO", 1, true))
   end)
end)

describe("dpo.train.sft", function()
   it("lowers the NLL of the chosen responses", function()
      local m = tiny()
      local r = dpo.train.sft{ model = m, data = train_ds, eval_data = test_ds, max_steps = 20,
                               batch_size = 8, lr = 1e-2, quiet = true, log_every = 5 }
      local evals = {}
      for _, rec in ipairs(r.run.records) do
         if rec["eval/loss"] then evals[#evals + 1] = rec["eval/loss"] end
      end
      assert.are.equal(2, #evals)
      assert.is_true(evals[2] < evals[1] - 0.5)
      assert.are.equal(20, r.step)
      assert.is_false(m:is_training()) -- dropout off unless asked
   end)
end)

describe("dpo.train.dpo", function()
   local sft_model
   setup(function()
      sft_model = tiny()
      dpo.train.sft{ model = sft_model, data = train_ds, max_steps = 15, batch_size = 8, lr = 1e-2,
                     quiet = true }
   end)

   it("grows the held-out reward margin and logs TRL's names", function()
      local m = sft_model:clone()
      local r = dpo.train.dpo{ policy = m, data = train_ds, eval_data = test_ds, max_steps = 10,
                               batch_size = 8, lr = 1e-2, beta = 0.1, quiet = true, log_every = 5,
                               global_step = 15 }
      local first, last
      for _, rec in ipairs(r.run.records) do
         if rec["eval/rewards/margins"] then
            first = first or rec
            last = rec
         end
      end
      assert.are.equal(15, first.step)
      assert.are.equal(25, last.step)
      h.near(first["eval/loss"], math.log(2), 1e-5)
      assert.is_true(last["eval/rewards/margins"] > first["eval/rewards/margins"] + 0.1)
      assert.is_true(last["eval/rewards/accuracies"] > 0.5)
      local train = r.metrics
      for _, k in ipairs{ "loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                          "rewards/accuracies", "logps/chosen", "logps/rejected", "learning_rate",
                          "beta", "grad_norm", "tokens_per_second", "elapsed", "epoch", "num_tokens" } do
         assert.are.equal("number", type(train[k]), k)
      end
      assert.are.equal("dpo", train.phase)
      assert.are.equal(25, train.step)
   end)

   it("grows the margin under every built-in loss", function()
      local opts = { discopop = { tau = 1 } }
      for _, name in ipairs(dpo.losses.list()) do
         if name ~= "sft" then
            local m = sft_model:clone()
            local before = dpo.eval.preferences(m, sft_model, test_ds, { loss = name,
                                                loss_options = opts[name] })
            local r = dpo.train.dpo{ policy = m, ref = sft_model, data = train_ds, max_steps = 8,
                                     batch_size = 8, lr = 1e-2, loss = name, loss_options = opts[name],
                                     quiet = true }
            local after = dpo.eval.preferences(m, sft_model, test_ds, { loss = name,
                                               loss_options = opts[name] })
            assert.is_true(after["rewards/margins"] > before["rewards/margins"] + 0.05,
                           ("%s: margin %.4f -> %.4f"):format(name, before["rewards/margins"],
                                                              after["rewards/margins"]))
            assert.are.equal(0, r.skipped, name)
         end
      end
   end)

   it("takes a user's loss function and a beta schedule", function()
      local seen = {}
      local function my_loss(a)
         seen[#seen + 1] = a.beta
         local h_ = (a.pi_c - a.ref_c) - (a.pi_r - a.ref_r)
         return (-(h_ * a.beta):logsigmoid()):mean(), { ["rewards/margins"] = 0 }
      end
      dpo.train.dpo{ policy = sft_model:clone(), data = train_ds, max_steps = 3, batch_size = 8,
                     loss = my_loss, beta = dpo.schedules.beta.linear(0.1, 0.3, 3), quiet = true }
      h.near(seen, { 0.1, 0.2, 0.3 }, 1e-9)
   end)

   it("matches one big batch with gradient accumulation", function()
      local a, b = sft_model:clone(), sft_model:clone()
      local common = { data = train_ds, max_steps = 1, lr = 0.5, optimizer = "sgd", shuffle = false,
                       max_grad_norm = false, quiet = true, ref = sft_model }
      local o1, o2 = {}, {}
      for k, v in pairs(common) do o1[k], o2[k] = v, v end
      o1.policy, o1.batch_size, o1.grad_accum = a, 8, 1
      o2.policy, o2.batch_size, o2.grad_accum = b, 4, 2
      dpo.train.dpo(o1)
      dpo.train.dpo(o2)
      assert.is_true(max_diff(params_of(a), params_of(sft_model)) > 1e-4)
      assert.is_true(max_diff(params_of(a), params_of(b)) < 1e-5)
   end)

   it("skips non-finite steps, counts them, and stops after several in a row", function()
      local calls = 0
      local function flaky(a)
         calls = calls + 1
         local l, m = dpo.losses.sigmoid(a)
         if calls == 2 then l = l * (0 / 0) end
         return l, m
      end
      local m = sft_model:clone()
      local r = dpo.train.dpo{ policy = m, data = train_ds, max_steps = 4, batch_size = 8, lr = 1e-2,
                               loss = flaky, quiet = true, log_every = 1 }
      assert.are.equal(1, r.skipped)
      assert.are.equal(1, r.metrics.skipped_steps)
      local function broken(a)
         local l, mm = dpo.losses.sigmoid(a)
         return l * math.huge, mm
      end
      local before = params_of(m)
      local msg = h.errors(function()
         dpo.train.dpo{ policy = m, data = train_ds, max_steps = 10, batch_size = 8, loss = broken,
                        max_bad_steps = 3, quiet = true }
      end, "3 steps in a row had a non-finite loss or gradient", true)
      assert.truthy(msg:find("stopped at step 3", 1, true))
      assert.are.equal(0, max_diff(before, params_of(m))) -- no update from a bad step
   end)

   it("syncs a TR-DPO reference every tau steps", function()
      local m = sft_model:clone()
      local ref = sft_model:clone(true)
      local r = dpo.train.dpo{ policy = m, ref = ref, data = train_ds, max_steps = 4, batch_size = 8,
                               lr = 1e-2, sync_ref = { tau = 2, alpha = 1 }, quiet = true }
      assert.are.equal(ref, r.ref)
      assert.are.equal(0, max_diff(params_of(ref), params_of(m))) -- hard sync at step 4
      local m2, ref2 = sft_model:clone(), sft_model:clone(true)
      dpo.train.dpo{ policy = m2, ref = ref2, data = train_ds, max_steps = 3, batch_size = 8,
                     lr = 1e-2, sync_ref = { tau = 2, alpha = 0.5 }, quiet = true }
      local d_ref = max_diff(params_of(ref2), params_of(sft_model))
      assert.is_true(d_ref > 0 and max_diff(params_of(ref2), params_of(m2)) > 0)
   end)

   it("refuses unknown options with the closest name", function()
      h.errors(function()
         dpo.train.dpo{ policy = tiny(), data = train_ds, max_step = 3 }
      end, "unknown option 'max_step' (did you mean 'max_steps'?)", true)
      h.errors(function() dpo.train.sft{ model = tiny(), data = pairs_list(3) } end,
               "data must be a dataset")
      h.errors(function()
         dpo.train.dpo{ policy = tiny(), data = train_ds, loss = "sigmod" }
      end, "unknown loss 'sigmod'")
   end)
end)

describe("runs, checkpoints and reports", function()
   it("writes metrics.jsonl, checkpoints atomically, and resumable state", function()
      local dir = tmpdir() .. "/run"
      local m = tiny()
      local run = dpo.log.open(dir, { config = { seed = 0 } })
      local r = dpo.train.sft{ model = m, data = train_ds, eval_data = test_ds, max_steps = 4,
                               batch_size = 8, lr = 1e-2, run = run, tokenizer = tok, save_every = 2,
                               log_every = 2, quiet = true }
      local d = dpo.train.dpo{ policy = m, data = train_ds, eval_data = test_ds, max_steps = 4,
                               batch_size = 8, lr = 1e-2, run = run, tokenizer = tok,
                               global_step = r.step, log_every = 2, quiet = true }
      run:close()
      local names = {}
      for name in lfs.dir(dir) do
         if name ~= "." and name ~= ".." then names[#names + 1] = name end
      end
      table.sort(names)
      assert.are.same({ "checkpoint-2", "checkpoint-4", "checkpoint-8", "metrics.jsonl", "run.json" },
                      names)
      assert.are.same({ 2, 4, 8 }, (function()
         local s = {}
         for i, c in ipairs(dpo.train.checkpoints(dir)) do s[i] = c.step end
         return s
      end)())
      for _, f in ipairs{ "model.safetensors", "config.json", "tokenizer.json", "optimizer.safetensors",
                          "trainer_state.json" } do
         assert.are.equal("file", lfs.attributes(dir .. "/checkpoint-8/" .. f, "mode"), f)
      end
      -- metrics.jsonl: one line per record, step and phase first
      local recs = assert(dpo.log.read(dir .. "/metrics.jsonl"))
      assert.are.equal(#run.records, #recs)
      local first_line = read(dir .. "/metrics.jsonl"):match("^[^\n]+")
      assert.truthy(first_line:match('^{"step":0,"phase":"sft",'))
      assert.truthy(first_line:find('"eval/loss":', 1, true))
      local phases = {}
      for _, rec in ipairs(recs) do phases[rec.phase] = true end
      assert.are.same({ sft = true, dpo = true }, phases)
      -- trainer state
      local st = cjson.decode(read(dir .. "/checkpoint-8/trainer_state.json"))
      assert.are.equal(8, st.global_step)
      assert.are.equal("dpo", st.phase)
      assert.are.equal(4, st.phase_step)
      assert.are.equal(#recs, #st.log_history)
      assert.are.equal(dpo.rng_state(), dpo.train.unhex(st.rng_state))
      assert.are.equal(1, st.data.epoch)
      assert.are.equal(4, st.data.batch)
      assert.are.equal("adamw", st.optimizer.optimizer)
      -- the optimizer's tensors
      local t = dpo.load(dir .. "/checkpoint-8/optimizer.safetensors")
      assert.is_truthy(t["state.1.exp_avg"])
      assert.is_truthy(t["state.1.exp_avg_sq"])
      -- load it back
      local c = dpo.train.load_checkpoint(dir .. "/checkpoint-8")
      assert.are.equal(0, max_diff(params_of(c.model), params_of(m)))
      assert.are.equal(tok:vocab_size(), c.tokenizer:vocab_size())
      local opt = dpo.optim.adamw(c.model:parameters())
      opt:load_state_dict(c.optimizer_state)
      local sd, sd2 = opt:state_dict(), d.optimizer:state_dict()
      assert.are.equal(sd2.state[1].step, sd.state[1].step)
      assert.are.equal(0, (sd.state[3].exp_avg - sd2.state[3].exp_avg):abs():max():item())
      -- a second run in the same directory is refused, unless overwrite
      h.errors(function() dpo.log.open(dir) end, "already exists")
      local again = dpo.log.open(dir, { overwrite = true })
      again:close()
      local left = {}
      for name in lfs.dir(dir) do
         if name ~= "." and name ~= ".." then left[#left + 1] = name end
      end
      assert.are.same({ "metrics.jsonl" }, left)
      -- a foreign file is never removed
      local f = assert(io.open(dir .. "/notes.txt", "w"))
      f:write("mine")
      f:close()
      h.errors(function() dpo.log.open(dir, { overwrite = true }) end, "notes.txt")
      assert.are.equal("mine", read(dir .. "/notes.txt"))
   end)

   it("replaces a checkpoint of the same step and leaves no temporary directory", function()
      local dir = tmpdir()
      local m = tiny()
      dpo.train.save_checkpoint(dir .. "/checkpoint-1", { model = m, state = { a = 1 } })
      dpo.train.save_checkpoint(dir .. "/checkpoint-1", { model = m, tokenizer = tok, state = { a = 2 } })
      local names = {}
      for name in lfs.dir(dir) do
         if name ~= "." and name ~= ".." then names[#names + 1] = name end
      end
      assert.are.same({ "checkpoint-1" }, names)
      assert.are.equal(2, cjson.decode(read(dir .. "/checkpoint-1/trainer_state.json")).a)
   end)

   it("precomputes reference log-probs once and reuses the cache", function()
      local root = tmpdir()
      local sft = tiny(3)
      dpo.train.sft{ model = sft, data = train_ds, max_steps = 5, batch_size = 8, lr = 1e-2, quiet = true }
      local function go(name, precompute)
         local m = sft:clone()
         return dpo.train.dpo{ policy = m, ref = sft, data = train_ds, eval_data = test_ds, max_steps = 3,
                               batch_size = 8, lr = 1e-2, out = root .. "/" .. name, quiet = true,
                               precompute_ref = precompute, shuffle = false, save = false, log_every = 1 }
      end
      local a = go("a", false)
      local b = go("b", true)
      local cache = {}
      for name in lfs.dir(root .. "/cache") do
         if name:match("^ref_logps%-") then cache[#cache + 1] = name end
      end
      assert.are.equal(2, #cache) -- train and eval pairs
      h.near(b.metrics.loss, a.metrics.loss, 1e-5)
      h.near(b.eval["eval/rewards/margins"], a.eval["eval/rewards/margins"], 1e-4)
      assert.are.equal("precomputed", b.state.reference.mode)
      -- the second time the file is read, not recomputed
      local stamp = lfs.attributes(root .. "/cache/" .. cache[1], "modification")
      local c = go("c", true)
      assert.are.equal(stamp, lfs.attributes(root .. "/cache/" .. cache[1], "modification"))
      h.near(c.metrics.loss, b.metrics.loss, 1e-6)
      -- other weights, another key
      assert.are_not.equal(dpo.train.weights_key(sft), dpo.train.weights_key(tiny(4)))
      assert.are.equal(dpo.train.weights_key(sft), dpo.train.weights_key(sft:clone()))
      assert.are_not.equal(dpo.train.data_key(train_ds), dpo.train.data_key(test_ds))
   end)

   it("writes a self-contained report with the plots and the final table", function()
      local m = tiny()
      local run = dpo.log.memory()
      dpo.train.sft{ model = m, data = train_ds, eval_data = test_ds, max_steps = 3, batch_size = 8,
                     run = run, quiet = true, log_every = 1 }
      dpo.train.dpo{ policy = m, data = train_ds, eval_data = test_ds, max_steps = 3, batch_size = 8,
                     run = run, quiet = true, global_step = 3, log_every = 1 }
      local html = dpo.report.html{
         title = "t<1>", records = run.records,
         table = { columns = { "", "SFT", "DPO" }, rows = { { "reward accuracy", "-", 0.75 } } },
         samples = { { prompt = "\n\nHuman: q?\n\nAssistant:", policy = " a & b", reference = " c" } },
      }
      assert.truthy(html:find("<title>t&lt;1&gt;</title>", 1, true))
      for _, title in ipairs{ "Loss", "Reward accuracy", "Reward margin", "Chosen and rejected rewards",
                              "Learning rate", "Beta" } do
         assert.truthy(html:find("<h3>" .. title .. "</h3>", 1, true), title)
      end
      local _, svgs = html:gsub("<svg ", "")
      assert.is_true(svgs >= 6)
      assert.truthy(html:find(">SFT<", 1, true) and html:find(">DPO<", 1, true))
      assert.truthy(html:find("0.75", 1, true))
      assert.truthy(html:find(" a &amp; b", 1, true))
      -- nothing from the network
      local stripped = html:gsub('xmlns="http://www.w3.org/2000/svg"', "")
      assert.is_nil(stripped:find("https?://"))
      assert.is_nil(stripped:find("<script", 1, true))
      local text = dpo.report.text_table{ columns = { "", "A" }, rows = { { "x", 0.123456 } } }
      assert.truthy(text:find("0.1235", 1, true))
   end)

   it("shows progress as plain lines when not on a terminal", function()
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      local bar = dpo.log.progress{ total = 4, phase = "dpo", mode = "lines", stream = f, every = 2 }
      for s = 1, 4 do bar:update(s, { loss = 0.5, ["rewards/accuracies"] = 0.75 }) end
      bar:print("a note")
      bar:finish()
      f:close()
      local out = read(path)
      os.remove(path)
      local _, n = out:gsub("\n", "")
      assert.are.equal(4, n) -- steps 1, 2, 4 and the note
      assert.truthy(out:find("dpo step 4  4/4", 1, true))
      assert.truthy(out:find("loss 0.5000  acc 0.750", 1, true))
      assert.truthy(out:find("ETA", 1, true))
      local g = assert(io.open(path, "w"))
      local b2 = dpo.log.progress{ total = 2, mode = "bar", stream = g }
      b2:update(1, { loss = 1 })
      b2:finish()
      g:close()
      assert.truthy(read(path):find("\r\27[K", 1, true))
      os.remove(path)
      assert.are.equal('{"step":3,"phase":"dpo","a":1,"loss":null,"z":0.5}',
                       dpo.log.encode{ z = 0.5, loss = 0 / 0, phase = "dpo", step = 3, a = 1 })
   end)
end)
