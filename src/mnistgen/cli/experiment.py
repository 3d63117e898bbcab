"""``mnistgen experiment elbo-estimators|fixed-encoder RUN``: the theory experiments of docs/theory.md §12."""

from __future__ import annotations

import argparse
import sys

from ..config import ElboEstimatorsConfig, FixedEncoderConfig, add_config_arguments, config_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "experiment", help="theory experiments on a trained VAE (docs/theory.md)",
        description="Experiments that measure statements of docs/theory.md on a trained VAE run folder. "
                    "Each writes RUN/experiments/<name>.json and a figure <name>.png.")
    commands = parser.add_subparsers(title="experiments", metavar="EXPERIMENT", parser_class=type(parser),
                                     required=True)

    estimators = commands.add_parser(
        "elbo-estimators", help="Eq. 1 vs Eq. 2: variance of the ELBO estimate and of its gradient",
        description="Draw eps many times for each of the first --images test images and compare the one-sample "
                    "ELBO estimates of Eq. 1 (closed-form KL) and Eq. 2 (Monte Carlo KL) on the same draws: their "
                    "means, their variances, and the variance of the gradient of the mini-batch ELBO with respect "
                    "to the encoder's and the decoder's parameters.")
    estimators.add_argument("run", metavar="RUN", help="a VAE run folder (from mnistgen vae train)")
    add_config_arguments(estimators, ElboEstimatorsConfig)
    estimators.set_defaults(func=_elbo_estimators)

    fixed = commands.add_parser(
        "fixed-encoder", help="test ELBO with the trained encoder vs q = N(0, I) vs one shared Gaussian q",
        description="The test-set ELBO of the trained decoder with three choices of q(z|x): the trained encoder; "
                    "N(0, I) for every image; and the single diagonal Gaussian that maximizes the training-set "
                    "ELBO, shared by every image.")
    fixed.add_argument("run", metavar="RUN", help="a VAE run folder (from mnistgen vae train)")
    add_config_arguments(fixed, FixedEncoderConfig)
    fixed.set_defaults(func=_fixed_encoder)


def _run_and_config(cls: type, args: argparse.Namespace) -> tuple:
    """The run folder RUN, and ``cls`` from the flags over the defaults, the data settings defaulting to RUN's."""
    from ..experiments import vae_config
    from ..runs import RunDir

    run = RunDir(args.run).require()
    return run, config_from_args(cls, args, base=cls(data=vae_config(run).data))


def _elbo_estimators(args: argparse.Namespace) -> int:
    from ..experiments import run_elbo_estimators

    record = run_elbo_estimators(*_run_and_config(ElboEstimatorsConfig, args))
    summary, gradients = record["summary"], record["gradients"]
    print(f"ELBO, mean over images and draws: Eq. 1 {record['elbo']['eq1']['mean']:.3f}, "
          f"Eq. 2 {record['elbo']['eq2']['mean']:.3f}")
    print(f"per-image variance of the estimate (mean over images): Eq. 1 {summary['eq1_variance_mean']:.4g}, "
          f"Eq. 2 {summary['eq2_variance_mean']:.4g}; Eq. 1 lower for "
          f"{100 * summary['fraction_of_images_where_eq1_has_lower_variance']:.0f}% of the images")
    for group, by_eq in gradients.items():
        print(f"{group} gradient variance per image: Eq. 1 {by_eq['eq1']['trace_covariance_per_image']:.4g}, "
              f"Eq. 2 {by_eq['eq2']['trace_covariance_per_image']:.4g}")
    print(f"wrote {record['figure']} and its .json", file=sys.stderr)
    return 0


def _fixed_encoder(args: argparse.Namespace) -> int:
    from ..experiments import run_fixed_encoder

    record = run_fixed_encoder(*_run_and_config(FixedEncoderConfig, args))
    for name, values in record["test_elbo"].items():
        print(f"test ELBO, q = {name}: {values['mean']:.3f} (standard error {values['standard_error']:.3f})")
    print(f"wrote {record['figure']} and its .json, .npz", file=sys.stderr)
    return 0
