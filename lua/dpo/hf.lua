-- dpo.hf: Hugging Face model directories, whatever the model family: the
-- files from_pretrained reads and save_pretrained writes. Internal: the model
-- modules (dpo.gpt, dpo.model) load and save through it; `fname` names the
-- public function in every error ("dpo.gpt.load: DIR/config.json: ...").
--
--   hf.read_config(dir, fname) -> table
--       DIR/config.json decoded (a JSON object).
--   hf.load_weights(dir, params, opts, fname) -> {dtype =, files = {...}}
--       Fills params (name -> float32 dpo.Tensor, e.g. a model's parameters)
--       from DIR/model.safetensors or, when that file is absent (as
--       transformers chooses), from model.safetensors.index.json and the
--       shards its weight_map names. Each tensor is converted (F32, BF16, F16,
--       F64, F8 widened exactly or rounded as float32 needs) straight from the
--       mapped file into its parameter, one at a time, so loading needs no
--       memory but the parameters. Every header is checked before a byte of
--       data is read: a tensor no parameter takes, a parameter no tensor fills,
--       a shape that differs, a file too short for its header, a shard the
--       index names that is missing, a tensor the index places in another
--       shard: each an error naming the file and the tensor.
--       opts.rename(file_name) -> parameter name (default: the same name; nil
--       makes the tensor unexpected), opts.ignore(file_name) -> true to skip a
--       tensor (attention-mask buffers, a tied lm_head.weight), opts.optional
--       = {[param] = true} parameters that may be absent (left as they are).
--       dtype: "bfloat16", "float16" or "float32", the format holding most of
--       the bytes read (anything else counts as "float32"); files: the paths
--       read, in order.
--   hf.save_weights(dir, named, opts, fname)
--       named: name -> tensor. opts.dtype "float32" (default), "bfloat16" or
--       "float16" (float32 tensors rounded to nearest even; int32 stay I32);
--       opts.max_shard_size (default "2GB"): bytes, or a string "500MB",
--       "2GB", "1.5GiB" (KB, MB, GB, TB are powers of 1000, KiB... of 1024).
--       Tensors go to shards in name order as huggingface_hub splits a state
--       dict: a tensor that would take the current shard past the size starts
--       the next one, a tensor larger than the size has a shard of its own.
--       One shard is DIR/model.safetensors; several are
--       model-00001-of-0000N.safetensors with model.safetensors.index.json
--       ({"metadata": {"total_size": bytes of tensor data}, "weight_map":
--       {name: file}}). Every file carries {"format": "pt"} metadata and is
--       written atomically; the files of an earlier save that this one does
--       not write (model.safetensors, the index, other shards) are removed
--       after it, so no loader sees a mixture.
--   hf.write_config(dir, config, fname)
--       DIR/config.json as transformers writes it: keys sorted, two-space
--       indent, a final newline (written atomically). An empty table is
--       written as {}.
--   hf.copy_if_present(src_dir, dst_dir, file, fname) -> true | false
--       Copies SRC/file to DST/file (atomically) when it exists and the two
--       directories differ.
--
-- Errors are raised with the message alone (level 0): "fname: path: reason".
local core = require "dpo.core"
local cjson = require "cjson"
local lfs = require "lfs"

local hf = {}

local INDEX = "model.safetensors.index.json"
local SINGLE = "model.safetensors"
local SHARD_PATTERN = "^model%-%d+%-of%-%d+%.safetensors$"

local DTYPE_NAME = { BF16 = "bfloat16", F16 = "float16", F32 = "float32" }
local FLOAT_DTYPES = { F32 = true, BF16 = true, F16 = true, F64 = true, F8_E4M3 = true, F8_E5M2 = true }
local SAVE_DTYPES = { float32 = 4, bfloat16 = 2, float16 = 2 }

local function fail(fname, fmt, ...)
   error(fname .. ": " .. fmt:format(...), 0)
end

local function shape_str(shape)
   if #shape == 0 then return "scalar" end
   return table.concat(shape, "x")
end

local function exists(path)
   return lfs.attributes(path, "mode") ~= nil
end

local function read_file(path, fname)
   local f, err = io.open(path, "rb")
   if not f then fail(fname, "%s", err) end
   local s = f:read("a")
   f:close()
   if not s then fail(fname, "%s: cannot be read", path) end
   return s
end

-- A JSON object from path; what else is there is an error.
local function read_json(path, fname)
   local ok, t = pcall(cjson.decode, read_file(path, fname))
   if not ok then fail(fname, "%s: not valid JSON (%s)", path, tostring(t)) end
   if type(t) ~= "table" then fail(fname, "%s: not a JSON object", path) end
   return t
end

function hf.read_config(dir, fname)
   return read_json(dir .. "/config.json", fname)
end

-- ---- loading ---------------------------------------------------------------------

-- The files to read: {{file = name, path = DIR/name}}, and the weight map
-- (name -> file) when the directory is sharded.
local function weight_files(dir, fname)
   if exists(dir .. "/" .. SINGLE) or not exists(dir .. "/" .. INDEX) then
      return { { file = SINGLE, path = dir .. "/" .. SINGLE } }, nil, dir .. "/" .. SINGLE
   end
   local ipath = dir .. "/" .. INDEX
   local index = read_json(ipath, fname)
   local map = index.weight_map
   if type(map) ~= "table" then
      fail(fname, "%s: no \"weight_map\" object", ipath)
   end
   local files, seen = {}, {}
   for name, file in pairs(map) do
      if type(name) ~= "string" or type(file) ~= "string" or file == "" or file:find("/", 1, true)
         or file == "." or file == ".." then
         fail(fname, "%s: weight_map entry %s: %s is not a file name in the directory", ipath,
              tostring(name), tostring(file))
      end
      if not seen[file] then
         seen[file] = true
         files[#files + 1] = file
      end
   end
   if #files == 0 then fail(fname, "%s: the weight_map is empty", ipath) end
   table.sort(files)
   local list = {}
   for i, file in ipairs(files) do
      local path = dir .. "/" .. file
      if not exists(path) then
         fail(fname, "%s names the shard %s, which is missing (%s)", ipath, file, path)
      end
      list[i] = { file = file, path = path }
   end
   return list, map, ipath
end

local function dir_of(path)
   return path:match("^(.*)/[^/]*$") or "."
end

-- Check every header against params and decide what goes where; nothing is
-- read yet. Fills each file's reader and reads ({name, param, entry} to read).
local function plan(files, map, whole, params, opts, fname)
   local rename = opts.rename or function(n) return n end
   local ignore = opts.ignore or function() return false end
   local filled, placed = {}, {} -- param -> what fills it; tensor name -> its file
   for _, f in ipairs(files) do
      local reader, err = core.open_safetensors(f.path)
      if not reader then
         for _, g in ipairs(files) do if g.reader then g.reader:close() end end
         fail(fname, "%s", err)
      end
      f.reader, f.reads = reader, {}
      for _, en in ipairs(reader:entries()) do
         local name = en.name
         if placed[name] then
            fail(fname, "%s: tensor '%s' is also in %s", f.path, name, placed[name])
         end
         placed[name] = f.path
         if map and map[name] ~= f.file then
            fail(fname, "%s: tensor '%s' is not in %s's weight_map for this file", f.path, name, INDEX)
         end
         if not ignore(name) then
            local key = rename(name)
            local p = key ~= nil and params[key]
            if not p then fail(fname, "%s: unexpected tensor '%s'", f.path, name) end
            local want = p:shape()
            if shape_str(want) ~= shape_str(en.shape) then
               fail(fname, "%s: tensor '%s' has shape %s, the model needs %s", f.path, name,
                    shape_str(en.shape), shape_str(want))
            end
            if not FLOAT_DTYPES[en.dtype] then
               fail(fname, "%s: tensor '%s' is %s, not a floating-point tensor", f.path, name, en.dtype)
            end
            if filled[key] then
               fail(fname, "%s: tensor '%s' fills '%s', which %s fills too", f.path, name, key, filled[key])
            end
            filled[key] = ("'%s' of %s"):format(name, f.path)
            f.reads[#f.reads + 1] = { name, p, en }
         end
      end
   end
   if map then
      local names = {}
      for name in pairs(map) do names[#names + 1] = name end
      table.sort(names)
      for _, name in ipairs(names) do
         if not placed[name] then
            fail(fname, "%s: tensor '%s' that %s places there is missing", dir_of(whole) .. "/" .. map[name],
                 name, INDEX)
         end
      end
   end
   local missing = {}
   for key in pairs(params) do
      if not filled[key] and not (opts.optional and opts.optional[key]) then missing[#missing + 1] = key end
   end
   table.sort(missing)
   if #missing > 0 then
      local key = missing[1]
      fail(fname, "%s: missing tensor '%s' (shape %s)%s", whole, key, shape_str(params[key]:shape()),
           #missing > 1 and (" and %d more"):format(#missing - 1) or "")
   end
end

function hf.load_weights(dir, params, opts, fname)
   opts = opts or {}
   local files, map, whole = weight_files(dir, fname)
   local ok, err = pcall(plan, files, map, whole, params, opts, fname)
   if not ok then
      for _, f in ipairs(files) do if f.reader then f.reader:close() end end
      error(err, 0)
   end
   local bytes, paths = {}, {}
   for i, f in ipairs(files) do
      for _, r in ipairs(f.reads) do
         local en = r[3]
         local rok, rerr = pcall(f.reader.read, f.reader, r[1], r[2])
         if not rok then
            for j = i, #files do files[j].reader:close() end
            fail(fname, "%s", tostring(rerr):gsub("^bad argument #%d+ to '[^']*' %((.*)%)$", "%1"))
         end
         local size = ({ BF16 = 2, F16 = 2 })[en.dtype] or 4
         local key = DTYPE_NAME[en.dtype] and en.dtype or "F32"
         local n = 1
         for _, s in ipairs(en.shape) do n = n * s end
         bytes[key] = (bytes[key] or 0) + n * size
      end
      f.reader:close()
      paths[i] = f.path
   end
   local best, most = "F32", -1
   for _, k in ipairs { "F32", "BF16", "F16" } do
      if (bytes[k] or 0) > most then best, most = k, bytes[k] or 0 end
   end
   return { dtype = DTYPE_NAME[best], files = paths }
end

-- ---- saving ------------------------------------------------------------------------

local UNITS = {
   B = 1, KB = 1e3, MB = 1e6, GB = 1e9, TB = 1e12,
   KIB = 2 ^ 10, MIB = 2 ^ 20, GIB = 2 ^ 30, TIB = 2 ^ 40,
}

-- max_shard_size as a number of bytes.
local function shard_bytes(v, fname)
   if v == nil then v = "2GB" end
   if math.type(v) == "integer" or (type(v) == "number" and v == math.floor(v) and v < 2 ^ 63) then
      if v >= 1 then return v end
   elseif type(v) == "string" then
      local num, unit = v:match("^%s*(%d+%.?%d*)%s*([KkMmGgTt]?i?B)%s*$")
      local mult = unit and UNITS[unit:upper()]
      if num and mult and tonumber(num) * mult >= 1 then return math.floor(tonumber(num) * mult) end
   end
   fail(fname, "max_shard_size must be a number of bytes or a size such as \"500MB\" or \"2GB\", got %s",
        tostring(v))
end

-- JSON as Python's json.dumps(v, indent=2, sort_keys=True) writes it.
local function encode(v, indent)
   local t = type(v)
   if v == cjson.null or v == nil then return "null" end
   if t == "boolean" then return tostring(v) end
   if t == "number" then
      if v ~= v or v == math.huge or v == -math.huge then
         return v ~= v and "NaN" or (v > 0 and "Infinity" or "-Infinity")
      end
      if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return ("%d"):format(v) end
      for digits = 15, 17 do
         local s = ("%." .. digits .. "g"):format(v)
         if tonumber(s) == v then return s end
      end
   end
   if t == "string" then return cjson.encode(v) end
   if t ~= "table" then error(("cannot write a %s as JSON"):format(t), 0) end
   local pad, inner = indent, indent .. "  "
   local n = #v
   local is_array = n > 0
   for k in pairs(v) do
      if math.type(k) ~= "integer" or k < 1 or k > n then is_array = false break end
   end
   local parts = {}
   if is_array then
      for i = 1, n do parts[i] = inner .. encode(v[i], inner) end
      return "[\n" .. table.concat(parts, ",\n") .. "\n" .. pad .. "]"
   end
   local keys = {}
   for k in pairs(v) do keys[#keys + 1] = tostring(k) end
   table.sort(keys)
   if #keys == 0 then return "{}" end
   for i, k in ipairs(keys) do
      local val = v[k]
      if val == nil then val = v[tonumber(k)] end
      parts[i] = inner .. cjson.encode(k) .. ": " .. encode(val, inner)
   end
   return "{\n" .. table.concat(parts, ",\n") .. "\n" .. pad .. "}"
end

local function write(path, text, fname)
   local ok, err = core.write_file(path, text)
   if not ok then fail(fname, "%s", err) end
end

function hf.write_config(dir, config, fname)
   local ok, text = pcall(encode, config, "")
   if not ok then fail(fname, "%s/config.json: %s", dir, text) end
   write(dir .. "/config.json", text .. "\n", fname)
end

function hf.save_weights(dir, named, opts, fname)
   opts = opts or {}
   local dtype = opts.dtype or "float32"
   local width = SAVE_DTYPES[dtype]
   if not width then
      fail(fname, "dtype must be \"float32\", \"bfloat16\" or \"float16\", got %s", tostring(dtype))
   end
   local max = shard_bytes(opts.max_shard_size, fname)
   local names = {}
   for name in pairs(named) do names[#names + 1] = name end
   table.sort(names)
   -- huggingface_hub's split: in order, a tensor that would tip the current
   -- shard over the size starts a new one; one larger than the size is alone
   local shards, cur, cur_size, total = {}, nil, 0, 0
   for _, name in ipairs(names) do
      local t = named[name]
      local size = t:numel() * (t:dtype() == "float32" and width or 4)
      total = total + size
      if size > max then
         shards[#shards + 1] = { [name] = t }
      else
         if not cur or cur_size + size > max then
            cur, cur_size = {}, 0
            shards[#shards + 1] = cur
         end
         cur[name] = t
         cur_size = cur_size + size
      end
   end
   if #shards == 0 then shards[1] = {} end
   local keep = {}
   local function save(file, tensors)
      local ok, err = core.save(dir .. "/" .. file, tensors, { format = "pt" }, { dtype = dtype })
      if not ok then fail(fname, "%s", err) end
      keep[file] = true
   end
   if #shards == 1 then
      save(SINGLE, shards[1])
   else
      local weight_map = {}
      for i, shard in ipairs(shards) do
         local file = ("model-%05d-of-%05d.safetensors"):format(i, #shards)
         save(file, shard)
         for name in pairs(shard) do weight_map[name] = file end
      end
      write(dir .. "/" .. INDEX, encode({ metadata = { total_size = total }, weight_map = weight_map }, "")
            .. "\n", fname)
      keep[INDEX] = true
   end
   -- what an earlier save left and this one did not write
   for entry in lfs.dir(dir) do
      if not keep[entry] and (entry == SINGLE or entry == INDEX or entry:match(SHARD_PATTERN)) then
         local ok, err = os.remove(dir .. "/" .. entry)
         if not ok then fail(fname, "cannot remove the stale %s", err) end
      end
   end
end

function hf.copy_if_present(src_dir, dst_dir, file, fname)
   local src, dst = src_dir .. "/" .. file, dst_dir .. "/" .. file
   local a, b = lfs.attributes(src), lfs.attributes(dst)
   if not a or a.mode ~= "file" then return false end
   if b and a.dev == b.dev and a.ino == b.ino then return false end
   write(dst, read_file(src, fname), fname)
   return true
end

return hf
