"""Instance noise measured as a candidate for the GAN's training, without it being a mnistgen option: every batch D
sees, real and generated alike, gains Gaussian noise of standard deviation sigma (Sønderby et al., 2016; Arjovsky
and Bottou, 2017), sigma falling linearly from ``--sigma`` at the run's first step to 0 at its last (``--epochs``).
The noise rides on the step's augmentation input (a plan of floats instead of integers, drawn from the augmentation's
own stream, so z is drawn as without it): the step, the engines and the accelerators are mnistgen's own. The run is
bench/gan_scored_run.py's (same files, read by bench/gan_recipes_summary.py), its config.json without the noise.

    python bench/gan_instance_noise.py runs/recipes/imp-noise1 --sigma 0.1 --seeds 2,3,4,5,6 --epochs 100 \
        --score-at 30,100 --settings '{"recipe": "improved"}'
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import gan_scored_run
import torch

from mnistgen.config import GANConfig, config_from_settings
from mnistgen.data.batches import num_batches
from mnistgen.errors import MnistgenError
from mnistgen.models import gan as gan_model
from mnistgen.train import gan as gan_train


@dataclass
class InstanceNoise:
    """Stands in for :class:`mnistgen.models.gan.Augmentation`: the plan of one step is the noise itself, (B, D_CALLS,
    784) standard normals times the step's sigma; applying it adds it to the images."""

    sigma: float
    total_steps: int
    steps_before: int = 0  # the run's steps before the current epoch (set by the loop's ema_decays call)
    step: int = 0  # the run's step whose inputs are being drawn
    seen: list[float] = field(default_factory=list)  # sigma at the first step of each epoch, to check the schedule

    def scale(self) -> float:
        return self.sigma * max(0.0, 1.0 - self.step / self.total_steps)

    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        shape = (batch, gan_model.D_CALLS, 28 * 28)
        return torch.randn(shape, generator=generator, device=generator.device) * self.scale()

    def __call__(self, images: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        return images + plan.to(images.dtype).view_as(images)  # ([R,] B, 1, 28, 28)


@contextmanager
def installed(noise: InstanceNoise) -> Iterator[InstanceNoise]:
    """Within the block, mnistgen's loop and engine use ``noise`` as the augmentation and tell it the step of each
    draw; mnistgen's own functions are back after it."""
    ema_decays, step_inputs, augmentation = gan_model.ema_decays, gan_train.step_inputs, gan_model.augmentation

    def recording_ema_decays(config, steps_before: int, like: torch.Tensor):  # called by the loop once an epoch
        noise.steps_before = steps_before
        return ema_decays(config, steps_before, like)

    def stepped_inputs(*args, **kwargs) -> Callable[[int, int], tuple[torch.Tensor, ...]]:
        inputs = step_inputs(*args, **kwargs)

        def at(k: int, step: int) -> tuple[torch.Tensor, ...]:
            noise.step = noise.steps_before + step
            if step == 0 and k == 0:
                noise.seen.append(noise.scale())
            return inputs(k, step)

        return at

    gan_model.augmentation = lambda config: noise
    gan_model.ema_decays = recording_ema_decays
    gan_train.step_inputs = stepped_inputs
    try:
        yield noise
    finally:
        gan_model.augmentation, gan_model.ema_decays, gan_train.step_inputs = augmentation, ema_decays, step_inputs


def main() -> None:
    args = sys.argv[1:]
    try:
        at = args.index("--sigma")
        sigma = float(args[at + 1])
        epochs = int(args[args.index("--epochs") + 1]) if "--epochs" in args else 100
        settings = json.loads(args[args.index("--settings") + 1]) if "--settings" in args else {}
    except (ValueError, IndexError):
        sys.exit("gan_instance_noise.py: give --sigma S (and the arguments of gan_scored_run.py)")
    del args[at:at + 2]
    try:
        config = config_from_settings(GANConfig, {**settings, "epochs": epochs}, None, "gan_instance_noise.py")
    except MnistgenError as error:
        sys.exit(str(error))
    sys.argv = [sys.argv[0], *args]
    steps = num_batches(gan_scored_run.MNIST_TRAINING_IMAGES, config.batch_size, drop_last=True)  # as the loop does
    with installed(InstanceNoise(sigma, config.epochs * steps)):
        gan_scored_run.main()


if __name__ == "__main__":
    main()
