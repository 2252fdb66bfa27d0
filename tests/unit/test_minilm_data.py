"""examples/minilm/: the committed splits are what the generator makes, and the evaluation split really is
out of the training split's reach (the property the random-init twin's chance score rests on)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from edgetune_trainer import synthetic_shift
from edgetune_trainer.synthetic_shift import EVALUATION, SPLITS, TRAIN, Vocabulary

FOLDER = Path(__file__).resolve().parents[2] / "examples" / "minilm"


def rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (FOLDER / f"{split}.jsonl").read_text().splitlines()]


def test_the_committed_splits_match_the_generator(tmp_path: Path) -> None:
    for split in SPLITS:
        fresh = synthetic_shift.write_split(tmp_path, split)
        assert fresh.read_text() == (FOLDER / f"{split}.jsonl").read_text(), (
            f"examples/minilm/{split}.jsonl is stale: run .venv/bin/python hack/make-minilm-data.py"
        )


def content_words(words: Vocabulary) -> set[str]:
    return {*words.positive, *words.negative, *words.positive_verbs, *words.negative_verbs, *words.nouns}


def test_no_evaluation_review_contains_a_word_that_decides_a_training_review() -> None:
    deciding = content_words(TRAIN)
    assert not deciding & content_words(EVALUATION)
    for row in rows("eval"):
        assert not deciding & set(row["text"].split()), row["text"]

    # No sentence pattern is shared either: compare the patterns' fixed words, fields removed.
    def skeletons(words: Vocabulary) -> set[str]:
        return {re.sub(r"\{\w+\}", "_", p) for p in words.patterns + words.negations + words.asides}

    assert not skeletons(TRAIN) & skeletons(EVALUATION)


def test_the_splits_are_balanced_and_sized() -> None:
    for split, (_, count, _) in SPLITS.items():
        labels = [row["label"] for row in rows(split)]
        assert len(labels) == count and labels.count(1) == count // 2


def test_every_kind_of_review_occurs() -> None:
    """Negated and conceding reviews are there in both splits, so no split is the easy one."""
    markers = {  # split -> (words that mark a negation, words that mark a concession)
        "train": ({"not"}, {"although", "though"}),
        "eval": ({"nobody", "far"}, {"despite", "granted"}),
    }
    for split, kinds in markers.items():
        texts = [set(row["text"].split()) for row in rows(split)]
        for marker in kinds:
            share = sum(bool(marker & words) for words in texts) / len(texts)
            assert 0.1 < share < 0.5, (split, marker, share)
