"""Class-balanced real batches measured as a candidate for the GAN's training, without it being a mnistgen option:
each epoch D sees every digit equally often (6,000 of each of MNIST's 60,000 training images: a fresh random subset
of a larger class, every image of a smaller one and a random subset again to make up) instead of MNIST's own shares
(9.0% 5s to 11.2% 1s). The epoch's order is drawn from the run's order generator in place of its permutation;
everything else is bench/gan_scored_run.py's run of mnistgen's own loop, step and engines, its config.json without
the balancing. The arguments are gan_scored_run.py's:

    python bench/gan_balanced_classes.py runs/recipes/imp-balanced --seeds 2,3,4 --epochs 100 --score-at 30,100 \
        --settings '{"recipe": "improved"}'
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import gan_scored_run
import torch

from mnistgen.config import DataConfig
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.train import gan as gan_train


def balanced_epoch_order(labels: torch.Tensor, batch_size: int, generator: torch.Generator, device: torch.device,
                         drop_last: bool = False) -> torch.Tensor:
    """One epoch's order in which each of the C classes of ``labels`` (N,) is N // C of the items: a fresh random
    subset of a larger class, every item of a smaller one and a random subset again to make up; then shuffled
    together, all drawn from ``generator``; cut as :func:`mnistgen.data.batches.epoch_order` cuts."""
    labels = labels.cpu()
    classes = torch.unique(labels)  # sorted: the same draws on every resume
    per_class = len(labels) // len(classes)
    picks = []
    for label in classes:
        members = torch.nonzero(labels == label).flatten()
        rounds = -(-per_class // len(members))
        drawn = torch.cat([members[torch.randperm(len(members), generator=generator)] for _ in range(rounds)])
        picks.append(drawn[:per_class])
    order = torch.cat(picks)  # (C * per_class,)
    order = order[torch.randperm(len(order), generator=generator)]
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return order[:stop].to(device)


@contextmanager
def installed(labels: torch.Tensor) -> Iterator[None]:
    """Within the block, mnistgen's GAN loop draws each epoch's order of the images of ``labels`` (N,) with
    :func:`balanced_epoch_order`; its own order is back after it. N must be a multiple of the number of classes, so
    that the balanced epoch has as many images as the loop's."""
    if len(labels) % len(torch.unique(labels)):
        raise ValueError(f"{len(labels)} labels of {len(torch.unique(labels))} classes: not a multiple")
    epoch_order = gan_train.epoch_order

    def balanced(num_items: int, batch_size: int, generator: torch.Generator, device: torch.device,
                 drop_last: bool = False) -> torch.Tensor:
        if num_items != len(labels):
            raise ValueError(f"{num_items} training images but {len(labels)} labels")
        return balanced_epoch_order(labels, batch_size, generator, device, drop_last)

    gan_train.epoch_order = balanced
    try:
        yield
    finally:
        gan_train.epoch_order = epoch_order


def main() -> None:
    labels = load_protocol("gan", load_raw(DataConfig())).train_labels  # (60000,), in the order of the images
    with installed(labels):
        gan_scored_run.main()


if __name__ == "__main__":
    main()
