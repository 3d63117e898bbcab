"""``mnistgen score FILE.npy``: how close images are to MNIST; ``mnistgen score-classifier train``: its classifier."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path

from ..config import ClassifierConfig, ScoreConfig, add_config_arguments, config_from_args
from ..errors import MnistgenError
from .common import given_flags, writable_output

# The score is always measured against real MNIST with an MNIST classifier: no --dataset flag.
NOT_FLAGS = ("dataset",)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score", help="how close a set of (N, 28, 28) images in [0, 1], or a run's samples, is to MNIST",
        description="Score images with mnistgen's own MNIST classifier: Frechet distance of its 128-d features "
                    "to those of the 10,000 test images, classifier score exp(E KL(p(y|x) || p(y))), the histogram "
                    "of predicted classes and its total variation distance from uniform and smallest share, beside "
                    "the real-vs-real reference. Writes FILE.score.json beside each FILE.npy (or FILE.npz). A VAE or "
                    "GAN run folder RUN gets --samples images drawn from its model with its seed (as its sample "
                    "command draws them), saved as RUN/samples.npz and scored (RUN/samples.score.json); a replica "
                    "run's seeds each get theirs in RUN/seed=N, and RUN/score.json each number's mean, std and 95% "
                    "Student-t interval over the seeds, and the worst seed's class balance.")
    parser.add_argument("files", nargs="+", metavar="FILE.npy|RUN",
                        help="(N, 28, 28) array(s), N >= 2: float32/float64 in [0, 1] or uint8 levels 0-255, saved "
                             "with numpy.save, or alone in an .npz (numpy.savez_compressed); or run folder(s) of "
                             "mnistgen vae|gan train")
    add_config_arguments(parser, ScoreConfig, exclude=NOT_FLAGS)
    parser.set_defaults(func=run_score)

    classifier = subparsers.add_parser(
        "score-classifier", help="train the MNIST classifier behind mnistgen score",
        description="The classifier that mnistgen score uses; mnistgen ships trained weights in mnistgen/assets.")
    commands = classifier.add_subparsers(title="score-classifier commands", metavar="COMMAND",
                                         parser_class=type(classifier), required=True)
    train = commands.add_parser(
        "train", help="train it on the MNIST training split (validation carved from it)",
        description="Train the classifier and write OUT/classifier.pt with OUT/classifier.json (its SHA-256, "
                    "validation and test accuracy, the command), OUT/config.json and OUT/metrics.jsonl. Use "
                    "the weights with mnistgen score --weights OUT/classifier.pt.")
    train.add_argument("--out", required=True, metavar="OUT", help="folder to write the weights into")
    add_config_arguments(train, ClassifierConfig, exclude=NOT_FLAGS)
    train.set_defaults(func=run_train)


def run_score(args: argparse.Namespace) -> int:
    from .. import scoring
    from ..device import resolve_device
    from ..evaluate.score_runs import check_samples, run_to_score, samples_path, score_run

    config = config_from_args(ScoreConfig, args)
    inputs = []  # (path, images) of a file, or the ScoredRun of a run folder
    for path in args.files:  # every file or run, and the folders scores go to, checked before any work
        if Path(path).is_dir():
            scored = run_to_score(path)
            check_samples(config)
            for _, target in scored.targets:
                writable_output(scoring.score_path(samples_path(target)), "cannot write")
            inputs.append(scored)
        else:
            if not Path(path).exists():
                raise MnistgenError(f"{path}: no such file or run folder")
            inputs.append((path, scoring.load_images(path)))
            writable_output(scoring.score_path(path), "cannot write")
    classifier = scoring.load_classifier(config.weights, resolve_device(config.device))
    reference = scoring.reference_statistics(classifier, config.data, config.batch_size)
    for item in inputs:
        if not isinstance(item, tuple):
            score_run(item, classifier, reference, config, say=print)
            continue
        path, images = item
        report = scoring.score_images(images, classifier, reference, config)
        written = scoring.write_report(path, report)
        print(scoring.format_report(report, path))
        print(f"written: {written}")
    return 0


def _command_line(args: argparse.Namespace, config: ClassifierConfig) -> list[str]:
    """The flags that made this run (those given explicitly), for the record shipped with the weights."""
    names = [f.name for f in (*dataclasses.fields(ClassifierConfig), *dataclasses.fields(config.data))]
    return ["score-classifier", "train", "--out", args.out,
            *given_flags(args, [name for name in names if name not in NOT_FLAGS])]


def run_train(args: argparse.Namespace) -> int:
    from ..classifier import train_and_save
    from ..data.sources import load_raw
    from ..device import resolve_device

    config = config_from_args(ClassifierConfig, args)
    if config.data.dataset != "mnist":
        raise MnistgenError("the score classifier is trained on MNIST only")
    device = resolve_device(config.device)
    raw = load_raw(config.data)
    meta = train_and_save(config, args.out, raw, device, _command_line(args, config))
    print(f"best epoch {meta['best_epoch']}: validation accuracy {meta['validation_accuracy']:.4f}, "
          f"test accuracy {meta['test_accuracy']:.4f}; sha256 {meta['sha256']}")
    print(f"written: {shlex.quote(args.out)}/{meta['file']} and its .json")
    return 0
