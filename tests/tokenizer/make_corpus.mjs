// Builds the corpus of the tokenizer differential test. Usage: node make_corpus.mjs OUT.jsonl
//
// One JSON line {"text": ...} per record:
//   - UTF-8 text files of this machine (gzipped ones too), in chunks of at most 4 KiB:
//     /usr/share/doc, /usr/share/common-licenses, C headers, Python sources (a few MB in all);
//   - hand-written edge cases;
//   - random strings over many scripts, whitespace kinds, digits, emoji sequences and the
//     added tokens of the test vocabularies (seeded, so every run writes the same strings).
// Characters on which transformers.js (our reference here) knowingly differs from HF tokenizers
// are left out; the golden files from HF cover them (tools/tokenizer_golden.py):
//   U+0085 and U+FEFF (JavaScript's \s disagrees with Oniguruma's), U+017F (case folding of
//   the (?i:'s...) contractions), code points assigned after Unicode 14 (PCRE2 10.42's tables).
import fs from "node:fs";
import path from "node:path";
import { readText, walk } from "./files.mjs";

const outPath = process.argv[2];
if (!outPath) {
  console.error("usage: node make_corpus.mjs OUT.jsonl");
  process.exit(2);
}

const records = [];
const EXCLUDED = /[\u0085\uFEFF\u017F]/g;

function clean(text) {
  return text.replace(EXCLUDED, "");
}

// ---- files ---------------------------------------------------------------------------------------
function addChunks(text, budget) {
  let used = 0;
  let chunk = "";
  const flush = () => {
    if (chunk.length) records.push(chunk);
    used += Buffer.byteLength(chunk);
    chunk = "";
  };
  for (const line of text.split(/(?<=\n)/)) {
    if (Buffer.byteLength(chunk) + Buffer.byteLength(line) > 4096) flush();
    chunk += line;
    if (used > budget) break;
  }
  flush();
  return used;
}

function addFiles(roots, filter, budget, perFile) {
  const files = [];
  for (const r of roots) walk(r, files, filter);
  // Spread the budget over many files: take every k-th file.
  let used = 0;
  const stride = Math.max(1, Math.floor(files.length / 400));
  for (let i = 0; i < files.length && used < budget; i += stride) {
    const text = readText(files[i]);
    if (text === null) continue;
    used += addChunks(clean(text).slice(0, perFile), Math.min(perFile, budget - used));
  }
  return used;
}

const MB = 1 << 20;
let total = 0;
total += addFiles(["/usr/share/doc", "/usr/share/common-licenses"], (p) => !/\.(png|jpg|gif|pdf|ico|svg)$/.test(p), 1.6 * MB, 64 * 1024);
total += addFiles(["/usr/include"], (p) => /\.(h|hpp|hh)$/.test(p) || !path.basename(p).includes("."), 0.8 * MB, 24 * 1024);
total += addFiles(["/usr/lib/python3"], (p) => p.endsWith(".py"), 0.6 * MB, 24 * 1024);

// ---- hand-written cases --------------------------------------------------------------------------
const cases = [
  "", " ", "  ", "\n", "\t", "\r\n", "a", "Hello world", " Hello world", "Hello  world ", "   leading and trailing   ",
  "line one\nline two\r\nline three\rline four\n\n\n", "\t\tindented\twith\ttabs", "spaces    before\n    code",
  "It's don't we're they've I'm you'll he'd IT'S DON'T WE'RE", "'s 't 're 've 'm 'll 'd", "''''", "'",
  "1 12 123 1234 12345 123456 3.14159 1,000,000 0x1F 1e-9", "٠١٢٣٤٥٦٧٨٩ ०१२३ 一二三", "²³¹ ½ ¼ Ⅻ ⅷ",
  "café naïve résumé Ångström Øre straße ĳ", "e\u0301 a\u0300 n\u0303 combining marks", "Ελληνικά Русский язык Українська",
  "日本語のテキストと漢字、ひらがな、カタカナ。", "中文文本，包括标点符号！", "한국어 텍스트입니다", "ภาษาไทย", "हिन्दी भाषा",
  "العربية من اليمين إلى اليسار", "עברית מימין לשמאל", "mixed English and العربية and עברית",
  "emoji 😀😃😄 👍🏽 ❤️ 🇫🇷🇯🇵 👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏿‍💻", "©®™ ←↑→↓ ∀∂∈ℝ ≤≥≠ ⌘⌥", "\u00a0nbsp\u00a0and\u2003em\u3000ideographic",
  "\u200bzero\u200cwidth\u200djoiners\u2060", "private \ue000\uf8ff use", "astral 𝐀𝐁𝐂 𠀀𠀁 𓀀",
  "def f(x):\n    return x ** 2  # square\n", "int main() { printf(\"%d\\n\", 42); return 0; }",
  "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>", "{\"key\": [1, 2, {\"nested\": null}]}",
  "https://example.com/path?query=1&b=2#frag", "user@example.com", "C:\\Windows\\System32", "$HOME/.config",
  "▁ leading metaspace ▁▁ and runs ▁▁▁▁", "<s>bos inline</s> <unk>", "<|endoftext|>", "text<|endoftext|>text",
  "<|user|>\nhello<|end|>\n<|assistant|>\nhi there<|end|>\n", "<|system|> You are helpful.<|end|><|user|>  spaced  <|end|>",
  "<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>", "<|user|<|end|>> nested <<|user|>>",
  "<|endofprompt|> <|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>", "<|tool|>[{\"name\": \"f\"}]<|/tool|>",
  "\u0000 nul \u0001 \u001f controls \u007f del", "\uFFFD replacement char", "a\u0301\u0302\u0303\u0304 stacked",
  "x".repeat(300), "ab".repeat(200), " ".repeat(100) + "x", "\n".repeat(50), "🙂".repeat(40), "٣".repeat(20),
  "ALLCAPS WORDS AND camelCase and snake_case and kebab-case", "...!!!???,,,;;;:::", "—–-‐‑‒ dashes",
];
for (const c of cases) records.push(clean(c));

// ---- random strings ------------------------------------------------------------------------------
let seed = 0x9e3779b9;
function rand() {
  // xorshift32
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return seed / 4294967296;
}
const pick = (arr) => arr[Math.floor(rand() * arr.length)];
const range = (lo, hi) => String.fromCodePoint(lo + Math.floor(rand() * (hi - lo + 1)));

const words = ["the", "The", "THE", "of", "and", "tokenizer", "merge", "über", "naïve", "don't", "it's", "We'll",
  "I'M", "x", "i", "a", "z", "42", "2024", "3.5", "foo_bar", "fooBar", "FOO", "http", "://", "www", "<", ">", "</",
  "/>", "==", "!=", "->", "=>", "::", "{", "}", "(", ")", "[", "]", ";", "'", "\"", "`", "#", "@", "$", "%", "^", "&",
  "*", "-", "+", "=", "|", "\\", "/", "?", "!", ",", ".", "…", "·"];
const spaces = [" ", " ", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", "\u000b", "\u000c", "\u00a0", "\u3000",
  "\u2002", "\u2028", "\u2029", " \n", "\n ", "\t\n", "    ", "        "];
const specials = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<s>", "</s>", "<unk>",
  "<|im_start|>", "<|im_end|>", "<|im_sep|>", "<|placeholder3|>", "<|tool_call|>", "<|dummy_7|>", "<|endofprompt|>",
  "<|", "|>", "<|user", "user|>"];
const emoji = ["😀", "👍", "👍🏻", "👍🏿", "❤️", "❤", "🇫🇷", "🇺🇸", "👨‍👩‍👧", "👩‍💻", "🏳️‍🌈", "🤷‍♀️", "✌️", "🙂", "🔥",
  "1️⃣", "#️⃣", "☺️", "🧑‍🤝‍🧑"];
const scripts = [
  () => range(0x41, 0x5a), () => range(0x61, 0x7a), () => range(0x30, 0x39), () => range(0x21, 0x2f),
  () => range(0xc0, 0x17e), () => range(0x180, 0x24f), () => range(0x300, 0x36f), () => range(0x391, 0x3c9),
  () => range(0x410, 0x44f), () => range(0x5d0, 0x5ea), () => range(0x621, 0x64a), () => range(0x660, 0x669),
  () => range(0x905, 0x939), () => range(0x93e, 0x94d), () => range(0x966, 0x96f), () => range(0xe01, 0xe3a),
  () => range(0x10a0, 0x10ff), () => range(0x1100, 0x1112), () => range(0x1e00, 0x1eff), () => range(0x2010, 0x2027),
  () => range(0x2070, 0x209c), () => range(0x20a0, 0x20bf), () => range(0x2100, 0x214f), () => range(0x2150, 0x218b),
  () => range(0x2190, 0x23ff), () => range(0x2460, 0x24ff), () => range(0x2500, 0x27bf), () => range(0x3041, 0x3096),
  () => range(0x30a1, 0x30fa), () => range(0x4e00, 0x9fa5), () => range(0xac00, 0xd7a3), () => range(0xe000, 0xe0ff),
  () => range(0xff01, 0xff5e), () => range(0x1d400, 0x1d6a5), () => range(0x1f300, 0x1f5ff), () => range(0x1f600, 0x1f64f),
  () => range(0x20000, 0x2a6d6), () => range(0x1f1e6, 0x1f1ff), () => "\u200d", () => "\ufe0f", () => "\u2581",
  () => range(0x1, 0x1f), () => "\ufffd", () => range(0x2000, 0x200a),
];

function randomString() {
  const n = 1 + Math.floor(rand() * 24);
  let s = "";
  const flavor = rand();
  for (let i = 0; i < n; ++i) {
    const r = rand();
    if (flavor < 0.4) {
      // text-like: words and spaces, now and then something else
      s += r < 0.55 ? pick(words) : r < 0.85 ? pick(spaces) : r < 0.9 ? pick(specials) : r < 0.95 ? pick(emoji) : pick(scripts)();
    } else if (flavor < 0.8) {
      // character soup
      s += r < 0.7 ? pick(scripts)() : r < 0.85 ? pick(spaces) : r < 0.93 ? pick(emoji) : pick(specials);
    } else {
      // runs of one kind
      const unit = r < 0.3 ? pick(spaces) : r < 0.6 ? pick(scripts)() : r < 0.8 ? pick(words) : pick(emoji);
      s += unit.repeat(1 + Math.floor(rand() * 8));
    }
  }
  return clean(s);
}
for (let i = 0; i < 6000; ++i) records.push(randomString());

const out = fs.openSync(outPath, "w");
for (const text of records) fs.writeSync(out, JSON.stringify({ text }) + "\n");
fs.closeSync(out);
const bytes = records.reduce((a, r) => a + Buffer.byteLength(r), 0);
console.log(`wrote ${records.length} records, ${(bytes / MB).toFixed(2)} MB of text, to ${outPath}`);
