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
import sys
from pathlib import Path

import torch

from mnistgen.losses import generator_loss
from mnistgen.models import gan as gan_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gan_scored_run  # noqa: E402  (bench/'s own script)

GAMMA, NU = 0.99, 0.5  # the paper's decay of k per epoch and its floor, a fraction of the batch
MNIST_TRAINING_IMAGES = 60_000


def kept(epoch: int, batch_size: int) -> int:
    """k of epoch ``epoch`` (from 0) for a batch of ``batch_size``."""
    return max(math.floor(GAMMA ** epoch * batch_size), math.ceil(NU * batch_size))


def main() -> None:
    epoch = [0]  # the run's current epoch, told by the loop's once-an-epoch ema_decays call
    ema_decays = gan_model.ema_decays

    def recording_ema_decays(config, steps_before: int, like: torch.Tensor):
        epoch[0] = steps_before // (MNIST_TRAINING_IMAGES // config.batch_size)
        return ema_decays(config, steps_before, like)

    def top_k_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:  # ([R,] B, 1) -> ([R],)
        batch = fake_logits.shape[-2]
        best = fake_logits.topk(min(kept(epoch[0], batch), batch), dim=-2).values  # ([R,] k, 1): D's most real
        return generator_loss(best)

    gan_model.ema_decays = recording_ema_decays
    gan_model.generator_loss = top_k_generator_loss
    gan_scored_run.main()


if __name__ == "__main__":
    main()
