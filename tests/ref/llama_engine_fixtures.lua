-- Writes the Llama-family fixtures of tests/spec/llama_spec.lua: for each
-- variant a directory tests/fixtures/llama_engine/NAME with a small random model
-- saved by dpolua (config.json, model.safetensors) and a batch (batch.json);
-- tests/ref/llama_engine_ref.py then adds the PyTorch reference (ref.json,
-- ref_grads.safetensors). Run through tests/ref/make_llama_engine_ref.sh.
local cjson = require "cjson"
local lfs = require "lfs"

local root = arg[1] or "tests/fixtures/llama_engine"
local base = { vocab_size = 32, hidden_size = 16, intermediate_size = 24, num_hidden_layers = 2,
               num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 64,
               rms_norm_eps = 1e-5 }

local variants = {
   llama_gqa = { model_type = "llama" },
   llama_mqa_tied_bias = { model_type = "llama", num_key_value_heads = 1, tie_word_embeddings = true,
                           attention_bias = true, mlp_bias = true },
   llama3_rope_head_dim = { model_type = "llama", head_dim = 8, rope_theta = 10000.0,
                            rope_scaling = { rope_type = "llama3", factor = 8.0, low_freq_factor = 1.0,
                                             high_freq_factor = 4.0, original_max_position_embeddings = 64 } },
   llama_linear_rope = { model_type = "llama", rope_theta = 500.0, tie_word_embeddings = true,
                         rope_scaling = { type = "linear", factor = 2.0 } },
   mistral = { model_type = "mistral", sliding_window = 4096 },
   qwen2 = { model_type = "qwen2", tie_word_embeddings = true },
   qwen3 = { model_type = "qwen3", head_dim = 8, num_key_value_heads = 1 },
}

-- Weights far from the init's (std 0.02), so every part of the network matters.
local function scramble(m, seed)
   dpo.manual_seed(seed)
   dpo.no_grad(function()
      for _, np in ipairs(m:named_parameters()) do
         local t = np[2]
         if np[1]:match("norm%.weight$") then
            t:copy(dpo.randn(t:shape()) * 0.2 + 1)
         else
            t:copy(dpo.randn(t:shape()) * 0.3)
         end
      end
   end)
end

-- Four rows of 24: rows 1 and 2 share an 18-token prompt (packed once), row 3
-- is short and padded, row 4 scores a few scattered positions.
local function batch(seed)
   dpo.manual_seed(seed)
   local prompt = dpo.randint(0, 32, 18):totable()
   local ids, mask = {}, {}
   for n = 1, 4 do
      ids[n], mask[n] = {}, {}
      local r = dpo.randint(0, 32, 24):totable()
      for t = 1, 24 do
         ids[n][t] = (n <= 2 and t <= 18) and prompt[t] or r[t]
         mask[n][t] = t > 18 and 1 or 0
      end
   end
   for t = 1, 24 do mask[3][t] = (t >= 5 and t <= 9) and 1 or 0 end
   for t = 10, 24 do ids[3][t] = 0 end
   for t = 1, 24 do mask[4][t] = (t % 3 == 0) and 1 or 0 end
   return { ids = ids, mask = mask, weights = { 1.0, -0.5, 0.75, 0.3 } }
end

lfs.mkdir(root)
local names = {}
for name in pairs(variants) do names[#names + 1] = name end
table.sort(names) -- each variant's seeds fixed, so the files regenerate the same
for seed, name in ipairs(names) do
   local v = variants[name]
   local c = {}
   for k, x in pairs(base) do c[k] = x end
   for k, x in pairs(v) do c[k] = x end
   c.seed = seed
   local m = dpo.model.new(c)
   scramble(m, seed)
   local dir = root .. "/" .. name
   m:save(dir)
   local f = assert(io.open(dir .. "/batch.json", "w"))
   f:write(cjson.encode(batch(100 + seed)), "\n")
   f:close()
   print(dir)
end
