"""Top-k training of G measured as a candidate for the GAN's training, without it being a mnistgen option (Sinha et
al., 2020, "Top-k training of GANs: improving GAN performance by throwing away bad samples"): G's loss at each step is
the mean of -log D(G(z)) over only the k generated images of the batch that D finds most real, k = max(floor(gamma^e
* B), ceil(nu * B)) in epoch e (from 0) of a batch of B, gamma 0.99 and nu 0.5 as in the paper; D's step is
unchanged. It keeps G from being pulled by the images D finds least real, which in the paper's mixtures are those
between the modes. mnistgen's step, engines and accelerators run as they are, with this G loss in place of
:func:`mnistgen.losses.generator_loss`; the run is bench/gan_scored_run.py's (same files, read by
bench/gan_recipes_summary.py), its config.json without top-k. The arguments are gan_scored_run.py's:

    python bench/gan_top_k.py runs/recipes/imp-topk --seeds 2,3,4 --epochs 100 --score-at 30,100 \
        --settings '{"recipe": "improved"}'
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import gan_scored_run
import torch

from mnistgen.data.batches import num_batches
from mnistgen.losses import generator_loss
from mnistgen.models import gan as gan_model

GAMMA, NU = 0.99, 0.5  # the paper's decay of k per epoch and its floor, a fraction of the batch


def kept(epoch: int, batch_size: int) -> int:
    """k of epoch ``epoch`` (from 0) for a batch of ``batch_size``."""
    return max(math.floor(GAMMA ** epoch * batch_size), math.ceil(NU * batch_size))


def top_k_generator_loss(fake_logits: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`mnistgen.losses.generator_loss` over the k logits of each batch that D finds most real: ([R,] B, 1) ->
    ([R],)."""
    return generator_loss(fake_logits.topk(min(k, fake_logits.shape[-2]), dim=-2).values)  # ([R,] k, 1)


@contextmanager
def installed(training_images: int) -> Iterator[list[int]]:
    """Within the block, mnistgen's GAN step takes G's loss over the top k of :func:`kept` for the epoch the loop is
    in, told by its once-an-epoch ema_decays call (steps before the epoch over the full batches of
    ``training_images``); yields the epochs told, one entry a call. mnistgen's own functions are back after it."""
    ema_decays, loss = gan_model.ema_decays, gan_model.generator_loss
    epochs: list[int] = []

    def recording_ema_decays(config, steps_before: int, like: torch.Tensor):
        epochs.append(steps_before // num_batches(training_images, config.batch_size, drop_last=True))
        return ema_decays(config, steps_before, like)

    def top_k(fake_logits: torch.Tensor) -> torch.Tensor:
        return top_k_generator_loss(fake_logits, kept(epochs[-1] if epochs else 0, fake_logits.shape[-2]))

    gan_model.ema_decays, gan_model.generator_loss = recording_ema_decays, top_k
    try:
        yield epochs
    finally:
        gan_model.ema_decays, gan_model.generator_loss = ema_decays, loss


def main() -> None:
    with installed(gan_scored_run.MNIST_TRAINING_IMAGES):
        gan_scored_run.main()

if __name__ == "__main__":
    main()
