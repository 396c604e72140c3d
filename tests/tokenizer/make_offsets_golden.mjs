// Golden token offsets from HF tokenizers itself: the npm package `tokenizers` (HF's Node.js
// binding of the Rust library, the same 0.23 line as the Python goldens of
// tools/tokenizer_golden.py). Its Encoding.getOffsets() are code points, what Python's
// `encoding.offsets` gives. Not a dependency of the test suite: the outputs are committed.
//
//   mkdir /tmp/hftok && (cd /tmp/hftok && npm install tokenizers@0.23.2)
//   NODE_PATH=/tmp/hftok/node_modules node tests/tokenizer/make_offsets_golden.mjs \
//       tests/tokenizer/out tests/data/tokenizer/golden
//
// For each tokenizer (tests/tokenizer/setup.sh writes them) and the embedded model's, writes
// golden_offsets_<name>.json: for the texts of golden_phi3.json (the corpus of
// tools/tokenizer_golden.py) and a few more, ids and offsets without and with special tokens.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(import.meta.url);
const { Tokenizer } = require("tokenizers");
const version = JSON.parse(fs.readFileSync(require.resolve("tokenizers/package.json"), "utf8")).version;

const [dataDir, outDir] = process.argv.slice(2);
const corpus = JSON.parse(fs.readFileSync(path.join(outDir, "golden_phi3.json"), "utf8"))
  .cases.map((c) => c.text);
const extra = ["Hello world", " Hello", "Hello  world ", "é", "naïve café 😀 ok", "a\u2581b", "\u2581",
  "<|user|>\nHi there<|end|>\n<|assistant|>\n", "x <s> y", "  two  spaces  ", "Hello wörld 😀"];
const sources = {
  phi3: path.join(dataDir, "phi3/tokenizer.json"),
  llama_metaspace: path.join(dataDir, "llama_metaspace/tokenizer.json"),
  cl100k_gpt2: path.join(dataDir, "cl100k_gpt2/tokenizer.json"),
  phi4: path.join(dataDir, "phi4/tokenizer.json"),
  philora_tiny: "models/philora-tiny/tokenizer.json",
};
for (const [name, file] of Object.entries(sources)) {
  const tok = Tokenizer.fromFile(file);
  const cases = [];
  for (const text of [...corpus, ...extra]) {
    const a = await tok.encode(text, null, { addSpecialTokens: false });
    const b = await tok.encode(text, null, { addSpecialTokens: true });
    cases.push({ text, ids: a.getIds(), offsets: a.getOffsets(),
      ids_with_special: b.getIds(), offsets_with_special: b.getOffsets() });
  }
  const out = path.join(outDir, `golden_offsets_${name}.json`);
  fs.writeFileSync(out, JSON.stringify({ tokenizer: name, tokenizers_npm_version: version, cases }) + "\n");
  console.log(out, cases.length);
}
