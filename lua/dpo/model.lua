-- dpo.model: any supported decoder from a Hugging Face directory or config.
--
--   dpo.model.load(dir [, opts]) -> model
--       reads dir/config.json's model_type: "gpt2" gives a dpo.GPT
--       (dpo.gpt.load); "llama" (Llama 2 / 3.x, TinyLlama, SmolLM2),
--       "mistral", "qwen2" (Qwen2 / 2.5) and "qwen3" give a dpo.Llama
--       (core/model/llama.c) with the checkpoint's weights. opts: none yet
--       (a table, unknown keys are errors).
--   dpo.model.new(config) -> model
--       a randomly initialised model from a table of Hugging Face config keys
--       (model_type required; Hugging Face's defaults for that type fill the
--       rest; seed = n picks the draw). "gpt2" goes to dpo.gpt.new with its
--       own keys.
--   dpo.model.families -> the model_types that load, in order
--   model:save(dir [, {dtype =, max_shard_size = "2GB"}]) -> true
--       config.json (every field of the source config kept, torch_dtype the
--       saved dtype) and model.safetensors with *ForCausalLM's names (or
--       shards and their index when larger than max_shard_size), each file
--       written atomically; generation_config.json copied when the model
--       came from a directory that has one. dtype "float32", "bfloat16" or
--       "float16" (rounded to nearest even); by default the dtype the
--       checkpoint was loaded in, float32 for a new model. A model with
--       adapters is refused (dpo.lora.save writes them, dpo.lora.merge
--       folds them in).
--   dpo.model.source(model) -> dir | nil
--       the directory a model was loaded from (a clone keeps it).
--
-- A config field that changes the math and is not supported (another
-- hidden_act, rope_scaling "dynamic" or "yarn", a sliding window in use,
-- attention dropout, quantization) is an error naming the field and value.
local core = require "dpo.core"
local cjson = require "cjson"
local lfs = require "lfs"
local gpt = require "dpo.gpt"
local hf = require "dpo.hf"

local model = {}

model.families = { "gpt2", "llama", "mistral", "qwen2", "qwen3" }

-- Hugging Face's defaults per model_type (transformers' *Config classes).
local DEFAULTS = {
   llama = { vocab_size = 32000, hidden_size = 4096, intermediate_size = 11008, num_hidden_layers = 32,
             num_attention_heads = 32, max_position_embeddings = 2048, rms_norm_eps = 1e-6,
             tie_word_embeddings = false, rope_theta = 10000.0, attention_bias = false, mlp_bias = false,
             hidden_act = "silu", initializer_range = 0.02, attention_dropout = 0.0,
             architectures = { "LlamaForCausalLM" } },
   mistral = { vocab_size = 32000, hidden_size = 4096, intermediate_size = 14336, num_hidden_layers = 32,
               num_attention_heads = 32, num_key_value_heads = 8, max_position_embeddings = 4096 * 32,
               rms_norm_eps = 1e-6, tie_word_embeddings = false, rope_theta = 10000.0, sliding_window = 4096,
               hidden_act = "silu", initializer_range = 0.02, attention_dropout = 0.0,
               architectures = { "MistralForCausalLM" } },
   qwen2 = { vocab_size = 151936, hidden_size = 4096, intermediate_size = 22016, num_hidden_layers = 32,
             num_attention_heads = 32, num_key_value_heads = 32, max_position_embeddings = 32768,
             rms_norm_eps = 1e-6, tie_word_embeddings = false, rope_theta = 10000.0, use_sliding_window = false,
             sliding_window = 4096, max_window_layers = 28, hidden_act = "silu", initializer_range = 0.02,
             attention_dropout = 0.0, architectures = { "Qwen2ForCausalLM" } },
   qwen3 = { vocab_size = 151936, hidden_size = 4096, intermediate_size = 22016, num_hidden_layers = 32,
             num_attention_heads = 32, num_key_value_heads = 32, head_dim = 128, max_position_embeddings = 32768,
             rms_norm_eps = 1e-6, tie_word_embeddings = false, rope_theta = 10000.0, attention_bias = false,
             use_sliding_window = false, sliding_window = 4096, max_window_layers = 28, hidden_act = "silu",
             initializer_range = 0.02, attention_dropout = 0.0, architectures = { "Qwen3ForCausalLM" } },
}

local null = cjson.null
local function isnull(v) return v == nil or v == null end

-- The source config with the type's defaults filled in (a new table).
local function with_defaults(c)
   local out = {}
   for k, v in pairs(DEFAULTS[c.model_type]) do out[k] = v end
   for k, v in pairs(c) do
      if v ~= null or out[k] == nil then out[k] = v end
   end
   -- null means "not set" for these: the default applies
   if c.head_dim == null then out.head_dim = nil end
   if c.num_key_value_heads == null then out.num_key_value_heads = nil end
   return out
end

-- The engine's settings (core.llama_new's table) from a Hugging Face config.
-- fail(msg) raises with the caller's context.
local function engine_config(c, fail)
   local t = c.model_type
   local function int(k, v)
      v = v == nil and c[k] or v
      local i = type(v) == "number" and math.tointeger(v)
      if not i then fail(("%s is %s, not an integer"):format(k, tostring(v))) end
      return i
   end
   local function num(k)
      local v = c[k]
      if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
         fail(("%s is %s, not a finite number"):format(k, tostring(v)))
      end
      return v
   end
   local function bool(k)
      local v = c[k]
      if isnull(v) then return false end
      if type(v) ~= "boolean" then fail(("%s is %s, not a boolean"):format(k, tostring(v))) end
      return v
   end
   if c.hidden_act ~= "silu" then fail(("hidden_act is %s, only \"silu\" is supported"):format(tostring(c.hidden_act))) end
   if not isnull(c.attention_dropout) and c.attention_dropout ~= 0 then
      fail(("attention_dropout is %s, only 0 is supported"):format(tostring(c.attention_dropout)))
   end
   if not isnull(c.quantization_config) then fail("quantization_config is set: quantized checkpoints are not supported") end
   if not isnull(c.partial_rotary_factor) and c.partial_rotary_factor ~= 1 then
      fail(("partial_rotary_factor is %s, only 1 is supported"):format(tostring(c.partial_rotary_factor)))
   end
   if (t == "qwen2" or t == "qwen3") and c.use_sliding_window == true then
      fail("use_sliding_window is true: sliding-window attention is not supported")
   end
   if not isnull(c.layer_types) then
      for i, lt in ipairs(c.layer_types) do
         if lt ~= "full_attention" then fail(("layer_types[%d] is %s, only \"full_attention\" is supported"):format(i, tostring(lt))) end
      end
   end
   local e = {
      vocab_size = int("vocab_size"),
      hidden_size = int("hidden_size"),
      intermediate_size = int("intermediate_size"),
      num_hidden_layers = int("num_hidden_layers"),
      num_attention_heads = int("num_attention_heads"),
      max_position_embeddings = int("max_position_embeddings"),
      rms_norm_eps = num("rms_norm_eps"),
      rope_theta = num("rope_theta"),
      tie_word_embeddings = bool("tie_word_embeddings"),
      initializer_range = num("initializer_range"),
   }
   e.num_key_value_heads = isnull(c.num_key_value_heads) and e.num_attention_heads or int("num_key_value_heads")
   if isnull(c.head_dim) then
      if e.hidden_size % e.num_attention_heads ~= 0 then
         fail(("num_attention_heads (%d) does not divide hidden_size (%d) and head_dim is not given"):format(
            e.num_attention_heads, e.hidden_size))
      end
      e.head_dim = e.hidden_size // e.num_attention_heads
   else
      e.head_dim = int("head_dim")
   end
   if t == "mistral" and not isnull(c.sliding_window) then e.sliding_window = int("sliding_window") end
   if t == "llama" then
      e.qkv_bias, e.o_bias, e.mlp_bias = bool("attention_bias"), bool("attention_bias"), bool("mlp_bias")
   elseif t == "qwen2" then
      e.qkv_bias = true
   elseif t == "qwen3" then
      e.qkv_bias, e.o_bias, e.qk_norm = bool("attention_bias"), bool("attention_bias"), true
   end
   local rs = c.rope_scaling
   if not isnull(rs) then
      if type(rs) ~= "table" then fail(("rope_scaling is %s, not a table"):format(tostring(rs))) end
      local rt = rs.rope_type or rs.type
      if rt == "default" then
         -- unscaled
      elseif rt == "linear" or rt == "llama3" then
         e.rope_type = rt
         if type(rs.factor) ~= "number" then fail(("rope_scaling.factor is %s, not a number"):format(tostring(rs.factor))) end
         e.rope_factor = rs.factor
         if rt == "llama3" then
            for _, k in ipairs{ "low_freq_factor", "high_freq_factor", "original_max_position_embeddings" } do
               if type(rs[k]) ~= "number" then fail(("rope_scaling.%s is %s, not a number"):format(k, tostring(rs[k]))) end
               e[k] = rs[k]
            end
            e.original_max_position_embeddings = int("rope_scaling.original_max_position_embeddings",
                                                     rs.original_max_position_embeddings)
         end
      else
         fail(("rope_scaling.rope_type is %s, supported: \"linear\", \"llama3\" (or rope_scaling null)"):format(tostring(rt)))
      end
   end
   return e
end

-- The source config of each Llama-family model (for save), by model.
local sources = setmetatable({}, { __mode = "k" })

local LLAMA_TYPES = { llama = true, mistral = true, qwen2 = true, qwen3 = true }

local function build(conf, fname, where, seed)
   local function fail(msg) error(("%s: %s%s"):format(fname, where and (where .. ": ") or "", msg), 4) end
   if not LLAMA_TYPES[conf.model_type] then
      fail(("model_type is %s; supported: %s"):format(tostring(conf.model_type), table.concat(model.families, ", ")))
   end
   local full = with_defaults(conf)
   local e = engine_config(full, fail)
   e.seed = seed
   local ok, m = pcall(core.llama_new, e)
   if not ok then fail(tostring(m):gsub("^[^:]*: ", "")) end
   sources[m] = full
   return m
end

function model.new(config)
   if type(config) ~= "table" then
      error("dpo.model.new: expected a table of Hugging Face config keys, got " .. type(config), 2)
   end
   if config.model_type == nil then error("dpo.model.new: model_type is required", 2) end
   if config.model_type == "gpt2" then
      local c = {}
      for k, v in pairs(config) do if k ~= "model_type" then c[k] = v end end
      return gpt.new(c)
   end
   local conf, seed = {}, config.seed
   for k, v in pairs(config) do if k ~= "seed" then conf[k] = v end end
   if seed ~= nil and math.type(seed) ~= "integer" then
      error("dpo.model.new: seed must be an integer, got " .. tostring(seed), 2)
   end
   return build(conf, "dpo.model.new", nil, seed)
end

-- Names in a checkpoint that are not parameters: rotary buffers of older files,
-- and lm_head.weight when it is tied to the embedding.
local function ignorable(tied)
   return function(name)
      if name:match("rotary_emb%.inv_freq$") then return true end
      return tied and name == "lm_head.weight"
   end
end

local dirs = setmetatable({}, { __mode = "k" }) -- where each loaded model came from

function model.load(dir, opts)
   local fname = "dpo.model.load"
   if type(dir) ~= "string" or dir:find("\0", 1, true) then
      error(("%s: expected a directory path, got %s"):format(fname, type(dir) == "string" and
            "a path with a zero byte" or type(dir)), 2)
   end
   if opts ~= nil then
      if type(opts) ~= "table" then error(fname .. ": opts must be a table, got " .. type(opts), 2) end
      for k in pairs(opts) do error(("%s: unknown option '%s'"):format(fname, tostring(k)), 2) end
   end
   local conf = hf.read_config(dir, fname)
   if conf.model_type == "gpt2" then return gpt.load(dir) end
   local m = build(conf, fname, dir .. "/config.json")
   local _, params = m:named_parameters()
   local info = hf.load_weights(dir, params, { ignore = ignorable(m:config().tie_word_embeddings) }, fname)
   sources[m].torch_dtype = info.dtype -- what the file holds, whatever the config says
   dirs[m] = dir
   return m
end

local function save(m, dir, opts)
   local fname = "save"
   if type(dir) ~= "string" or dir:find("\0", 1, true) then
      error("save: expected a directory path, got " .. (type(dir) == "string" and
            "a path with a zero byte" or type(dir)), 2)
   end
   if opts ~= nil and type(opts) ~= "table" then error("save: opts must be a table, got " .. type(opts), 2) end
   opts = opts or {}
   for k in pairs(opts) do
      if k ~= "dtype" and k ~= "max_shard_size" then error(("save: unknown option '%s'"):format(tostring(k)), 2) end
   end
   m:config() -- a freed model raises here, before anything is made
   local named = {}
   for _, np in ipairs(m:named_parameters(true)) do
      if np[1]:find(".lora_", 1, true) then
         error("save: the model has adapters: dpo.lora.save writes them, dpo.lora.merge folds them in", 2)
      end
      named[np[1]] = np[2]
   end
   local attr = lfs.attributes(dir)
   if not attr then
      local ok, err = lfs.mkdir(dir)
      if not ok then error(("save: cannot create %s: %s"):format(dir, err), 2) end
   elseif attr.mode ~= "directory" then
      error(("save: %s exists and is not a directory"):format(dir), 2)
   end
   -- by default the dtype the checkpoint came in (float32 for a new model)
   local dtype = opts.dtype or (dirs[m] and sources[m] and sources[m].torch_dtype) or "float32"
   hf.save_weights(dir, named, { dtype = dtype, max_shard_size = opts.max_shard_size }, fname)
   local conf = {}
   for k, v in pairs(sources[m] or {}) do conf[k] = v end
   conf.torch_dtype = dtype
   hf.write_config(dir, conf, fname)
   if dirs[m] and dirs[m] ~= dir then hf.copy_if_present(dirs[m], dir, "generation_config.json") end
   return true
end

core.Llama.save = save

local raw_clone = core.Llama.clone
core.Llama.clone = function(m, freeze)
   local c = raw_clone(m, freeze)
   sources[c], dirs[c] = sources[m], dirs[m]
   return c
end

-- The Hugging Face config of a model (a copy), as save writes it.
function model.hf_config(m)
   local mt = type(m) == "userdata" and getmetatable(m)
   if not (mt and mt.__name == "dpo.Llama" and pcall(m.is_frozen, m)) then
      error("dpo.model.hf_config: expected a live dpo.Llama, got " .. tostring(m), 2)
   end
   local out = {}
   for k, v in pairs(sources[m] or {}) do out[k] = v end
   return out
end

function model.source(m)
   if not model.is_model(m) then error("dpo.model.source: expected a live model, got " .. tostring(m), 2) end
   if getmetatable(m).__name == "dpo.GPT" then return gpt.source(m) end
   return dirs[m]
end

-- Whether v is a model of any supported family.
function model.is_model(v)
   local mt = type(v) == "userdata" and getmetatable(v)
   return mt and (mt.__name == "dpo.GPT" or mt.__name == "dpo.Llama") and pcall(v.is_frozen, v) or false
end

return model
