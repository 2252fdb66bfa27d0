"""Movie reviews where only a pretrained model can score: the evaluation split shares no sentiment word,
no noun and no sentence pattern with the training split.

A model trained from random initialisation learns which training words mean what; every word that decides
an evaluation review ("superb", "dreadful", "adored") is one it never saw, so it can only guess. A pretrained
encoder already places "superb" near "excellent" and "dreadful" near "awful", so fine-tuning on the training
words carries over. The gap between the two is what pretraining buys (docs/training.md shows it).

Deterministic for a seed; labels balanced; every review lower case with spaced punctuation, 4-20 words.
`examples/minilm/` holds the files `write_split` makes (a unit test checks they have not drifted).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Vocabulary:
    """The words and sentence patterns of one split. A pattern's fields: {adj} and {adj2} sentiment
    adjectives, {noun} and {noun2} things a review talks about, {verb} a sentiment verb in the past tense."""

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    positive_verbs: tuple[str, ...]
    negative_verbs: tuple[str, ...]
    nouns: tuple[str, ...]
    patterns: tuple[str, ...]
    negations: tuple[str, ...]  # say the label by denying the opposite: {adj} is an opposite adjective
    asides: tuple[str, ...]  # a concession against the label, appended: {adj} is an opposite adjective


TRAIN = Vocabulary(
    positive=("great", "excellent", "wonderful", "fantastic", "amazing", "brilliant", "enjoyable", "beautiful"),
    negative=("terrible", "awful", "horrible", "boring", "bad", "poor", "dull", "disappointing"),
    positive_verbs=("loved", "enjoyed", "liked"),
    negative_verbs=("hated", "disliked", "regretted"),
    nouns=("movie", "film", "plot", "acting", "story", "cast", "script", "ending"),
    patterns=(
        "the {noun} was {adj}",
        "the {noun} was really {adj} and the {noun2} was {adj2}",
        "i thought the {noun} was {adj}",
        "a {adj} {noun} with a {adj2} {noun2}",
        "overall the {noun} is {adj} , i {verb} it",
        "i {verb} this {noun} , the {noun2} is {adj}",
        "{adj} {noun} . {adj2} {noun2} too",
    ),
    negations=("the {noun} was not {adj} at all", "i did not think the {noun} was {adj}"),
    asides=(", although the {noun} was {adj}", ", though the {noun} was a bit {adj}"),
)

EVALUATION = Vocabulary(
    positive=("superb", "delightful", "marvelous", "splendid", "terrific", "outstanding", "lovely", "magnificent"),
    negative=("dreadful", "pathetic", "bland", "clumsy", "mediocre", "lousy", "atrocious", "tedious"),
    positive_verbs=("adored", "cherished", "savored"),
    negative_verbs=("despised", "loathed", "resented"),
    nouns=("picture", "screenplay", "performances", "soundtrack", "direction", "dialogue", "visuals", "finale"),
    patterns=(
        "honestly , what a {adj} {noun}",
        "from start to finish the {noun} felt {adj}",
        "my friends and i found the {noun} {adj} , and the {noun2} {adj2}",
        "critics called the {noun} {adj} and they were right",
        "we {verb} every minute of it ; such {adj} {noun}",
        "the {noun} seemed {adj} to me , the {noun2} even more so",
        "if you ask me , {adj} {noun} and {adj2} {noun2}",
    ),
    negations=("nobody could call the {noun} {adj}", "the {noun} was far from {adj}"),
    asides=(", despite a rather {adj} {noun}", "; granted , the {noun} was {adj}"),
)

NEGATED_SHARE = 0.2  # reviews that say their label by denying the opposite
ASIDE_SHARE = 0.3  # reviews that concede a point against their label


def review(rng: random.Random, words: Vocabulary, label: int) -> str:
    """One review in `words`' vocabulary whose overall sentiment is `label` (1 positive). Some deny the
    opposite instead ("not awful"), some concede a point against the label ("although the ending was dull"),
    so a model has to read the sentence, not count words."""
    agree, oppose = (words.positive, words.negative) if label == 1 else (words.negative, words.positive)
    verbs = words.positive_verbs if label == 1 else words.negative_verbs
    noun, noun2, noun3 = rng.sample(words.nouns, 3)
    if rng.random() < NEGATED_SHARE:
        text = rng.choice(words.negations).format(noun=noun, adj=rng.choice(oppose))
    else:
        adj, adj2 = rng.sample(agree, 2)
        text = rng.choice(words.patterns).format(adj=adj, adj2=adj2, noun=noun, noun2=noun2, verb=rng.choice(verbs))
    if rng.random() < ASIDE_SHARE:
        text += " " + rng.choice(words.asides).format(noun=noun3, adj=rng.choice(oppose))
    return text


def reviews(words: Vocabulary, count: int, seed: int) -> list[dict[str, object]]:
    """`count` rows {"text", "label"}, alternating labels, drawn from one seeded generator."""
    rng = random.Random(seed)
    return [{"text": review(rng, words, index % 2), "label": index % 2} for index in range(count)]


SPLITS = {"train": (TRAIN, 800, 1), "eval": (EVALUATION, 1200, 2)}  # split -> (vocabulary, rows, seed)


def write_split(folder: Path, split: str) -> Path:
    """Write `folder/<split>.jsonl` (train: 800 rows, eval: 1,200) and return its path."""
    words, count, seed = SPLITS[split]
    path = folder / f"{split}.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in reviews(words, count, seed)), encoding="utf-8")
    return path
