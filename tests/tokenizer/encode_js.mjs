// Reference encoder for the differential test: transformers.js (@lenml/tokenizers), an
// implementation of the tokenizer.json semantics independent of ours.
// Usage: node encode_js.mjs TOKENIZER_DIR INPUT.jsonl OUTPUT.jsonl
//   each input line {"text": "..."}; each output line {"ids": [...], "decoded": "..."} (no special tokens added; decoded
//   keeps special tokens).
import fs from "node:fs";
import path from "node:path";
import { tokenizers } from "@lenml/tokenizers";

const [dir, input, output] = process.argv.slice(2);
if (!output) {
  console.error("usage: node encode_js.mjs TOKENIZER_DIR INPUT.jsonl OUTPUT.jsonl");
  process.exit(2);
}
const json = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
const config = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
// The generic class: model-specific subclasses add behaviour that tokenizer.json does not state.
const tok = new tokenizers.PreTrainedTokenizer(json, { ...config, legacy: true });

const lines = fs.readFileSync(input, "utf8").split("\n").filter((l) => l.length > 0);
const out = fs.openSync(output, "w");
for (const line of lines) {
  const { text } = JSON.parse(line);
  const ids = tok.encode(text, { add_special_tokens: false });
  const decoded = ids.length ? tok.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false }) : "";
  fs.writeSync(out, JSON.stringify({ ids, decoded }) + "\n");
}
fs.closeSync(out);
