"""Lookahead on both players measured as a candidate for the GAN's training, without it being a mnistgen option:
every ``--k`` steps, G's and D's weights move to slow weights that take a step of ``--alpha`` towards them
(slow <- slow + alpha (fast - slow); fast <- slow), Adam's moments untouched (Lookahead-minmax: Chavdarova et al.,
ICLR 2021; Zhang et al., 2019). It damps the rotation of the two players' game around its equilibrium, the
motion that makes a GAN's class shares drift from epoch to epoch.

The lookahead rides on mnistgen's own step: ``mnistgen.models.gan.train_step`` is wrapped, so every engine that
calls it (the reference path, the C kernels' calls, each replica in turn) takes it after its step; the slow
weights are kept per module pair. The run is bench/gan_scored_run.py's (same files, read by
bench/gan_recipes_summary.py), its config.json without the lookahead. A run continued with --resume starts its
slow weights from the weights restored: exact where the epochs before it hold a multiple of k steps (937 steps an
epoch at batch 64: at k = 5 the score at epoch 30 resumes exactly, 28,110 steps).

    python bench/gan_lookahead.py runs/recipes/imp-la5 --k 5 --alpha 0.5 --seeds 2,3,4 --epochs 100 \
        --score-at 30,100 --settings '{"recipe": "improved"}'
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import gan_scored_run
import torch

from mnistgen.models import gan as gan_model


@dataclass
class Lookahead:
    """The slow weights of each (G, D) pair the step is called with, and how many steps it has taken."""

    k: int
    alpha: float

    def __post_init__(self) -> None:
        self.state: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # generator -> [steps, slow weights]

    @staticmethod
    def players(generator: torch.nn.Module, discriminator: torch.nn.Module) -> list[torch.Tensor]:
        return [*generator.parameters(), *discriminator.parameters()]

    @torch.no_grad()
    def before_step(self, generator: torch.nn.Module, discriminator: torch.nn.Module) -> None:
        """A pair seen for the first time: its slow weights start at its weights now."""
        if generator not in self.state:
            self.state[generator] = [0, [weight.clone() for weight in self.players(generator, discriminator)]]

    @torch.no_grad()
    def after_step(self, generator: torch.nn.Module, discriminator: torch.nn.Module) -> None:
        """Count the step just taken; on every k-th, move the slow weights and put the fast ones on them."""
        entry = self.state[generator]
        entry[0] += 1
        if entry[0] % self.k == 0:
            for slow, weight in zip(entry[1], self.players(generator, discriminator), strict=True):
                slow.lerp_(weight, self.alpha)  # slow + alpha (fast - slow); exactly fast at alpha 1
                weight.copy_(slow)


@contextmanager
def installed(lookahead: Lookahead) -> Iterator[Lookahead]:
    """Within the block, mnistgen's GAN step is followed by the lookahead; mnistgen's own step is back after it."""
    train_step = gan_model.train_step

    def step_with_lookahead(generator, discriminator, *args, **kwargs):
        lookahead.before_step(generator, discriminator)
        values = train_step(generator, discriminator, *args, **kwargs)
        lookahead.after_step(generator, discriminator)
        return values

    gan_model.train_step = step_with_lookahead
    try:
        yield lookahead
    finally:
        gan_model.train_step = train_step


def main() -> None:
    args = sys.argv[1:]
    try:
        k, alpha = (float(args[args.index(flag) + 1]) for flag in ("--k", "--alpha"))
    except (ValueError, IndexError):
        sys.exit("gan_lookahead.py: give --k K --alpha A (and the arguments of gan_scored_run.py)")
    for flag in ("--k", "--alpha"):
        at = args.index(flag)
        del args[at:at + 2]
    if k < 1 or k != int(k) or not 0 < alpha <= 1:
        sys.exit("gan_lookahead.py: --k is a whole number >= 1 and --alpha in (0, 1]")
    sys.argv = [sys.argv[0], *args]
    with installed(Lookahead(int(k), alpha)):
        gan_scored_run.main()


if __name__ == "__main__":
    main()
