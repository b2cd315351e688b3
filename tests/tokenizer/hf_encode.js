// Hugging Face's tokenizers on a tokenizer.json dpolua wrote: the ids of
// each text (no post-processor tokens), the decoding of those ids, and the
// ids with the post-processor's tokens.
//
//   node hf_encode.js TOKENIZER_JSON TEXTS_JSON OUT_JSON
//
// TEXTS_JSON is a list of strings; OUT_JSON gets {ids: [[...]], decoded: [...], with: [[...]]}.
// The npm package `tokenizers` comes from make_reference.sh (NODE_PATH).
"use strict";
const fs = require("fs");
const { Tokenizer } = require("tokenizers");

const [tokPath, textsPath, outPath] = process.argv.slice(2);
if (!tokPath || !textsPath || !outPath) {
  console.error("usage: node hf_encode.js TOKENIZER_JSON TEXTS_JSON OUT_JSON");
  process.exit(2);
}

(async () => {
  const tok = Tokenizer.fromFile(tokPath);
  const texts = JSON.parse(fs.readFileSync(textsPath, "utf8"));
  const ids = [];
  const decoded = [];
  const withSpecial = [];
  for (const text of texts) {
    withSpecial.push((await tok.encode(text, null, { addSpecialTokens: true })).getIds());
    const enc = await tok.encode(text, null, { addSpecialTokens: false });
    const i = enc.getIds();
    ids.push(i);
    decoded.push(await tok.decode(i, false));
  }
  fs.writeFileSync(outPath, JSON.stringify({ ids, decoded, with: withSpecial }));
})().catch((err) => {
  console.error(`hf_encode.js: ${tokPath}: ${err && err.message ? err.message : err}`);
  process.exit(1);
});
