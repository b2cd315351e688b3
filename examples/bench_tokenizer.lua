-- Tokenizer benchmark (a benchmark, not a test): encode throughput in MB/s
-- (MB = 10^6 bytes) on generated English dialogue, one thread and batched,
-- with GPT-2's vocabulary and with one trained here, and the time to train
-- that vocabulary (8,000 tokens on 20 MB). The peer is tiktoken's "gpt2"
-- encoding, run by Node on the same text in the same run
-- (examples/bench_tiktoken.js).
--
--   dpolua examples/bench_tokenizer.lua [--mb=4] [--train-mb=20] [--vocab=8000]
--                                       [--gpt2=DIR] [--hf=DIR] [--reps=3]
--                                       [--only=llama3]
--
-- Llama 3: the HH sample's texts (examples/data/hh-sample, every chosen and
-- rejected dialogue) encoded one by one with Llama 3's tokenizer.json, on 1
-- and 2 threads, beside tiktoken's cl100k_base (the same regex family) on
-- the same texts. DIR (--hf, default $DPO_HF_DIR, else
-- build/hf-tokenizer-ref) is what tests/tokenizer/make_hf_reference.sh
-- writes. --only=llama3 runs this part alone.
--
-- DIR (default $DPO_GPT2_DIR, else build/tokenizer-ref) is what
-- tests/tokenizer/make_reference.sh writes: GPT-2's encoder.json + vocab.bpe
-- and node_modules/ with tiktoken. Without it the GPT-2 rows and the peer are
-- left out. Every figure is the best of --reps runs (the machine may be
-- shared): "cold" on a fresh tokenizer (empty word cache), "warm" on one that
-- has encoded the text before; tiktoken keeps no cache.
local opts = { mb = 4, ["train-mb"] = 20, vocab = 8000, reps = 3, only = "",
               gpt2 = os.getenv("DPO_GPT2_DIR") or "build/tokenizer-ref",
               hf = os.getenv("DPO_HF_DIR") or "build/hf-tokenizer-ref" }
for _, a in ipairs(arg or {}) do
   local k, v = a:match("^%-%-([%w%-]+)=(.*)$")
   if not k or opts[k] == nil then error("unknown option " .. a .. " (see the head of the file)") end
   opts[k] = tonumber(v) or v
end

-- ---- the text ------------------------------------------------------------------------------

local common = [[the of and to a in is you that it he was for on are as with his they I at be
this have from or one had by word but not what all were we when your can said there use an each
which she do how their if will up other about out many then them these so some her would make
like him into time has look two more write go see number no way could people my than first water
been call who oil its now find long down day did get come made may part over new sound take only
little work know place year live me back give most very after thing our just name good sentence
man think say great where help through much before line right too mean old any same tell boy
follow came want show also around form three small set put end does another well large must big
even such because turn here why ask went men read need land different home us move try kind hand
picture again change off play spell air away animal house point page letter mother answer found
study still learn should America world model train data token prefer response question please
thanks sure course example explain reason better answer pair reward policy chosen rejected]]
local words = {}
for w in common:gmatch("%S+") do words[#words + 1] = w end
local syl = { "ka", "ro", "ti", "ben", "mar", "lo", "se", "dun", "vi", "pra", "tho", "gel",
              "an", "es", "or", "qui", "ste", "fal", "nu", "dra", "mon", "cy", "ber", "tion" }
-- the long tail: pseudo-words, as many as a real corpus has rare words
local function rare(k)
   local w = {}
   repeat
      w[#w + 1] = syl[k % #syl + 1]
      k = k // #syl
   until k == 0
   return table.concat(w)
end
local extras = { "I'm", "don't", "it's", "you're", "we'll", "they've", "can't", "café",
                 "naïve", "Zürich", "—", "(see above)", "e.g.", "\"quoted\"", "🙂" }

-- n bytes of dialogue, and the same cut into conversations for batching.
local function dialogue(n, seed)
   math.randomseed(seed)
   local rnd = math.random
   local out, docs, doc, size = {}, {}, {}, 0
   local nwords, nrare = #words, 50000
   while size < n do
      local turn = { rnd(2) == 1 and "\n\nHuman:" or "\n\nAssistant:" }
      for _ = 1, rnd(1, 4) do
         local len = rnd(4, 22)
         for i = 1, len do
            local u, w = rnd()
            if u < 0.62 then
               w = words[math.floor(nwords ^ rnd())] -- about Zipf's law
            elseif u < 0.90 then
               w = rare(math.floor(nrare ^ rnd()))
            elseif u < 0.95 then
               w = extras[rnd(#extras)]
            else
               w = tostring(rnd(0, 2100)) .. (rnd(4) == 1 and "%" or "")
            end
            if i == 1 then w = w:gsub("^%l", string.upper) end
            turn[#turn + 1] = w .. (i < len and rnd(9) == 1 and "," or "")
         end
         turn[#turn] = turn[#turn] .. (rnd(6) == 1 and "?" or ".")
      end
      local s = table.concat(turn, " ")
      doc[#doc + 1] = s
      out[#out + 1] = s
      size = size + #s
      if rnd(6) == 1 then
         docs[#docs + 1] = table.concat(doc)
         doc = {}
      end
   end
   if #doc > 0 then docs[#docs + 1] = table.concat(doc) end
   return table.concat(out), docs
end

-- ---- measuring ------------------------------------------------------------------------------

local function time(fn)
   local t0 = dpo.clock()
   local r = table.pack(fn())
   return dpo.clock() - t0, table.unpack(r, 1, r.n)
end

local function mbs(nbytes, s) return nbytes / 1e6 / s end

local function checksum(ids)
   local c = 0
   for k, id in ipairs(ids:totable()) do c = (c + ((k - 1) % 7 + 1) * id) % 4294967296 end
   return c
end

local rows = {} -- what -> MB/s
local function row(what, nbytes, s, ntokens)
   rows[what] = mbs(nbytes, s)
   print(string.format("%-50s %7.1f MB/s %7.2f Mtok/s %7.3f s", what, mbs(nbytes, s),
                       ntokens / s / 1e6, s))
end

-- The best of --reps runs of fn(tok): on a fresh tokenizer each time (cold)
-- or on one that has seen the text (warm).
local function best_of(make, warm, fn)
   local best, r = math.huge, nil
   local tok = warm and make()
   if warm then fn(tok) end
   for _ = 1, opts.reps do
      local t = warm and tok or make()
      local s
      s, r = time(function() return fn(t) end)
      best = math.min(best, s)
   end
   return best, r
end

-- encode one text and the batch, cold and warm; rows named after `name`
local function bench_encode(name, make, text, docs)
   local encode = function(t) return t:encode(text) end
   local batch = function(t) return t:encode_batch(docs) end
   local s, ids = best_of(make, false, encode)
   local ntok = ids:numel()
   row(name .. ", 1 thread, cold", #text, s, ntok)
   row(name .. ", 1 thread, warm", #text, (best_of(make, true, encode)), ntok)
   local what = string.format("%s, %d texts, %d threads", name, #docs, dpo.get_num_threads())
   row(what .. ", cold", #text, (best_of(make, false, batch)), ntok)
   row(what .. ", warm", #text, (best_of(make, true, batch)), ntok)
   return ids
end

-- ---- Llama 3 on the HH sample, beside tiktoken's cl100k_base ---------------------------------

local function bench_llama3()
   local dir = opts.hf .. "/models/llama3"
   if not io.open(dir .. "/tokenizer.json") then
      print("Llama 3's tokenizer not found in " .. dir .. " (run tests/tokenizer/make_hf_reference.sh " ..
            opts.hf .. "): left out")
      return
   end
   local texts, nbytes = {}, 0
   for rec in dpo.data.jsonl("examples/data/hh-sample") do
      for _, k in ipairs({ "chosen", "rejected" }) do
         texts[#texts + 1] = rec[k]
         nbytes = nbytes + #rec[k]
      end
   end
   print(string.format("Llama 3 (tokenizer.json), the HH sample: %d texts, %d bytes", #texts, nbytes))
   local make = function() return dpo.tokenizer.load(dir) end
   local batch = function(t) return t:encode_batch(texts, { add_special_tokens = false }) end
   local before, ntok = dpo.get_num_threads(), 0
   for _, nt in ipairs({ 1, 2 }) do
      dpo.set_num_threads(nt)
      local s, out = best_of(make, false, batch)
      ntok = 0
      for _, ids in ipairs(out) do ntok = ntok + ids:numel() end
      row(string.format("dpolua Llama 3, %d thread%s, cold", nt, nt > 1 and "s" or ""), nbytes, s, ntok)
      row(string.format("dpolua Llama 3, %d thread%s, warm", nt, nt > 1 and "s" or ""), nbytes,
          (best_of(make, true, batch)), ntok)
   end
   dpo.set_num_threads(before)
   local tmp = os.tmpname() .. ".json"
   local f = assert(io.open(tmp, "wb"))
   f:write(require("cjson").encode(texts))
   f:close()
   local p = io.popen(string.format("NODE_PATH='%s/node_modules' node examples/bench_tiktoken.js " ..
                                    "'%s' %d cl100k_base 2>&1", opts.hf, tmp, opts.reps))
   local out = p:read("a")
   p:close()
   os.remove(tmp)
   local peer = out:match("^%b{}") and require("cjson").decode(out:match("^%b{}"))
   if not peer then
      print("tiktoken cl100k_base: not run (" .. out:gsub("\n.*", "") .. ")")
      return
   end
   row("tiktoken cl100k_base, 1 thread", nbytes, peer.seconds, peer.tokens)
   print("  (tiktoken " .. peer.version .. ", run by Node " ..
         (io.popen("node --version"):read("l") or "?") .. ")")
   print(string.format("Llama 3, 1 thread, cold: %.1fx tiktoken cl100k_base's MB/s (target >= 2x)",
                       rows["dpolua Llama 3, 1 thread, cold"] / rows["tiktoken cl100k_base, 1 thread"]))
end

if opts.only == "llama3" then
   bench_llama3()
   return
end

print(string.format("dpolua %s tokenizer benchmark: %s MB of dialogue to encode, %s MB to " ..
                    "train on, %d threads", dpo.version, opts.mb, opts["train-mb"],
                    dpo.get_num_threads()))
local gt, text, docs = time(function() return dialogue(math.floor(opts.mb * 1e6), 1) end)
print(string.format("generated %d bytes in %d conversations (%.1f s)", #text, #docs, gt))

-- GPT-2's vocabulary, and tiktoken on the same text
local have_gpt2 = io.open(opts.gpt2 .. "/encoder.json") ~= nil
if have_gpt2 then
   local gpt2 = function() return dpo.tokenizer.load(opts.gpt2) end
   local ids = bench_encode("dpolua GPT-2", gpt2, text, docs)
   local tmp = os.tmpname()
   local f = assert(io.open(tmp, "wb"))
   f:write(text)
   f:close()
   local p = io.popen(string.format("NODE_PATH='%s/node_modules' node examples/bench_tiktoken.js " ..
                                    "'%s' %d 2>&1", opts.gpt2, tmp, opts.reps))
   local out = p:read("a")
   p:close()
   os.remove(tmp)
   local peer = out:match("^%b{}") and require("cjson").decode(out:match("^%b{}"))
   if peer then
      row("tiktoken", #text, peer.seconds, peer.tokens)
      print("  (tiktoken " .. peer.version .. ", encoding gpt2, run by Node " ..
            (io.popen("node --version"):read("l") or "?") .. ")")
      print(string.format("  same ids as tiktoken: %s (%d tokens each)",
                          (peer.tokens == ids:numel() and peer.checksum == checksum(ids)) and "yes"
                             or "NO", ids:numel()))
   else
      print("tiktoken: not run (" .. out:gsub("\n.*", "") .. ")")
   end
else
   print("GPT-2's files not found in " .. opts.gpt2 ..
         " (run tests/tokenizer/make_reference.sh " .. opts.gpt2 .. "): GPT-2 and tiktoken left out")
end

bench_llama3()

-- training, then the trained vocabulary
local tt, train_text = time(function() return (dialogue(math.floor(opts["train-mb"] * 1e6), 2)) end)
print(string.format("generated %d bytes to train on (%.1f s)", #train_text, tt))
local ts, trained = time(function()
   return dpo.tokenizer.train({ train_text }, { vocab_size = opts.vocab })
end)
print(string.format("%-50s %7.2f s   (%d tokens, %.1f MB/s)",
                    string.format("train vocab %d on %.0f MB", opts.vocab, #train_text / 1e6), ts,
                    trained:vocab_size(), mbs(#train_text, ts)))
train_text = nil
collectgarbage()
local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p '" .. dir .. "'")
trained:save(dir)
bench_encode(string.format("dpolua trained %d", opts.vocab),
             function() return dpo.tokenizer.load(dir) end, text, docs)
os.execute("rm -rf '" .. dir .. "'")

-- the targets: one thread at least twice tiktoken's speed; training in under 60 s
if rows.tiktoken then
   print(string.format("GPT-2, 1 thread, cold: %.1fx tiktoken's MB/s (target >= 2x)",
                       rows["dpolua GPT-2, 1 thread, cold"] / rows.tiktoken))
end
print(string.format("training %d tokens on %.0f MB: %.2f s (target < 60 s)", opts.vocab,
                    opts["train-mb"], ts))
