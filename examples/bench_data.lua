-- bench_data.lua: the preference-data pipeline at the size of HH-RLHF's
-- training split: read a gzip JSONL file of 160,000 HH-format pairs, parse,
-- filter, tokenize with GPT-2's tokenizer, and collate one epoch of batches.
--
--   dpolua examples/bench_data.lua [GPT2_DIR] [DATA.jsonl.gz]
--
-- GPT2_DIR holds GPT-2's tokenizer files (tokenizer.json, or vocab.json +
-- merges.txt, or encoder.json + vocab.bpe); it defaults to $DPO_GPT2_DIR.
-- Without DATA, examples/data/make_hh_sample.lua writes one (160,000 rows of
-- up to 8 turns, about 1 KB a row, as HH's are) under $TMPDIR and the
-- benchmark reads that. Not a test: it prints timings.
local gpt2 = arg[1] or os.getenv("DPO_GPT2_DIR")
if not gpt2 then
   io.stderr:write("usage: dpolua examples/bench_data.lua GPT2_DIR [DATA.jsonl.gz] ",
                   "(or set DPO_GPT2_DIR)\n")
   os.exit(2)
end

local path = arg[2]
if not path then
   local dir = (os.getenv("TMPDIR") or "/tmp") .. "/dpolua-bench-hh"
   path = dir .. "/train.jsonl.gz"
   if not io.open(path) then
      local here = arg[0]:match("^(.*)/[^/]*$") or "."
      local cmd = ("'%s' '%s/data/make_hh_sample.lua' --train=160000 --test=0 --turns=8 " ..
                   "--dirty=false --out='%s'"):format(arg[-1], here, dir)
      print("writing " .. path)
      assert(os.execute(cmd), "the generator failed")
   end
end

local clock = dpo.clock -- wall-clock seconds

local tok = assert(dpo.tokenizer.load(gpt2))
local t0 = clock()
local marks = {}
local function mark(name)
   marks[#marks + 1] = { name, clock() }
end

local ds = assert(dpo.data.hh(path))
mark("read + parse")
ds = ds:filter(dpo.filters.hh_clean()):filter(dpo.filters.distinct()):filter(dpo.filters.dedupe())
mark("filter")
ds = ds:tokenize(tok, { max_length = 512, max_prompt_length = 256 })
mark("tokenize")
local nb = 0
for _ in ds:batches(64, { shuffle = true, seed = 1 }) do nb = nb + 1 end
mark("collate")

local prev = t0
for _, m in ipairs(marks) do
   print(("%-14s %6.2f s"):format(m[1], m[2] - prev))
   prev = m[2]
end
print(("%-14s %6.2f s   (%d pairs, %d batches of 64, %s threads)"):format("total",
      prev - t0, #ds, nb, os.getenv("OMP_NUM_THREADS") or "all"))
print(ds:stats())
print(("Lua heap %.0f MB"):format(collectgarbage("count") / 1024))
