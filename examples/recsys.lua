-- recsys.lua: DPO outside language, on a toy recommender.
--
--   dpolua examples/recsys.lua [--steps N | N] [--beta B] [--lr LR] [--seed S]
--
-- A catalogue of items, each with a hidden feature vector, and users, each
-- with a hidden taste vector. The policy sees a user's context (a noisy
-- observation of the taste) and scores every item: log-softmax over the
-- catalogue is log pi(item | user). The data are preference pairs: for a
-- user, two items, the one with the higher hidden utility (taste . features
-- + noise) chosen. Nothing ever says which item is best; DPO learns it from
-- the pairs alone, against a frozen copy of the initial policy.
--
-- Every `log_every` steps it prints the loss, the reward accuracy on the
-- minibatch and the preference accuracy on pairs of held-out users (the
-- fraction where beta*((pi_c - ref_c) - (pi_r - ref_r)) > 0). At step 1 the
-- minibatch was scored before the first update, when policy = reference and
-- every margin is exactly 0: a tie, which counts as wrong.
--
-- Loaded with dofile, the file runs nothing and returns { run = run }, so a
-- spec can run a short training: `dofile("examples/recsys.lua").run{steps=100}`.

local nn = dpo.nn

-- ---- the synthetic world ------------------------------------------------------

-- Users: hidden tastes [n, k] and contexts [n, ctx_dim] = taste * proj + noise.
local function make_users(world, n)
   local taste = dpo.randn(n, world.k)
   local ctx = taste:mm(world.proj) + dpo.randn(n, world.ctx_dim) * world.ctx_noise
   return { taste = taste, ctx = ctx, n = n }
end

-- Preference pairs: users.n * per_user pairs, each for a random user of
-- `users` and two distinct items, the one with the higher noisy utility
-- chosen. Returns
-- { ctx = [m, ctx_dim], chosen = [m, 1], rejected = [m, 1] } (1-based int32 ids).
local function make_pairs(world, users, per_user)
   local m = users.n * per_user
   local n_items = world.n_items
   local user = dpo.randint(1, users.n + 1, m)
   local a = dpo.randint(1, n_items + 1, m, 1)
   local b = a + dpo.randint(1, n_items, m, 1)                  -- b ~= a
   b = dpo.where(b:gt(n_items), b - n_items, b)
   local utility = users.taste:index_select(1, user):mm(world.features:t())  -- [m, items]
   local ua = utility:gather(2, a) + dpo.randn(m, 1) * world.util_noise
   local ub = utility:gather(2, b) + dpo.randn(m, 1) * world.util_noise
   local a_wins = ua:gt(ub)
   return {
      ctx = users.ctx:index_select(1, user),
      chosen = dpo.where(a_wins, a, b),
      rejected = dpo.where(a_wins, b, a),
      n = m,
   }
end

local function batch_of(pairs, idx)
   return {
      ctx = pairs.ctx:index_select(1, idx),
      chosen = pairs.chosen:index_select(1, idx),
      rejected = pairs.rejected:index_select(1, idx),
   }
end

-- ---- the DPO pieces -----------------------------------------------------------

-- log pi(chosen | ctx), log pi(rejected | ctx), each [b]
local function logps(model, batch)
   local logp = model(batch.ctx):log_softmax(2)                -- [b, items]
   return logp:gather(2, batch.chosen):squeeze(2), logp:gather(2, batch.rejected):squeeze(2)
end

-- The DPO sigmoid loss: -logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))),
-- averaged over pairs. Also returns the (detached) implicit reward margins.
local function dpo_loss(pi_c, pi_r, ref_c, ref_r, beta)
   local margin = ((pi_c - ref_c) - (pi_r - ref_r)) * beta
   return -margin:logsigmoid():mean(), margin:detach()
end

local function accuracy(margin)
   return margin:gt(0):float():mean():item()
end

-- Held-out preference accuracy of policy against ref (reference log-probs
-- computed once and cached in `cache`).
local function evaluate(policy, ref, pairs, beta, cache)
   policy:eval()
   local acc = dpo.no_grad(function()
      if not cache.ref_c then cache.ref_c, cache.ref_r = logps(ref, pairs) end
      local pi_c, pi_r = logps(policy, pairs)
      local _, margin = dpo_loss(pi_c, pi_r, cache.ref_c, cache.ref_r, beta)
      return accuracy(margin)
   end)
   policy:train()
   return acc
end

--[[
run(opts): build the world, train a policy with DPO, print progress.
ARGS    opts { steps = 600, batch = 128, beta = 0.2, lr = 1e-2,
               weight_decay = 0.0, hidden = 64, log_every = 50, seed = 1234,
               n_items = 50, k = 8, ctx_dim = 16, ctx_noise = 0.1,
               util_noise = 0.2, train_users = 3000, heldout_users = 250,
               pairs_per_user = 4, quiet = false }
RETURNS { heldout_acc =, train_acc =, loss =, history = { {step =, loss =,
          train_acc =, heldout_acc =}, ... }, policy =, ref = }
]]
local function run(opts)
   opts = opts or {}
   local steps = opts.steps or 600
   local bsz = opts.batch or 128
   local beta = opts.beta or 0.2
   local log_every = opts.log_every or 50
   local say = opts.quiet and function() end or print
   dpo.manual_seed(opts.seed or 1234)

   local world = {
      n_items = opts.n_items or 50,
      k = opts.k or 8,
      ctx_dim = opts.ctx_dim or 16,
      ctx_noise = opts.ctx_noise or 0.1,
      util_noise = opts.util_noise or 0.2,
   }
   world.features = dpo.randn(world.n_items, world.k)
   world.proj = dpo.randn(world.k, world.ctx_dim) / math.sqrt(world.k)
   local per_user = opts.pairs_per_user or 4
   local train = make_pairs(world, make_users(world, opts.train_users or 3000), per_user)
   local heldout = make_pairs(world, make_users(world, opts.heldout_users or 250), per_user)

   local sizes = { world.ctx_dim, opts.hidden or 64, world.n_items }
   local policy = nn.MLP(sizes)
   local ref = nn.MLP(sizes)
   ref:load_state_dict(policy:state_dict())
   ref:eval()
   local opt = dpo.optim.adamw(policy:parameters(), {
      lr = opts.lr or 1e-2, betas = { 0.9, 0.999 }, eps = 1e-8,
      weight_decay = opts.weight_decay or 0.0,
   })

   say(("recsys: %d items, %d train pairs, %d held-out pairs, policy %s, beta %g")
      :format(world.n_items, train.n, heldout.n, table.concat(sizes, "-"), beta))
   local history, cache = {}, {}
   local last = {}
   for step = 1, steps do
      local batch = batch_of(train, dpo.randint(1, train.n + 1, bsz))
      local ref_c, ref_r = dpo.no_grad(logps, ref, batch)
      local pi_c, pi_r = logps(policy, batch)
      local loss, margin = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta)
      opt:zero_grad()
      loss:backward()
      opt:step()
      if step == 1 or step % log_every == 0 or step == steps then
         last = {
            step = step, loss = loss:item(), train_acc = accuracy(margin),
            heldout_acc = evaluate(policy, ref, heldout, beta, cache),
         }
         history[#history + 1] = last
         say(("step %4d  loss %.4f  train acc %.3f  held-out acc %.3f")
            :format(step, last.loss, last.train_acc, last.heldout_acc))
      end
   end
   return {
      heldout_acc = last.heldout_acc, train_acc = last.train_acc, loss = last.loss,
      history = history, policy = policy, ref = ref,
   }
end

-- ---- command line -------------------------------------------------------------

local function parse_args(args)
   local opts, i = {}, 1
   local keys = { steps = "integer", beta = "number", lr = "number", seed = "integer" }
   while i <= #args do
      local a = args[i]
      local key, val = a:match("^%-%-(%w+)=(.*)$")
      if not key then
         key = a:match("^%-%-(%w+)$")
         if key then
            i = i + 1
            val = args[i]
         end
      end
      if not key and tonumber(a) then key, val = "steps", a end
      if not key or not keys[key] then error("recsys.lua: unknown argument '" .. a .. "'", 0) end
      local v = tonumber(val)
      if not v or (keys[key] == "integer" and math.type(v) ~= "integer") then
         error(("recsys.lua: --%s needs a%s (got %s)"):format(key,
            keys[key] == "integer" and "n integer" or " number", tostring(val)), 0)
      end
      opts[key] = v
      i = i + 1
   end
   return opts
end

if arg and arg[0] and arg[0]:match("recsys%.lua$") then
   local r = run(parse_args(arg))
   print(("final held-out preference accuracy %.3f"):format(r.heldout_acc))
end

return { run = run, dpo_loss = dpo_loss }
