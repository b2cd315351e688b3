-- llama_ref: the Llama-family decoder (Hugging Face's LlamaForCausalLM,
-- MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM) written out of
-- dpo's autograd ops, one row at a time, as the independent computation the
-- fused engine's specs compare against. A helper for specs, not part of dpo;
-- load it with `local ref = dofile("tests/spec/llama_ref.lua")`.
--
-- ref.logps(config, params, ids, mask [, hook]) -> logps [N], counts [N]
--   config  a table with Hugging Face's config.json keys (model:config() or a
--           decoded config.json). Required: vocab_size, hidden_size,
--           intermediate_size, num_hidden_layers, num_attention_heads.
--           Optional, with Hugging Face's defaults: model_type ("llama"; also
--           "mistral", "qwen2", "qwen3"), num_key_value_heads
--           (num_attention_heads for Llama; the classes' 8 for Mistral, 32 for
--           Qwen2/Qwen3), head_dim (hidden_size / num_attention_heads; 128 for
--           Qwen3), rms_norm_eps (1e-6),
--           rope_theta (10000), rope_scaling (nil/null, {rope_type = "default"},
--           "linear" {factor}, "llama3" {factor, low_freq_factor,
--           high_freq_factor, original_max_position_embeddings}; "type" is read
--           when "rope_type" is absent), tie_word_embeddings (false),
--           attention_bias (false: q/k/v/o biases; read for Llama and Qwen3),
--           mlp_bias (false; Llama only),
--           hidden_act ("silu", the only one), sliding_window (Mistral; a row
--           longer than it is an error), use_sliding_window (Qwen2; true is an
--           error). Mistral: no biases; "qwen2": q/k/v biases, no o_proj bias;
--           "qwen3": q_norm/k_norm (RMSNorm over head_dim, weight [head_dim])
--           on each head of q and k before the rotation.
--   params  name -> tensor with Hugging Face's names and layouts, or the list
--           {{name, tensor}, ...} that named_parameters() returns. Linear
--           weights are [out, in] (y = x W^T + b): model.embed_tokens.weight
--           [V, C]; model.layers.L.input_layernorm.weight [C];
--           model.layers.L.self_attn.{q,k,v,o}_proj.weight [H*D, C],
--           [KV*D, C], [KV*D, C], [C, H*D] (and .bias when used);
--           model.layers.L.self_attn.{q,k}_norm.weight [D] (qwen3);
--           model.layers.L.post_attention_layernorm.weight [C];
--           model.layers.L.mlp.{gate,up}_proj.weight [I, C], down_proj [C, I];
--           model.norm.weight [C]; lm_head.weight [V, C] unless tied (then it
--           must be absent and embed_tokens is the output projection). A
--           missing, misshapen or unused parameter is an error.
--           Gradients: pass leaves that require grad (ref.leaves makes them
--           from a model); logps:sum():backward() fills their .grad.
--   ids     int32 [N, T], 0-based token ids, one row per sequence, positions
--           0..T-1 (position ids start at 0 in every row; right padding).
--   mask    int32 or float32 [N, T]; position t (0-based, t >= 1) is scored
--           when mask[n][t] ~= 0 (a truth value, not a weight): the row's
--           logp adds log p(ids[n][t] | ids[n][0..t-1]). mask[n][0] is never
--           scored. As dpo.GPT:logps does (core/model/gpt.c), only positions
--           up to a row's last scored one are computed (causal attention makes
--           the rest irrelevant), and a row with nothing scored gives 0.
--   logps   float32 [N], the per-row sums, an autograd tensor;
--   counts  float32 [N], the number of scored positions per row.
--   hook    optional function(module, x, y) -> y', called after each linear
--           module ("model.layers.0.self_attn.q_proj", ...) with its input
--           x [T, in] and output y [T, out]; what it returns replaces y (a
--           spec composes a LoRA adapter's term here).
--
-- The math, all in float32 (Hugging Face's modeling_llama / qwen2 / qwen3):
--   x = embed[ids]; per layer:
--     a = rms(x) * w_in,  rms(x) = x * rsqrt(mean(x^2, last dim) + eps)
--     q, k, v = a Wq^T (+bq), a Wk^T (+bk), a Wv^T (+bv), split in heads of D
--     (qwen3: q = rms(q) * q_norm, k = rms(k) * k_norm, per head)
--     q, k = rope(q), rope(k): x * cos + rotate_half(x) * sin, where
--       rotate_half(x) = cat(-x[D/2:], x[:D/2]), angle(p, i) = p * inv_freq[i]
--       for i < D/2 (repeated for the second half), inv_freq[i] =
--       1 / theta^(2i/D), scaled by rope_scaling (see inv_freq below)
--     key/value head of query head h: floor(h / (H / KV))
--     attn = softmax(q k^T / sqrt(D) with future positions masked) v
--     x = x + attn Wo^T (+bo)
--     b = rms(x) * w_post
--     x = x + (silu(b Wg^T) * (b Wu^T)) Wd^T   (+ the mlp biases)
--   logits = (rms(x) * w_norm) lm_head^T; logp = log_softmax(logits)[next id].
-- The rotary angles are computed in double and rounded once to float32
-- (Hugging Face rounds inv_freq and the products in float32): a difference of
-- about 1e-7 in cos/sin, invisible at the tolerances the specs use.
--
-- Also here: ref.leaves(named) (leaf copies requiring grad),
-- ref.as_map(named), ref.parameter_shapes(config) (the sorted list of
-- {name, shape} a config needs), ref.inv_freq(config, D), and
-- ref.lcg_params(config) with ref.lcg / ref.name_seed (the exact parameters
-- tests/ref/llama_torch.py uses for tests/fixtures/llama/reference.json).
-- An engine spec reads, for a model m:
--   local P = ref.leaves(m:named_parameters())
--   local want, wcount = ref.logps(m:config(), P, ids, mask)
--   (want * w):sum():backward()   -- P[name].grad against m's gradients
local ref = {}

local function fail(fmt, ...) error("llama_ref: " .. fmt:format(...), 3) end

local null = require("cjson").null

local function is_null(v) return v == nil or v == null end -- absent, or JSON's null

-- The rotary frequencies [D/2] (plain Lua numbers), as Hugging Face's
-- ROPE_INIT_FUNCTIONS compute them for the given rope_scaling.
function ref.inv_freq(config, D)
   local theta = config.rope_theta or 10000
   local inv = {}
   for i = 0, D // 2 - 1 do inv[i + 1] = 1 / theta ^ (2 * i / D) end
   local rs = config.rope_scaling
   if is_null(rs) then return inv end
   if type(rs) ~= "table" then fail("rope_scaling must be a table or null (got %s)", type(rs)) end
   local kind = rs.rope_type or rs.type or "default"
   if kind == "default" then return inv end
   if kind == "linear" then
      local f = rs.factor
      if type(f) ~= "number" or f <= 0 then fail("rope_scaling.factor must be a positive number") end
      for i = 1, #inv do inv[i] = inv[i] / f end
      return inv
   end
   if kind == "llama3" then
      local f, lo, hi = rs.factor, rs.low_freq_factor, rs.high_freq_factor
      local old = rs.original_max_position_embeddings
      for name, v in pairs { factor = f, low_freq_factor = lo, high_freq_factor = hi,
                             original_max_position_embeddings = old } do
         if type(v) ~= "number" then fail("rope_scaling.%s must be a number", name) end
      end
      local low_wavelen, high_wavelen = old / lo, old / hi
      for i = 1, #inv do
         local wavelen = 2 * math.pi / inv[i]
         if wavelen > low_wavelen then
            inv[i] = inv[i] / f -- low frequencies: scaled
         elseif wavelen >= high_wavelen then -- medium: interpolated
            local s = (old / wavelen - lo) / (hi - lo)
            inv[i] = (1 - s) * inv[i] / f + s * inv[i]
         end -- high frequencies: kept
      end
      return inv
   end
   fail("rope_scaling type '%s' is not supported (default, linear, llama3)", tostring(kind))
end

-- cos and sin tables [T, D] for positions 0..T-1.
local function rope_tables(inv, T, D)
   local c, s = {}, {}
   local half = D // 2
   for p = 1, T do
      c[p], s[p] = {}, {}
      for i = 1, half do
         local a = (p - 1) * inv[i]
         c[p][i], c[p][i + half] = math.cos(a), math.cos(a)
         s[p][i], s[p][i + half] = math.sin(a), math.sin(a)
      end
   end
   return dpo.tensor(c), dpo.tensor(s)
end

local function rms(x, w, eps)
   local d = x:dim()
   return x * ((x * x):mean(d, true) + eps):rsqrt() * w
end

-- x [G, T, D] rotated: x * cos + rotate_half(x) * sin (cos, sin [T, D]).
local function rope(x, cos, sin)
   local D = x:size(3)
   local h = D // 2
   local x1, x2 = x:narrow(3, 1, h), x:narrow(3, h + 1, h)
   return x * cos + dpo.cat({ -x2, x1 }, 3) * sin
end

-- What each model_type's config class defaults to when a key is absent, and
-- which bias keys its modeling code reads (Mistral has no biases; Qwen2 has
-- q/k/v biases whatever attention_bias says; mlp_bias is Llama's only).
local DEFAULTS = {
   llama = { attention_bias = true, mlp_bias = true },
   mistral = { kv = 8 },
   qwen2 = { kv = 32 },
   qwen3 = { kv = 32, head_dim = 128, attention_bias = true },
}

-- The network's settings, checked, and the parameters it needs (name -> shape).
local function plan(config)
   local c = {}
   for _, k in ipairs { "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads" } do
      if math.type(config[k]) ~= "integer" and not (type(config[k]) == "number" and config[k] % 1 == 0) then
         fail("config.%s must be an integer (got %s)", k, tostring(config[k]))
      end
      c[k] = math.tointeger(config[k])
   end
   c.type = is_null(config.model_type) and "llama" or config.model_type
   local def = DEFAULTS[c.type]
   if not def then fail("model_type '%s' is not one of llama, mistral, qwen2, qwen3", tostring(c.type)) end
   c.V, c.C, c.I, c.L, c.H = c.vocab_size, c.hidden_size, c.intermediate_size,
      c.num_hidden_layers, c.num_attention_heads
   c.KV = math.tointeger(is_null(config.num_key_value_heads) and (def.kv or c.H)
      or config.num_key_value_heads)
   c.D = math.tointeger(is_null(config.head_dim) and (def.head_dim or c.C // c.H) or config.head_dim)
   if not c.KV or c.H % c.KV ~= 0 then
      fail("num_key_value_heads %s does not divide num_attention_heads %d", tostring(c.KV), c.H)
   end
   if not c.D or c.D % 2 ~= 0 then fail("head_dim %s must be even", tostring(c.D)) end
   c.eps = config.rms_norm_eps or 1e-6
   c.tied = config.tie_word_embeddings == true
   local act = config.hidden_act
   if not is_null(act) and act ~= "silu" then fail("hidden_act '%s' is not supported", tostring(act)) end
   if config.use_sliding_window == true then fail("use_sliding_window true is not supported") end
   c.window = not is_null(config.sliding_window) and config.sliding_window or nil
   local ab = def.attention_bias and config.attention_bias == true
   c.qkv_bias = c.type == "qwen2" or ab
   c.o_bias = ab
   c.mlp_bias = def.mlp_bias and config.mlp_bias == true
   c.qk_norm = c.type == "qwen3"
   c.inv = ref.inv_freq(config, c.D)
   local shapes = { ["model.embed_tokens.weight"] = { c.V, c.C }, ["model.norm.weight"] = { c.C } }
   if not c.tied then shapes["lm_head.weight"] = { c.V, c.C } end
   for l = 0, c.L - 1 do
      local p = "model.layers." .. l .. "."
      shapes[p .. "input_layernorm.weight"] = { c.C }
      shapes[p .. "post_attention_layernorm.weight"] = { c.C }
      local proj = { q = { c.H * c.D, c.C }, k = { c.KV * c.D, c.C }, v = { c.KV * c.D, c.C },
                     o = { c.C, c.H * c.D } }
      for n, s in pairs(proj) do
         shapes[p .. "self_attn." .. n .. "_proj.weight"] = s
         if (n ~= "o" and c.qkv_bias) or (n == "o" and c.o_bias) then
            shapes[p .. "self_attn." .. n .. "_proj.bias"] = { s[1] }
         end
      end
      if c.qk_norm then
         shapes[p .. "self_attn.q_norm.weight"] = { c.D }
         shapes[p .. "self_attn.k_norm.weight"] = { c.D }
      end
      for n, s in pairs { gate = { c.I, c.C }, up = { c.I, c.C }, down = { c.C, c.I } } do
         shapes[p .. "mlp." .. n .. "_proj.weight"] = s
         if c.mlp_bias then shapes[p .. "mlp." .. n .. "_proj.bias"] = { s[1] } end
      end
   end
   return c, shapes
end

-- The parameters each config needs: a list of {name, shape}, sorted by name.
function ref.parameter_shapes(config)
   local _, shapes = plan(config)
   local list = {}
   for name, s in pairs(shapes) do list[#list + 1] = { name, s } end
   table.sort(list, function(a, b) return a[1] < b[1] end)
   return list
end

-- The exact integer generator tests/ref/llama_torch.py draws its parameters
-- from (Park-Miller, seeded by a hash of the name), so neither side stores
-- them: n values in (-1, 1).
local MOD = 2147483647

function ref.name_seed(name)
   local h = 7
   for i = 1, #name do h = (h * 31 + name:byte(i)) % 1000003 end
   return h + 1
end

function ref.lcg(seed, n)
   local s, out = seed, {}
   for i = 1, n do
      s = s * 48271 % MOD
      out[i] = s / MOD * 2 - 1
   end
   return out
end

-- name -> leaf tensor (requiring grad) for every parameter of config, with
-- llama_torch.py's values: norm weights 1 + 0.2 u, biases 0.2 u, others 0.5 u.
function ref.lcg_params(config)
   local P = {}
   for _, ns in ipairs(ref.parameter_shapes(config)) do
      local name, shape = ns[1], ns[2]
      local n = 1
      for _, d in ipairs(shape) do n = n * d end
      local u = ref.lcg(ref.name_seed(name), n)
      local k = name:match("norm%.weight$") and 0.2 or name:match("%.bias$") and 0.2 or 0.5
      for i = 1, n do u[i] = (name:match("norm%.weight$") and 1 or 0) + k * u[i] end
      P[name] = dpo.tensor(u):reshape(shape):requires_grad()
   end
   return P
end

-- Leaf copies (requiring grad) of a model's parameters: name -> tensor.
function ref.leaves(named)
   local P = {}
   for name, t in pairs(ref.as_map(named)) do P[name] = t:detach():clone():requires_grad() end
   return P
end

-- name -> tensor from either a map or named_parameters()'s list.
function ref.as_map(named)
   if type(named[1]) == "table" and type(named[1][1]) == "string" then
      local P = {}
      for _, np in ipairs(named) do P[np[1]] = np[2] end
      return P
   end
   return named
end

local function check_params(P, shapes)
   for name, s in pairs(shapes) do
      local t = P[name]
      if t == nil then fail("parameter %s is missing", name) end
      local got = t:shape()
      local ok = #got == #s
      for i = 1, #s do ok = ok and got[i] == s[i] end
      if not ok then
         fail("parameter %s has shape [%s], expected [%s]", name, table.concat(got, ", "),
              table.concat(s, ", "))
      end
   end
   for name in pairs(P) do
      if shapes[name] == nil then fail("parameter %s is not part of this network", name) end
   end
end

local function linear(x, P, name, hook)
   local y = x:mm(P[name .. ".weight"]:t())
   local b = P[name .. ".bias"]
   if b then y = y + b end
   if hook then y = hook(name, x, y) end
   return y
end

-- One row: inputs ids[1..T] (Lua tables, 0-based ids), targets ids[2..T+1].
local function row(c, P, inp, tgt, scored)
   local T, H, KV, D, C = #inp, c.H, c.KV, c.D, c.C
   local cos, sin = rope_tables(c.inv, T, D)
   local causal = {}
   for i = 1, T do
      causal[i] = {}
      for j = 1, T do causal[i][j] = j <= i and 1 or 0 end
   end
   causal = dpo.tensor(causal, "int32")
   local kv_of = {}
   for h = 0, H - 1 do kv_of[h + 1] = h // (H // KV) + 1 end
   local scale = 1 / math.sqrt(D)
   local x = P["model.embed_tokens.weight"]:index_select(1, inp) -- [T, C]
   for l = 0, c.L - 1 do
      local pre = "model.layers." .. l .. "."
      local a = rms(x, P[pre .. "input_layernorm.weight"], c.eps)
      local q = linear(a, P, pre .. "self_attn.q_proj", c.hook):reshape(T, H, D)
      local k = linear(a, P, pre .. "self_attn.k_proj", c.hook):reshape(T, KV, D)
      local v = linear(a, P, pre .. "self_attn.v_proj", c.hook):reshape(T, KV, D)
      if c.qk_norm then
         q = rms(q, P[pre .. "self_attn.q_norm.weight"], c.eps)
         k = rms(k, P[pre .. "self_attn.k_norm.weight"], c.eps)
      end
      q = rope(q:transpose(1, 2), cos, sin) -- [H, T, D]
      k = rope(k:transpose(1, 2), cos, sin):index_select(1, kv_of) -- [H, T, D]
      v = v:transpose(1, 2):index_select(1, kv_of) -- [H, T, D]
      local att = dpo.where(causal, q:matmul(k:transpose(2, 3)) * scale, -math.huge):softmax(3)
      local y = att:matmul(v):transpose(1, 2):reshape(T, H * D) -- [T, H*D]
      x = x + linear(y, P, pre .. "self_attn.o_proj", c.hook)
      local b = rms(x, P[pre .. "post_attention_layernorm.weight"], c.eps)
      local f = linear(b, P, pre .. "mlp.gate_proj", c.hook):silu() * linear(b, P, pre .. "mlp.up_proj", c.hook)
      x = x + linear(f, P, pre .. "mlp.down_proj", c.hook)
   end
   x = rms(x, P["model.norm.weight"], c.eps)
   local head = c.tied and P["model.embed_tokens.weight"] or P["lm_head.weight"]
   local lp = x:mm(head:t()):log_softmax(2):gather(2, dpo.tensor(tgt, "int32")):reshape(T)
   return (lp * dpo.tensor(scored)):sum()
end

function ref.logps(config, params, ids, mask, hook)
   local c, shapes = plan(config)
   if hook ~= nil and type(hook) ~= "function" then fail("hook must be a function") end
   c.hook = hook
   local P = ref.as_map(params)
   check_params(P, shapes)
   if not (dpo.is_tensor(ids) and ids:dtype() == "int32" and ids:dim() == 2) then
      fail("ids must be an int32 tensor [N, T]")
   end
   if not (dpo.is_tensor(mask) and mask:dim() == 2 and mask:size(1) == ids:size(1)
           and mask:size(2) == ids:size(2)) then
      fail("mask must be a tensor of the size of ids [N, T]")
   end
   local it, mt = ids:totable(), mask:totable()
   local rows, counts = {}, {}
   for n = 1, #it do
      local ids_n, m_n = it[n], mt[n]
      local last, cnt = 0, 0
      for t = 2, #ids_n do
         if m_n[t] ~= 0 then last, cnt = t, cnt + 1 end
      end
      counts[n] = cnt
      if last == 0 then
         rows[n] = dpo.zeros(1)
      else
         local T = last - 1
         if c.window and T > c.window then
            fail("row %d needs %d positions, more than sliding_window %d", n, T, c.window)
         end
         local inp, tgt, scored = {}, {}, {}
         for t = 1, T do
            local id = ids_n[t]
            if id < 0 or id >= c.V then fail("token id %d at row %d is out of range", id, n) end
            inp[t], tgt[t], scored[t] = id + 1, { ids_n[t + 1] + 1 }, m_n[t + 1] ~= 0 and 1 or 0
         end
         if ids_n[T + 1] < 0 or ids_n[T + 1] >= c.V then fail("token id out of range at row %d", n) end
         rows[n] = row(c, P, inp, tgt, scored):reshape(1)
      end
   end
   return dpo.cat(rows, 1), dpo.tensor(counts)
end

return ref
