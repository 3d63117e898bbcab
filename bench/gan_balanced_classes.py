"""Class-balanced real batches measured as a candidate for the GAN's training, without it being a mnistgen option:
each epoch D sees every digit equally often (6,000 of each of MNIST's 60,000 training images: a fresh random subset
of a larger class, every image of a smaller one and a random subset again to make up;
:func:`mnistgen.data.batches.balanced_epoch_order`) instead of MNIST's own shares (9.0% 5s to 11.2% 1s). The epoch's
order is drawn from the run's order generator in place of its permutation; everything else is
bench/gan_scored_run.py's run of mnistgen's own loop, step and engines. The arguments are gan_scored_run.py's:

    python bench/gan_balanced_classes.py runs/recipes/imp-balanced --seeds 2,3,4 --epochs 100 --score-at 30,100 \
        --settings '{"recipe": "improved"}'
"""

from __future__ import annotations

import sys
from pathlib import Path

from mnistgen.config import DataConfig
from mnistgen.data.batches import balanced_epoch_order
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.train import gan as gan_training

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gan_scored_run  # noqa: E402  (bench/'s own script)


def main() -> None:
    labels = load_protocol("gan", load_raw(DataConfig())).train_labels  # (60000,), the order of the images

    def balanced(num_items, batch_size, generator, device, drop_last=False):
        assert num_items == len(labels), "the training images are MNIST's 60,000, in the order of their labels"
        return balanced_epoch_order(labels, batch_size, generator, device, drop_last)

    gan_training.epoch_order = balanced
    gan_scored_run.main()


if __name__ == "__main__":
    main()
