"""``mnistgen gan``: train, draw and sample the GAN of SPEC §3 (argument parsing only)."""

from __future__ import annotations

import argparse

import numpy as np

from ..config import GANConfig, GANPlotConfig, GANSampleConfig, add_config_arguments, config_from_args
from ..errors import UsageError
from ..files import atomic_write, to_stderr
from ..runs import RunDir
from .common import add_train_command, npy_output, train_command


def register(subparsers) -> None:
    """Add ``mnistgen gan train|plot|sample``."""
    parser = subparsers.add_parser(
        "gan", help="the GAN of SPEC §3: train, plot, sample",
        description="The small convolutional GAN of SPEC §3: train it into a run folder, then draw its progress "
                    "figure and sample from it.")
    commands = parser.add_subparsers(title="gan commands", metavar="COMMAND", parser_class=type(parser), required=True)

    add_train_command(
        commands, GANConfig, run_train, "train the GAN into a run folder",
        "Train the GAN (defaults: all 60,000 training images, batch 256, z ~ U[-1, 1]^64, Adam lr 2e-4 "
        "for each network, one D step then one G step per batch, 100 epochs, seed 2). RUN gets "
        "config.json, data.json, metrics.jsonl (one line per epoch), checkpoint.pt (after every "
        "epoch) and grids/epoch_NNN.png, an 8x8 grid of G's images for one fixed batch of noise (epoch 0, "
        "every --grid-every epochs and the last). Ctrl-C saves the state and stops; --resume continues. "
        "Training-only options (--betas, --ema-decay, --recipe improved) leave SPEC's networks as they "
        "are; the defaults, and --recipe spec, are SPEC's.")

    plot = commands.add_parser(
        "plot", help="draw the progress figure of a run (RUN/figures/progress.png)",
        description="Write RUN/figures/progress.png, the saved 8x8 grids of the chosen epochs side by side, each "
                    "titled with its epoch, and RUN/figures/training.png, the losses and D's outputs per epoch.")
    plot.add_argument("run", metavar="RUN", help="a GAN run folder")
    add_config_arguments(plot, GANPlotConfig)
    plot.set_defaults(func=run_plot)

    sample = commands.add_parser(
        "sample", help="draw images G(z) of a trained run into a .npy file",
        description="Draw N images G(z), z ~ U[-1, 1]^zdim, from the run's latest checkpoint (a run trained with "
                    "--ema-decay: from the moving average of G's weights, unless --raw). Saved as an "
                    "(N, 28, 28) float32 array in [0, 1].")
    sample.add_argument("run", metavar="RUN", help="a GAN run folder")
    sample.add_argument("--n", required=True, type=int, metavar="N", help="number of images")
    sample.add_argument("--out", required=True, metavar="FILE.npy", help="where to save the array")
    add_config_arguments(sample, GANSampleConfig)
    sample.set_defaults(func=run_sample)


def run_train(args: argparse.Namespace) -> int:
    from ..api import train_gan_into

    def summary(last: dict) -> str:
        return (f"D loss {last['d_loss']:.3f}, G loss {last['g_loss']:.3f}, mean D(x) {last['d_real']:.3f}, "
                f"mean D(G(z)) {last['d_fake']:.3f}")

    return train_command(args, "gan", GANConfig, lambda config, run: train_gan_into(run, config, args.resume), summary)


def run_plot(args: argparse.Namespace) -> int:
    from ..evaluate.gan import write_figures
    from ..evaluate.replicas import figure_lines

    run = RunDir(args.run).require()
    options = config_from_args(GANPlotConfig, args)
    paths = write_figures(run, parse_epochs(options.epochs), raw=options.raw)
    for line in figure_lines(paths, run.replicas(), every_seed="training"):
        print(line)
    return 0


def parse_epochs(text: str) -> list[int]:
    """``"0,30,70"`` -> [0, 30, 70]; anything else is a one-line error."""
    try:
        epochs = [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--epochs {text!r}: give comma-separated epoch numbers, e.g. 0,30,70") from None
    if any(epoch < 0 for epoch in epochs):
        raise UsageError(f"--epochs {text!r}: epochs are 0 (before training) or more")
    return epochs


def run_sample(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..evaluate.gan import generator_label, load_generator, sample_images
    from ..evaluate.replicas import first_seed

    out = npy_output(args.out)
    if args.n <= 0:
        raise UsageError(f"--n must be a positive integer, got {args.n}")
    run = RunDir(args.run).require()
    options = config_from_args(GANSampleConfig, args)
    run = first_seed(run, "sampling", say=to_stderr, kind="gan")  # replicas
    generator, config = load_generator(run, resolve_device(options.device), raw=options.raw)
    images = sample_images(generator, args.n, config.seed if options.seed is None else options.seed)
    atomic_write(out, lambda handle: np.save(handle, images))  # a reader never sees half an array
    print(f"wrote {out}: {images.shape[0]} images {images.shape[1]}x{images.shape[2]}, float32 in [0, 1], "
          f"{generator_label(config, options.raw)}")
    return 0
