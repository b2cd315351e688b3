-- examples/custom_loss.lua: train with a preference loss you write yourself.
--
--   dpolua examples/custom_loss.lua [--gamma=1] [--sft.steps=200] [--dpo.steps=200]
--                                   [--out=runs/custom_loss] [--overwrite]
--
-- A loss is a plain Lua function of one table, the same one every loss in
-- dpo.losses takes:
--   pi_c, pi_r     the policy's log-probs of the chosen and rejected responses,
--                  summed over their tokens: float32 [B] tensors with gradients
--   ref_c, ref_r   the reference model's, without gradients
--   n_c, n_r       the responses' token counts
--   beta           this step's beta
--   ...            whatever you pass as loss_options
-- and returning the mean loss (a scalar tensor) and a table of numbers, the
-- metrics logged under their names (TRL's: rewards/chosen, rewards/margins,
-- ...). Only tensor operations touch the numbers; autograd does the rest.
--
-- The loss here is DPO with a target margin: -log sigmoid(beta * h - gamma),
-- h = (pi_c - ref_c) - (pi_r - ref_r). With gamma > 0 a pair keeps pulling
-- until its implicit reward margin exceeds gamma (SimPO's gamma, but with a
-- reference). The same pipeline as recipes/hh.lua, shorter: SFT, then DPO
-- with this loss, then the held-out numbers next to plain DPO's.
local opts = dpo.cli.parse(arg, {
   name = "custom_loss.lua",
   usage = "dpolua examples/custom_loss.lua [--key=value ...]",
   { "data", "examples/data/hh-sample", "directory with train.jsonl.gz and test.jsonl.gz" },
   { "gamma", 1.0, "the target reward margin of the loss" },
   { "beta", 0.1, "beta" },
   { "sft.steps", 200, "SFT steps" },
   { "dpo.steps", 200, "DPO steps (for each of the two losses)" },
   { "eval_pairs", 128, "held-out pairs evaluated" },
   { "out", "runs/custom_loss", "run directory" },
   { "overwrite", false, "replace an existing run directory" },
   { "progress", "auto", "progress display", choices = { "auto", "bar", "lines", "off" } },
})

-- The loss: a function of the table above.
local function margin_dpo(a)
   local gamma = a.gamma or 0
   local h = (a.pi_c - a.ref_c) - (a.pi_r - a.ref_r)
   local loss = -(h * a.beta - gamma):logsigmoid():mean()
   -- The metrics: TRL's reward statistics, computed here from plain numbers
   -- (dpo.losses.sigmoid(a) would return the same table).
   local pc, pr, rc, rr = a.pi_c:totable(), a.pi_r:totable(), a.ref_c:totable(), a.ref_r:totable()
   local m = { ["rewards/chosen"] = 0, ["rewards/rejected"] = 0, ["rewards/margins"] = 0,
               ["rewards/accuracies"] = 0, ["logps/chosen"] = 0, ["logps/rejected"] = 0 }
   local B = #pc
   for i = 1, B do
      local c, r = a.beta * (pc[i] - rc[i]), a.beta * (pr[i] - rr[i])
      m["rewards/chosen"] = m["rewards/chosen"] + c / B
      m["rewards/rejected"] = m["rewards/rejected"] + r / B
      m["rewards/margins"] = m["rewards/margins"] + (c - r) / B
      m["rewards/accuracies"] = m["rewards/accuracies"] + (c > r and 1 / B or 0)
      m["logps/chosen"] = m["logps/chosen"] + pc[i] / B
      m["logps/rejected"] = m["logps/rejected"] + pr[i] / B
   end
   return loss, m
end

-- Data, a tokenizer trained on it, a tiny model.
local train = assert(dpo.data.hh(opts.data .. "/train.jsonl.gz")):filter(dpo.filters.hh_clean())
local test = assert(dpo.data.hh(opts.data .. "/test.jsonl.gz")):filter(dpo.filters.hh_clean())
local texts = {}
for p in train:iter() do texts[#texts + 1] = p.prompt .. p.chosen .. p.rejected end
local tok = dpo.tokenizer.train(texts, { vocab_size = 512 })
local train_ds = train:tokenize(tok, { max_length = 256, max_prompt_length = 128 })
local test_ds = test:tokenize(tok, { max_length = 256, max_prompt_length = 128 }):take(opts.eval_pairs)
local model = dpo.gpt.new{ vocab_size = tok:vocab_size(), n_ctx = 256, n_layer = 2, n_head = 4,
                           n_embd = 64, seed = 0 }

local run = dpo.log.open(opts.out, { overwrite = opts.overwrite })
local progress = opts.progress ~= "auto" and opts.progress or nil
local sft = dpo.train.sft{ model = model, data = train_ds, eval_data = test_ds, run = run,
                          tokenizer = tok, max_steps = opts.sft.steps, lr = 3e-3, progress = progress }
local sft_model = model:clone(true)

-- DPO with the loss above (logged in the run), and plain DPO from the same SFT
-- model for comparison (kept in memory).
local function dpo_with(loss, loss_options, r)
   local policy = sft_model:clone()
   return dpo.train.dpo{ policy = policy, ref = sft_model, data = train_ds, eval_data = test_ds,
                         run = r, tokenizer = tok, global_step = sft.step, max_steps = opts.dpo.steps,
                         lr = 1e-3, beta = opts.beta, loss = loss, loss_options = loss_options,
                         progress = progress }
end
local results = {
   { "margin DPO (custom)", dpo_with(margin_dpo, { gamma = opts.gamma }, run).eval },
   { "DPO (sigmoid)", dpo_with("sigmoid", nil, dpo.log.memory()).eval },
}
run:close()

local rows = {}
for _, key in ipairs{ "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
                      "logps/chosen" } do
   rows[#rows + 1] = { key, results[1][2]["eval/" .. key], results[2][2]["eval/" .. key] }
end
local final = { columns = { ("held-out (%d pairs)"):format(#test_ds), results[1][1], results[2][1] },
                rows = rows }
dpo.report.write(run.dir .. "/report.html", { title = "A custom loss: DPO with a target margin",
                                              records = run.records, table = final })
print("\n" .. dpo.report.text_table(final))
print(("\nrun: %s/metrics.jsonl, %s/report.html"):format(run.dir, run.dir))
