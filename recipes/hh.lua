-- recipes/hh.lua: the DPO paper's pipeline on Anthropic HH-format data.
--
--   dpolua recipes/hh.lua [--key=value ...]      (--help lists every option)
--
-- 1. SFT: the model learns the chosen responses (prompt + chosen, NLL).
-- 2. DPO: the SFT model is trained on the preference pairs, with a frozen copy
--    of itself as the reference (or its log-probs precomputed, or a TR-DPO
--    reference synced during training: --dpo.ref).
--    With --lora.r=R the DPO phase trains rank-R LoRA adapters (dpo.lora) on
--    the SFT model instead of every weight; the reference is then the SFT
--    model itself with the adapters off, the DPO checkpoints hold the
--    adapters in PEFT's layout (adapter_config.json,
--    adapter_model.safetensors), and --lora.merge also writes OUT/merged, the
--    SFT model with the adapters folded in (Hugging Face layout).
-- 3. Evaluation on held-out pairs: a final table comparing the SFT and DPO
--    models (reward accuracy and margins), and a few sample generations.
--
-- It writes OUT/metrics.jsonl (every logged step and evaluation), OUT/report.html
-- (plots and the final table), OUT/run.json (the options) and
-- OUT/checkpoint-STEP (after SFT and after DPO, and every --save_every steps;
-- Hugging Face layout).
--
-- Stopping and going on: the first Ctrl-C (or SIGTERM) ends the step in
-- progress, saves a checkpoint and exits with status 130 (143); a second one
-- exits at once. `dpolua recipes/hh.lua --resume runs/hh` continues a run from
-- its newest complete checkpoint with the options in its run.json, and ends
-- with the weights an uninterrupted run would have.
--
-- By default it trains a tiny GPT-2 from scratch, with a BPE tokenizer trained
-- on the data, on the bundled sample (examples/data/hh-sample), in about two
-- minutes on two cores. With --model=DIR (a Hugging Face directory of a
-- supported family -- GPT-2, Llama, Mistral, Qwen2, Qwen3, SmolLM2 -- with its
-- tokenizer) the defaults become the original DPO HH settings: beta 0.1,
-- RMSprop, learning rate 1e-6 warmed up linearly over 150 steps, 64 pairs a
-- step, gradient clipping at 10, max length 512 and max prompt length 256.
--
-- Other recipes reuse this one with other defaults (recipes/ipo.lua):
--   local hh = assert(loadfile("recipes/hh.lua"))("dpo.recipe")
--   hh.main(arg, {["dpo.loss"] = "ipo"})
local cli = require "dpo.cli"
local lfs = require "lfs"
local cjson = require("cjson").new()

local M = {}

local function scratch(o) return o.model == "" end

-- A default that depends on whether a pretrained model is given.
local function either(tiny, pretrained)
   return function(o)
      if scratch(o) then return tiny end
      return pretrained
   end
end

M.spec = {
   name = "hh.lua",
   usage = "dpolua recipes/hh.lua [--key=value ...]",
   about = "SFT on the chosen responses, then DPO with the SFT model as the reference, " ..
      "then a held-out evaluation.",
   { "data", "examples/data/hh-sample",
     "directory holding train and test files (HH format: .jsonl or .jsonl.gz)" },
   { "model", "", "a Hugging Face model directory (config.json, model.safetensors, tokenizer), model_type " ..
     "gpt2, llama (Llama 2/3.x, TinyLlama, SmolLM2), mistral, qwen2 (Qwen2/2.5) or qwen3; " ..
     "empty: a tiny GPT-2 from scratch" },
   { "chat_template", "auto", "render the dialogues as messages through a chat template: auto (the " ..
     "model's, when it has one), none (the HH text as it is), or a template file's path" },
   { "out", "runs/hh", "the run directory" },
   { "overwrite", false, "replace an existing run directory" },
   { "resume", "", "continue the run in this directory from its newest checkpoint, with its options " ..
     "(run.json); only --threads and --progress may be given too" },
   { "seed", 0, "seed of the model, the data order and sampling" },
   { "threads", 0, "threads for the numbers (0: OMP_NUM_THREADS, else one per core)" },
   { "batch_size", either(16, 8), "pairs per micro-batch", show = "16, or 8 with --model",
     type = "integer" },
   { "grad_accum", either(1, 8), "micro-batches per optimizer step", show = "1, or 8 with --model",
     type = "integer" },
   { "max_length", either(256, 512), "tokens of prompt + response at most", show = "256, or 512 with --model",
     type = "integer" },
   { "max_prompt_length", either(128, 256), "prompt tokens at most (the prompt keeps its end)",
     show = "128, or 256 with --model", type = "integer" },
   { "max_grad_norm", either(1.0, 10.0), "clip the global gradient norm", show = "1, or 10 with --model",
     type = "number" },
   { "eval_pairs", 256, "held-out pairs evaluated" },
   { "eval_every", either(50, 300), "steps between evaluations during training (0: at the start and end only)",
     show = "50, or 300 with --model", type = "integer" },
   { "save_every", 0, "steps between checkpoints (0: after each phase only)" },
   { "log_every", 10, "steps between metrics.jsonl records" },
   { "samples", 3, "held-out prompts to generate replies for" },
   { "max_new_tokens", 48, "tokens per sample generation" },
   { "progress", "auto", "progress display", choices = { "auto", "bar", "lines", "off" } },
   { "tiny.n_layer", 2, "layers of the model from scratch" },
   { "tiny.n_head", 4, "attention heads of the model from scratch" },
   { "tiny.n_embd", 96, "width of the model from scratch" },
   { "tiny.tokenizer", "bpe", "tokenizer from scratch: BPE trained on the data, or bytes",
     choices = { "bpe", "bytes" } },
   { "tiny.vocab_size", 512, "vocabulary of the BPE tokenizer trained on the data" },
   { "sft.steps", either(500, 0), "SFT optimizer steps (0: --sft.epochs over the data)",
     show = "500, or 0 (one epoch) with --model", type = "integer" },
   { "sft.epochs", 1, "SFT epochs when --sft.steps=0", type = "number" },
   { "sft.lr", either(3e-3, 1e-6), "SFT learning rate", show = "3e-3, or 1e-6 with --model", type = "number" },
   { "sft.warmup", either(20, 150), "SFT warmup steps", show = "20, or 150 with --model", type = "integer" },
   { "sft.optimizer", either("adamw", "rmsprop"), "SFT optimizer", show = "adamw, or rmsprop with --model",
     type = "string", choices = { "adamw", "rmsprop", "sgd" } },
   { "dpo.steps", either(250, 0), "DPO optimizer steps (0: --dpo.epochs over the data)",
     show = "250, or 0 (one epoch) with --model", type = "integer" },
   { "dpo.epochs", 1, "DPO epochs when --dpo.steps=0", type = "number" },
   { "dpo.loss", "sigmoid", "the preference loss", alias = "loss", choices = dpo.losses.list() },
   { "dpo.loss_options", "", "the loss's own options, e.g. label_smoothing=0.2,average=false" },
   { "dpo.beta", 0.1, "beta, the strength of the hold on the reference", alias = "beta" },
   { "dpo.lr", either(5e-4, 1e-6), "DPO learning rate", show = "5e-4, or 1e-6 with --model",
     type = "number", alias = "lr" },
   { "dpo.warmup", either(20, 150), "DPO warmup steps (linear, then constant)",
     show = "20, or 150 with --model", type = "integer" },
   { "dpo.optimizer", either("adamw", "rmsprop"), "DPO optimizer", show = "adamw, or rmsprop with --model",
     type = "string", choices = { "adamw", "rmsprop", "sgd" } },
   { "dpo.ref", "model", "the reference: a frozen copy, log-probs precomputed and cached, " ..
     "or TR-DPO syncing", choices = { "model", "precompute", "sync" } },
   { "dpo.sync_tau", 100, "TR-DPO: steps between reference syncs" },
   { "dpo.sync_alpha", 0.6, "TR-DPO: weight of the policy in a sync (1: a hard copy)" },
   { "lora.r", 0, "DPO trains LoRA adapters of this rank instead of every weight (0: off)", type = "integer" },
   { "lora.alpha", 16, "LoRA alpha: the adapters are scaled by alpha / r", type = "number" },
   { "lora.dropout", 0.0, "dropout on the adapters' input while training", type = "number" },
   { "lora.targets", "all-linear", "the modules adapted: all-linear, or a comma list (GPT-2: c_attn, c_proj, c_fc; Llama: q_proj, ..., down_proj)" },
   { "lora.merge", false, "after DPO, also write the model with the adapters folded in to OUT/merged" },
}

-- ---- helpers ---------------------------------------------------------------------------

local function die(msg)
   io.stderr:write("hh.lua: ", msg, "\n")
   os.exit(1, true)
end

-- The train and test files of the --data directory.
local function data_files(dir)
   local mode = lfs.attributes(dir, "mode")
   if mode ~= "directory" then
      die(("--data=%s: %s"):format(dir, mode and "not a directory" or "no such directory"))
   end
   local found = {}
   for name in lfs.dir(dir) do
      for _, split in ipairs{ "train", "test" } do
         if name:sub(1, #split) == split and (name:match("%.jsonl$") or name:match("%.jsonl%.gz$")) then
            if not found[split] or name < found[split] then found[split] = name end
         end
      end
   end
   for _, split in ipairs{ "train", "test" } do
      if not found[split] then
         die(("--data=%s: no %s file (%s.jsonl or %s.jsonl.gz)"):format(dir, split, split, split))
      end
   end
   return dir .. "/" .. found.train, dir .. "/" .. found.test
end

-- "a=1,b=true,c=x" -> {a = 1, b = true, c = "x"}
local function parse_kv(s)
   local t = {}
   for item in s:gmatch("[^,]+") do
      local k, v = item:match("^%s*([%w_]+)%s*=%s*(.-)%s*$")
      if not k then die(("--dpo.loss_options: '%s' is not name=value"):format(item)) end
      if v == "true" then
         t[k] = true
      elseif v == "false" then
         t[k] = false
      else
         t[k] = tonumber(v) or v
      end
   end
   return t
end

-- In a job under mpirun (dpo.dist) rank 0 alone speaks and writes files.
local MAIN = dpo.dist.is_main()

local function say(...)
   if not MAIN then return end
   io.stdout:write(string.format(...), "\n")
   io.stdout:flush()
end

-- A value as --name=VALUE writes it, numbers exactly.
local function arg_value(v)
   if type(v) ~= "number" then return tostring(v) end
   if v == math.floor(v) and math.abs(v) < 2^53 then return string.format("%d", v) end
   for digits = 15, 17 do
      local text = string.format("%." .. digits .. "g", v)
      if tonumber(text) == v then return text end
   end
   return string.format("%.17g", v)
end

-- The command that ran this script (arg's lowest index), else "dpolua".
local function interpreter()
   if not arg or not arg[-1] then return "dpolua" end
   local i = -1
   while arg[i - 1] do i = i - 1 end
   return arg[i]
end

-- What a resumed run may change: nothing that alters its numbers.
local MAY_CHANGE = { resume = true, out = true, overwrite = true, threads = true, progress = true }

-- The micro-batches per step of the run in dir (ranks x grad_accum), as its
-- newest readable checkpoint says (else run.json's grad_accum, one rank).
local function global_batch(dir, saved_accum)
   local list = dpo.train.checkpoints(dir)
   for i = #list, 1, -1 do
      local f = io.open(list[i].path .. "/trainer_state.json", "rb")
      if f then
         local ok, st = pcall(cjson.decode, f:read("a"))
         f:close()
         local d = ok and type(st) == "table" and st.data
         if type(d) == "table" and math.tointeger(d.grad_accum) then
            return math.tointeger(d.grad_accum) * (math.tointeger(d.ranks) or 1)
         end
      end
   end
   return math.tointeger(saved_accum) or 1
end

-- --grad_accum when resuming with `ranks` processes: the run's global batch
-- (ranks x grad_accum micro-batches of --batch_size) kept, so a job may go on
-- with another number of ranks (mpirun -np 1 after -np 2: grad_accum doubles).
local function resumed_accum(o, dir, saved_accum, path)
   local ranks = dpo.dist.size()
   local global = global_batch(dir, saved_accum)
   if o._given.grad_accum then
      if o.grad_accum * ranks ~= global then
         die(("--grad_accum=%d: the run takes %d micro-batches a step; with %d rank%s --grad_accum " ..
              "must be %s"):format(o.grad_accum, global, ranks, ranks > 1 and "s" or "",
                                   global % ranks == 0 and tostring(global // ranks) or "impossible"))
      end
      return o.grad_accum
   end
   if global % ranks ~= 0 then
      die(("%s: the run takes %d micro-batches a step, which %d ranks cannot share; resume with a " ..
           "number of ranks that divides %d"):format(path, global, ranks, global))
   end
   return global // ranks
end

-- The options of the run being resumed (o.resume): those of its run.json, and
-- --threads/--progress from the command line.
local function resume_options(o, defaults)
   local dir = o.resume:gsub("/+$", "")
   if lfs.attributes(dir, "mode") ~= "directory" then die(("--resume=%s: no such run directory"):format(dir)) end
   local path = dir .. "/run.json"
   local f = io.open(path, "rb")
   if not f then die(("--resume=%s: no run.json there (not a run directory)"):format(dir)) end
   local okj, saved = pcall(cjson.decode, f:read("a"))
   f:close()
   if not okj or type(saved) ~= "table" then die(path .. ": not the options of a run") end
   local argv = {}
   for _, e in ipairs(M.spec) do
      local name, v = e[1], saved[e[1]]
      if name == "grad_accum" then
         argv[#argv + 1] = "--grad_accum=" .. resumed_accum(o, dir, v, path)
      elseif MAY_CHANGE[name] then
         if o._given[name] then argv[#argv + 1] = "--" .. name .. "=" .. arg_value(o._flat[name]) end
      elseif o._given[name] and (v == nil or arg_value(o._flat[name]) ~= arg_value(v)) then
         die(("--%s=%s: a resumed run keeps its options (%s has %s); leave it out, or start a new run"):format(
            name, arg_value(o._flat[name]), path, v == nil and "none" or arg_value(v)))
      elseif v ~= nil then
         argv[#argv + 1] = "--" .. name .. "=" .. arg_value(v)
      end
   end
   local r, msg = cli.try_parse(argv, M.spec, defaults)
   if not r then die(path .. ": " .. tostring(msg)) end
   r.out, r.resume = dir, dir
   r._flat.out, r._flat.resume = dir, ""
   return r
end

-- A training phase run protected: its result, or the exit of the process
-- (with the message, and how to go on, when a signal stopped it).
local function phase(fn, opts, how_to_resume)
   local ok, result = pcall(fn, opts)
   if ok then return result end
   if type(result) == "table" and result.exit_code then
      io.stdout:flush()
      if MAIN then
         io.stderr:write(tostring(result), "\n")
         if result.checkpoint then io.stderr:write("resume with: ", how_to_resume, "\n") end
      end
      dpo.dist.finalize() -- every rank stopped at the same step: leave the job together
      os.exit(result.exit_code, true)
   end
   die(tostring(result))
end

local function fmt_time(s)
   if s >= 60 then return ("%dm%02ds"):format(s // 60, math.floor(s % 60)) end
   return ("%.1fs"):format(s)
end

-- ---- the pipeline ------------------------------------------------------------------------

--[[
J, the job: what the steps below share.
  o, argv, t0      the options, the command line, the start time
  how_to_resume    the command that continues this run
  run, latest, st  the run (dpo.log), the checkpoint resumed from and its
                   trainer state (nil when starting)
  train_path, test_path, train_ds, test_ds, eval_ds   the data
  tok, model       the tokenizer and the model trained (SFT, then DPO)
  initial          a frozen copy of the model before any training
  sft_model        a frozen copy after SFT: DPO's reference
  sft, dpo         the phases' results
]]

-- The options: the command line's, or those of the run being resumed. The
-- threads, the generator and the signals set as they say.
local function setup(argv, defaults)
   local o = cli.parse(argv, M.spec, defaults)
   if o.resume ~= "" then o = resume_options(o, defaults) end
   local J = { o = o, argv = argv, t0 = dpo.clock() }
   if o.threads > 0 then dpo.set_num_threads(o.threads) end
   dpo.manual_seed(o.seed)
   -- from here a first Ctrl-C or SIGTERM is a request to stop at a step boundary
   dpo.trap_signals()
   J.how_to_resume = ("%s%s %s --resume %s"):format(
      dpo.dist.size() > 1 and ("mpirun -np %d "):format(dpo.dist.size()) or "", interpreter(),
      arg and arg[0] or "recipes/hh.lua", o.out)
   return J
end

-- Between the phases: a signal that came during a phase's last step (or
-- after it) ends the process here, naming the checkpoint to go on from.
local function stop_here(J, where, checkpoint)
   local sig, code = dpo.dist.pending_signal()
   if not sig then return end
   io.stdout:flush()
   if MAIN then
      io.stderr:write(("stopped by %s %s; the last checkpoint is %s\nresume with: %s\n"):format(
         sig, where, checkpoint, J.how_to_resume))
   end
   dpo.dist.finalize() -- every rank stops here: leave the job together
   os.exit(code, true)
end

-- The run directory (and, with --resume, its newest checkpoint): a mistake
-- is reported before any work.
local function open_run(J)
   local o = J.o
   J.train_path, J.test_path = data_files(o.data)
   if not MAIN then -- the others read what rank 0 tidied, and keep their records in memory
      dpo.dist.barrier()
      if o.resume ~= "" then
         local latest = dpo.train.latest_checkpoint(o.out)
         if latest then J.latest, J.st = latest, latest.state end
      end
      J.run = dpo.log.memory()
      return
   end
   if o.resume ~= "" then
      local latest, why = dpo.train.latest_checkpoint(o.out, function(text) say("%s", text) end)
      if latest then
         local st = latest.state
         local okr, r = pcall(dpo.log.open, o.out, { resume = st.log_history or {}, elapsed = st.elapsed })
         if not okr then die((tostring(r):gsub("^.-:%d+: ", ""))) end
         J.run, J.latest, J.st = r, latest, st
         say("resuming %s from %s (%s, step %s)", o.out, latest.path, tostring(st.phase),
             tostring(math.tointeger(st.global_step) or st.global_step))
      else
         say("%s: starting the run from the beginning", why)
      end
   end
   if not J.run then
      local okr, r = pcall(dpo.log.open, o.out, { overwrite = o.overwrite or o.resume ~= "", config = o._flat })
      if not okr then die((tostring(r):gsub("^.-:%d+: ", ""))) end
      J.run = r
   end
   dpo.dist.barrier()
end

-- The chat template --chat_template names: text and source, or nil.
local function chat_template_of(o)
   if o.chat_template == "none" then return nil end
   if o.chat_template ~= "auto" then
      local f, err = io.open(o.chat_template, "rb")
      if not f then die("--chat_template: " .. err) end
      local text = f:read("a")
      f:close()
      return text, o.chat_template
   end
   if scratch(o) then return nil end
   local ok, t = pcall(dpo.tokenizer.load, o.model)
   if not ok then die(tostring(t)) end
   local text, source = t:chat_template()
   t:free()
   return text, source
end

-- The train and test pairs, cleaned and deduplicated; as messages when a chat
-- template renders them (the dialogue reader checks their turns: no hh_clean).
local function load_data(J)
   J.chat_text, J.chat_source = chat_template_of(J.o)
   local hh_opts = { messages = J.chat_text ~= nil }
   local train_raw, err1 = dpo.data.hh(J.train_path, hh_opts)
   if not train_raw then die(err1) end
   local test_raw, err2 = dpo.data.hh(J.test_path, hh_opts)
   if not test_raw then die(err2) end
   local clean = J.chat_text and dpo.filters.distinct() or dpo.filters.hh_clean()
   local train = train_raw:filter(clean):filter(dpo.filters.dedupe())
   local test = test_raw:filter(clean):filter(dpo.filters.dedupe())
   say("data: %s: %d pairs (%d removed by filters); %s: %d pairs", J.train_path, #train,
       #train_raw - #train, J.test_path, #test)
   return train, test
end

-- The tokenizer and the model: trained and made from scratch, or --model's.
local function tokenizer_and_model(J, train)
   local o = J.o
   if scratch(o) then
      local tok
      if o.tiny.tokenizer == "bytes" then
         tok = dpo.tokenizer.bytes()
      else
         local texts = {}
         for p in train:iter() do texts[#texts + 1] = p.prompt .. p.chosen .. p.rejected end
         tok = dpo.tokenizer.train(texts, { vocab_size = o.tiny.vocab_size })
      end
      J.tok = tok
      J.model = dpo.gpt.new{ vocab_size = tok:vocab_size(), n_ctx = o.max_length, n_layer = o.tiny.n_layer,
                             n_head = o.tiny.n_head, n_embd = o.tiny.n_embd, seed = o.seed }
      return
   end
   local okm, m = pcall(dpo.model.load, o.model)
   if not okm then die(tostring(m)) end
   J.model = m
   local okt, t = pcall(dpo.tokenizer.load, o.model)
   if not okt then die(tostring(t)) end
   J.tok = t
   if m:config().n_ctx < o.max_length then
      die(("--max_length=%d is longer than the model's context (%d)"):format(o.max_length, m:config().n_ctx))
   end
end

-- The tokenized train, test and evaluation sets.
local function tokenize(J, train, test)
   local o = J.o
   local tokopts = { max_length = o.max_length, max_prompt_length = o.max_prompt_length }
   if J.chat_text then
      local ok, err = pcall(J.tok.set_chat_template, J.tok, J.chat_text, J.chat_source)
      if not ok then die(tostring(err)) end
   end
   J.train_ds = train:tokenize(J.tok, tokopts)
   J.test_ds = test:tokenize(J.tok, tokopts)
   if #J.train_ds == 0 or #J.test_ds == 0 then die("no pairs are left after tokenization") end
   if J.chat_text then
      say("chat template: %s; the first prompt as rendered:\n%s", J.chat_source, J.train_ds:get(1).prompt)
   end
   J.eval_ds = J.test_ds:take(math.min(o.eval_pairs, #J.test_ds))
end

-- eric-mitchell's warmup, min(1, (k + 1) / (warmup + 1)) for update k = 0, 1, ...
local function lr_schedule(lr, warmup)
   return dpo.schedules.linear_warmup(lr, warmup + 1)
end

-- The options both phases share, with a phase's own.
local function phase_opts(J, extra)
   local o = J.o
   local t = {
      data = J.train_ds, eval_data = J.eval_ds, tokenizer = J.tok, run = J.run, batch_size = o.batch_size,
      grad_accum = o.grad_accum, max_grad_norm = o.max_grad_norm, seed = o.seed,
      eval_every = o.eval_every, save_every = o.save_every, log_every = o.log_every,
      progress = o.progress ~= "auto" and o.progress or nil,
   }
   for k, v in pairs(extra) do t[k] = v end
   return t
end

-- Copies the weights of a checkpoint's model into the model trained.
local function take_weights(J, from)
   local src = {}
   for _, np in ipairs(from:named_parameters()) do src[np[1]] = np[2] end
   dpo.no_grad(function()
      for _, np in ipairs(J.model:named_parameters()) do np[2]:copy(src[np[1]]) end
   end)
end

-- 1. SFT, or, when resuming past it, the model it ended with.
local function sft_phase(J)
   local o, st, latest = J.o, J.st, J.latest
   say("\n== SFT: %s ==", o.sft.steps > 0 and (o.sft.steps .. " steps") or (o.sft.epochs .. " epoch(s)"))
   if st and (st.kind == "dpo" or st.complete) then
      -- done before: the model it ended with is the checkpoint's, or the DPO phase's reference
      local path = st.kind == "sft" and latest.path or (st.reference and st.reference.source)
      local okm, m = true, latest.model
      if st.kind == "dpo" then okm, m = pcall(dpo.model.load, tostring(path)) end
      if not okm then die(("cannot resume: the SFT checkpoint the DPO phase began from: %s"):format(tostring(m))) end
      take_weights(J, m)
      say("done before: %s", path)
      return { checkpoint = path, step = math.tointeger(st.kind == "sft" and st.global_step or st.first_step) }
   end
   return phase(dpo.train.sft, phase_opts(J, {
      model = J.model, max_steps = o.sft.steps > 0 and o.sft.steps or nil, epochs = o.sft.epochs,
      optimizer = o.sft.optimizer, lr = lr_schedule(o.sft.lr, o.sft.warmup), resume = latest,
   }), J.how_to_resume)
end

-- --lora.*: adapters on the model (the SFT model, as DPO begins).
local function apply_lora(J)
   local o = J.o
   if o.lora.r < 0 then die("--lora.r must be >= 0") end
   local targets = o.lora.targets
   if targets ~= "all-linear" then
      local list = {}
      for name in targets:gmatch("[^,%s]+") do list[#list + 1] = name end
      targets = list
   end
   local ok, err = pcall(dpo.lora.apply, J.model, { r = o.lora.r, alpha = o.lora.alpha,
      dropout = o.lora.dropout, target_modules = targets, seed = o.seed })
   if not ok then die(tostring(err)) end
   local info = J.model:lora()
   say("LoRA: rank %d, alpha %g on %d modules: %d trainable parameters (%.2f%% of %d)", info.r, info.alpha,
       #info.modules, info.num_params, 100 * info.num_params / J.model:num_params(), J.model:num_params())
end

-- 2. DPO, the SFT model as the reference (or, resuming past it, its model).
local function dpo_phase(J)
   local o, st, latest = J.o, J.st, J.latest
   say("\n== DPO (%s, beta %g): %s ==", o.dpo.loss, o.dpo.beta,
       o.dpo.steps > 0 and (o.dpo.steps .. " steps") or (o.dpo.epochs .. " epoch(s)"))
   local loss_options = parse_kv(o.dpo.loss_options)
   local dpo_opts = phase_opts(J, {
      policy = J.model, ref = J.sft_model, ref_source = J.sft.checkpoint, global_step = J.sft.step,
      max_steps = o.dpo.steps > 0 and o.dpo.steps or nil, epochs = o.dpo.epochs,
      optimizer = o.dpo.optimizer, lr = lr_schedule(o.dpo.lr, o.dpo.warmup), beta = o.dpo.beta,
      loss = o.dpo.loss, loss_options = loss_options,
   })
   if o.lora.r ~= 0 then
      apply_lora(J)
      dpo_opts.ref = "base" -- the SFT model: the policy with its adapters off
   end
   if o.dpo.ref == "precompute" then
      dpo_opts.precompute_ref = true
   elseif o.dpo.ref == "sync" then
      dpo_opts.ref = J.sft_model:clone(true)
      dpo_opts.sync_ref = { tau = o.dpo.sync_tau, alpha = o.dpo.sync_alpha }
   end
   if st and st.kind == "dpo" and st.complete then
      if latest.adapters then
         local ok, err = pcall(dpo.lora.load, J.model, latest.adapters)
         if not ok then die("cannot resume: " .. tostring(err)) end
      else
         take_weights(J, latest.model)
      end
      say("done before: %s", latest.path)
      return { checkpoint = latest.path }
   end
   if st and st.kind == "dpo" then dpo_opts.resume = latest end
   return phase(dpo.train.dpo, dpo_opts, J.how_to_resume)
end

-- --lora.merge: OUT/merged, the model with its adapters folded in, and its tokenizer.
local function write_merged(J)
   local dir = J.run.dir .. "/merged"
   local merged = dpo.lora.merge(J.model:clone(true))
   local ok, err = pcall(merged.save, merged, dir)
   if ok then ok, err = pcall(J.tok.save, J.tok, dir .. "/tokenizer.json") end
   if not ok then die("cannot write the merged model: " .. tostring(err)) end
   say("merged model: %s", dir)
end

-- 3. The held-out table: SFT and DPO, each against the SFT model and the
-- initial one. -> the table, DPO against SFT
local function evaluation_table(J)
   local o, model, sft_model, initial, eval_ds = J.o, J.model, J.sft_model, J.initial, J.eval_ds
   say("\n== Evaluation on %d held-out pairs ==", #eval_ds)
   -- (in a job each rank scores its share of the pairs; all get the global figures)
   local ev = { batch_size = 2 * o.batch_size, beta = o.dpo.beta, shard = true }
   local dpo_vs_sft = dpo.eval.preferences(model, sft_model, eval_ds, ev)
   local dpo_vs_init = dpo.eval.preferences(model, initial, eval_ds, ev)
   local sft_vs_init = dpo.eval.preferences(sft_model, initial, eval_ds, ev)
   local final = {
      title = ("Held-out evaluation (%d pairs, beta %g)"):format(#eval_ds, o.dpo.beta),
      columns = { "", "SFT", "DPO" },
      rows = {
         { "reward accuracy, reference SFT", "-", dpo_vs_sft["rewards/accuracies"] },
         { "reward margin, reference SFT", "-", dpo_vs_sft["rewards/margins"] },
         { "reward accuracy, reference initial model", sft_vs_init["rewards/accuracies"],
           dpo_vs_init["rewards/accuracies"] },
         { "reward margin, reference initial model", sft_vs_init["rewards/margins"],
           dpo_vs_init["rewards/margins"] },
         { "chosen more likely per token", sft_vs_init["logps/accuracies"], dpo_vs_sft["logps/accuracies"] },
         { "logps/chosen", sft_vs_init["logps/chosen"], dpo_vs_sft["logps/chosen"] },
         { "logps/rejected", sft_vs_init["logps/rejected"], dpo_vs_sft["logps/rejected"] },
         { "NLL per chosen token", sft_vs_init.nll, dpo_vs_sft.nll },
      },
      caption = "Rewards are beta * (log p_model - log p_reference), summed over the response; " ..
         "accuracy counts the pairs whose chosen reward is strictly higher. The SFT model is the " ..
         "DPO reference, so its own rewards against it are 0.",
   }
   return final, dpo_vs_sft
end

-- Greedy replies of DPO and SFT to the first --samples held-out prompts.
local function sample_replies(J)
   local o = J.o
   local prompts = {}
   for i = 1, math.min(o.samples, #J.test_ds) do prompts[i] = J.test_ds:get(i) end
   return dpo.eval.samples(J.model, J.tok, prompts, { ref = J.sft_model, max_new_tokens = o.max_new_tokens,
                                                      seed = o.seed })
end

-- OUT/report.html: the records so far, and the final table and samples once
-- there are some.
local function write_report(J, final, samples)
   local o = J.o
   if not J.run.dir then return end -- (a rank of a job but rank 0)
   local facts = {
      { "data", ("%s (%d train, %d test pairs)"):format(o.data, #J.train_ds, #J.test_ds) },
      { "model", tostring(J.model) },
      { "loss", o.dpo.loss .. (o.dpo.loss_options ~= "" and (" (" .. o.dpo.loss_options .. ")") or "") },
      { "beta", o.dpo.beta },
      { "time", fmt_time(dpo.clock() - J.t0) },
   }
   if J.chat_text then
      facts[#facts + 1] = { "chat template", J.chat_source }
      facts[#facts + 1] = { "example prompt", (J.train_ds:get(1).prompt:gsub("\n", "\\n")) }
   end
   dpo.report.write(J.run.dir .. "/report.html", {
      title = "HH: SFT, then DPO", subtitle = "dpolua recipes/hh.lua " .. table.concat(J.argv or {}, " "),
      records = J.run.records, table = final, samples = samples, facts = facts,
      policy_name = "DPO", ref_name = "SFT", config = cli.dump(o),
   })
end

-- The final table, the samples and where the run's files are, on stdout.
local function print_summary(J, final, samples)
   local run = J.run
   say("\n%s\n", dpo.report.text_table(final))
   say("Samples (greedy, held-out prompts):\n%s\n", dpo.eval.format_samples(samples, {
      policy_name = "DPO", ref_name = "SFT" }))
   say("run: %s/metrics.jsonl, %s/report.html, %s", run.dir, run.dir, J.dpo.checkpoint or "(no checkpoint)")
   say("time: %s", fmt_time(dpo.clock() - J.t0))
end

function M.main(argv, defaults)
   local J = setup(argv, defaults)
   open_run(J)
   local train, test = load_data(J)
   tokenizer_and_model(J, train)
   tokenize(J, train, test)
   say("model: %s; tokenizer: %d tokens", tostring(J.model), J.tok:vocab_size())
   J.initial = J.model:clone(true)

   J.sft = sft_phase(J)
   J.sft_model = J.model:clone(true)
   stop_here(J, "after SFT", J.sft.checkpoint)
   write_report(J, nil, nil)

   J.dpo = dpo_phase(J)
   stop_here(J, "after DPO", J.dpo.checkpoint)
   if J.o.lora.merge and J.o.lora.r ~= 0 then write_merged(J) end
   -- the training is saved: from here Ctrl-C interrupts at once, as in any script
   dpo.release_signals()

   local final, dpo_vs_sft = evaluation_table(J)
   local samples = sample_replies(J)
   write_report(J, final, samples)
   J.run:close()
   print_summary(J, final, samples)
   return { sft = J.sft, dpo = J.dpo, final = final, dpo_vs_sft = dpo_vs_sft, samples = samples, run = J.run }
end

if (...) ~= "dpo.recipe" then M.main(arg) end
return M
