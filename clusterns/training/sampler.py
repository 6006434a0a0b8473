"""The training order without a Python list of the whole corpus.

torch's RandomSampler (which accelerate's SeedableRandomSampler, the Trainer's training sampler, iterates through)
turns each epoch's permutation into one Python list: 40 bytes a sentence (measured), 200 MB for a 5M-line corpus and 4 GB for
100M, held for the whole epoch. ChunkedSeedableRandomSampler draws the same permutation from the same generator and
the same seed (so the order, and every run and resume, is unchanged) and converts it to Python a chunk at a time: the
int64 permutation (8 bytes a sentence) is all that is held.
"""
from __future__ import annotations

from typing import Iterator

import torch
from accelerate.data_loader import SeedableRandomSampler

CHUNK = 1 << 16  # indices converted to Python at a time


def chunked(order: torch.Tensor, size: int = CHUNK) -> Iterator[int]:
    for part in order.split(size):
        yield from part.tolist()


class ChunkedSeedableRandomSampler(SeedableRandomSampler):
    """SeedableRandomSampler's order (generator seeded with initial_seed + epoch, then RandomSampler's draws)."""

    def __iter__(self) -> Iterator[int]:
        if self.replacement:  # the Trainer never samples with replacement; the parent's own code then
            yield from super().__iter__()
            return
        if self.generator is None:
            self.generator = torch.Generator(device=torch.get_default_device())
            self.generator.manual_seed(self.initial_seed)
        self.generator.manual_seed(self.epoch + self.initial_seed)
        n = len(self.data_source)
        for _ in range(self.num_samples // n):
            yield from chunked(torch.randperm(n, generator=self.generator))
        yield from chunked(torch.randperm(n, generator=self.generator)[: self.num_samples % n])
        self.set_epoch(self.epoch + 1)


def training_sampler(dataloader) -> object | None:
    """The sampler inside a prepared training DataLoader (behind accelerate's batch sampler shards, if any)."""
    node = dataloader
    for _ in range(6):  # DataLoader -> BatchSamplerShard (several processes) -> BatchSampler -> sampler
        if node is None:
            break
        if isinstance(getattr(node, "sampler", None), SeedableRandomSampler):
            return node.sampler
        node = getattr(node, "batch_sampler", None)
    return None


def use_chunked_order(dataloader) -> bool:
    """Make the prepared DataLoader's SeedableRandomSampler (if it has one) a ChunkedSeedableRandomSampler in place:
    accelerate builds that sampler itself, so its class, not its construction, is what can be changed."""
    sampler = training_sampler(dataloader)
    if type(sampler) is SeedableRandomSampler:
        sampler.__class__ = ChunkedSeedableRandomSampler
    return isinstance(sampler, ChunkedSeedableRandomSampler)


__all__ = ["ChunkedSeedableRandomSampler", "chunked", "training_sampler", "use_chunked_order"]
