"""Generate four tiny synthetic task datasets and the one tiny BERT they all share.

One dataset per task head beyond single-text classification, each small enough to train on a
CPU in well under a minute, and built so that a 2-layer, 64-wide BERT trained from random init
clearly beats the trivial baseline (scripts/check_tiny_tasks.py trains and measures it):

* ``data/tiny_nli``        pair classification (entailment / neutral / contradiction).
  Premise ``the big fox lies on the sofa .``, hypothesis ``the fox is <w> .``. Attributes come
  in kinds (colour, size, age, mood); two values of one kind exclude each other. Entailment:
  ``w`` is the premise's attribute; contradiction: another value of the same kind (``small``);
  neutral: a value of another kind (``happy``), about which the premise says nothing. Kind and
  value are drawn so that each text alone carries no information about the label (a model
  trained on one text scores chance, 0.33): only the pair does. Balanced, 3 % label noise.
* ``data/tiny_multilabel`` multi-label classification over five tags. The text mixes two to
  four topic words of each of its 0-3 tags with filler; about 5 % of rows have no tag.
* ``data/tiny_ner``        CoNLL-2003 style BIO tagging (PER, LOC, ORG, MISC), 5-20 words.
  Template sentences whose context words give the type away (``police in <LOC>``, ``shares of
  <ORG>``), names from lists, multi-word entities (B- then I-). About a fifth of the name words
  are invented ones kept OUT of the vocabulary, so WordPiece splits them into characters and
  the first-sub-word label alignment is exercised.
* ``data/tiny_qa``         SQuAD v2 extractive QA over a duty roster. A context is 8-10 facts of
  eight word pieces each, in hour order, ``at three the boat owner is marta .``; the question
  repeats the key phrase, ``who is the boat owner at three ?``, and the answer is the name right
  after it. Hours are unique within a context; places and roles repeat across hours. A third
  of the questions are unanswerable (empty answer lists): the roster has a break at that hour
  (``at four there is a short break .``) or ends before it, while facts about the same place
  and role are present at other hours. With the question a context is 75-91 word pieces: a
  max_length of 64 splits it into several features, 96 or 128 keeps it whole.

Why these shapes: from random init, with a few hundred steps, such a small BERT learns what
single tokens say and attention to *fixed* positions easily, but hardly learns to match a
word against a word at a varying position (lexical overlap, "find the fact whose key equals the
question's"): that needs two attention patterns at once and stays on a plateau well past a
thousand steps. So NLI puts the compared words at fixed token positions, and QA keeps every
fact the same length in hour order, so the hour in the question fixes where the answer is.
Training with max_length below 91 shifts the facts between features and loses that.

``models/tiny-bert-tasks/`` has the architecture of models/tiny-bert (2 layers, hidden 64, 2
heads, intermediate 128; max_position_embeddings 128) and a WordPiece vocabulary holding every
word of the four datasets as a whole token, except the invented NER names on purpose, plus the
special tokens, punctuation, and every letter and digit alone and as a ``##`` continuation. No
hub download is needed. Deterministic: running it again writes byte-identical files. Eval sets
have 1001 rows (601 for QA), counts that divide by neither 2, 3, 4 nor 8.

    python scripts/make_tiny_tasks.py   # data/tiny_{nli,multilabel,ner,qa}/, models/tiny-bert-tasks/
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from make_tiny_news import write_tiny_bert  # same tiny BERT shape, own vocabulary

ROOT = Path(__file__).resolve().parent.parent
SEED = 20261124
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
PUNCT = [".", ",", "?", "!", ":", ";", "'", "-", "/", "(", ")"]

# ---------------------------------------------------------------------------------------- NLI
NLI_LABELS = ("entailment", "neutral", "contradiction")
ANIMALS = "cat dog bird horse cow goat sheep pig duck fox rabbit mouse frog bear wolf owl".split()
THINGS = "mat box chair table rug bed rock log bench wall fence blanket sofa pillow basket step".split()
VERBS = "sits sleeps stands rests waits lies".split()
PREPS = "on near under beside behind".split()
# Kinds of attribute; two values of one kind exclude each other, values of two kinds do not.
ATTRIBUTES = {
    "colour": "red blue green yellow black white brown pink grey orange".split(),
    "size": "big small".split(),
    "age": "young old".split(),
    "mood": "happy sad".split(),
}
# Every template puts the attribute and the animal at the same token positions.
PREMISES = ["the {w} {a} {v} {p} the {t} .", "a {w} {a} {v} {p} a {t} ."]
HYPOTHESES = ["the {a} is {w} .", "the {a} looks {w} ."]


def nli_pair(rng: random.Random, label: str) -> tuple[str, str]:
    a, t, v, p = rng.choice(ANIMALS), rng.choice(THINGS), rng.choice(VERBS), rng.choice(PREPS)
    kind = rng.choice(sorted(ATTRIBUTES))
    w = rng.choice(ATTRIBUTES[kind])
    if label == "entailment":
        w2 = w
    elif label == "contradiction":  # another value of the same kind
        w2 = rng.choice([x for x in ATTRIBUTES[kind] if x != w])
    else:  # a value of another kind: the premise says nothing about it
        w2 = rng.choice(ATTRIBUTES[rng.choice([k for k in sorted(ATTRIBUTES) if k != kind])])
    premise = rng.choice(PREMISES).format(w=w, a=a, v=v, p=p, t=t)
    return premise, rng.choice(HYPOTHESES).format(a=a, w=w2)


def nli_rows(rng: random.Random, n: int, start: int) -> list[dict]:
    rows = []
    for i in range(n):
        label = NLI_LABELS[i % 3] if rng.random() < 0.5 else rng.choice(NLI_LABELS)
        premise, hypothesis = nli_pair(rng, label)
        if rng.random() < 0.03:  # label noise
            label = rng.choice(NLI_LABELS)
        rows.append({"id": f"nli-{start + i:05d}", "premise": premise, "hypothesis": hypothesis,
                     "label": label})
    return rows


# ------------------------------------------------------------------------------ multi-label
TAGS = ("politics", "sports", "business", "tech", "health")
TAG_WORDS = {
    "politics": "senator election parliament minister vote campaign governor congress policy "
                "treaty mayor ballot party diplomat cabinet reform",
    "sports": "match coach league striker tournament goal stadium medal referee season "
              "champion playoff squad marathon keeper trophy",
    "business": "shares profit revenue investors merger market stocks earnings dividend "
                "startup bankers inflation retail quarter ceo tariff",
    "tech": "software chip internet laptop robot browser server startup algorithm network "
            "wireless satellite processor app cloud gadget",
    "health": "doctor vaccine hospital patients virus clinic nurse disease diet surgery "
              "medicine fitness therapy symptoms flu vitamin",
}
TAG_WORDS = {t: sorted(set(w.split())) for t, w in TAG_WORDS.items()}
TAG_WORDS["tech"].remove("startup")  # one word per tag only
ML_FILLER = ("the a of in on at to for with from after new says report week today monday "
             "friday big amid as its their announced expected plans latest early late major "
             "top officials sources near record against while more than by under people local "
             "city country").split()


def ml_rows(rng: random.Random, n: int, start: int) -> list[dict]:
    rows = []
    for i in range(n):
        k = rng.choices([0, 1, 2, 3], weights=[5, 45, 35, 15])[0]
        tags = sorted(rng.sample(TAGS, k), key=TAGS.index)
        words = [w for t in tags for w in rng.sample(TAG_WORDS[t], rng.randint(2, 4))]
        words += rng.sample(ML_FILLER, rng.randint(4 if k else 6, 10))
        rng.shuffle(words)
        labels = list(tags)
        if rng.random() < 0.02 and labels:  # a little noise: a tag goes missing
            labels.remove(rng.choice(labels))
        rows.append({"id": f"ml-{start + i:05d}", "text": " ".join(words) + " .", "labels": labels})
    return rows


# -------------------------------------------------------------------------------------- NER
FIRST = "john mary peter anna david maria james laura paul sofia carlos elena thomas nina".split()
LAST = "smith jones miller garcia wilson taylor martin clark lewis walker young allen king".split()
# Invented words, never added to the vocabulary: WordPiece splits them into character pieces.
OOV_LAST = "kowalczyk oyelaran thorvaldsen nakashima brzezinski okonkwo vaszary quennell".split()
OOV_LOC = "zlatograd kervansk ouagamba tristovo".split()
OOV_ORG = "veltronix quorvex zentrada".split()
OOV_MISC = "zorvanian kelptian".split()
LOC = ["paris", "london", "berlin", "madrid", "tokyo", "cairo", "rome", "moscow", "lima",
       "new york", "hong kong", "south africa", "buenos aires", "united states", "los angeles"]
ORG_HEAD = "acme globex nova apex union atlas summit".split()
ORG_TAIL = "corp inc group labs bank motors airlines".split()
ORG_SOLO = ["reuters", "google", "microsoft", "united nations", "world bank", "red cross"]
MISC_ADJ = "german french italian japanese brazilian russian chinese".split()
MISC_EVENT = ["world cup", "olympic games", "nobel prize", "grand prix", "davis cup"]
DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
NER_TEMPLATES = [
    "{PER} said on {DAY} that {ORG} will open an office in {LOC} .",
    "{PER} , a spokesman for {ORG} , said the deal was good .",
    "the {MISC} team beat {LOC} in the final .",
    "shares of {ORG} rose after {PER} joined the board .",
    "{PER} met {PER} in {LOC} on {DAY} .",
    "{MISC} officials said {ORG} would not comment .",
    "police in {LOC} arrested {PER} .",
    "the {MISC} champion {PER} arrived in {LOC} .",
    "{ORG} bought a factory near {LOC} .",
    "mr {LASTNAME} told reporters in {LOC} that prices will fall .",
    "{PER} won the {EVENT} last year .",
    "the weather was cold on {DAY} .",
    "{LOC} and {LOC} signed a trade pact .",
    "{PER} , who works at {ORG} , flew from {LOC} to {LOC} .",
    "the {MISC} minister {PER} visited {ORG} .",
    "{ORG} said profits rose in {LOC} .",
    "fans in {LOC} cheered for {PER} at the {EVENT} .",
    "prices fell again on {DAY} .",
]


def _last(rng: random.Random) -> str:
    return rng.choice(OOV_LAST) if rng.random() < 0.25 else rng.choice(LAST)


def ner_entity(rng: random.Random, slot: str) -> tuple[list[str], str]:
    if slot == "PER":
        r = rng.random()
        words = ([rng.choice(FIRST), _last(rng)] if r < 0.6 else [rng.choice(FIRST)] if r < 0.75
                 else [_last(rng)] if r < 0.9 else [rng.choice(FIRST), "van", _last(rng)])
        return words, "PER"
    if slot == "LASTNAME":
        return [_last(rng)], "PER"
    if slot == "LOC":
        return (rng.choice(OOV_LOC) if rng.random() < 0.2 else rng.choice(LOC)).split(), "LOC"
    if slot == "ORG":
        r = rng.random()
        if r < 0.35:
            return rng.choice(ORG_SOLO).split(), "ORG"
        head = rng.choice(OOV_ORG) if r < 0.55 else rng.choice(ORG_HEAD)
        return [head, rng.choice(ORG_TAIL)], "ORG"
    if slot == "MISC":
        return [rng.choice(OOV_MISC) if rng.random() < 0.15 else rng.choice(MISC_ADJ)], "MISC"
    if slot == "EVENT":
        return rng.choice(MISC_EVENT).split(), "MISC"
    raise ValueError(slot)


def ner_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    while True:
        tokens: list[str] = []
        tags: list[str] = []
        for part in rng.choice(NER_TEMPLATES).split():
            if part.startswith("{"):
                slot = part[1:-1]
                if slot == "DAY":
                    tokens.append(rng.choice(DAYS).capitalize())
                    tags.append("O")
                    continue
                words, kind = ner_entity(rng, slot)
                tokens += [w.capitalize() if w != "van" else w for w in words]
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
            else:
                tokens.append(part)
                tags.append("O")
        tokens[0] = tokens[0][0].upper() + tokens[0][1:]
        if 5 <= len(tokens) <= 20:
            return tokens, tags


def ner_rows(rng: random.Random, n: int, start: int) -> list[dict]:
    rows = []
    for i in range(n):
        tokens, tags = ner_sentence(rng)
        rows.append({"id": f"ner-{start + i:05d}", "tokens": tokens, "ner_tags": tags})
    return rows


# --------------------------------------------------------------------------------------- QA
HOURS = "one two three four five six seven eight nine ten eleven twelve".split()
PLACES = ("boat car house shop farm bridge tower garden bike truck mill barn ship cart hotel "
          "school church castle bakery library").split()
ROLES = "owner captain driver keeper builder painter seller guard".split()
NAMES = ("marta tom lina omar yuki ivan nora felix rosa hugo alba kai greta leon mila otto "
         "vera bruno zara emil iris jonas kira luca").split()


BREAKS = ["at {h} there is a short break .", "at {h} the whole town is asleep ."]


def qa_row(rng: random.Random, kind: str, rid: str) -> dict:
    """kind: "answer"; "break" (the roster has a break at the hour asked about); "late" (the
    hour asked about is after the end of the roster)."""
    n = rng.randint(8, 10)
    breaks = set(rng.sample(range(n), rng.randint(0, 2) if kind != "break" else rng.randint(1, 2)))
    facts = [(HOURS[i], rng.choice(PLACES), rng.choice(ROLES)) for i in range(n)]
    names = rng.sample(NAMES, n)
    staffed = [i for i in range(n) if i not in breaks]
    asked = rng.choice(sorted(breaks) if kind == "break" else staffed)
    place, role = facts[asked][1:] if kind == "answer" else facts[rng.choice(staffed)][1:]
    hour = rng.choice(HOURS[n:]) if kind == "late" else HOURS[asked]
    parts, pos, start = [], 0, None
    for i, ((h, p, r), name) in enumerate(zip(facts, names)):
        if i in breaks:
            parts.append(rng.choice(BREAKS).format(h=h))
        else:
            prefix = f"at {h} the {p} {r} is "
            if i == asked:
                start = pos + len(prefix)
            parts.append(f"{prefix}{name} .")
        pos += len(parts[-1]) + 1
    context = " ".join(parts)
    answers: dict = {"text": [], "answer_start": []}
    if kind == "answer":
        answers = {"text": [names[asked]], "answer_start": [start]}
        assert context[start:start + len(names[asked])] == names[asked]
    return {"id": rid, "question": f"who is the {place} {role} at {hour} ?", "context": context,
            "answers": answers}


def qa_rows(rng: random.Random, n: int, start: int) -> list[dict]:
    kinds = rng.choices(["answer", "break", "late"], weights=[4, 1, 1], k=n)
    return [qa_row(rng, kind, f"qa-{start + i:05d}") for i, kind in enumerate(kinds)]


# ------------------------------------------------------------------------------- writing
def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def dataset_words() -> set[str]:
    words = set(ANIMALS + THINGS + VERBS + PREPS) | {w for ws in ATTRIBUTES.values() for w in ws}
    for t in PREMISES + HYPOTHESES + NER_TEMPLATES + BREAKS:
        words |= {w for w in t.split() if not w.startswith("{")}
    words |= set(TAGS) | {w for ws in TAG_WORDS.values() for w in ws} | set(ML_FILLER)
    for group in (FIRST, LAST, LOC, ORG_HEAD, ORG_TAIL, ORG_SOLO, MISC_ADJ, MISC_EVENT, DAYS):
        words |= {w for item in group for w in item.split()}
    words |= {"van", "who", "is", "the", "at"} | set(HOURS + PLACES + ROLES + NAMES)
    return {w for w in words if w not in PUNCT}


def write_tokenizer_and_config(model_dir: Path) -> list[str]:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + PUNCT
    vocab += sorted(dataset_words())
    vocab += [c for c in CHARS if c not in vocab]
    vocab += [f"##{c}" for c in CHARS]
    oov = set(OOV_LAST + OOV_LOC + OOV_ORG + OOV_MISC)
    assert not oov & set(vocab), "an invented NER name slipped into the vocabulary"
    write_tiny_bert(model_dir, vocab, "BertModel")
    return vocab


def main() -> None:
    # One generator per dataset, so that tuning one task never changes the others' files.
    rng = random.Random(SEED)
    seeds = [rng.randrange(2**32) for _ in range(4)]
    r = random.Random(seeds[0])
    write_jsonl(ROOT / "data/tiny_nli/train.jsonl", nli_rows(r, 3000, 0))
    write_jsonl(ROOT / "data/tiny_nli/eval.jsonl", nli_rows(r, 1001, 3000))
    r = random.Random(seeds[1])
    write_jsonl(ROOT / "data/tiny_multilabel/train.jsonl", ml_rows(r, 3000, 0))
    write_jsonl(ROOT / "data/tiny_multilabel/eval.jsonl", ml_rows(r, 1001, 3000))
    r = random.Random(seeds[2])
    write_jsonl(ROOT / "data/tiny_ner/train.jsonl", ner_rows(r, 3000, 0))
    write_jsonl(ROOT / "data/tiny_ner/eval.jsonl", ner_rows(r, 1001, 3000))
    r = random.Random(seeds[3])
    write_jsonl(ROOT / "data/tiny_qa/train.jsonl", qa_rows(r, 2000, 0))
    write_jsonl(ROOT / "data/tiny_qa/eval.jsonl", qa_rows(r, 601, 2000))
    write_tokenizer_and_config(ROOT / "models/tiny-bert-tasks")


if __name__ == "__main__":
    main()
