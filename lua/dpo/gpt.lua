-- dpo.gpt: GPT-2 models (the C engine in core/model/gpt.c) and Hugging Face
-- checkpoints.
--
--   dpo.gpt.new{vocab_size=, n_ctx=, n_layer=, n_head=, n_embd=,
--               dropout=0, seed=0, layer_norm_epsilon=1e-5} -> model
--       GPT-2's architecture and initialisation (normal 0.02, residual
--       projections 0.02/sqrt(2*n_layer), zero biases, LayerNorm weights 1).
--   dpo.gpt.load(dir) -> model
--       a Hugging Face GPT-2 directory: config.json (model_type "gpt2") and
--       model.safetensors with GPT2LMHeadModel's names, with or without the
--       "transformer." prefix; attn.bias / attn.masked_bias buffers and a tied
--       lm_head.weight are ignored. A missing, unexpected or misshapen tensor
--       is an error naming it.
--   dpo.gpt.source(model) -> dir | nil
--       the directory dpo.gpt.load read the model from (adapter files name it).
--   model:save(dir) -> true
--       config.json and model.safetensors in the same layout (each written
--       atomically), so transformers' GPT2LMHeadModel.from_pretrained(dir)
--       reads it; the directory is created when missing.
--
-- The model's own methods (logps, generate, parameters, clone, freeze, ...)
-- are listed in core/bind/l_gpt.c.
local core = require "dpo.core"
local cjson = require "cjson"
local lfs = require "lfs"

local gpt = {}

-- The directory each loaded model came from (weak: models are not kept alive).
local sources = setmetatable({}, { __mode = "k" })

function gpt.source(model)
   if type(model) ~= "userdata" or type(model.config) ~= "function" then
      error("dpo.gpt.source: expected a model, got " .. type(model), 2)
   end
   if not pcall(model.config, model) then error("dpo.gpt.source: the model is freed", 2) end
   return sources[model]
end

function gpt.new(config)
   if type(config) ~= "table" then
      error("dpo.gpt.new: expected a table of options, got " .. type(config), 2)
   end
   local m = core.gpt_new(config)
   return m
end

local function read_file(path)
   local f, err = io.open(path, "rb")
   if not f then error(("dpo.gpt.load: %s"):format(err), 3) end
   local s = f:read("a")
   f:close()
   return s
end

local function shape_str(shape)
   if #shape == 0 then return "scalar" end
   return table.concat(shape, "x")
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

function gpt.load(dir)
   if type(dir) ~= "string" or dir:find("\0", 1, true) then
      error("dpo.gpt.load: expected a directory path, got " .. (type(dir) == "string" and
            "a path with a zero byte" or type(dir)), 2)
   end
   local cpath, wpath = dir .. "/config.json", dir .. "/model.safetensors"
   local ok, conf = pcall(cjson.decode, read_file(cpath))
   if not ok or type(conf) ~= "table" then
      error(("dpo.gpt.load: %s: not valid JSON (%s)"):format(cpath, tostring(conf)), 2)
   end
   local ok_new, model = pcall(core.gpt_new, config_from_hf(conf, cpath))
   if not ok_new then -- a config the engine refuses (n_head not dividing n_embd, ...)
      error(("dpo.gpt.load: %s: %s"):format(cpath, tostring(model):gsub("^.-%((.*)%)$", "%1")), 2)
   end
   local tensors, err = core.load(wpath)
   if not tensors then error("dpo.gpt.load: " .. err, 2) end
   local list, params = model:named_parameters()
   local seen = {}
   for name, t in pairs(tensors) do
      local key = name
      if not params[key] and params["transformer." .. key] then key = "transformer." .. key end
      local p = params[key]
      if p then
         local want, got = p:shape(), t:shape()
         if shape_str(want) ~= shape_str(got) then
            error(("dpo.gpt.load: %s: tensor '%s' has shape %s, the model needs %s"):format(
               wpath, name, shape_str(got), shape_str(want)), 2)
         end
         core.no_grad(function() p:copy(t) end)
         seen[key] = true
      elseif name:match("attn%.bias$") or name:match("attn%.masked_bias$") then
         -- causal-mask buffers of older checkpoints: not parameters
      elseif name == "lm_head.weight" then
         -- tied to the token embedding
      else
         error(("dpo.gpt.load: %s: unexpected tensor '%s'"):format(wpath, name), 2)
      end
   end
   for _, np in ipairs(list) do
      if not seen[np[1]] then
         error(("dpo.gpt.load: %s: missing tensor '%s' (shape %s)"):format(
            wpath, np[1], shape_str(np[2]:shape())), 2)
      end
   end
   sources[model] = dir
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

local function save(model, dir)
   if type(dir) ~= "string" or dir:find("\0", 1, true) then
      error("save: expected a directory path, got " .. (type(dir) == "string" and
            "a path with a zero byte" or type(dir)), 2)
   end
   model:config() -- a freed model raises here, before anything is made
   local attr = lfs.attributes(dir)
   if not attr then
      local ok, err = lfs.mkdir(dir)
      if not ok then error(("save: cannot create %s: %s"):format(dir, err), 2) end
   elseif attr.mode ~= "directory" then
      error(("save: %s exists and is not a directory"):format(dir), 2)
   end
   local named = {}
   for _, np in ipairs(model:named_parameters(true)) do
      if np[1]:find(".lora_", 1, true) then
         error("save: the model has adapters: dpo.lora.save writes them, dpo.lora.merge folds them in", 2)
      end
      named[np[1]] = np[2]
   end
   local ok, err = core.save(dir .. "/model.safetensors", named, { format = "pt" })
   if not ok then error("save: " .. err, 2) end
   ok, err = core.write_file(dir .. "/config.json", cjson.encode(hf_config(model)) .. "\n")
   if not ok then error("save: " .. err, 2) end
   return true
end

core.GPT.save = save

return gpt
