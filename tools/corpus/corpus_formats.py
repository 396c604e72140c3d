"""Readers for the on-disk formats the packages ship: dictd databases, R lazy-load databases,
WordNet 3.0 data files and the `bible` program's verse dump.

Each reader only decodes; cleaning and turning records into documents happens in corpus_sources.
"""

import gzip
import re
import struct
import zlib

# --- dictd (.index + .dict.dz) ----------------------------------------------------------------

# dictd writes offsets and lengths in the .index file as base64 numbers (most significant digit
# first) with this alphabet; see dictd's index format description (dictfmt(1)).
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}


def dictd_number(s):
    n = 0
    for c in s:
        n = n * 64 + _B64_VALUE[c]
    return n


def read_dictd(index_path, dict_dz_path):
    """Yield (headword, raw entry text) in index order, skipping the 00-database-* meta entries.

    The .dict.dz file is a gzip file (dictzip only adds a random-access table in the gzip extra
    field), so the plain gzip module can inflate it whole.
    """
    data = gzip.open(dict_dz_path).read()
    seen = set()
    with open(index_path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            head, off, length = fields[0], dictd_number(fields[1]), dictd_number(fields[2])
            if head.startswith(("00database", "00-database")):
                continue
            # Several headwords can point at the same entry (alternative spellings).
            if (off, length) in seen:
                continue
            seen.add((off, length))
            yield head, data[off:off + length].decode("utf-8")


# --- R lazy-load database (data/Rdata.rdb) -------------------------------------------------------


def read_r_character_vectors(rdb_path):
    """Yield every object of an R lazy-load .rdb file that is a plain character vector.

    An .rdb file is a sequence of records: a 4-byte big-endian uncompressed length followed by a
    zlib stream holding one object in R's XDR serialization format (version 2 or 3). Only the
    simplest object is decoded: a STRSXP without attributes, which is how janeaustenr stores each
    novel (one element per line of text). Anything else raises, so a format change is noticed.
    """
    blob = open(rdb_path, "rb").read()
    pos = 0
    while pos < len(blob):
        expected = struct.unpack(">I", blob[pos:pos + 4])[0]
        inflater = zlib.decompressobj()
        payload = inflater.decompress(blob[pos + 4:])
        pos = len(blob) - len(inflater.unused_data)
        if len(payload) != expected:
            raise ValueError("R lazy-load record has the wrong length")
        yield _unserialize_strsxp(payload)


def _unserialize_strsxp(payload):
    p = 0

    def take(n):
        nonlocal p
        out = payload[p:p + n]
        p += n
        return out

    def int32():
        return struct.unpack(">i", take(4))[0]

    if take(2) != b"X\n":
        raise ValueError("not an XDR R serialization")
    version = int32()
    int32()  # R version that wrote it
    int32()  # minimal R version to read it
    if version == 3:
        take(int32())  # native encoding name, e.g. "UTF-8"
    flags = int32()
    if flags & 0xFF != 16 or flags & (1 << 9):  # STRSXP, and no attributes
        raise ValueError("R object is not a plain character vector")
    items = []
    for _ in range(int32()):
        int32()  # CHARSXP flags (encoding bits)
        n = int32()
        items.append("" if n < 0 else take(n).decode("utf-8"))
    return items


# --- WordNet 3.0 --------------------------------------------------------------------------------

WN_POS = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
WN_FILES = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}


class Synset:
    """One line of a WordNet data.* file: its words, pointers, gloss and examples."""

    __slots__ = ("id", "pos", "words", "pointers", "gloss", "examples")

    def __init__(self, sid, pos, words, pointers, gloss, examples):
        self.id = sid
        self.pos = pos
        self.words = words          # lemmas as written, '_' replaced by ' '
        self.pointers = pointers    # (symbol, target synset id, source word no, target word no)
        self.gloss = gloss          # definition part of the gloss
        self.examples = examples    # quoted example sentences, without the quotes


_EXAMPLE_RE = re.compile(r'"([^"]*)"')


def _split_gloss(gloss):
    """WordNet glosses are 'definition; "example"; "example"'. Split them apart."""
    examples = [e.strip() for e in _EXAMPLE_RE.findall(gloss)]
    definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
    return definition, [e for e in examples if e]


def read_wordnet_data(path, pos):
    """Parse data.<pos> (format described in wndb(5WN)); yields Synset objects in file order."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # the license header lines start with two spaces
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            offset, ss_type, n_words = fields[0], fields[2], int(fields[3], 16)
            i = 4
            words = []
            for _ in range(n_words):
                word = fields[i]
                # Adjectives may carry a syntactic marker such as "(p)" or "(a)".
                word = re.sub(r"\([a-z]+\)$", "", word)
                words.append(word.replace("_", " "))
                i += 2
            n_ptr = int(fields[i])
            i += 1
            pointers = []
            for _ in range(n_ptr):
                sym, target, tpos, st = fields[i:i + 4]
                pointers.append((sym, f"{WN_FILES[WN_POS[tpos]]}{target}",
                                 int(st[:2], 16), int(st[2:], 16)))
                i += 4
            definition, examples = _split_gloss(gloss.strip())
            sid = f"{WN_FILES[pos]}{offset}"
            yield Synset(sid, WN_POS[ss_type], words, pointers, definition, examples)


def read_wordnet_index(path, pos):
    """Parse index.<pos>: yields (lemma, [synset ids in frequency order], tagged sense count)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                continue
            fields = line.split()
            lemma, synset_cnt, p_cnt = fields[0], int(fields[2]), int(fields[3])
            tagged = int(fields[5 + p_cnt])
            offsets = fields[6 + p_cnt:6 + p_cnt + synset_cnt]
            yield lemma.replace("_", " "), [WN_FILES[pos] + o for o in offsets], tagged


def read_wordnet_exceptions(path):
    """Parse <pos>.exc: yields (inflected form, base form)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 2:
                yield fields[0].replace("_", " "), fields[1].replace("_", " ")


# --- The `bible` program's dump ------------------------------------------------------------------

_VERSE_RE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def read_bible_dump(path):
    """Parse `bible -f gen1:1-rev22:21` output: yields (book abbreviation, chapter, verse, text)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            m = _VERSE_RE.match(line)
            if not m:
                raise ValueError(f"unexpected line in the bible dump: {line[:60]!r}")
            yield m.group(1), int(m.group(2)), int(m.group(3)), m.group(4).strip()
