"""Mini-batch order: a batch is a slice of a shuffled index over one in-memory tensor; every rank of a torchrun job
draws the same permutation and takes its share of each batch (:func:`mnistgen.distributed.rank_share`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def num_batches(num_items: int, batch_size: int, drop_last: bool) -> int:
    full, rest = divmod(num_items, batch_size)
    return full if drop_last or rest == 0 else full + 1


def shuffled_batches(num_items: int, batch_size: int, generator: torch.Generator,
                     drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Yield index tensors of one epoch: a fresh permutation from ``generator``, cut into batches."""
    order = torch.randperm(num_items, generator=generator)
    stop = num_items - num_items % batch_size if drop_last else num_items
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def epoch_order(num_items: int, batch_size: int, generator: torch.Generator, device: torch.device,
                drop_last: bool = False) -> torch.Tensor:
    """One epoch's order of the items, as :func:`shuffled_batches` draws it, on ``device``: step s reads the
    items ``order[s * batch_size:(s + 1) * batch_size]``."""
    return torch.cat(list(shuffled_batches(num_items, batch_size, generator, drop_last))).to(device)
