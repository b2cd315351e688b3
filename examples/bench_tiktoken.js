// The peer of examples/bench_tokenizer.lua: tiktoken's "gpt2" encoding on the
// same text, in the same run. Prints one JSON line:
//   {"seconds": best of REPS, "mb_per_s", "tokens", "checksum", "version"}
// (MB = 10^6 bytes; checksum = the sum of (position mod 7 + 1) * id, mod 2^32).
//
//   NODE_PATH=DIR/node_modules node examples/bench_tiktoken.js TEXT_FILE [REPS]
"use strict";
const fs = require("fs");
const path = require("path");
const { get_encoding } = require("tiktoken");

const [file, repsArg] = process.argv.slice(2);
const reps = Number(repsArg || 3);
const bytes = fs.readFileSync(file);
const text = bytes.toString("utf8");
const enc = get_encoding("gpt2");

let best = Infinity;
let ids;
for (let r = 0; r < reps; r++) {
  const t0 = process.hrtime.bigint();
  ids = enc.encode_ordinary(text);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  if (s < best) best = s;
}
let checksum = 0;
for (let k = 0; k < ids.length; k++) checksum = (checksum + ((k % 7) + 1) * ids[k]) >>> 0;
const pkg = path.join(path.dirname(require.resolve("tiktoken")), "package.json");
console.log(
  JSON.stringify({
    seconds: best,
    mb_per_s: bytes.length / 1e6 / best,
    tokens: ids.length,
    checksum,
    version: JSON.parse(fs.readFileSync(pkg, "utf8")).version,
  }),
);
enc.free();
