"""More text for a distillation: the training texts with words swapped for their neighbours.

    WordSwapper.for_teacher(tokenizer, table, token_ids, neighbours)   built once per rank
    swapper.swap(input_ids, probability, generator)                    a batch's swapped copy

The teacher's soft targets need no labels, so the student can learn from any text the teacher reads,
not only the job's labelled examples. A swapped copy of each batch (TinyBERT's data augmentation, without
its masked-language-model step) shows the student words the training data never has, with the teacher's
answer for each sentence: words the teacher's own vocabulary embedding places next to the ones there,
which is what lets a small student follow the teacher on text outside the training vocabulary.

Only whole words are swapped, for whole words: a token that a `##` piece continues (the `marvel` of
`marvel ##ous`) stays, and so do special tokens, padding, numbers and punctuation. Neighbours are
found only for the words the training data has, so the table is small (a few thousand rows).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class WordSwapper:
    def __init__(self, neighbours: torch.Tensor, continues: torch.Tensor) -> None:
        self.neighbours = neighbours  # (vocab, k): candidate ids per token id; -1 where a token is kept
        self.continues = continues  # (vocab,): True for `##` pieces, which continue the word before them

    @classmethod
    def for_teacher(cls, tokenizer: Any, table: torch.Tensor, token_ids: Iterable[int], neighbours: int) -> WordSwapper:
        """Neighbours (by cosine similarity in `table`, the teacher's word embeddings) of every whole
        word among `token_ids`, drawn from the whole words of the vocabulary."""
        vocab = tokenizer.get_vocab()
        size = table.shape[0]
        special = set(tokenizer.all_special_ids)
        words = torch.zeros(size, dtype=torch.bool)
        continues = torch.zeros(size, dtype=torch.bool)
        for token, index in vocab.items():
            if index >= size:
                continue
            continues[index] = token.startswith("##")
            words[index] = token.isalpha() and index not in special and len(token) > 1
        sources = sorted({int(i) for i in token_ids if 0 <= int(i) < size and words[int(i)]})
        table = torch.nn.functional.normalize(table.detach().float(), dim=1)
        candidates = torch.nonzero(words).squeeze(1)
        found = torch.full((size, neighbours), -1, dtype=torch.long)
        for start in range(0, len(sources), 512):  # 512 x vocab similarities at a time
            rows = torch.tensor(sources[start : start + 512])
            similarity = table[rows] @ table[candidates].T
            similarity[candidates.unsqueeze(0) == rows.unsqueeze(1)] = -2.0  # never itself
            found[rows] = candidates[similarity.topk(neighbours, dim=1).indices]
        return cls(found, continues)

    def swap(self, input_ids: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
        """A copy of `input_ids` with each swappable word replaced, with `probability`, by one of its
        neighbours drawn uniformly."""
        ids = input_ids.cpu()
        following = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], dim=1)
        swappable = (self.neighbours[ids, 0] >= 0) & ~self.continues[following]
        chosen = swappable & (torch.rand(ids.shape, generator=generator) < probability)
        pick = torch.randint(0, self.neighbours.shape[1], ids.shape, generator=generator)
        swapped = torch.where(chosen, self.neighbours[ids, pick], ids)
        return swapped.to(input_ids.device)
