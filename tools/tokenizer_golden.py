#!/usr/bin/env python3
"""Golden tokenizer fixtures from HF `tokenizers`, and its single-thread encode speed.

Run on the GPU machine (it has `tokenizers` and `transformers`; no network needed):

    python3 tools/tokenizer_golden.py --data-dir DATA --out OUT

DATA is what tests/tokenizer/setup.sh writes (default tests/tokenizer/out): it must hold
<name>/tokenizer.json for each tokenizer (phi3, cl100k, o200k, phi4, phi4mini) and, for the
benchmark, bench/english.txt and bench/code.txt. OUT receives, per tokenizer, golden_<name>.json
(commit them under tests/data/tokenizer/golden/) and hf_tokenizers_bench.json (the MB/s figures
for bench/RESULTS.md); with --transformers-check also transformers_check.json (where
transformers' AutoTokenizer, which may rebuild the pipeline from tokenizer_config.json, differs
from tokenizers on the same files).

Each golden file holds, for a corpus of edge cases (whitespace runs, tabs, CRLF, digits, code,
contractions, accents, CJK, RTL scripts, emoji with joiners, characters outside the vocabulary,
inline special tokens, and the characters where transformers.js differs from HF), the ids with
and without special tokens and the decoded text with and without special tokens.
"""
import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # single-threaded, before tokenizers loads
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tokenizers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

NAMES = ["phi3", "cl100k", "o200k", "phi4", "phi4mini", "llama_metaspace", "cl100k_gpt2"]

CORPUS = [
    # empty and whitespace
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n ", "\t\t\t", "a  b", "a   b", "a\tb", "a \t b",
    "trailing   ", "   leading", "  both  ", "line1\nline2", "line1\r\nline2\r\n", "para1\n\n\npara2",
    "mixed \t\n\r\n \u00a0 whitespace", "\u3000ideographic\u3000space", "\u2028line sep\u2029para sep",
    "\u0085next line", "\ufeffbyte order mark", "zero\u200bwidth\u200cnon\u200djoiner",
    # digits and numbers
    "0", "7", "42", "123", "1234", "12345", "1234567890", "3.14159", "1,000,000", "-17", "+3", "1e10", "0x1F", "2024-06-01",
    "٠١٢٣٤٥", "१२३४", "²³", "½", "Ⅻ", "①②③",
    # contractions and case
    "it's", "It's", "IT'S", "don't", "DON'T", "we're", "they've", "I'm", "you'll", "he'd", "'s", "'S", "'ll", "''",
    "it\u2019s", "it'ſ", "it'\u212a", "o'clock", "rock'n'roll",
    # accents and combining marks
    "café", "cafe\u0301", "naïve", "résumé", "Ångström", "straße", "STRASSE", "ĳ", "œuvre", "Ω≈ç√∫", "a\u0301\u0302\u0303",
    "Zürich Köln München", "ǅemal", "ﬁ ligature",
    # scripts
    "日本語のテキスト", "中文分词测试", "한국어 토큰화", "ภาษาไทย", "हिन्दी", "ქართული", "Ελληνικά", "Русский текст",
    "العربية من اليمين", "עברית מימין לשמאל", "mixed עברית and English", "ئۇيغۇرچە", "ሰላም", "ᚠᛇᚻ runes", "𐌰𐌱 gothic",
    "𝐀𝐁𝐂 math bold", "𠀀𠀁𠀂 ext-B", "\U0001f600", "𓀀 hieroglyph",
    # emoji sequences
    "😀", "👍🏽", "❤️", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🧑🏿‍💻", "🇫🇷🇯🇵", "1️⃣", "🤷‍♀️", "emoji😀in😀text", "🫠 new-ish emoji", "🩷",
    # characters outside the vocabularies / control characters
    "\u0000", "\u0001\u0002\u0003", "\u007f", "\ue000 private use", "\U000f0000 plane 15", "\ufffd", "\ufffe\uffff",
    "\u2581 metaspace char", "\u2581\u2581 two",
    # code
    "def f(x):\n    return x ** 2\n", "int main() {\n\tprintf(\"%d\\n\", 42);\n}\n", "for (int i = 0; i < n; ++i) {}",
    "if x == 1 and y != 2: pass", "<div class=\"a\">&amp;</div>", "{\"k\": [1, 2.5, null, true]}", "SELECT * FROM t WHERE id = 1;",
    "    indented four\n        eight", "x=1;y=2", "a->b", "a::b", "#include <vector>", "// comment\n/* block */", "$HOME/.bashrc",
    "https://example.com/path?q=1&r=2#f", "user@example.com", "C:\\Windows\\path",
    # punctuation runs
    "...", "!!!", "?!?!", "---", "***", "...\n", "—–‐", "«guillemets»", "“quotes”", "「括弧」",
    # special tokens inline
    "<s>", "</s>", "<unk>", "<s>text</s>", "<|endoftext|>", "a<|endoftext|>b", "<|endoftext|> <|endoftext|>",
    "<|user|>\nHello<|end|>\n<|assistant|>\n", "<|user|>  spaced  <|end|>", "<|system|>\tYou are helpful.<|end|>",
    "<|im_start|>user<|im_sep|>Hi<|im_end|>", "<|im_start|>assistant<|im_sep|>", "<|endofprompt|>", "<|fim_prefix|>x<|fim_suffix|>y<|fim_middle|>",
    "<|tool|>[{}]<|/tool|>", "<|tool_call|>", "<|dummy_5|>", "<|placeholder1|>", "<|user", "user|>", "<|<|user|>|>", "<<|end|>>",
    # longer texts
    "The quick brown fox jumps over the lazy dog. " * 8,
    "In 1492, Columbus sailed the ocean blue; in 2024 we tokenized it — with 🚀 speed & \"precision\".",
    "Lorem ipsum dolor sit amet,\n\tconsectetur adipiscing elit.\r\n  Sed do eiusmod tempor incididunt ut labore.",
    "x" * 300, "ab" * 150, " " * 64 + "end", "\n" * 40, "🙂" * 30, "a\u0301" * 50,
]


def golden(name, path):
    tok = Tokenizer.from_file(path)
    tok.no_truncation()
    tok.no_padding()
    cases = []
    for text in CORPUS:
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_special = tok.encode(text, add_special_tokens=True).ids
        cases.append({
            "text": text,
            "ids": ids,
            "ids_with_special": ids_special,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
        })
    return {
        "tokenizer": name,
        "tokenizers_version": tokenizers.__version__,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "cases": cases,
    }


def documents(text, limit=4096):
    """Splits text into documents of at most `limit` bytes at line ends (what a server encodes)."""
    docs, cur, size = [], [], 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if cur and size + n > limit:
            docs.append("".join(cur))
            cur, size = [], 0
        cur.append(line)
        size += n
    if cur:
        docs.append("".join(cur))
    return docs


def bench(name, path, texts, seconds):
    tok = Tokenizer.from_file(path)
    tok.no_truncation()
    tok.no_padding()
    out = {}
    for label, text in texts.items():
        docs = documents(text)
        nbytes = sum(len(d.encode("utf-8")) for d in docs)
        for d in docs[:50]:  # warm the cache a little, as a running server would be
            tok.encode(d, add_special_tokens=False)
        best = 0.0
        tokens = 0
        deadline = time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            tokens = 0
            for d in docs:
                tokens += len(tok.encode(d, add_special_tokens=False).ids)
            dt = time.perf_counter() - t0
            best = max(best, nbytes / dt / 1e6)
            if time.perf_counter() > deadline:
                break
        out[label] = {"mb_per_s": round(best, 2), "bytes": nbytes, "documents": len(docs), "tokens": tokens}
        print(f"  {name:9s} {label:8s} {best:8.2f} MB/s  ({nbytes / 1e6:.2f} MB, {len(docs)} docs, {tokens} tokens)")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="output of tests/tokenizer/setup.sh")
    ap.add_argument("--out", required=True, help="directory for golden_<name>.json and hf_tokenizers_bench.json")
    ap.add_argument("--names", default=",".join(NAMES), help="comma-separated tokenizer names")
    ap.add_argument("--bench-seconds", type=float, default=3.0, help="seconds of timing per tokenizer and text (0: skip)")
    ap.add_argument("--transformers-check", action="store_true",
                    help="also encode the corpus with transformers' AutoTokenizer on each tokenizer dir and report "
                         "where it differs from tokenizers (transformers_check.json)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    names = [n for n in args.names.split(",") if n]
    missing = [n for n in names if not os.path.exists(os.path.join(args.data_dir, n, "tokenizer.json"))]
    if missing:
        sys.exit(f"missing tokenizer.json for {missing} under {args.data_dir} (run tests/tokenizer/setup.sh)")

    for name in names:
        g = golden(name, os.path.join(args.data_dir, name, "tokenizer.json"))
        path = os.path.join(args.out, f"golden_{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(g, f, ensure_ascii=False, indent=0)
            f.write("\n")
        print(f"wrote {path} ({len(g['cases'])} cases)")

    if args.transformers_check:
        check_transformers(args.data_dir, names, os.path.join(args.out, "transformers_check.json"))

    if args.bench_seconds > 0:
        texts = {}
        for label in ("english", "code"):
            p = os.path.join(args.data_dir, "bench", f"{label}.txt")
            if os.path.exists(p):
                with open(p, encoding="utf-8") as f:
                    texts[label] = f.read()
        if not texts:
            print("no bench/*.txt under the data dir: skipping the benchmark")
            return
        try:
            import transformers
            tf_version = transformers.__version__
        except Exception:  # noqa: BLE001 - only recorded for information
            tf_version = None
        results = {
            "tokenizers_version": tokenizers.__version__,
            "transformers_version": tf_version,
            "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "cpu": cpu_model(),
            "threads": "RAYON_NUM_THREADS=" + os.environ.get("RAYON_NUM_THREADS", ""),
            "method": "Tokenizer.encode(doc, add_special_tokens=False) over the text cut into <=4 KiB line-aligned documents; best pass",
            "date": time.strftime("%Y-%m-%d"),
            "results": {},
        }
        print("HF tokenizers, single thread:")
        for name in names:
            results["results"][name] = bench(name, os.path.join(args.data_dir, name, "tokenizer.json"), texts, args.bench_seconds)
        path = os.path.join(args.out, "hf_tokenizers_bench.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
        print(f"wrote {path}")


def check_transformers(data_dir, names, out_path):
    """AutoTokenizer.from_pretrained(dir) may rebuild the pipeline from tokenizer_config.json
    (tokenizer_class, legacy, add_prefix_space, ...) instead of taking tokenizer.json as it is;
    report every corpus text where its ids or decoding differ from `tokenizers`."""
    import transformers
    from transformers import AutoTokenizer

    report = {"transformers_version": transformers.__version__, "tokenizers_version": tokenizers.__version__, "results": {}}
    for name in names:
        d = os.path.join(data_dir, name)
        entry = {}
        try:
            auto = AutoTokenizer.from_pretrained(d)
            entry["class"] = type(auto).__name__
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            report["results"][name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        raw = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        diffs = []
        for text in CORPUS:
            for special in (False, True):
                a = raw.encode(text, add_special_tokens=special).ids
                b = auto(text, add_special_tokens=special)["input_ids"]
                if a != b:
                    diffs.append({"text": text, "add_special_tokens": special, "tokenizers": a, "transformers": b})
            ids = raw.encode(text, add_special_tokens=False).ids
            da, db = raw.decode(ids, skip_special_tokens=False), auto.decode(ids, skip_special_tokens=False)
            if da != db:
                diffs.append({"text": text, "decode": True, "tokenizers": da, "transformers": db})
        entry["differences"] = len(diffs)
        entry["examples"] = diffs[:20]
        report["results"][name] = entry
        print(f"  transformers {entry['class']} on {name}: {len(diffs)} differences from tokenizers")
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(report, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {out_path}")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


if __name__ == "__main__":
    main()
