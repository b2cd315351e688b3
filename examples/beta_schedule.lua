-- examples/beta_schedule.lua: a beta that changes during training.
--
--   dpolua examples/beta_schedule.lua [--schedule=adaptive] [--target_margin=2]
--                                     [--sft.steps=200] [--dpo.steps=200] [--out=runs/beta_schedule]
--
-- beta may be a number or any function s(step, metrics) -> beta, asked before
-- each update with the metrics of the last one (dpo.schedules has ready-made
-- ones). This example lets the reward margin steer beta:
--   adaptive  dpo.schedules.adaptive(beta, {target_margin = m, rate = r}): beta rises
--             while the batch's reward margin is above the target (a tighter
--             hold on the reference) and falls while it is below
--   linear    dpo.schedules.linear(beta, 4 * beta, steps): a plain ramp
--   custom    the function below: beta doubles once the policy gets 90% of the
--             training pairs right, and keeps its value afterwards
-- The beta of every step is in metrics.jsonl (key `beta`) and plotted in
-- report.html; the end prints how it moved.
local opts = dpo.cli.parse(arg, {
   name = "beta_schedule.lua",
   usage = "dpolua examples/beta_schedule.lua [--key=value ...]",
   { "data", "examples/data/hh-sample", "directory with train.jsonl.gz and test.jsonl.gz" },
   { "schedule", "adaptive", "the beta schedule", choices = { "adaptive", "linear", "custom" } },
   { "beta", 0.1, "the starting beta" },
   { "target_margin", 2.0, "adaptive: the reward margin beta steers towards" },
   { "rate", 0.2, "adaptive: how hard beta follows the margin" },
   { "sft.steps", 200, "SFT steps" },
   { "dpo.steps", 200, "DPO steps" },
   { "eval_pairs", 128, "held-out pairs evaluated" },
   { "out", "runs/beta_schedule", "run directory" },
   { "overwrite", false, "replace an existing run directory" },
   { "progress", "auto", "progress display", choices = { "auto", "bar", "lines", "off" } },
})

-- A schedule of your own: state in an upvalue, metrics from the last step.
local function doubling_beta(b0)
   local doubled = false
   return function(step, metrics)
      if not doubled and metrics and metrics["rewards/accuracies"] and metrics["rewards/accuracies"] >= 0.9 then
         doubled = true
      end
      return doubled and 2 * b0 or b0
   end
end

local beta
if opts.schedule == "adaptive" then
   beta = dpo.schedules.adaptive(opts.beta, { target_margin = opts.target_margin, rate = opts.rate })
elseif opts.schedule == "linear" then
   beta = dpo.schedules.linear(opts.beta, 4 * opts.beta, opts.dpo.steps)
else
   beta = doubling_beta(opts.beta)
end

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
local sft = dpo.train.sft{ model = model, data = train_ds, eval_data = test_ds, run = run, tokenizer = tok,
                          max_steps = opts.sft.steps, lr = 3e-3, progress = progress, save = false }
local r = dpo.train.dpo{ policy = model, data = train_ds, eval_data = test_ds, run = run, tokenizer = tok,
                         global_step = sft.step, max_steps = opts.dpo.steps, lr = 1e-3, beta = beta,
                         log_every = 5, progress = progress }
run:close()
dpo.report.write(run.dir .. "/report.html", { title = "Beta schedule: " .. opts.schedule, records = run.records })

print(("\nbeta (%s schedule), with the training reward margin, every logged step:"):format(opts.schedule))
print("  step      beta    margin")
for _, rec in ipairs(run.records) do
   if rec.phase == "dpo" and rec.beta then
      print(("  %4d  %8.4f  %8.3f"):format(rec.step, rec.beta, rec["rewards/margins"] or 0 / 0))
   end
end
print(("held-out reward accuracy %.3f, margin %.3f"):format(r.eval["eval/rewards/accuracies"],
                                                             r.eval["eval/rewards/margins"]))
print(("run: %s/metrics.jsonl, %s/report.html"):format(run.dir, run.dir))
