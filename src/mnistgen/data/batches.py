"""Mini-batch order: a batch is a slice of a shuffled index of data held in memory (no DataLoader workers).

Every rank of a torchrun job draws the same permutation. The training loops share each global batch between the
ranks (:func:`mnistgen.distributed.rank_share`); ``rank``/``world_size`` here deal whole batches out instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def num_batches(num_items: int, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
    full, rest = divmod(num_items, batch_size)
    total = full if drop_last or rest == 0 else full + 1
    return len(range(0, total, world_size)) if world_size > 1 else total


def shuffled_batches(num_items: int, batch_size: int, generator: torch.Generator, drop_last: bool = False,
                     rank: int = 0, world_size: int = 1) -> Iterator[torch.Tensor]:
    """Yield index tensors of one epoch: a fresh permutation from ``generator``, cut into batches."""
    order = torch.randperm(num_items, generator=generator)
    stop = num_items - num_items % batch_size if drop_last else num_items
    for batch_number, start in enumerate(range(0, stop, batch_size)):
        if batch_number % world_size == rank:
            yield order[start:start + batch_size]
