// The peer of examples/bench_tokenizer.lua: tiktoken's "gpt2" encoding (or
// ENCODING, e.g. cl100k_base) on the same text, in the same run. Prints one
// JSON line:
//   {"seconds": best of REPS, "mb_per_s", "tokens", "checksum", "version"}
// (MB = 10^6 bytes; checksum = the sum of (position mod 7 + 1) * id, mod 2^32).
// A TEXT_FILE ending in .json is a list of texts, encoded one by one.
//
//   NODE_PATH=DIR/node_modules node examples/bench_tiktoken.js TEXT_FILE [REPS [ENCODING]]
"use strict";
const fs = require("fs");
const path = require("path");
const { get_encoding } = require("tiktoken");

const [file, repsArg, encoding] = process.argv.slice(2);
const reps = Number(repsArg || 3);
const bytes = fs.readFileSync(file);
const list = file.endsWith(".json") ? JSON.parse(bytes.toString("utf8")) : null;
const text = list ? null : bytes.toString("utf8");
const nbytes = list ? list.reduce((n, t) => n + Buffer.byteLength(t), 0) : bytes.length;
const enc = get_encoding(encoding || "gpt2");

let best = Infinity;
let ids;
for (let r = 0; r < reps; r++) {
  const t0 = process.hrtime.bigint();
  if (list) {
    const parts = [];
    for (const t of list) parts.push(enc.encode_ordinary(t));
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    if (s < best) best = s;
    ids = [];
    for (const p of parts) for (const id of p) ids.push(id);
    continue;
  } else {
    ids = enc.encode_ordinary(text);
  }
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  if (s < best) best = s;
}
let checksum = 0;
for (let k = 0; k < ids.length; k++) checksum = (checksum + ((k % 7) + 1) * ids[k]) >>> 0;
const pkg = path.join(path.dirname(require.resolve("tiktoken")), "package.json");
console.log(
  JSON.stringify({
    seconds: best,
    mb_per_s: nbytes / 1e6 / best,
    tokens: ids.length,
    checksum,
    version: JSON.parse(fs.readFileSync(pkg, "utf8")).version,
  }),
);
enc.free();
