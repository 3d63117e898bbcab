"""A batch-level term in G's loss measured as a candidate for the GAN's training, without it being a mnistgen option:
G's loss gains ``--weight`` times the squared maximum mean discrepancy (MMD) between the step's generated batch and
its real batch in pixel space (Gretton et al., 2012; as the whole loss of a generator in Li et al., 2015 and
Dziugaite et al., 2015), with a sum of Gaussian kernels. D judges one image at a time, so with SPEC's 593-parameter
D nothing in the loss sees how often G draws each digit; the MMD compares the batches as sets, so a digit drawn
more often than in the data pushes G's images of it apart and towards the real images. D's step is unchanged.
mnistgen's step, engines and accelerators run as they are: the step's calls are wrapped to see the two batches
(the real one as D's step sees it, the generated one as G's step gives it to D), and G's loss in place of
:func:`mnistgen.losses.generator_loss` adds the term. The run is bench/gan_scored_run.py's (same files, read by
bench/gan_recipes_summary.py), its config.json without the term. The other arguments are gan_scored_run.py's:

    python bench/gan_mmd.py runs/recipes/imp-mmd1 --weight 1 --seeds 2,3,4 --epochs 100 --score-at 30,100 \
        --settings '{"recipe": "improved"}'
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import gan_scored_run
import torch

from mnistgen.models import gan as gan_model
from mnistgen.models.gan import REFERENCE, GANCalls

# the kernels' variances, in squared pixel distance ([0, 1] pixels): MNIST's pairs of training images lie at medians
# 45 (two 1s) to 127 (a 0 and another digit), so the widths run from nearest neighbours to the whole set
BANDWIDTHS = (5.0, 10.0, 20.0, 40.0, 80.0)


def mmd_squared(generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The unbiased estimate of MMD^2 between two batches, each ([R,] B, 1, 28, 28) -> ([R],): the mean kernel value
    over distinct pairs within each batch, less twice the mean over pairs across them; the kernel is the sum over
    :data:`BANDWIDTHS` s of exp(-||x - y||^2 / (2 s))."""
    x, y = generated.flatten(-3), real.flatten(-3)  # ([R,] B, 784)

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # ([R,] B, 784) twice -> ([R,] B, B)
        squared = (a * a).sum(-1).unsqueeze(-1) + (b * b).sum(-1).unsqueeze(-2) - 2 * a @ b.mT
        squared = squared.clamp_min(0)  # rounding can leave -1e-5 where a row meets itself
        return sum(torch.exp(squared / (-2 * s)) for s in BANDWIDTHS)

    def within(a: torch.Tensor) -> torch.Tensor:  # the mean over pairs of distinct images
        n = a.shape[-2]
        pairs = kernel(a, a)
        return (pairs.sum((-2, -1)) - pairs.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))

    return within(x) + within(y) - 2 * kernel(x, y).mean((-2, -1))


@contextmanager
def installed(weight: float) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, mnistgen's GAN step takes G's loss as :func:`mnistgen.losses.generator_loss` + ``weight``
    * :func:`mmd_squared` (the batch G's step gives D, the real batch D's step sees); yields the batches of the last
    step. mnistgen's own functions are back after it."""
    train_step, loss = gan_model.train_step, gan_model.generator_loss
    batches: dict[str, torch.Tensor] = {}

    def watched_step(generator, discriminator, optimizer_g, optimizer_d, real, z, calls: GANCalls = REFERENCE,
                     *rest, **options):
        def discriminate_both(discriminator, real_seen, generated):
            batches["real"] = real_seen
            return calls.discriminate_both(discriminator, real_seen, generated)

        def discriminate(discriminator, generated):
            batches["generated"] = generated
            return calls.discriminate(discriminator, generated)

        return train_step(generator, discriminator, optimizer_g, optimizer_d, real, z,
                          GANCalls(calls.generate, discriminate_both, discriminate), *rest, **options)

    def with_mmd(fake_logits: torch.Tensor) -> torch.Tensor:
        return loss(fake_logits) + weight * mmd_squared(batches["generated"], batches["real"])

    gan_model.train_step, gan_model.generator_loss = watched_step, with_mmd
    try:
        yield batches
    finally:
        gan_model.train_step, gan_model.generator_loss = train_step, loss


def main() -> None:
    args = sys.argv[1:]
    try:
        at = args.index("--weight")
        weight = float(args[at + 1])
    except (ValueError, IndexError):
        sys.exit("gan_mmd.py: give --weight W (and the arguments of gan_scored_run.py)")
    del args[at:at + 2]
    sys.argv = [sys.argv[0], *args]
    with installed(weight):
        gan_scored_run.main()


if __name__ == "__main__":
    main()
