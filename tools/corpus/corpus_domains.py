"""The three adapter domains (kjv, devil, jargon) and the non-WordNet chat data of the chat
corpus (factbook questions, "write a sentence about X").

Each domain mixes plain documents and conversations. A document and the conversations made from
it share a group and a prov, so the held-out split takes or leaves them together.
"""

import random
import re

from corpus_sources import (Item, bible_chapters, chat, devil_entries, factbook_entries,
                            jargon_entries)
from corpus_text import article, split_sentences, words

# An answer in the chat data should stay short: cut long definitions at a sentence boundary.
MAX_ANSWER_CHARS = 700


def clip_sentences(text, limit=MAX_ANSWER_CHARS, max_sentences=None):
    """The leading sentences of `text` that fit in `limit` chars (at least one sentence)."""
    out, size = [], 0
    for sent in split_sentences(text):
        if out and (size + len(sent) + 1 > limit
                    or (max_sentences and len(out) >= max_sentences)):
            break
        out.append(sent)
        size += len(sent) + 1
    return " ".join(out)


def _pick(rng, options):
    return options[rng.randrange(len(options))]


def _two_questions(rng, options):
    """Two different phrasings (each conversation of an entry asks differently)."""
    first = rng.randrange(len(options))
    second = (first + 1 + rng.randrange(len(options) - 1)) % len(options)
    return options[first], options[second]


# --- King James Bible -----------------------------------------------------------------------------

# A chapter's verses are joined into paragraphs of about this many characters.
KJV_PARAGRAPH_CHARS = 600
KJV_CHATS = 3000
KJV_Q = ["Recite {ref}.", "What does {ref} say?", "Quote {ref} from the King James Bible.",
         "How does {ref} read in the King James Version?", "What is written in {ref}?"]


def kjv_items(dump_path, seed):
    """One document per chapter ("Genesis 1" + the verses as paragraphs, numbers stripped),
    plus quotation conversations for a seeded sample of verse ranges."""
    docs, verse_refs = [], []
    for book, chap, verses in bible_chapters(dump_path):
        gid = f"kjv:{book}:{chap}"
        paras, cur = [], ""
        for _, text in verses:
            cur = f"{cur} {text}".strip()
            if len(cur) >= KJV_PARAGRAPH_CHARS:
                paras.append(cur)
                cur = ""
        if cur:
            paras.append(cur)
        docs.append(Item("kjv", gid, [gid], text=f"{book} {chap}\n\n" + "\n\n".join(paras)))
        for i in range(len(verses)):
            verse_refs.append((gid, book, chap, verses, i))
    rng = random.Random(f"{seed}:kjv-chat")
    chats = []
    for gid, book, chap, verses, i in rng.sample(verse_refs, KJV_CHATS):
        n = 1 + rng.randrange(3)          # one to three consecutive verses
        span = verses[i:i + n]
        first, last = span[0][0], span[-1][0]
        ref = f"{book} {chap}:{first}" + (f"-{last}" if last != first else "")
        answer = " ".join(text for _, text in span)
        # The reference is not a word a held-out question could be "about", hence no keys.
        chats.append(chat("kjv-quote", gid, [gid], _pick(rng, KJV_Q).format(ref=ref), answer,
                          keys=[]))
    return docs + chats


# --- The Devil's Dictionary -----------------------------------------------------------------------

DEVIL_Q = ['What does "{w}" mean?', "What does {w} mean?", 'Define "{w}".', "Define {w}.",
           'What is the meaning of "{w}"?', 'Can you explain what "{w}" means?',
           "What's the definition of {w}?", 'Please define the word "{w}".']
DEVIL_NOUN_Q = ["What is {a} {w}?"]


def devil_items(pkg, seed):
    """Each entry as a document, and as two "what does X mean" conversations whose answer is
    Bierce's definition (its prose only; the quoted verse stays in the document)."""
    rng = random.Random(f"{seed}:devil-chat")
    items = []
    for word, pos, definition, full in devil_entries(pkg):
        lemma = word.lower()
        gid = f"devil:{lemma}"
        items.append(Item("devil", gid, [gid], text=full))
        if not definition:
            continue  # an entry that is only a poem
        options = DEVIL_Q + (DEVIL_NOUN_Q if pos == "n." else [])
        answer = clip_sentences(definition)
        for q in _two_questions(rng, options):
            question = q.format(w=lemma, a=article(lemma))
            items.append(chat("devil-define", gid, [gid], question, answer, keys=[lemma]))
    return items


# --- The Jargon File ------------------------------------------------------------------------------

JARGON_Q = ['What is "{w}" in hacker slang?', 'What does "{w}" mean in hacker jargon?',
            'Explain the hacker term "{w}".', 'In hacker speak, what is "{w}"?',
            'What do hackers mean by "{w}"?', 'What is the jargon term "{w}"?']


def jargon_answer(body):
    """The first sense of an entry, without its etymology "[from ...]", sense number "1. " and
    part of speech ("vt. ", when an entry's senses differ in it)."""
    paras = [p for p in body if not re.fullmatch(r"\[[^\]]*\]", p)] or body
    first = paras[0]
    while True:  # they come in any order: "1. [techspeak] adj. Describes ..."
        stripped = re.sub(r"^(?:\d+\.|\[[^\]]*\]|(?:n|v|vt|vi|adj|adv|interj|imp|obs|pref|"
                          r"prov|excl)\.,?)\s+", "", first)
        if stripped == first or not stripped:
            break
        first = stripped
    return clip_sentences(first)


def jargon_items(pkg, seed):
    rng = random.Random(f"{seed}:jargon-chat")
    items = []
    for word, grammar, body in jargon_entries(pkg):
        gid = f"jargon:{word.lower()}"
        head = f"{word}, {grammar}" if grammar else word
        items.append(Item("jargon", gid, [gid], text=head + "\n\n" + "\n\n".join(body)))
        answer = jargon_answer(body)
        if re.match(r"(See|Syn\.|Same as)\b", answer) and len(answer) < 80:
            continue  # a bare cross reference ("See feature key.") answers nothing
        for q in _two_questions(rng, JARGON_Q):
            items.append(chat("jargon-define", gid, [gid], q.format(w=word), answer,
                              keys=[word.lower()]))
    return items


# --- Chat corpus: World Factbook questions -------------------------------------------------------

FACTBOOK_BG_Q = ["Tell me about {c}.", "Give me a short background on {c}.",
                 "Can you summarize the history of {c}?", "What should I know about {c}?",
                 "Give me a brief overview of {c}."]
FACTBOOK_ECON_Q = ["Describe the economy of {c}.", "How would you describe the economy of {c}?",
                   "Tell me about the economy of {c}.", "What is the economy of {c} like?"]


def factbook_chat_items(pkg, seed):
    rng = random.Random(f"{seed}:factbook-chat")
    items = []
    for code, name, fields in factbook_entries(pkg):
        if not name:
            continue
        gid, prov = f"factbook-chat:{code}", [f"factbook:{code}"]
        for field, options, kind in (("Background", FACTBOOK_BG_Q, "factbook-background"),
                                     ("Economy - overview", FACTBOOK_ECON_Q, "factbook-economy")):
            if field in fields:
                answer = clip_sentences(fields[field], limit=450, max_sentences=3)
                items.append(chat(kind, gid, prov, _pick(rng, options).format(c=name), answer,
                                  keys=[name.lower()]))
    return items


# --- Chat corpus: "write a sentence about X" from the base prose ---------------------------------

SENTENCE_Q = ["Write a sentence about {t}.", 'Give me a sentence that uses the word "{t}".',
              "Can you write one sentence about {t}?", 'Write a sentence containing "{t}".',
              "Say something about {t} in one sentence.", "Tell me one sentence about {t}."]
SENTENCE_CHATS = 4000
SENTENCES_PER_TOPIC = 2


def _good_sentence(sent):
    """A self-contained, plain declarative sentence: no dialogue, verse, lists or fragments."""
    n = len(sent.split())
    return (8 <= n <= 30 and sent[0].isupper() and sent.endswith(".") and "\n" not in sent
            and not re.search(r'["()\[\];:]|--', sent)
            and not re.match(r"(And|But|Or|For|Nor|So|Yet|Then|Thus|This|That|It|He|She|They|"
                             r"These|Those|His|Her|Their|Its)\b", sent))


def sentence_chat_items(docs, topics, seed):
    """docs: base-train prose Items (SOTU and literature); topics: {noun: frequency rank}.

    Each sentence is answered for one topic noun that it contains. Topics are spread out: a
    topic gets at most SENTENCES_PER_TOPIC sentences. These conversations are never held out,
    since their answers are verbatim base-train text.
    """
    rng = random.Random(f"{seed}:sentence-chat")
    candidates = []
    for doc in docs:
        for sent in split_sentences(doc.text.replace("\n", " ")):
            if _good_sentence(sent):
                candidates.append((doc, sent))
    rng.shuffle(candidates)
    used, items = {}, []
    for doc, sent in candidates:
        present = sorted({w for w in words(sent) if w in topics and used.get(w, 0) <
                          SENTENCES_PER_TOPIC}, key=lambda w: (topics[w], w))
        if not present:
            continue
        # The rarest eligible topic: common words would otherwise take every sentence.
        topic = present[-1]
        used[topic] = used.get(topic, 0) + 1
        question = _pick(rng, SENTENCE_Q).format(t=topic)
        item = chat("sentence", f"sentence:{topic}", doc.prov, question, sent, keys=[topic],
                    eligible=False)
        item.package = doc.package
        items.append(item)
        if len(items) >= SENTENCE_CHATS:
            break
    return items
