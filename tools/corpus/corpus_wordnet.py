"""WordNet 3.0 (wordnet-base) turned into prose sentences (base corpus) and into single-turn
question/answer conversations (chat corpus).

The glosses are definitions written as fragments ("a member of the genus Canis ..."). They are
wrapped into whole sentences whose shape depends on the part of speech:
  noun  "A dog is a member of ..."             (gloss starts with a/an: a countable noun)
        "Concord is a town in ..."             (bare gloss whose head noun is countable)
        "Information is knowledge acquired ..." (bare gloss whose head is a mass noun)
        'The word "hatred" means the emotion of hate.'  (anything else)
  verb  "To run is to move fast by ..."
  adj   'The adjective "big" means having a relatively great size.'
  adv   'The adverb "quickly" means with rapid movements.'
"""

import os
import random
import re

from corpus_formats import read_wordnet_data, read_wordnet_exceptions, read_wordnet_index
from corpus_sources import Item, chat
from corpus_text import article, normalize, sentence_case, words

POS_NAMES = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
_DETERMINERS = ("a ", "an ", "the ", "any ", "one ", "someone", "something", "anything",
                "everything", "every ", "each ", "all ", "some ", "two ", "three ", "this ",
                "that ", "those ", "these ", "your ", "his ", "her ", "its ", "their ")


class WordNet:
    def __init__(self, wn_dir):
        self.synsets = {}
        for pos in ("noun", "verb", "adj", "adv"):
            for syn in read_wordnet_data(os.path.join(wn_dir, "data." + pos), pos):
                syn.gloss = normalize(syn.gloss)
                syn.examples = [normalize(e) for e in syn.examples]
                self.synsets[syn.id] = syn
        # (lemma, pos) -> synset ids in WordNet's frequency order, and how many are sense-tagged
        self.senses = {}
        for pos in ("noun", "verb", "adj", "adv"):
            for lemma, ids, tagged in read_wordnet_index(os.path.join(wn_dir, "index." + pos),
                                                         pos):
                self.senses[(lemma, pos)] = (ids, tagged)
        # How often each lemma was seen in the sense-tagged corpora: a frequency for ranking.
        self.freq = {}
        with open(os.path.join(wn_dir, "cntlist.rev"), encoding="utf-8") as f:
            for line in f:
                key, _, count = line.split()
                lemma = key.split("%", 1)[0].replace("_", " ")
                self.freq[lemma] = self.freq.get(lemma, 0) + int(count)
        self.plurals = [(base, plural) for plural, base in
                        read_wordnet_exceptions(os.path.join(wn_dir, "noun.exc"))]
        self.corpus_counts = {}

    def tagged_lemmas(self):
        """(lemma, pos) pairs that occur in the sense-tagged corpora, most frequent first."""
        pairs = [(lemma, pos) for (lemma, pos), (ids, tagged) in self.senses.items()
                 if tagged > 0 and _usable_lemma(lemma)]
        return sorted(pairs, key=lambda lp: (-self.freq.get(lp[0], 0), lp[0], lp[1]))

    def lemma_in(self, syn, lemma):
        """The synset's own spelling of a lemma (index lemmas are lower case)."""
        for word in syn.words:
            if word.lower() == lemma:
                return word
        return lemma

    def set_corpus_counts(self, counts):
        """Word counts of the base prose, used to tell count nouns from mass nouns."""
        self.corpus_counts = counts

    def is_count_noun(self, lemma):
        """True if the prose has the noun in the plural, False if it has the singular at least
        eight times but never a plural ("desperation", "ivory"), None if it cannot tell."""
        counts = getattr(self, "corpus_counts", {})
        word = lemma.lower().rsplit(" ", 1)[-1]
        plurals = {word + "s", word + "es"} | {p for b, p in self.plurals if b == word}
        if word.endswith("y"):
            plurals.add(word[:-1] + "ies")
        if any(counts.get(p, 0) for p in plurals):
            return True
        return False if counts.get(word, 0) >= 8 else None


def _usable_lemma(lemma):
    # Plain words and short phrases only: no digits, no abbreviations with dots.
    return re.fullmatch(r"[a-z][a-z' -]*[a-z]", lemma) is not None and lemma.count(" ") <= 2


# --- Sentences from glosses -----------------------------------------------------------------

_DOMAIN_RE = re.compile(r"^\(([a-z]+(?: [a-z]+){0,3})\)\s+(.*)$")
# Parentheticals that qualify usage rather than name a field of knowledge.
_NOT_DOMAINS = {"of", "usually", "often", "sometimes", "especially", "used", "chiefly", "plural",
                "informal", "formal", "followed", "in", "with", "as", "by", "for", "when", "not",
                "now", "also", "archaic", "obsolete", "slang", "rare", "literary", "nonstandard",
                "or", "and", "a", "an", "the", "esp", "ordinarily", "always", "frequently"}


def _split_domain(gloss):
    """'(genetics) a segment of DNA' -> ('genetics', 'a segment of DNA')."""
    m = _DOMAIN_RE.match(gloss)
    if m and m.group(1).split()[0] not in _NOT_DOMAINS:
        return m.group(1), m.group(2)
    return None, gloss


def _is_plural(word):
    return word.endswith("s") and not word.endswith(("ss", "us", "is", "as", "os"))


def bare_gloss_article(wn, gloss):
    """For a gloss without a determiner ("town in eastern Massachusetts"): "a"/"an" when its
    head noun is countable, "" when it is a mass noun ("knowledge acquired through ..."), None
    when the head cannot be found.

    Countable means that WordNet defines the head noun's main sense with "a"/"an" itself. The
    head is taken to be the first word that is not an adjective or adverb ("small North American
    diving duck" -> "diving"), within the first six words; it must be a noun.
    """
    toks = gloss.split()
    for tok in toks[:6]:
        t = tok.strip(",;()").lower()
        if (t, "adj") in wn.senses or (t, "adv") in wn.senses:
            continue
        if (t, "noun") in wn.senses:
            head = wn.synsets[wn.senses[(t, "noun")][0][0]]
            countable = _split_domain(head.gloss)[1].startswith(("a ", "an "))
            return article(toks[0]) if countable else ""
        return None
    return None


def noun_parts(wn, lemma, gloss):
    """(subject, predicate) of "<subject> is <predicate>" for a noun's gloss (domain already
    split off), or None when only 'The word "x" means <gloss>' is safe."""
    name = lemma[:1].isupper()
    counted = f"{article(lemma).capitalize()} {lemma}"
    if not name and wn.is_count_noun(lemma) is False:
        counted = lemma[0].upper() + lemma[1:]              # "Desperation is a state ..."
    if gloss.startswith(("a ", "an ")):
        return (lemma if name else counted), gloss          # "A dog is a member ..."
    first = gloss.split(" ", 1)[0]
    if _is_plural(first) or first.endswith("ing"):
        return None                                         # "grains used as food"
    if gloss.startswith(_DETERMINERS):
        return (lemma, gloss) if name else None             # "Paris is the capital ..."
    art = bare_gloss_article(wn, gloss)
    if art is None:
        return None
    if art:
        return (lemma if name else counted), f"{art} {gloss}"  # "Concord is a town ..."
    return lemma[0].upper() + lemma[1:], gloss               # "Information is knowledge ..."


def _is_countable(wn, lemma, gloss):
    parts = noun_parts(wn, lemma, _split_domain(gloss)[1])
    return parts is not None and parts[0].startswith(("A ", "An "))


def definition_sentence(wn, lemma, pos, gloss):
    """One grammatical sentence stating what `lemma` means, built from its gloss."""
    domain, gloss = _split_domain(gloss)
    gloss = gloss.rstrip(" .;")
    if pos == "noun":
        parts = noun_parts(wn, lemma, gloss)
        body = f"{parts[0]} is {parts[1]}" if parts else f'The word "{lemma}" means {gloss}'
    elif pos == "verb":
        body = f"To {lemma} is to {gloss}"
    else:
        body = f'The {POS_NAMES[pos]} "{lemma}" means {gloss}'
    if domain:
        # "In genetics, a gene is ..." -- but a name keeps its capital ("In music, Bach ...").
        keep_case = lemma[:1].isupper() and body.startswith(lemma)
        body = f"In {domain}, {body if keep_case else body[0].lower() + body[1:]}"
    return sentence_case(body)


def meaning_phrase(pos, gloss):
    """'it can mean <phrase>': the gloss with 'to' in front of verbs."""
    domain, gloss = _split_domain(gloss)
    gloss = gloss.rstrip(" .;")
    phrase = f"to {gloss}" if pos == "verb" else gloss
    return f"{phrase} (in {domain})" if domain else phrase


def _quote_list(items, conj="and"):
    quoted = [f'"{w}"' for w in items]
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + f" {conj} " + quoted[-1]


def examples_sentence(examples):
    """WordNet's examples are often fragments ("an active toddler"), so they are quoted as
    they are rather than dressed up as sentences."""
    if len(examples) == 1:
        return f'For example: "{examples[0]}".'
    return f'Examples: {_quote_list(examples)}.'


# A rough test that an example is a whole sentence, not a phrase: it has a subject pronoun
# or a common finite verb form.
_SENTENCE_WORDS = {"i", "he", "she", "they", "we", "you", "it", "is", "are", "was", "were",
                   "has", "have", "had", "will", "would", "can", "could", "should", "did",
                   "does", "do", "may", "might", "must"}


def looks_like_sentence(example):
    toks = words(example)
    return len(toks) >= 5 and any(t in _SENTENCE_WORDS or t.endswith("ed") for t in toks)


def synonyms_of(wn, syn, lemma):
    """The other words of a synset, skipping capitalised names for lower-case lemmas."""
    out = []
    for word in syn.words:
        if word.lower() == lemma.lower() or word.lower() in (o.lower() for o in out):
            continue
        if word[:1].isupper() and not lemma[:1].isupper():
            continue
        out.append(word)
    return out


def antonyms_of(wn, syn, lemma):
    """Lexical antonym pointers ('!') that start from this lemma's word in the synset."""
    out = []
    for sym, target, src, dst in syn.pointers:
        if sym != "!":
            continue
        if src and syn.words[src - 1].lower() != lemma.lower():
            continue
        tsyn = wn.synsets[target]
        word = tsyn.words[dst - 1] if dst else tsyn.words[0]
        if word not in out:
            out.append(word)
    return out, [target for sym, target, _, _ in syn.pointers if sym == "!"]


def hypernym_of(wn, syn):
    """The first hypernym ('@') or instance hypernym ('@i') synset, if any."""
    for sym, target, _, _ in syn.pointers:
        if sym in ("@", "@i"):
            return sym, wn.synsets[target]
    return None, None


def synset_document(wn, syn):
    """A short paragraph about one synset, for the base corpus."""
    lemma = syn.words[0]
    parts = [definition_sentence(wn, lemma, syn.pos, syn.gloss)]
    others = synonyms_of(wn, syn, lemma)
    if others:
        lead = "It is also called" if syn.pos == "noun" else "Words with the same meaning are"
        if syn.pos != "noun" and len(others) == 1:
            lead = "A word with the same meaning is"
        parts.append(f"{lead} {_quote_list(others[:4], 'or' if syn.pos == 'noun' else 'and')}.")
    sym, hyper = hypernym_of(wn, syn)
    if hyper is not None:
        h = hyper.words[0]
        if syn.pos == "verb":
            parts.append(f"It is a way to {h}.")
        elif sym == "@i":
            parts.append(f"It is an instance of {h if h[:1].isupper() else article(h) + ' ' + h}.")
        else:
            parts.append(f"It is a kind of {h}.")
    antonyms, _ = antonyms_of(wn, syn, lemma)
    if antonyms:
        parts.append(f'The opposite of "{lemma}" is {_quote_list(antonyms[:2], "or")}.')
    if syn.examples:
        parts.append(examples_sentence(syn.examples[:2]))
    return " ".join(parts)


def base_items(wn):
    """One short document per synset that has at least one word seen in WordNet's sense-tagged
    corpora (43k of the 118k synsets, ~7 MB): the rest is rare technical vocabulary that would
    crowd out the prose in the base corpus."""
    items = []
    for sid in sorted(wn.synsets):
        syn = wn.synsets[sid]
        if len(syn.gloss) < 3 or not any(wn.freq.get(w.lower(), 0) for w in syn.words):
            continue
        items.append(Item("wordnet", f"wn:{sid}", [f"wn:{sid}"], text=synset_document(wn, syn)))
    return items


# --- Conversations ------------------------------------------------------------------------------

def _uses_word(example, lemma):
    """Whether an example sentence contains the lemma (allowing regular inflections)."""
    lemma = lemma.lower()
    if " " in lemma:
        return lemma in example.lower()
    stem = lemma[:-1] if len(lemma) > 3 and lemma[-1] in "ey" else lemma
    return any(tok.startswith(stem) and len(tok) <= len(lemma) + 4 for tok in words(example))


def _pos_hint(wn, lemma, pos):
    """When a lemma has tagged senses in more than one part of speech, questions must say which."""
    tagged = [p for p in ("noun", "verb", "adj", "adv")
              if wn.senses.get((lemma.lower(), p), ((), 0))[1] > 0]
    return len(tagged) > 1


DEFINE_Q = ['What does "{w}" mean?', "What does {w} mean?", 'What is the meaning of "{w}"?',
            "Define {w}.", 'Define the word "{w}".', 'Can you explain what "{w}" means?',
            "What's the definition of {w}?", 'Please define "{w}".',
            'I came across the word "{w}". What does it mean?', 'What is meant by "{w}"?']
DEFINE_NOUN_Q = ["What is {a} {w}?", "What is {a} {w}? Please explain."]
DEFINE_VERB_Q = ["What does it mean to {w}?", 'What does the verb "{w}" mean?']
DEFINE_POS_Q = ['What does "{w}" mean as {a_pos} {pos}?', 'Define the {pos} "{w}".',
                'What is the meaning of the {pos} "{w}"?']
MULTI_Q = ['What are the different meanings of "{w}"?', 'What can "{w}" mean?',
           'Does the word "{w}" have more than one meaning?', 'List a few meanings of "{w}".']
EXAMPLE_Q = ['Use the word "{w}" in a sentence.', 'Give me an example sentence with "{w}".',
             'Can you use "{w}" in a sentence?', "Show me how to use the word {w}.",
             'Write a sentence using "{w}".', 'How is the word "{w}" used?']
SYNONYM_Q = ['What is another word for "{w}"?', 'Give me a synonym for "{w}".',
             "What's a synonym of {w}?", 'Which word means the same as "{w}"?',
             'Can you suggest another word for "{w}"?', 'What are some synonyms of "{w}"?']
ANTONYM_Q = ['What is the opposite of "{w}"?', "What's the opposite of {w}?",
             'Give me an antonym for "{w}".', 'What word means the opposite of "{w}"?',
             'What is an antonym of "{w}"?']
KIND_Q = ["What kind of thing is {a} {w}?", 'What category does "{w}" belong to?',
          "What is {a} {w} a type of?", 'What is a more general word for "{w}"?']
VERB_KIND_Q = ['What is a more general word for "{w}"?', 'What kind of action is "{w}"?']
REVERSE_Q = ['What is the word for "{g}"?', 'Which word means "{g}"?',
             'Is there a word that means "{g}"?', 'What do you call {g}?']
PLURAL_Q = ['What is the plural of "{w}"?', "What's the plural form of {w}?",
            'How do you write "{w}" in the plural?']


def _fmt(template, lemma, pos=None, gloss=None):
    return template.format(w=lemma, a=article(lemma), pos=POS_NAMES.get(pos, pos),
                           a_pos=article(POS_NAMES.get(pos, pos or "x")), g=gloss)


class ChatMaker:
    """Builds the WordNet conversations; one seeded RNG drives every phrasing choice."""

    def __init__(self, wn, seed):
        self.wn = wn
        self.rng = random.Random(f"{seed}:wordnet-chat")

    def pick(self, options):
        return options[self.rng.randrange(len(options))]

    def item(self, template, lemma, prov, question, answer):
        key = lemma.lower()
        return chat(template, f"wn-chat:{key}", prov, question, answer, keys=[key])

    def define(self, lemma, pos, syn):
        if _pos_hint(self.wn, lemma, pos):
            options = DEFINE_POS_Q + (DEFINE_VERB_Q[:1] if pos == "verb" else [])
        elif pos == "noun" and _is_countable(self.wn, lemma, syn.gloss):
            options = DEFINE_Q + DEFINE_NOUN_Q
        elif pos == "verb":
            options = DEFINE_Q + DEFINE_VERB_Q
        else:
            options = DEFINE_Q
        answer = definition_sentence(self.wn, lemma, pos, syn.gloss)
        example = next((e for e in syn.examples if _uses_word(e, lemma)), None)
        if example:
            answer += " " + examples_sentence([example])
        return self.item("define", lemma, [f"wn:{syn.id}"],
                         _fmt(self.pick(options), lemma, pos), answer)

    def multi(self, lemma, senses):
        """senses: [(pos, synset)] of one lemma, at least two, most frequent first. As many
        senses as fit in about 360 characters (two at least, three at most)."""
        word = self.wn.lemma_in(senses[0][1], lemma)
        answer = f'"{word[0].upper() + word[1:]}" has several meanings.'
        last_pos, used = None, []
        for pos, syn in senses[:3]:
            phrase = meaning_phrase(pos, syn.gloss)
            if pos != last_pos:
                sentence = f"As {article(POS_NAMES[pos])} {POS_NAMES[pos]}, it can mean {phrase}."
            else:
                sentence = f"It can also mean {phrase}."
            if len(used) >= 2 and len(answer) + len(sentence) > 360:
                break
            answer += " " + sentence
            used.append(syn)
            last_pos = pos
        return self.item("meanings", word, [f"wn:{s.id}" for s in used],
                         _fmt(self.pick(MULTI_Q), word), answer)

    def example(self, lemma, pos, syn):
        for ex in syn.examples:
            if _uses_word(ex, lemma) and looks_like_sentence(ex):
                answer = sentence_case(ex)
                if self.rng.random() < 0.3:
                    answer = f'Here is an example: "{answer}"'
                return self.item("example", lemma, [f"wn:{syn.id}"],
                                 _fmt(self.pick(EXAMPLE_Q), lemma), answer)
        return None

    def synonyms(self, lemma, pos, syn):
        others = synonyms_of(self.wn, syn, lemma)
        if not others:
            return None
        question = _fmt(self.pick(SYNONYM_Q), lemma)
        if _pos_hint(self.wn, lemma, pos):
            question = question.rstrip("?.") + f" (as {article(POS_NAMES[pos])} {POS_NAMES[pos]})?"
        if len(others) == 1:
            answer = f'Another word for "{lemma}" is "{others[0]}".'
        else:
            answer = f'Some other words for "{lemma}" are {_quote_list(others[:3])}.'
        return self.item("synonym", lemma, [f"wn:{syn.id}"], question, answer)

    def antonyms(self, lemma, pos, syn):
        antonyms, targets = antonyms_of(self.wn, syn, lemma)
        if not antonyms:
            return None
        answer = f'The opposite of "{lemma}" is {_quote_list(antonyms[:2], "or")}.'
        prov = [f"wn:{syn.id}"] + [f"wn:{t}" for t in targets]
        return self.item("antonym", lemma, prov, _fmt(self.pick(ANTONYM_Q), lemma), answer)

    def kind(self, lemma, pos, syn):
        sym, hyper = hypernym_of(self.wn, syn)
        if hyper is None or sym != "@" or pos not in ("noun", "verb"):
            return None
        if hyper.words[0] in ("be", "have"):  # "to stretch is a way to be" says nothing
            return None
        h = hyper.words[0]
        prov = [f"wn:{syn.id}", f"wn:{hyper.id}"]
        if pos == "verb":
            answer = f'A more general word is "{h}": to {lemma} is a way to {h}.'
            return self.item("kind", lemma, prov, _fmt(self.pick(VERB_KIND_Q), lemma), answer)
        parts = noun_parts(self.wn, lemma, _split_domain(syn.gloss)[1])
        if parts:
            answer = f"{parts[0]} is a kind of {h}."
        else:
            answer = f'The word "{lemma}" names a kind of {h}.'
        options = KIND_Q if _is_countable(self.wn, lemma, syn.gloss) else [KIND_Q[1], KIND_Q[3]]
        return self.item("kind", lemma, prov, _fmt(self.pick(options), lemma), answer)

    def reverse(self, lemma, pos, syn):
        domain, gloss = _split_domain(syn.gloss)
        gloss = gloss.rstrip(" .;")
        if domain or not 15 <= len(gloss) <= 80 or '"' in gloss:
            return None
        options = REVERSE_Q[:3]
        if pos == "noun" and gloss.startswith(("a ", "an ", "someone", "something")):
            options = REVERSE_Q  # "What do you call a person who ...?" reads naturally
        answer = f'The word is "{lemma}".'
        others = synonyms_of(self.wn, syn, lemma)
        if others:
            answer += f' You could also say "{others[0]}".'
        return self.item("reverse", lemma, [f"wn:{syn.id}"],
                         _fmt(self.pick(options), lemma, pos, gloss), answer)

    def plural(self, base, plural):
        answer = f'The plural of "{base}" is "{plural}".'
        return self.item("plural", base, [f"wn-exc:{base}"], _fmt(self.pick(PLURAL_Q), base),
                         answer)


# How many of the most frequent lemmas each kind of question is asked about. The numbers keep
# chat_train at a few MB (see README); frequent words first, since a 16M-parameter model will
# only ever learn the common ones.
TEMPLATE_LIMITS = {"define": 10000, "meanings": 2500, "example": 4000, "synonym": 4000,
                   "antonym": 1500, "kind": 3500, "reverse": 2000, "plural": 400}


def chat_items(wn, seed):
    maker = ChatMaker(wn, seed)
    counts = {name: 0 for name in TEMPLATE_LIMITS}
    items = []

    def add(item):
        if item is not None and counts[item.source] < TEMPLATE_LIMITS[item.source]:
            counts[item.source] += 1
            items.append(item)

    pairs = wn.tagged_lemmas()
    for lemma, pos in pairs:
        ids, _ = wn.senses[(lemma, pos)]
        syn = wn.synsets[ids[0]]  # the most frequent sense
        word = wn.lemma_in(syn, lemma)  # as the synset spells it: "Hawaii", not "hawaii"
        add(maker.define(word, pos, syn))
        add(maker.example(word, pos, syn))
        add(maker.synonyms(word, pos, syn))
        add(maker.antonyms(word, pos, syn))
        add(maker.kind(word, pos, syn))
        add(maker.reverse(word, pos, syn))

    # Lemmas with several tagged senses (over all parts of speech) get a "meanings" question.
    seen = set()
    for lemma, _ in pairs:
        if lemma in seen:
            continue
        seen.add(lemma)
        senses = []
        for pos in ("noun", "verb", "adj", "adv"):
            ids, tagged = wn.senses.get((lemma, pos), ((), 0))
            senses += [(pos, wn.synsets[i]) for i in ids[:tagged]]
        if len(senses) >= 2:
            add(maker.multi(lemma, senses))

    tagged_nouns = {lemma for lemma, pos in pairs if pos == "noun"}
    for base, plural in sorted(wn.plurals, key=lambda bp: (-wn.freq.get(bp[0], 0), bp)):
        if base in tagged_nouns and plural != base and re.fullmatch(r"[a-z]+", plural):
            add(maker.plural(base, plural))
    return items
