#!/usr/bin/env python3
"""Check the outputs of build_corpus.py; gather.sh runs it last. Standard library only.

    python3 tools/corpus/check_corpus.py --out .corpus --heldout models/heldout

Checks that every line is a well-formed record, that no held-out record (and no held-out
chat question or answer) is also in train, the size limits, and that the chat_questions are
held-out conversations. Prints a table of sizes. Exits 1 on any failure.
"""

import argparse
import gzip
import json
import os
import sys
import unicodedata

SETS = ("base", "chat", "kjv", "devil", "jargon")
HELDOUT_MAX_BYTES = 60_000
GZ_TOTAL_MAX_BYTES = 20 * 1024 * 1024

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


def check_record(name, n, rec):
    """A record is {"text": str} or {"messages": [...]}: optional system, then user/assistant."""
    if set(rec) == {"text"}:
        ok = isinstance(rec["text"], str) and rec["text"].strip() != ""
        strings = [rec["text"]]
    elif set(rec) == {"messages"}:
        msgs = rec["messages"]
        roles = [m.get("role") for m in msgs]
        if roles and roles[0] == "system":
            roles = roles[1:]
        ok = (len(roles) >= 2 and len(roles) % 2 == 0
              and all(r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles))
              and all(set(m) == {"role", "content"} and isinstance(m["content"], str)
                      and m["content"].strip() for m in msgs))
        strings = [m.get("content", "") for m in msgs]
    else:
        ok, strings = False, []
    if not ok:
        fail(f"{name} line {n}: malformed record")
    for s in strings:
        if isinstance(s, str) and unicodedata.normalize("NFC", s) != s:
            fail(f"{name} line {n}: text not in NFC")


def read_lines(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def qa(lines):
    """(questions, answers) of the single-turn conversations of a file."""
    qs, ans = set(), set()
    for line in lines:
        rec = json.loads(line)
        if "messages" in rec:
            msgs = [m for m in rec["messages"] if m["role"] != "system"]
            qs.add(msgs[0]["content"])
            ans.add(msgs[1]["content"])
    return qs, ans


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".corpus")
    ap.add_argument("--heldout", default="models/heldout")
    args = ap.parse_args()

    print(f"{'file':32s} {'bytes':>10s} {'uncompressed':>13s} {'records':>8s} "
          f"{'docs':>7s} {'chats':>7s}")
    gz_total = 0
    heldout_chat = None
    for name in SETS:
        train_path = os.path.join(args.out, f"{name}_train.jsonl.gz")
        ho_path = os.path.join(args.heldout, f"{name}.jsonl")
        files = {}
        for path in (train_path, ho_path):
            lines = read_lines(path)
            files[path] = lines
            docs = chats = 0
            for n, line in enumerate(lines, 1):
                rec = json.loads(line)
                check_record(os.path.basename(path), n, rec)
                docs += "text" in rec
                chats += "messages" in rec
            size = os.path.getsize(path)
            raw = sum(len(line.encode()) + 1 for line in lines)
            print(f"{os.path.relpath(path):32s} {size:10d} {raw:13d} {len(lines):8d} "
                  f"{docs:7d} {chats:7d}")
        gz_total += os.path.getsize(train_path)
        train, held = files[train_path], files[ho_path]
        if os.path.getsize(ho_path) > HELDOUT_MAX_BYTES:
            fail(f"{ho_path} is larger than {HELDOUT_MAX_BYTES} bytes")
        if set(train) & set(held):
            fail(f"{name}: {len(set(train) & set(held))} records are both train and held out")
        tq, ta = qa(train)
        hq, ha = qa(held)
        if tq & hq:
            fail(f"{name}: held-out questions also asked in train: {sorted(tq & hq)[:3]}")
        if ta & ha:
            fail(f"{name}: held-out answers also given in train: {sorted(ta & ha)[:3]}")
        held_texts = {json.loads(line).get("text") for line in held} - {None}
        train_texts = {json.loads(line).get("text") for line in train} - {None}
        if held_texts & train_texts:
            fail(f"{name}: held-out documents also in train")
        if name == "chat":
            heldout_chat = held

    q_path = os.path.join(args.heldout, "chat_questions.jsonl")
    questions = [json.loads(line) for line in read_lines(q_path)]
    hq, _ = qa(heldout_chat)
    if len(questions) != 5 or any(q["question"] not in hq for q in questions):
        fail("chat_questions.jsonl must hold 5 questions from the held-out chat split")
    print(f"total of the train .gz files: {gz_total} bytes")
    if gz_total >= GZ_TOTAL_MAX_BYTES:
        fail(f"the .gz outputs add up to {gz_total} bytes, over {GZ_TOTAL_MAX_BYTES}")
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
