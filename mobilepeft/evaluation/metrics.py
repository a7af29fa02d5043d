"""Answer metrics: exact match and the VQA accuracy of VQAv2/TextVQA/VizWiz.

Exact match compares lower-cased, trimmed answers without trailing punctuation ("Red." is
"red"). VQA accuracy is the standard human-consensus score: an answer counts fully when at least
three of the annotators gave it, ``min(1, matches / 3)``, averaged over the ten leave-one-out
subsets of the ten reference answers, after the benchmark's normalisation (punctuation,
articles, number words, contractions). With a single reference answer (GQA, ScienceQA, our
synthetic sets) it is exact match under that normalisation.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Spellings without the apostrophe, as annotators type them, mapped to the canonical form.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Im": "I'm", "im": "i'm", "ive": "i've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "lets": "let's",
    "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't",
    "notve": "not've", "oclock": "o'clock", "shant": "shan't", "shed": "she'd", "shes": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "somebodys": "somebody's", "someones": "someone's",
    "thats": "that's", "thered": "there'd", "theres": "there's", "theyd": "they'd", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "wasnt": "wasn't", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whod": "who'd", "wholl": "who'll", "whos": "who's",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!"  # the benchmark's list: apostrophes stay ("man's")
_PERIOD_NOT_IN_NUMBER = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")


def normalize_answer(text: str) -> str:
    """Exact-match form: lower case, trimmed, no trailing punctuation."""
    return re.sub(r"[\s.!?,;:]+$", "", text.strip().lower())


def vqa_normalize(text: str) -> str:
    """The VQA benchmark's answer normalisation."""
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    for p in _PUNCTUATION:
        # A mark touching a space (or a thousands comma) is dropped; one inside a word splits it.
        if f"{p} " in text or f" {p}" in text or (p == "," and _COMMA_IN_NUMBER.search(text)):
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD_NOT_IN_NUMBER.sub("", text)
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the prediction is the (most common) reference answer."""
    if not answers:
        raise ValueError("no reference answers")
    majority = Counter(normalize_answer(a) for a in answers).most_common(1)[0][0]
    return float(normalize_answer(prediction) == majority)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Human-consensus VQA accuracy of one prediction against its reference answers."""
    if not answers:
        raise ValueError("no reference answers")
    pred = vqa_normalize(prediction)
    refs = [vqa_normalize(a) for a in answers]
    if len(refs) == 1:
        return float(pred == refs[0])
    scores = []
    for i in range(len(refs)):
        matches = sum(ref == pred for j, ref in enumerate(refs) if j != i)
        scores.append(min(1.0, matches / 3.0))
    return sum(scores) / len(scores)
