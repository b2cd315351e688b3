-- dpo.lora: low-rank adapters (LoRA) in the engine, and PEFT's adapter files.
--
-- The adapters live in the C engine (core/model/lora.c): for each adapted
-- linear module, A [r, in] and B [out, r], and the module computes
--     y = W x + b + s * B (A dropout(x)),  s = alpha / r  (alpha / sqrt(r) with use_rslora)
-- inside the model's fused forward and backward. A starts as PEFT's default
-- (Kaiming-uniform, a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), B at zero, so
-- a new adapter changes nothing. The base weights are frozen: no gradient
-- is computed or stored for them.
--
--   dpo.lora.apply(model, {r = 8, alpha = 8, dropout = 0, use_rslora = false,
--                          seed = 0, target_modules = {"c_attn"} | "all-linear"}) -> model
--       GPT-2's linear modules are c_attn, c_proj (attention and MLP) and
--       c_fc (default {"c_attn"}); a Llama-family model's (dpo.Llama) are
--       q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj and down_proj
--       (default {"q_proj", "v_proj"}, as PEFT's), each its own adapter though
--       the engine fuses q/k/v and gate/up into one product. A name matches a
--       module whose name is it or ends in "." .. it, as in PEFT. Afterwards model:parameters() and model:named_parameters()
--       list only the adapters' tensors ("<module>.lora_A.weight", ...), so an
--       optimizer built from them trains exactly the adapters;
--       model:named_parameters(true) lists the frozen base weights too, each
--       entry {name, tensor, frozen}.
--   dpo.lora.disabled(model, fn, ...) -> fn's results
--       fn(...) with the adapters off: the base model, the DPO reference. The
--       adapters are back on afterwards, also when fn raises.
--   dpo.lora.save(model, dir [, {base_model_name_or_path = s}]) -> true
--       PEFT's layout: adapter_config.json and adapter_model.safetensors with
--       "base_model.model.<module>.lora_A.weight" [r, in] and
--       "...lora_B.weight" [out, r] (float32); for a Llama the module is
--       "model.layers.N.self_attn.q_proj" and fan_in_fan_out false. The base
--       model's path defaults to the directory dpo.gpt.load / dpo.model.load
--       read it from.
--   dpo.lora.load(model, dir) -> model
--       applies the adapters of a directory in PEFT's layout (ours or PEFT's
--       own): the adapted modules are those the file holds tensors for. On a
--       model with adapters already, the modules and rank must match, and the
--       values are replaced.
--   dpo.lora.merge(model) -> model
--       folds the adapters into the base weights (W += s * B A) and drops
--       them: the model is an ordinary one again (model:save writes it).
--   dpo.lora.config(model) -> nil | {r, alpha, dropout, use_rslora, scale,
--       enabled, modules, target_modules, num_params, fan_in_fan_out}
--
-- Any model type works here whose binding has the methods core/bind/l_gpt.c
-- gives GPT-2: lora_apply, lora, lora_enable, lora_merge, base_hash and
-- named_parameters(all).
--
-- Unsupported parts of PEFT's format are errors, not silently dropped:
-- bias other than "none", modules_to_save, layers_to_transform,
-- rank_pattern, alpha_pattern, use_dora.
local core = require "dpo.core"
local cjson = require "cjson"
local lfs = require "lfs"

local lora = {}

local PREFIX = "base_model.model."

-- What a model's adapters were made with, beyond what the engine keeps.
local extra = setmetatable({}, { __mode = "k" })

local function is_model(m)
   return type(m) == "userdata" and type(m.lora) == "function"
end

local function check_model(fn, m, need)
   if not is_model(m) then
      error(("dpo.lora.%s: expected a model, got %s"):format(fn, type(m)), 3)
   end
   local ok, info = pcall(m.lora, m)
   if not ok then -- a freed model
      error(("dpo.lora.%s: %s"):format(fn, tostring(info):gsub("^.-%((.*)%)$", "%1")), 3)
   end
   if need and not info then error(("dpo.lora.%s: the model has no adapters"):format(fn), 3) end
   return info
end

local function check_dir(fn, dir)
   if type(dir) ~= "string" or dir == "" or dir:find("\0", 1, true) then
      error(("dpo.lora.%s: expected a directory path, got %s"):format(fn,
         type(dir) == "string" and ("%q"):format(dir) or type(dir)), 3)
   end
end

-- The short names of the modules adapted ("c_attn", ...), sorted.
local function short_names(modules)
   local set, out = {}, {}
   for _, name in ipairs(modules) do set[name:match("([^.]+)$")] = true end
   for k in pairs(set) do out[#out + 1] = k end
   table.sort(out)
   return out
end

local APPLY_KEYS = { r = true, alpha = true, dropout = true, use_rslora = true, seed = true,
   target_modules = true }

function lora.apply(model, opts)
   check_model("apply", model)
   opts = opts or {}
   if type(opts) ~= "table" then
      error("dpo.lora.apply: expected a table of options, got " .. type(opts), 2)
   end
   for k in pairs(opts) do
      if not APPLY_KEYS[k] then error(("dpo.lora.apply: unknown option '%s'"):format(tostring(k)), 2) end
   end
   local r = opts.r or 8
   if math.type(r) ~= "integer" or r < 1 then
      error(("dpo.lora.apply: r must be a positive integer (got %s)"):format(tostring(r)), 2)
   end
   local alpha = opts.alpha or 8
   if type(alpha) ~= "number" or alpha ~= alpha or math.abs(alpha) == math.huge then
      error(("dpo.lora.apply: alpha must be a finite number (got %s)"):format(tostring(alpha)), 2)
   end
   local dropout = opts.dropout or 0
   if type(dropout) ~= "number" or not (dropout >= 0 and dropout < 1) then
      error(("dpo.lora.apply: dropout must be in [0, 1) (got %s)"):format(tostring(dropout)), 2)
   end
   if opts.use_rslora ~= nil and type(opts.use_rslora) ~= "boolean" then
      error(("dpo.lora.apply: use_rslora must be a boolean (got %s)"):format(type(opts.use_rslora)), 2)
   end
   -- PEFT's defaults: GPT-2's c_attn, a Llama's q_proj and v_proj
   local targets = opts.target_modules
   local kind = (getmetatable(model) or {}).__name
   if targets == nil and kind == "dpo.GPT" then targets = { "c_attn" } end
   if targets == nil and kind == "dpo.Llama" then targets = { "q_proj", "v_proj" } end
   if type(targets) == "string" and targets ~= "all-linear" then targets = { targets } end
   if targets ~= nil and type(targets) ~= "string" then
      if type(targets) ~= "table" or #targets == 0 then
         error("dpo.lora.apply: target_modules must be a list of module names or \"all-linear\"", 2)
      end
      for i, t in ipairs(targets) do
         if type(t) ~= "string" or t == "" then
            error(("dpo.lora.apply: target_modules[%d] must be a module name (got %s)")
               :format(i, tostring(t)), 2)
         end
      end
   end
   local ok, err = pcall(model.lora_apply, model, {
      r = r, alpha = alpha, dropout = dropout, use_rslora = opts.use_rslora and true or false,
      seed = opts.seed or 0, target_modules = targets,
   })
   if not ok then error("dpo.lora.apply: " .. tostring(err):gsub("^lora_apply: ", ""), 2) end
   local saved = {}
   if type(targets) == "table" then
      for i, t in ipairs(targets) do saved[i] = t end
      table.sort(saved)
   else
      saved = short_names(model:lora().modules)
   end
   extra[model] = { target_modules = saved }
   return model
end

local function config(fn, model)
   local info = check_model(fn, model)
   if not info then return nil end
   local x = extra[model] or {}
   info.target_modules = x.target_modules or short_names(info.modules)
   info.base_model_name_or_path = x.base_model_name_or_path
   return info
end

function lora.config(model)
   return config("config", model)
end

function lora.disabled(model, fn, ...)
   check_model("disabled", model, true)
   if type(fn) ~= "function" then
      error("dpo.lora.disabled: expected a function, got " .. type(fn), 2)
   end
   local was = model:lora_enable(false)
   local res = table.pack(pcall(fn, ...))
   model:lora_enable(was)
   if not res[1] then error(res[2], 0) end
   return table.unpack(res, 2, res.n)
end

function lora.merge(model)
   check_model("merge", model, true)
   local ok, err = pcall(model.lora_merge, model)
   if not ok then error("dpo.lora.merge: " .. tostring(err):gsub("^lora_merge: ", ""), 2) end
   extra[model] = nil
   return model
end

-- A number as JSON writes it readably (cjson keeps 14 significant digits).
local function num(x) return tonumber(string.format("%.7g", x)) end

local function ensure_dir(fn, dir)
   local attr = lfs.attributes(dir)
   if not attr then
      local ok, err = lfs.mkdir(dir)
      if not ok then error(("dpo.lora.%s: cannot create %s: %s"):format(fn, dir, err), 3) end
   elseif attr.mode ~= "directory" then
      error(("dpo.lora.%s: %s exists and is not a directory"):format(fn, dir), 3)
   end
end

function lora.save(model, dir, opts)
   local info = config("save", model)
   if not info then error("dpo.lora.save: the model has no adapters", 2) end
   check_dir("save", dir)
   opts = opts or {}
   if type(opts) ~= "table" then error("dpo.lora.save: expected a table of options, got " .. type(opts), 2) end
   for k in pairs(opts) do
      if k ~= "base_model_name_or_path" then
         error(("dpo.lora.save: unknown option '%s'"):format(tostring(k)), 2)
      end
   end
   local base = opts.base_model_name_or_path or info.base_model_name_or_path
   if base == nil then
      local mod = package.loaded["dpo.model"]
      local gpt = package.loaded["dpo.gpt"]
      if mod and mod.source then
         base = mod.source(model)
      elseif gpt and gpt.source then
         base = gpt.source(model)
      end
   end
   if base ~= nil and type(base) ~= "string" then
      error("dpo.lora.save: base_model_name_or_path must be a string", 2)
   end
   ensure_dir("save", dir)
   local tensors = {}
   for _, np in ipairs(model:named_parameters(true)) do
      if np[1]:match("%.lora_[AB]%.weight$") then tensors[PREFIX .. np[1]] = np[2] end
   end
   local ok, err = core.save(dir .. "/adapter_model.safetensors", tensors, { format = "pt" })
   if not ok then error("dpo.lora.save: " .. err, 2) end
   local config = {
      peft_type = "LORA",
      task_type = "CAUSAL_LM",
      r = info.r,
      lora_alpha = num(info.alpha),
      lora_dropout = num(info.dropout),
      target_modules = info.target_modules,
      use_rslora = info.use_rslora,
      bias = "none",
      fan_in_fan_out = info.fan_in_fan_out,
      init_lora_weights = true,
      inference_mode = true,
      base_model_name_or_path = base or cjson.null,
      modules_to_save = cjson.null,
      layers_to_transform = cjson.null,
      layers_pattern = cjson.null,
      rank_pattern = {}, -- cjson writes an empty table as {}
      alpha_pattern = {},
      use_dora = false,
      revision = cjson.null,
   }
   ok, err = core.write_file(dir .. "/adapter_config.json", cjson.encode(config) .. "\n")
   if not ok then error("dpo.lora.save: " .. err, 2) end
   return true
end

local function read_json(path)
   local f, err = io.open(path, "rb")
   if not f then error("dpo.lora.load: " .. err, 3) end
   local s = f:read("a")
   f:close()
   local ok, t = pcall(cjson.decode, s)
   if not ok or type(t) ~= "table" then
      error(("dpo.lora.load: %s: not valid JSON (%s)"):format(path, tostring(t)), 3)
   end
   return t
end

local function given(v)
   if v == nil or v == cjson.null or v == false then return false end
   if type(v) == "table" then return next(v) ~= nil end
   return true
end

local function shape_str(s) return table.concat(s, "x") end

-- The adapters a config and tensor file describe: {module = {A =, B =}}, ordered module list.
local function read_adapters(cpath, wpath, conf, tensors)
   local function fail(msg) error(("dpo.lora.load: %s"):format(msg), 4) end
   if conf.peft_type ~= nil and conf.peft_type ~= "LORA" then
      fail(("%s: peft_type is %s, not \"LORA\""):format(cpath, tostring(conf.peft_type)))
   end
   if conf.bias ~= nil and conf.bias ~= "none" then
      fail(("%s: bias %q is not supported (only \"none\")"):format(cpath, tostring(conf.bias)))
   end
   for _, k in ipairs{ "modules_to_save", "layers_to_transform", "rank_pattern", "alpha_pattern", "use_dora" } do
      if given(conf[k]) then fail(("%s: %s is not supported"):format(cpath, k)) end
   end
   local r = math.tointeger(conf.r)
   if not r or r < 1 then fail(("%s: r is %s, not a positive integer"):format(cpath, tostring(conf.r))) end
   local byname, modules = {}, {}
   for name, t in pairs(tensors) do
      local mod, which = name:match("^(.+)%.lora_([AB])%.weight$")
      if not mod then fail(("%s: unexpected tensor '%s'"):format(wpath, name)) end
      if mod:sub(1, #PREFIX) == PREFIX then mod = mod:sub(#PREFIX + 1) end
      if not byname[mod] then
         byname[mod] = {}
         modules[#modules + 1] = mod
      end
      byname[mod][which] = t
      if #t:shape() ~= 2 or (which == "A" and t:shape()[1] ~= r) or (which == "B" and t:shape()[2] ~= r) then
         fail(("%s: tensor '%s' has shape %s, not that of rank %d"):format(wpath, name, shape_str(t:shape()), r))
      end
   end
   if #modules == 0 then fail(wpath .. ": no adapter tensors") end
   for _, mod in ipairs(modules) do
      if not byname[mod].A or not byname[mod].B then
         fail(("%s: module %s has lora_%s but not lora_%s"):format(wpath, mod,
            byname[mod].A and "A" or "B", byname[mod].A and "B" or "A"))
      end
   end
   table.sort(modules)
   return byname, modules, r
end

function lora.load(model, dir)
   local info = check_model("load", model)
   check_dir("load", dir)
   local cpath, wpath = dir .. "/adapter_config.json", dir .. "/adapter_model.safetensors"
   local conf = read_json(cpath)
   local tensors, err = core.load(wpath)
   if not tensors then error("dpo.lora.load: " .. err, 2) end
   local byname, modules, r = read_adapters(cpath, wpath, conf, tensors)
   if info then
      local have = {}
      for _, m in ipairs(info.modules) do have[m] = true end
      for _, m in ipairs(modules) do
         if not have[m] then error(("dpo.lora.load: %s: the model has no adapter on %s"):format(wpath, m), 2) end
         have[m] = nil
      end
      local left = next(have)
      if left then error(("dpo.lora.load: %s: no tensors for the model's adapter on %s"):format(wpath, left), 2) end
      if info.r ~= r then error(("dpo.lora.load: %s: rank %d, the model's adapters have %d"):format(cpath, r, info.r), 2) end
      local alpha = tonumber(conf.lora_alpha) or 8
      if math.abs(alpha - info.alpha) > 1e-6 * math.abs(alpha) or (conf.use_rslora == true) ~= info.use_rslora then
         error(("dpo.lora.load: %s: lora_alpha %s%s, the model's adapters have %s%s"):format(cpath,
            tostring(alpha), conf.use_rslora == true and " (rsLoRA)" or "", tostring(info.alpha),
            info.use_rslora and " (rsLoRA)" or ""), 2)
      end
   else
      local alpha = conf.lora_alpha
      if alpha == nil or alpha == cjson.null then alpha = 8 end
      local p = conf.lora_dropout
      if p == nil or p == cjson.null then p = 0 end
      local ok, e = pcall(lora.apply, model, { r = r, alpha = alpha, dropout = p,
         use_rslora = conf.use_rslora == true, target_modules = modules })
      if not ok then error(("dpo.lora.load: %s: %s"):format(cpath, tostring(e):gsub("^dpo%.lora%.apply: ", "")), 2) end
      local tm = conf.target_modules
      if type(tm) == "table" then
         local saved = {}
         for i, t in ipairs(tm) do saved[i] = tostring(t) end
         table.sort(saved)
         extra[model].target_modules = saved
      end
      if type(conf.base_model_name_or_path) == "string" then
         extra[model].base_model_name_or_path = conf.base_model_name_or_path
      end
   end
   local _, params = model:named_parameters(true)
   core.no_grad(function()
      for _, m in ipairs(modules) do
         for _, which in ipairs{ "A", "B" } do
            local p, t = params[m .. ".lora_" .. which .. ".weight"], byname[m][which]
            if shape_str(p:shape()) ~= shape_str(t:shape()) then
               error(("dpo.lora.load: %s: tensor '%s.lora_%s.weight' has shape %s, the model needs %s")
                  :format(wpath, m, which, shape_str(t:shape()), shape_str(p:shape())), 3)
            end
            p:copy(t)
         end
      end
   end)
   return model
end

return lora
