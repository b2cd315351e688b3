-- dpo.gpt: GPT-2 models (the C engine in core/model/gpt.c) and Hugging Face
-- checkpoints.
--
--   dpo.gpt.new{vocab_size=, n_ctx=, n_layer=, n_head=, n_embd=,
--               dropout=0, seed=0, layer_norm_epsilon=1e-5} -> model
--       GPT-2's architecture and initialisation (normal 0.02, residual
--       projections 0.02/sqrt(2*n_layer), zero biases, LayerNorm weights 1).
--   dpo.gpt.load(dir) -> model
--       a Hugging Face GPT-2 directory: config.json (model_type "gpt2") and
--       model.safetensors, or model.safetensors.index.json and its shards,
--       with GPT2LMHeadModel's names, with or without the "transformer."
--       prefix, in F32, BF16 or F16 (read through dpo.hf, one tensor at a
--       time); attn.bias / attn.masked_bias buffers and a tied lm_head.weight
--       are ignored. A missing, unexpected or misshapen tensor is an error
--       naming it.
--   model:save(dir [, {dtype =, max_shard_size = "2GB"}]) -> true
--       config.json and the weights in the same layout (each file written
--       atomically), so transformers' GPT2LMHeadModel.from_pretrained(dir)
--       reads it; the directory is created when missing. dtype "float32",
--       "bfloat16" or "float16" defaults to the one the model was loaded in
--       (float32 for a new model); a checkpoint larger than max_shard_size
--       is sharded with an index (see dpo.hf). A loaded model's config.json
--       keeps every field of the one it came with (the model's own fields
--       written over them, torch_dtype the saved dtype), and its
--       generation_config.json is copied along.
--
-- The model's own methods (logps, generate, parameters, clone, freeze, ...)
-- are listed in core/bind/l_gpt.c.
local core = require "dpo.core"
local cjson = require "cjson"
local lfs = require "lfs"
local hf = require "dpo.hf"

-- What a loaded model came from: {dtype =, config =, dir =}, by model.
local origin = setmetatable({}, { __mode = "k" })

local gpt = {}

function gpt.new(config)
   if type(config) ~= "table" then
      error("dpo.gpt.new: expected a table of options, got " .. type(config), 2)
   end
   local m = core.gpt_new(config)
   return m
end

-- The model config from a Hugging Face config.json table.
local function config_from_hf(c, path)
   local function fail(msg) error(("dpo.gpt.load: %s: %s"):format(path, msg), 4) end
   if c.model_type ~= "gpt2" then
      fail(("model_type is %s, expected \"gpt2\""):format(tostring(c.model_type)))
   end
   local act = c.activation_function or "gelu_new"
   if act ~= "gelu_new" and act ~= "gelu_pytorch_tanh" then
      fail(("activation_function %s is not supported (GPT-2 uses gelu_new)"):format(act))
   end
   if c.n_inner ~= nil and c.n_inner ~= cjson.null and c.n_inner ~= 4 * c.n_embd then
      fail(("n_inner %s is not supported (only 4 * n_embd)"):format(tostring(c.n_inner)))
   end
   if c.scale_attn_by_inverse_layer_idx or c.reorder_and_upcast_attn or c.scale_attn_weights == false then
      fail("non-standard attention scaling options are not supported")
   end
   local function int(key, ...)
      for _, k in ipairs{ key, ... } do
         local v = math.tointeger(c[k])
         if v then
            if v < 1 or v > 2147483647 then fail(("%s is %d, not a positive integer"):format(k, v)) end
            return v
         end
      end
      fail(("%s is missing or not an integer"):format(key))
   end
   local function num(key, default)
      local v = c[key]
      if v == nil or v == cjson.null then return default end
      if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
         fail(("%s is %s, not a finite number"):format(key, tostring(v)))
      end
      return v
   end
   return {
      vocab_size = int("vocab_size"),
      n_ctx = int("n_positions", "n_ctx"),
      n_layer = int("n_layer"),
      n_head = int("n_head"),
      n_embd = int("n_embd"),
      layer_norm_epsilon = num("layer_norm_epsilon", 1e-5),
      dropout = num("resid_pdrop", 0),
   }
end

-- GPT2LMHeadModel's file names to the model's: the "transformer." prefix is optional.
local function renamer(params)
   return function(name)
      if not params[name] and params["transformer." .. name] then return "transformer." .. name end
      return name
   end
end

-- Causal-mask buffers of older checkpoints (names no parameter has), and
-- lm_head.weight (tied to wte).
local function ignorer(params, rename)
   return function(name)
      if params[rename(name)] then return false end
      return name:match("attn%.bias$") or name:match("attn%.masked_bias$") or name == "lm_head.weight"
   end
end

function gpt.load(dir)
   if type(dir) ~= "string" or dir:find("\0", 1, true) then
      error("dpo.gpt.load: expected a directory path, got " .. (type(dir) == "string" and
            "a path with a zero byte" or type(dir)), 2)
   end
   local cpath = dir .. "/config.json"
   local conf = hf.read_config(dir, "dpo.gpt.load")
   local ok_new, model = pcall(core.gpt_new, config_from_hf(conf, cpath))
   if not ok_new then -- a config the engine refuses (n_head not dividing n_embd, ...)
      error(("dpo.gpt.load: %s: %s"):format(cpath, tostring(model):gsub("^.-%((.*)%)$", "%1")), 2)
   end
   local _, params = model:named_parameters()
   local rename = renamer(params)
   local info = hf.load_weights(dir, params, { rename = rename, ignore = ignorer(params, rename) },
                                "dpo.gpt.load")
   origin[model] = { dtype = info.dtype, config = conf, dir = dir }
   return model
end

-- config.json as transformers writes it for GPT-2, for this model.
local function hf_config(model)
   local c = model:config()
   -- cjson writes floats with 14 significant digits; keep eps readable
   local eps = tonumber(string.format("%.6g", c.layer_norm_epsilon))
   local p = tonumber(string.format("%.6g", c.dropout))
   return {
      architectures = { "GPT2LMHeadModel" },
      model_type = "gpt2",
      vocab_size = c.vocab_size,
      n_positions = c.n_ctx,
      n_ctx = c.n_ctx,
      n_embd = c.n_embd,
      n_layer = c.n_layer,
      n_head = c.n_head,
      n_inner = cjson.null,
      activation_function = "gelu_new",
      layer_norm_epsilon = eps,
      resid_pdrop = p,
      embd_pdrop = p,
      attn_pdrop = p,
      initializer_range = 0.02,
      scale_attn_weights = true,
      tie_word_embeddings = true,
      torch_dtype = "float32",
   }
end

local SAVE_OPTS = { dtype = true, max_shard_size = true }

local function save(model, dir, opts)
   if type(dir) ~= "string" or dir:find("\0", 1, true) then
      error("save: expected a directory path, got " .. (type(dir) == "string" and
            "a path with a zero byte" or type(dir)), 2)
   end
   if opts ~= nil and type(opts) ~= "table" then
      error("save: expected a table of options, got " .. type(opts), 2)
   end
   opts = opts or {}
   for k in pairs(opts) do
      if not SAVE_OPTS[k] then error(("save: unknown option %s"):format(tostring(k)), 2) end
   end
   model:config() -- a freed model raises here, before anything is made
   local from = origin[model] or {}
   local dtype = opts.dtype or from.dtype or "float32"
   if dtype ~= "float32" and dtype ~= "bfloat16" and dtype ~= "float16" then
      error(("save: dtype must be \"float32\", \"bfloat16\" or \"float16\", got %s"):format(tostring(dtype)), 2)
   end
   local attr = lfs.attributes(dir)
   if not attr then
      local ok, err = lfs.mkdir(dir)
      if not ok then error(("save: cannot create %s: %s"):format(dir, err), 2) end
   elseif attr.mode ~= "directory" then
      error(("save: %s exists and is not a directory"):format(dir), 2)
   end
   local _, named = model:named_parameters()
   local ok, err = pcall(function()
      hf.save_weights(dir, named, { dtype = dtype, max_shard_size = opts.max_shard_size }, "save")
      -- the source's fields, the model's own over them
      local conf = {}
      for k, v in pairs(from.config or {}) do conf[k] = v end
      for k, v in pairs(hf_config(model)) do conf[k] = v end
      conf.torch_dtype = dtype
      if conf.dtype ~= nil then conf.dtype = dtype end -- transformers >= 4.56 names it so
      hf.write_config(dir, conf, "save")
      if from.dir then hf.copy_if_present(from.dir, dir, "generation_config.json", "save") end
   end)
   if not ok then error(err, 2) end
   return true
end

core.GPT.save = save

return gpt
