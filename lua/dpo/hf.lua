-- dpo.hf: Hugging Face checkpoint directories: config.json, model.safetensors
-- and the files beside them.
--
--   hf.read_config(dir, fname) -> table
--       config.json decoded; a missing file or bad JSON is an error naming
--       the file (fname names the caller in the message).
--   hf.load_weights(dir, params, {rename = fn, ignore = fn, optional = set}, fname)
--       -> {dtype = "float32" | "bfloat16" | "float16"}
--       Copies model.safetensors into params (name -> tensor). A file name
--       goes through rename(name) first; a name with no parameter is skipped
--       when ignore(name) is true, else an error; a parameter the file lacks
--       is an error unless optional[name]; a shape mismatch is an error. F16
--       and BF16 are widened to float32 exactly. dtype: the file's float type.
--   hf.save_weights(dir, named, {dtype = "float32"}, fname)
--       model.safetensors from named (name -> tensor), written atomically.
--       This version writes float32 in one file only.
--   hf.write_config(dir, tbl, fname)       config.json, atomically
--   hf.copy_if_present(src, dst, name)     copies src/name to dst/name when present
local core = require "dpo.core"
local cjson = require "cjson"

local hf = {}

local function read_file(path, fname)
   local f, err = io.open(path, "rb")
   if not f then error(("%s: %s"):format(fname, err), 3) end
   local s = f:read("a")
   f:close()
   return s
end

function hf.read_config(dir, fname)
   local path = dir .. "/config.json"
   local ok, conf = pcall(cjson.decode, read_file(path, fname))
   if not ok or type(conf) ~= "table" then
      error(("%s: %s: not valid JSON (%s)"):format(fname, path, tostring(conf)), 2)
   end
   return conf
end

local DTYPES = { F32 = "float32", BF16 = "bfloat16", F16 = "float16" }

-- The float dtype a safetensors file stores (from its header), or nil.
local function file_dtype(path)
   local f = io.open(path, "rb")
   if not f then return nil end
   local head = f:read(8)
   local n = head and #head == 8 and string.unpack("<I8", head)
   local json = n and n < (1 << 27) and f:read(n)
   f:close()
   local ok, h = pcall(cjson.decode, json or "")
   if not ok or type(h) ~= "table" then return nil end
   for name, t in pairs(h) do
      if name ~= "__metadata__" and type(t) == "table" and DTYPES[t.dtype] then return DTYPES[t.dtype] end
   end
end

local function shape_str(shape)
   if #shape == 0 then return "scalar" end
   return table.concat(shape, "x")
end

function hf.load_weights(dir, params, opts, fname)
   opts = opts or {}
   local path = dir .. "/model.safetensors"
   local tensors, err = core.load(path)
   if not tensors then error(("%s: %s"):format(fname, err), 2) end
   local optional = opts.optional or {}
   local seen = {}
   for name, t in pairs(tensors) do
      local key = opts.rename and opts.rename(name) or name
      local p = params[key]
      if p then
         local want, got = p:shape(), t:shape()
         if shape_str(want) ~= shape_str(got) then
            error(("%s: %s: tensor '%s' has shape %s, the model needs %s"):format(
               fname, path, name, shape_str(got), shape_str(want)), 2)
         end
         core.no_grad(function() p:copy(t) end)
         seen[key] = true
      elseif not (opts.ignore and opts.ignore(name)) then
         error(("%s: %s: unexpected tensor '%s'"):format(fname, path, name), 2)
      end
   end
   local names = {}
   for name in pairs(params) do names[#names + 1] = name end
   table.sort(names)
   for _, name in ipairs(names) do
      if not seen[name] and not optional[name] then
         error(("%s: %s: missing tensor '%s' (shape %s)"):format(
            fname, path, name, shape_str(params[name]:shape())), 2)
      end
   end
   return { dtype = file_dtype(path) or "float32" }
end

function hf.save_weights(dir, named, opts, fname)
   opts = opts or {}
   if opts.dtype ~= nil and opts.dtype ~= "float32" then
      error(("%s: dtype %s: only float32 checkpoints can be written"):format(fname, tostring(opts.dtype)), 2)
   end
   local ok, err = core.save(dir .. "/model.safetensors", named, { format = "pt" })
   if not ok then error(("%s: %s"):format(fname, err), 2) end
end

function hf.write_config(dir, tbl, fname)
   local ok, err = core.write_file(dir .. "/config.json", cjson.encode(tbl) .. "\n")
   if not ok then error(("%s: %s"):format(fname, err), 2) end
end

function hf.copy_if_present(src, dst, name)
   local f = io.open(src .. "/" .. name, "rb")
   if not f then return false end
   local s = f:read("a")
   f:close()
   local ok, err = core.write_file(dst .. "/" .. name, s)
   if not ok then error("copy_if_present: " .. err, 2) end
   return true
end

return hf
