"""Text clean-up helpers shared by every source: normalisation, sentence splitting, chunking.

Everything here is pure and deterministic (no randomness, no locale dependence), so that two runs
over the same package files give the same bytes.
"""

import re
import unicodedata

# Typographic characters that the sources use inconsistently (SOTU and the Jargon File use curly
# quotes and em dashes, the Gutenberg texts use ASCII "--"). Mapping them to one ASCII spelling
# keeps the tokenizer statistics of the tiny model from being split between two forms.
_PUNCT_MAP = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
    "\u2014": "--", "\u2013": "-", "\u2011": "-", "\u2010": "-", "\u2212": "-",
    "\u2026": "...", "\u00a0": " ", "\u00ad": "", "\u00b4": "'", "\u2022": "*",
    "\u2122": "(TM)",
}
_PUNCT_RE = re.compile("|".join(re.escape(k) for k in _PUNCT_MAP))
# Control characters other than newline and tab never belong in prose (one SOTU file has \x02).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def normalize(text):
    """NFC, ASCII punctuation for the usual typographic characters, no control characters."""
    text = unicodedata.normalize("NFC", text)
    text = _PUNCT_RE.sub(lambda m: _PUNCT_MAP[m.group(0)], text)
    text = _CONTROL_RE.sub("", text.replace("\r\n", "\n").replace("\t", " "))
    return text


def squash_spaces(text):
    """Collapse runs of spaces (Gutenberg texts put two after a full stop) and trim."""
    return re.sub(r"[ ]{2,}", " ", text).strip()


def unwrap(lines):
    """Join hard-wrapped lines of one prose paragraph into a single line."""
    return squash_spaces(" ".join(line.strip() for line in lines if line.strip()))


def paragraphs(text):
    """Split on blank lines; each paragraph is returned as its list of raw lines."""
    out, cur = [], []
    for line in text.split("\n"):
        if line.strip():
            cur.append(line.rstrip())
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def clean_paragraph_text(paras):
    """Join cleaned paragraph strings into one document text with blank lines between them."""
    return "\n\n".join(p for p in paras if p)


# Abbreviations after which a full stop does not end a sentence. Only those that actually occur
# mid-sentence in the sources matter; a missed one merely makes a sentence split too early.
_ABBREV = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "gen", "col", "capt", "lt", "gov", "sen", "rep",
    "hon", "rev", "prof", "messrs", "no", "vol", "vs", "etc", "co", "inc", "ltd", "u.s", "i.e",
    "e.g", "a.m", "p.m", "ft", "mt", "jan", "feb", "aug", "sept", "oct", "nov", "dec", "esq",
}
_SENT_END_RE = re.compile(r'([.!?]["\')\]]*)\s+(?=["\'(\[]?[A-Z0-9])')


def split_sentences(text):
    """Split running prose into sentences with a plain full-stop rule plus an abbreviation list."""
    pieces, start = [], 0
    for m in _SENT_END_RE.finditer(text):
        before = text[start:m.start(1)]
        last_word = before.rsplit(None, 1)[-1].lower() if before.split() else ""
        last_word = last_word.lstrip("(\"'")
        # "Mr. Smith", "U.S. Army", single initials like "J. Smith" are not sentence ends.
        if last_word in _ABBREV or (len(last_word) == 1 and last_word.isalpha()):
            continue
        pieces.append(text[start:m.end(1)].strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        pieces.append(tail)
    return [p for p in pieces if p]


def chunk_units(units, target, joiner):
    """Pack consecutive units (sentences or paragraphs) into chunks of about `target` chars.

    A chunk is closed once it reaches the target, so chunks end on unit boundaries and are at
    most one unit longer than the target.
    """
    chunks, cur, size = [], [], 0
    for unit in units:
        cur.append(unit)
        size += len(unit) + len(joiner)
        if size >= target:
            chunks.append(joiner.join(cur))
            cur, size = [], 0
    if cur:
        # A short tail is merged into the previous chunk rather than left as a scrap document.
        if chunks and size < target // 3:
            chunks[-1] = chunks[-1] + joiner + joiner.join(cur)
        else:
            chunks.append(joiner.join(cur))
    return chunks


_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*")


def words(text):
    """Lower-case word tokens (letters, inner apostrophes and hyphens)."""
    return [w.lower().strip("'-") for w in _WORD_RE.findall(text)]


def word_ngrams(text, n_max=5):
    """All 1..n_max word n-grams of a text, space-joined: used to match multi-word keys
    (the longest keys are country names such as "saint vincent and the grenadines")."""
    toks = words(text)
    grams = set()
    for n in range(1, n_max + 1):
        for i in range(len(toks) - n + 1):
            grams.add(" ".join(toks[i:i + n]))
    return grams


def article(word):
    """'a' or 'an' for an English word, by its spelling (good enough for dictionary headwords)."""
    w = word.lower()
    if w.startswith(("hour", "honest", "honor", "honour", "heir")):
        return "an"
    if w.startswith(("uni", "use", "usu", "uti", "ure", "eu", "one", "once", "ewe", "uk", "ufo")):
        return "a"
    return "an" if w[:1] in "aeiou" else "a"


def sentence_case(text):
    """Capitalise the first letter and make sure the text ends with terminal punctuation."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    if text[-1] not in ".!?":
        text += "."
    return text
