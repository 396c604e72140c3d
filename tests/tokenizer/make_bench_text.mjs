// Builds the texts of the tokenizer benchmark from this machine's files (deterministic for a
// given machine). Usage: node make_bench_text.mjs OUT_DIR
//   OUT_DIR/english.txt  ~3 MB of English prose: licenses and documentation (README, NEWS, ...)
//   OUT_DIR/code.txt     ~3 MB of code: C/C++ headers and Python modules
// Carry OUT_DIR with the tokenizers to the machine that runs tools/tokenizer_golden.py, so HF
// tokenizers and bench/tokenizer_bench time the same bytes.
import fs from "node:fs";
import path from "node:path";
import { readText, walk } from "./files.mjs";

const out = process.argv[2];
if (!out) {
  console.error("usage: node make_bench_text.mjs OUT_DIR");
  process.exit(2);
}
fs.mkdirSync(out, { recursive: true });
const MB = 1 << 20;

// Share of letters and spaces: prose is high, tables and changelog noise lower.
function proseScore(text) {
  const letters = text.match(/[A-Za-z ]/g);
  return letters ? letters.length / text.length : 0;
}

function collect(roots, filter, accept, budget) {
  const files = [];
  for (const r of roots) walk(r, files, filter);
  const parts = [];
  let size = 0;
  for (const f of files) {
    if (size >= budget) break;
    const text = readText(f);
    if (text === null || !accept(text)) continue;
    const take = text.slice(0, 200 * 1024);
    parts.push(take);
    size += Buffer.byteLength(take);
  }
  let all = parts.join("\n");
  while (Buffer.byteLength(all) > budget) all = all.slice(0, all.length - 1024);
  return all;
}

const english = collect(
  ["/usr/share/common-licenses", "/usr/share/doc"],
  (p) => /(README|NEWS|AUTHORS|THANKS|TODO|copyright|\.txt|\.md)(\.gz)?$/i.test(path.basename(p)),
  (t) => t.length > 2000 && proseScore(t) > 0.8,
  3 * MB,
);
const code = collect(
  ["/usr/include", "/usr/lib/python3"],
  (p) => /\.(h|hpp|py)$/.test(p),
  (t) => t.length > 2000,
  3 * MB,
);
fs.writeFileSync(path.join(out, "english.txt"), english);
fs.writeFileSync(path.join(out, "code.txt"), code);
console.log(`bench texts: english ${(Buffer.byteLength(english) / MB).toFixed(2)} MB, code ${(Buffer.byteLength(code) / MB).toFixed(2)} MB in ${out}`);
