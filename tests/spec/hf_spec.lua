-- dpo.hf (Hugging Face model directories) and dpo.gpt's use of it.
--
-- Rounding to BF16 and F16 against PyTorch's bits (tests/fixtures/hf/
-- rounding.json, made by make_rounding.py there), read from the written files
-- by an independent reader (string.unpack and lua-cjson); round trips in each
-- dtype; sharded saves against huggingface_hub's splitting rule, written out
-- here; every bad checkpoint refused with a message naming the file and the
-- tensor; config.json as transformers writes it; and, when python3 has torch,
-- torch reading our BF16 and F16 files to the same values (parsed with json
-- and struct, no safetensors package).
local h = dofile("tests/spec/helper.lua")
local hf = require "dpo.hf"
local cjson = require "cjson"
local lfs = require "lfs"

-- ---- an independent reader of safetensors files --------------------------------------

local function read_st(path)
   local s = h.read(path)
   local n = string.unpack("<I8", s)
   local header = cjson.decode(s:sub(9, 8 + n))
   return header, s:sub(9 + n)
end

-- The 16-bit words of tensor name in the file at path.
local function words16(path, name)
   local header, data = read_st(path)
   local e = assert(header[name], "no tensor " .. name)
   local out = {}
   for i = e.data_offsets[1] + 1, e.data_offsets[2], 2 do out[#out + 1] = string.unpack("<I2", data, i) end
   return out, e.dtype
end

local function f32_of_bits(b) return (string.unpack("<f", string.pack("<I4", b))) end
local function bits_of_f32(x) return (string.unpack("<I4", string.pack("<f", x))) end

-- Exact equality of two lists of numbers (NaN equal to NaN, -0 told from 0).
local function same_values(got, want, what)
   assert.are.equal(#want, #got, what)
   for i = 1, #want do
      local g, w = got[i], want[i]
      if w ~= w then
         assert(g ~= g, ("%s[%d]: expected nan, got %s"):format(what, i, tostring(g)))
      else
         assert(bits_of_f32(g) == bits_of_f32(w),
                ("%s[%d]: got %.9g, expected %.9g"):format(what, i, g, w))
      end
   end
end

local function flat(t)
   local out = {}
   local function walk(x)
      if type(x) == "table" then for _, y in ipairs(x) do walk(y) end else out[#out + 1] = x end
   end
   walk(t:totable())
   return out
end

local ROUNDING = cjson.decode(h.read("tests/fixtures/hf/rounding.json")).rows

-- 16-bit words to float32 by the formats' definitions (not the code under test).
local function bf16_value(w) return f32_of_bits(w << 16) end
local function f16_value(w)
   local s, e, m = w >> 15, (w >> 10) & 31, w & 1023
   local v
   if e == 0 then v = m * 2.0 ^ -24
   elseif e == 31 then v = m == 0 and math.huge or 0 / 0
   else v = (1 + m / 1024) * 2.0 ^ (e - 15) end
   return s == 1 and -v or v
end

local function params_like(named)
   local p = {}
   for k, t in pairs(named) do p[k] = dpo.zeros(table.unpack(t:shape())) end
   return p
end

describe("dpo.hf", function()
   local dir
   before_each(function() dir = h.tmpdir() end)
   teardown(h.cleanup)

   describe("rounding", function()
      local xs, bf, hh = {}, {}, {}
      for i, r in ipairs(ROUNDING) do
         xs[i], bf[i], hh[i] = f32_of_bits(tonumber(r[1], 16)), tonumber(r[2], 16), tonumber(r[3], 16)
      end

      it("writes BF16 and F16 bits equal to PyTorch's for edges, ties and random values", function()
         local t = dpo.tensor(xs)
         same_values(flat(t), xs, "float32 input")
         assert(dpo.save(dir .. "/b.safetensors", { x = t }, nil, { dtype = "bfloat16" }))
         assert(dpo.save(dir .. "/h.safetensors", { x = t }, nil, { dtype = "float16" }))
         local got_b, dt_b = words16(dir .. "/b.safetensors", "x")
         local got_h, dt_h = words16(dir .. "/h.safetensors", "x")
         assert.are.equal("BF16", dt_b)
         assert.are.equal("F16", dt_h)
         for i = 1, #xs do
            assert(got_b[i] == bf[i], ("bf16 of %s: 0x%04x, torch 0x%04x"):format(ROUNDING[i][1], got_b[i], bf[i]))
            assert(got_h[i] == hh[i], ("f16 of %s: 0x%04x, torch 0x%04x"):format(ROUNDING[i][1], got_h[i], hh[i]))
         end
      end)

      it("packs strided tensors before rounding them", function()
         dpo.manual_seed(2)
         local t = dpo.randn(3, 5)
         assert(dpo.save(dir .. "/s.safetensors", { x = t:t(), y = t:t():contiguous() }, nil, { dtype = "bfloat16" }))
         local x, y = words16(dir .. "/s.safetensors", "x"), words16(dir .. "/s.safetensors", "y")
         assert.are.same(y, x)
         assert.are.same({ 5, 3 }, read_st(dir .. "/s.safetensors").x.shape)
      end)

      it("keeps NaN a NaN of its sign", function()
         local nan = f32_of_bits(0x7fc00000)
         local t = dpo.tensor({ nan, -nan })
         assert(dpo.save(dir .. "/n.safetensors", { x = t }, nil, { dtype = "bfloat16" }))
         local w = words16(dir .. "/n.safetensors", "x")
         assert(bf16_value(w[1]) ~= bf16_value(w[1]) and bf16_value(w[2]) ~= bf16_value(w[2]))
         assert.are.equal(bits_of_f32(flat(t)[1]) >> 31, w[1] >> 15)
         assert.are.equal(bits_of_f32(flat(t)[2]) >> 31, w[2] >> 15)
         assert(dpo.save(dir .. "/n.safetensors", { x = t }, nil, { dtype = "float16" }))
         w = words16(dir .. "/n.safetensors", "x")
         assert(f16_value(w[1]) ~= f16_value(w[1]) and f16_value(w[2]) ~= f16_value(w[2]))
         assert.are.same({ 0, 1 }, { w[1] >> 15, w[2] >> 15 })
      end)
   end)

   describe("load_weights and save_weights", function()
      local named
      before_each(function()
         dpo.manual_seed(5)
         named = { ["a.weight"] = dpo.randn(3, 4) * 10, ["b.bias"] = dpo.randn(5), ["c"] = dpo.randn(2, 2, 2) }
      end)

      it("round trips float32 exactly and reports the dtype", function()
         hf.save_weights(dir, named, nil, "t")
         assert.are.same({ "model.safetensors" }, h.listing(dir))
         local p = params_like(named)
         local info = hf.load_weights(dir, p, nil, "t")
         assert.are.equal("float32", info.dtype)
         assert.are.same({ dir .. "/model.safetensors" }, info.files)
         for k, t in pairs(named) do same_values(flat(p[k]), flat(t), k) end
         assert.are.equal("pt", select(2, dpo.load(dir .. "/model.safetensors")).format)
      end)

      it("round trips BF16 exactly for values that came in as BF16", function()
         hf.save_weights(dir, named, { dtype = "bfloat16" }, "t")
         local first = h.read(dir .. "/model.safetensors")
         local p = params_like(named)
         assert.are.equal("bfloat16", hf.load_weights(dir, p, nil, "t").dtype)
         -- the values are the BF16 words of the file, widened by definition
         for k in pairs(named) do
            local w = words16(dir .. "/model.safetensors", k)
            local want = {}
            for i, x in ipairs(w) do want[i] = bf16_value(x) end
            same_values(flat(p[k]), want, k)
         end
         -- and saving them again writes the same bytes
         local d2 = h.tmpdir()
         hf.save_weights(d2, p, { dtype = "bfloat16" }, "t")
         assert(first == h.read(d2 .. "/model.safetensors"), "BF16 bytes differ after a round trip")
         -- float16 the same way
         hf.save_weights(dir, named, { dtype = "float16" }, "t")
         assert.are.equal("float16", hf.load_weights(dir, p, nil, "t").dtype)
         for k in pairs(named) do
            local w = words16(dir .. "/model.safetensors", k)
            local want = {}
            for i, x in ipairs(w) do want[i] = f16_value(x) end
            same_values(flat(p[k]), want, k)
         end
      end)

      it("shards as huggingface_hub does, with an index, and loads the shards back", function()
         local big = {}
         for i = 1, 7 do big[("layer.%d.w"):format(i)] = dpo.randn(10, 10) end -- 200 bytes in BF16
         big["z.huge"] = dpo.randn(30, 10)                                       -- 600 bytes: alone
         hf.save_weights(dir, big, { dtype = "bfloat16", max_shard_size = 450 }, "t")
         -- in name order: 1,2 | 3,4 | 5,6 | 7 | z.huge
         local files = h.listing(dir)
         assert.are.same({ "model-00001-of-00005.safetensors", "model-00002-of-00005.safetensors",
                           "model-00003-of-00005.safetensors", "model-00004-of-00005.safetensors",
                           "model-00005-of-00005.safetensors", "model.safetensors.index.json" }, files)
         local index = cjson.decode(h.read(dir .. "/model.safetensors.index.json"))
         assert.are.equal(7 * 200 + 600, index.metadata.total_size)
         assert.are.equal("model-00002-of-00005.safetensors", index.weight_map["layer.4.w"])
         assert.are.equal("model-00004-of-00005.safetensors", index.weight_map["layer.7.w"])
         assert.are.equal("model-00005-of-00005.safetensors", index.weight_map["z.huge"])
         for name, file in pairs(index.weight_map) do
            assert(read_st(dir .. "/" .. file)[name], name .. " not in " .. file)
         end
         local p = params_like(big)
         local info = hf.load_weights(dir, p, nil, "t")
         assert.are.equal(5, #info.files)
         assert.are.equal("bfloat16", info.dtype)
         for k, t in pairs(big) do
            -- each value the BF16 word of its shard, within half a BF16 ulp of the float32
            local want = {}
            for i, x in ipairs(words16(dir .. "/" .. index.weight_map[k], k)) do want[i] = bf16_value(x) end
            same_values(flat(p[k]), want, k)
            local orig = flat(t)
            for i, v in ipairs(flat(p[k])) do
               assert(math.abs(v - orig[i]) <= math.abs(orig[i]) * 2 ^ -8, k)
            end
         end
         -- the same again, unsharded: the shards and index of the first save go
         hf.save_weights(dir, big, { dtype = "bfloat16" }, "t")
         assert.are.same({ "model.safetensors" }, h.listing(dir))
         local p3 = params_like(big)
         hf.load_weights(dir, p3, nil, "t")
         for k in pairs(big) do same_values(flat(p3[k]), flat(p[k]), k) end
         -- sharded over an unsharded save, then into fewer shards: nothing stale stays
         hf.save_weights(dir, big, { max_shard_size = "1KB" }, "t")
         assert.is_nil(lfs.attributes(dir .. "/model.safetensors"))
         local n_float32 = #h.listing(dir) - 1
         assert.is_true(n_float32 > 2)
         hf.save_weights(dir, big, { max_shard_size = "2kB" }, "t")
         for _, f in ipairs(h.listing(dir)) do
            local n, of = f:match("^model%-(%d+)%-of%-(%d+)")
            if n then assert(tonumber(of) < n_float32, "stale shard " .. f) end
         end
      end)

      it("reads sizes as huggingface_hub does and refuses others", function()
         for _, s in ipairs { "1KB", "1kB", "0.5KB", "1KiB", " 2 GB ", 999 } do
            hf.save_weights(dir, named, { max_shard_size = s }, "t")
         end
         for _, s in ipairs { "1 gb", "12", "x", "-5MB", 0, -1, 1.5, {} } do
            h.errors(function() hf.save_weights(dir, named, { max_shard_size = s }, "f") end,
                     "f: max_shard_size must be", true)
         end
         h.errors(function() hf.save_weights(dir, named, { dtype = "float64" }, "f") end,
                  'f: dtype must be "float32", "bfloat16" or "float16", got float64', true)
      end)

      it("renames, ignores and allows optional parameters", function()
         hf.save_weights(dir, { ["x.a"] = dpo.ones(2), ["x.buf"] = dpo.ones(3), ["x.b"] = dpo.ones(1) }, nil, "t")
         local p = { a = dpo.zeros(2), b = dpo.zeros(1), extra = dpo.full({ 1 }, 7) }
         hf.load_weights(dir, p, {
            rename = function(n) return n:match("^x%.(.*)$") end,
            ignore = function(n) return n == "x.buf" end,
            optional = { extra = true },
         }, "t")
         h.near(p.a, { 1, 1 })
         h.near(p.extra, { 7 })
         -- rename returning nil: unexpected
         h.errors(function()
            hf.load_weights(dir, { a = dpo.zeros(2) }, { rename = function() return nil end }, "t")
         end, "unexpected tensor 'x.a'", true)
      end)

      it("refuses each bad checkpoint, naming the file and the tensor", function()
         local path = dir .. "/model.safetensors"
         hf.save_weights(dir, named, { dtype = "bfloat16" }, "t")
         -- missing
         local p = params_like(named)
         p["d.more"] = dpo.zeros(2)
         h.errors(function() hf.load_weights(dir, p, nil, "f") end,
                  "f: " .. path .. ": missing tensor 'd.more' (shape 2)", true)
         -- unexpected
         p = params_like(named)
         p["b.bias"] = nil
         h.errors(function() hf.load_weights(dir, p, nil, "f") end,
                  "f: " .. path .. ": unexpected tensor 'b.bias'", true)
         -- misshapen
         p = params_like(named)
         p["a.weight"] = dpo.zeros(4, 3)
         h.errors(function() hf.load_weights(dir, p, nil, "f") end,
                  "f: " .. path .. ": tensor 'a.weight' has shape 3x4, the model needs 4x3", true)
         -- an integer tensor
         dpo.save(path, { ["a.weight"] = dpo.zeros(3, 4):int() })
         h.errors(function() hf.load_weights(dir, { ["a.weight"] = dpo.zeros(3, 4) }, nil, "f") end,
                  "f: " .. path .. ": tensor 'a.weight' is I32, not a floating-point tensor", true)
         -- truncated
         hf.save_weights(dir, named, { dtype = "bfloat16" }, "t")
         local bytes = h.read(path)
         h.write(path, bytes:sub(1, #bytes - 5))
         h.errors(function() hf.load_weights(dir, params_like(named), nil, "f") end,
                  "f: " .. path .. ": tensor 'c' has data_offsets", true)
         h.errors(function() hf.load_weights(dir, params_like(named), nil, "f") end, "file truncated?", true)
         -- nothing there
         os.remove(path)
         h.errors(function() hf.load_weights(dir, params_like(named), nil, "f") end,
                  "f: " .. path .. ": No such file or directory", true)
      end)

      it("refuses bad sharded checkpoints, naming the index, the shard and the tensor", function()
         local index = dir .. "/model.safetensors.index.json"
         hf.save_weights(dir, named, { max_shard_size = 30 }, "t") -- a.weight 48 B, b.bias 20 B, c 32 B
         assert.are.same({ "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                           "model-00003-of-00003.safetensors", "model.safetensors.index.json" }, h.listing(dir))
         local good = h.read(index)
         hf.load_weights(dir, params_like(named), nil, "t")
         -- a shard the index names is missing
         local shard2 = h.read(dir .. "/model-00002-of-00003.safetensors")
         os.remove(dir .. "/model-00002-of-00003.safetensors")
         h.errors(function() hf.load_weights(dir, params_like(named), nil, "f") end,
                  "f: " .. index .. " names the shard model-00002-of-00003.safetensors, which is missing", true)
         h.write(dir .. "/model-00002-of-00003.safetensors", shard2)
         -- an index that is not JSON, or has no weight_map
         h.write(index, good:sub(1, 20))
         h.errors(function() hf.load_weights(dir, params_like(named), nil, "f") end,
                  "f: " .. index .. ": not valid JSON", true)
         h.write(index, '{"metadata": {}}')
         h.errors(function() hf.load_weights(dir, params_like(named), nil, "f") end,
                  "f: " .. index .. ': no "weight_map" object', true)
         h.write(index, '{"weight_map": {"a.weight": "../x.safetensors"}}')
         h.errors(function() hf.load_weights(dir, params_like(named), nil, "f") end,
                  "is not a file name in the directory", true)
         -- a tensor the index places in a shard that lacks it
         local map = cjson.decode(good)
         map.weight_map["d.more"] = "model-00001-of-00003.safetensors"
         h.write(index, cjson.encode(map))
         h.errors(function() hf.load_weights(dir, params_like(named), nil, "f") end,
                  "f: " .. dir .. "/model-00001-of-00003.safetensors: tensor 'd.more' that " ..
                  "model.safetensors.index.json places there is missing", true)
         -- a tensor in a shard the index does not place there
         map.weight_map["d.more"], map.weight_map["b.bias"] = nil, "model-00001-of-00003.safetensors"
         map.weight_map["a.weight"] = "model-00002-of-00003.safetensors"
         h.write(index, cjson.encode(map))
         h.errors(function() hf.load_weights(dir, params_like(named), nil, "f") end,
                  "tensor 'a.weight' is not in model.safetensors.index.json's weight_map for this file", true)
         -- a missing parameter names the index
         h.write(index, good)
         local p = params_like(named)
         p["d.more"] = dpo.zeros(1)
         h.errors(function() hf.load_weights(dir, p, nil, "f") end,
                  "f: " .. index .. ": missing tensor 'd.more'", true)
      end)
   end)

   describe("configs", function()
      it("writes config.json as transformers does and reads it back", function()
         local conf = { model_type = "llama", vocab_size = 49152, rms_norm_eps = 1e-5, rope_theta = 10000,
                        initializer_range = 0.02, tie_word_embeddings = true, rope_scaling = cjson.null,
                        architectures = { "LlamaForCausalLM" }, nested = { b = 1, a = { 1.5, "x" } } }
         hf.write_config(dir, conf, "t")
         local text = h.read(dir .. "/config.json")
         assert.are.equal([[
{
  "architectures": [
    "LlamaForCausalLM"
  ],
  "initializer_range": 0.02,
  "model_type": "llama",
  "nested": {
    "a": [
      1.5,
      "x"
    ],
    "b": 1
  },
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 10000,
  "tie_word_embeddings": true,
  "vocab_size": 49152
}
]], text)
         local back = hf.read_config(dir, "t")
         assert.are.equal(1e-5, back.rms_norm_eps)
         assert.are.equal(cjson.null, back.rope_scaling)
         h.write(dir .. "/config.json", "[1, 2")
         h.errors(function() hf.read_config(dir, "f") end, "f: " .. dir .. "/config.json: not valid JSON", true)
         h.write(dir .. "/config.json", '"text"')
         h.errors(function() hf.read_config(dir, "f") end, "f: " .. dir .. "/config.json: not a JSON object", true)
         h.errors(function() hf.read_config(dir .. "/none", "f") end,
                  "f: " .. dir .. "/none/config.json: No such file or directory", true)
      end)

      it("copies a file when present", function()
         local d2 = h.tmpdir()
         assert.is_false(hf.copy_if_present(dir, d2, "generation_config.json", "t"))
         h.write(dir .. "/generation_config.json", '{"eos_token_id": 2}\n')
         assert.is_true(hf.copy_if_present(dir, d2, "generation_config.json", "t"))
         assert.are.equal('{"eos_token_id": 2}\n', h.read(d2 .. "/generation_config.json"))
         assert.is_false(hf.copy_if_present(dir, dir, "generation_config.json", "t"))
      end)
   end)
end)

describe("dpo.gpt checkpoints through dpo.hf", function()
   local cfg = { vocab_size = 37, n_ctx = 12, n_layer = 2, n_head = 2, n_embd = 8, seed = 3 }
   local IDS = dpo.tensor({ { 5, 9, 1, 30, 2, 7 }, { 3, 3, 8, 0, 0, 0 } }, "int32")
   local MASK = dpo.tensor({ { 0, 0, 1, 1, 1, 1 }, { 0, 1, 1, 0, 0, 0 } }, "int32")
   teardown(h.cleanup)

   it("loads BF16 and sharded GPT-2 directories and saves in the dtype they came in", function()
      local src = h.tmpdir()
      local m = dpo.gpt.new(cfg)
      m:save(src, { dtype = "bfloat16", max_shard_size = 1000 })
      local conf = cjson.decode(h.read(src .. "/config.json"))
      assert.are.equal("bfloat16", conf.torch_dtype)
      assert.is_true(#h.listing(src) > 3)
      -- fields the model does not use survive a load and a save
      conf.task_specific_params = { ["text-generation"] = { do_sample = true, max_length = 50 } }
      conf.bos_token_id, conf.custom_field = 36, "kept"
      h.write(src .. "/config.json", cjson.encode(conf))
      h.write(src .. "/generation_config.json", '{"bos_token_id": 36}\n')
      local back = dpo.gpt.load(src)
      -- the model holds the BF16 values: the same logps as m rounded by hand
      local _, params = m:named_parameters()
      dpo.no_grad(function()
         for _, t in pairs(params) do
            local v = flat(t)
            for i, x in ipairs(v) do
               local b = bits_of_f32(x)
               local low, top = b & 0xffff, b >> 16
               if low > 0x8000 or (low == 0x8000 and top & 1 == 1) then top = top + 1 end
               v[i] = f32_of_bits(top << 16)
            end
            t:copy(dpo.tensor(v):view(table.unpack(t:shape())))
         end
      end)
      assert.are.same(m:logps(IDS, MASK):totable(), back:logps(IDS, MASK):totable())
      -- saved again: BF16 by default, one file, the source's fields kept
      local dst = h.tmpdir()
      back:save(dst)
      assert.are.same({ "config.json", "generation_config.json", "model.safetensors" }, h.listing(dst))
      local header = read_st(dst .. "/model.safetensors")
      assert.are.equal("BF16", header["transformer.wte.weight"].dtype)
      local c2 = cjson.decode(h.read(dst .. "/config.json"))
      assert.are.equal("kept", c2.custom_field)
      assert.are.equal(36, c2.bos_token_id)
      assert.are.same(conf.task_specific_params, c2.task_specific_params)
      assert.are.equal("bfloat16", c2.torch_dtype)
      assert.are.equal(cfg.n_embd, c2.n_embd)
      -- the BF16 bytes are those that came in
      local again = dpo.gpt.load(dst)
      assert.are.same(back:logps(IDS, MASK):totable(), again:logps(IDS, MASK):totable())
      -- float32 on request, and a new model saves float32
      back:save(dst, { dtype = "float32" })
      assert.are.equal("F32", read_st(dst .. "/model.safetensors")["transformer.wte.weight"].dtype)
      assert.are.equal("float32", cjson.decode(h.read(dst .. "/config.json")).torch_dtype)
      dpo.gpt.new(cfg):save(dst)
      assert.are.equal("F32", read_st(dst .. "/model.safetensors")["transformer.wte.weight"].dtype)
      -- a training checkpoint of the BF16-loaded model stays float32 (exact resume)
      local ck = h.tmpdir() .. "/checkpoint-1"
      dpo.train.save_checkpoint(ck, { model = back })
      assert.are.equal("F32", read_st(ck .. "/model.safetensors")["transformer.wte.weight"].dtype)
      assert.are.same(back:logps(IDS, MASK):totable(), dpo.gpt.load(ck):logps(IDS, MASK):totable())
      -- misuse
      h.errors(function() back:save(dst, { dtype = "int8" }) end, 'dtype must be "float32"', true)
      h.errors(function() back:save(dst, { dtyp = "float32" }) end, "save: unknown option dtyp", true)
      h.errors(function() back:save(dst, "bfloat16") end, "save: expected a table of options", true)
   end)
end)

describe("torch reads our files", function()
   -- torch is there when its package is (importing it to find out takes seconds)
   local has_torch = io.open("/usr/lib/python3/dist-packages/torch/__init__.py") ~= nil
   teardown(h.cleanup)

   -- python3 path...: {path = {name = {float32 bits as hex}}}
   local PY = [==[
import json, struct, sys, torch
dt = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
res = {}
for path in sys.argv[1:]:
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = res[path] = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end_ = e["data_offsets"]
        t = torch.frombuffer(bytearray(raw[8 + n + b:8 + n + end_]), dtype=dt[e["dtype"]])
        t = t.reshape(e["shape"])
        out[name] = ["%08x" % (x & 0xffffffff) for x in t.float().flatten().view(torch.int32).tolist()]
print(json.dumps(res))
]==]

   local test = has_torch and it or pending
   test("in BF16 and F16, to the values dpo loads", function()
      local script = h.tmpdir() .. "/read.py"
      h.write(script, PY)
      dpo.manual_seed(11)
      local named = { w = dpo.randn(4, 5) * 100, b = dpo.randn(3) / 1000, t = dpo.tensor({ 1 / 0, -1 / 0, 0 / 0 }) }
      local dirs, loaded = {}, {}
      for _, dtype in ipairs { "bfloat16", "float16" } do
         local dir = h.tmpdir()
         hf.save_weights(dir, named, { dtype = dtype }, "t")
         local p = params_like(named)
         hf.load_weights(dir, p, nil, "t")
         dirs[#dirs + 1], loaded[dir .. "/model.safetensors"] = dir .. "/model.safetensors", p
      end
      local pipe = io.popen("/usr/bin/python3 " .. h.quote(script) .. " " .. h.quote(dirs[1]) .. " " .. h.quote(dirs[2]))
      local text = pipe:read("a")
      assert(pipe:close(), "python3 failed")
      local theirs = cjson.decode(text)
      for path, p in pairs(loaded) do
         for k in pairs(named) do
            local mine = {}
            for i, x in ipairs(flat(p[k])) do mine[i] = ("%08x"):format(bits_of_f32(x)) end
            assert.are.same(mine, theirs[path][k], path .. " " .. k)
         end
      end
   end)
end)
