// The reference ids for the tokenizer spec: GPT-2's encoding of a corpus by
// gpt-3-encoder (a port of GPT-2's encoder.py) and by tiktoken ("gpt2"),
// both installed by make_reference.sh beside the output.
//
//   node reference.js CORPUS_JSON OUT_JSON
//
// CORPUS_JSON is a list of hand-written texts; seeded random texts are added
// to it. OUT_JSON gets {versions, texts, gpt3_encoder, tiktoken, js_space}:
// the ids of every text by both encoders (plain text: special tokens are not
// matched), and js_space, texts with U+0085 and U+FEFF, where JavaScript's \s
// (gpt-3-encoder) and Unicode's White_Space (tiktoken, Hugging Face,
// Python's regex) disagree, with tiktoken's ids.
"use strict";
const fs = require("fs");
const path = require("path");

const [corpusPath, outPath] = process.argv.slice(2);
if (!corpusPath || !outPath) {
  console.error("usage: node reference.js CORPUS_JSON OUT_JSON");
  process.exit(2);
}
const gpt3 = require("gpt-3-encoder");
const { get_encoding } = require("tiktoken");
const enc = get_encoding("gpt2");

// mulberry32: a small seeded generator, so the texts are the same every run
function rng(seed) {
  return function () {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Pools of code points assigned since Unicode 6 or earlier, so every
// Unicode table in play agrees on their categories.
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);
const pools = [
  range(0x20, 0x7e), // ASCII
  range(0x20, 0x7e),
  [0x20, 0x20, 0x20, 0x0a, 0x0a, 0x09, 0x0d, 0x0b, 0x0c, 0xa0, 0x3000, 0x2003, 0x2028, 0x1c],
  range(0x30, 0x39).concat(range(0x660, 0x669), range(0x966, 0x96f), [0xbd, 0x2160, 0x2460]),
  range(0xc0, 0x17f), // Latin-1 and Latin Extended-A letters
  range(0x300, 0x36f), // combining marks
  range(0x391, 0x3c9).concat(range(0x410, 0x44f)), // Greek, Cyrillic
  range(0x4e00, 0x4e80).concat(range(0x3041, 0x3093), range(0xac00, 0xac40)), // CJK, kana, Hangul
  range(0x905, 0x939).concat(range(0x93e, 0x94d), range(0xe01, 0xe2e), range(0xe31, 0xe3a)),
  range(0x1f600, 0x1f64f).concat([0x200d, 0xfe0f, 0x1f3fd, 0x1f1eb, 0x1f1f7]), // emoji
  range(0x2010, 0x2027).concat(range(0x2200, 0x2230), [0x20ac, 0xa9, 0xae, 0x2122]),
];
const pieces = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "  ", "\n\n", "   ", " '", "''"];

function randomText(r) {
  const n = 1 + Math.floor(r() * 60);
  let s = "";
  for (let i = 0; i < n; i++) {
    if (r() < 0.1) {
      s += pieces[Math.floor(r() * pieces.length)];
      continue;
    }
    const pool = pools[Math.floor(r() * pools.length)];
    const run = 1 + Math.floor(r() * 6);
    for (let k = 0; k < run; k++) s += String.fromCodePoint(pool[Math.floor(r() * pool.length)]);
  }
  return s;
}

const texts = JSON.parse(fs.readFileSync(corpusPath, "utf8"));
const r = rng(20240601);
for (let i = 0; i < 400; i++) texts.push(randomText(r));

const jsSpace = [
  "a\u0085b",
  "x \u0085\u0085 y",
  "\u0085",
  "end\u0085",
  "\ufeffbyte order mark",
  "a \ufeff b",
  "tab\t\u0085\nnext",
];

const version = (name) =>
  JSON.parse(fs.readFileSync(path.join(path.dirname(require.resolve(name)), "package.json"), "utf8"))
    .version;
const ordinary = (t) => Array.from(enc.encode_ordinary(t));
const out = {
  versions: { "gpt-3-encoder": version("gpt-3-encoder"), tiktoken: version("tiktoken") },
  texts,
  gpt3_encoder: texts.map((t) => gpt3.encode(t)),
  tiktoken: texts.map(ordinary),
  js_space: { texts: jsSpace, tiktoken: jsSpace.map(ordinary) },
};
enc.free();
fs.writeFileSync(outPath, JSON.stringify(out));
let differ = 0;
out.texts.forEach((t, i) => {
  if (JSON.stringify(out.gpt3_encoder[i]) !== JSON.stringify(out.tiktoken[i])) differ++;
});
console.log(
  `reference.js: ${texts.length} texts, ${differ} where gpt-3-encoder and tiktoken differ -> ${outPath}`,
);
