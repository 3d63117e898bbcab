"""``mnistgen vae``: train, evaluate, draw and sample the VAE of SPEC §2 (argument parsing only)."""

from __future__ import annotations

import argparse

import numpy as np

from ..config import VAEConfig, VAEEvalConfig, add_config_arguments, config_from_args
from ..files import atomic_write, to_stderr
from ..runs import RunDir
from .common import add_train_command, npy_output, train_command


def register(subparsers) -> None:
    """Add ``mnistgen vae train|eval|plot|sample``."""
    parser = subparsers.add_parser(
        "vae", help="the VAE of SPEC §2: train, eval, plot, sample",
        description="The 2-D-latent VAE of SPEC §2: train it into a run folder, then evaluate it, draw its "
                    "figures and sample from it.")
    commands = parser.add_subparsers(title="vae commands", metavar="COMMAND", parser_class=type(parser), required=True)

    add_train_command(
        commands, VAEConfig, run_train, "train the VAE into a run folder",
        "Train the VAE (defaults: SPEC's hw protocol, batch 100, Adam lr 1e-3, 200 epochs, seed 1234). "
        "RUN gets config.json, data.json, metrics.jsonl (one line per epoch) and checkpoint.pt "
        "(after every epoch). Ctrl-C saves the state and stops; --resume continues it.")

    evaluate = commands.add_parser(
        "eval", help="test ELBO and importance-weighted log p(x) of a trained run (RUN/eval.json)",
        description="Estimate the test ELBO (mean over the test images and several draws of z) and the "
                    "importance-weighted log p(x) with K samples per image; print them and write RUN/eval.json.")
    evaluate.add_argument("run", metavar="RUN", help="a VAE run folder")
    add_config_arguments(evaluate, VAEEvalConfig)
    evaluate.set_defaults(func=run_eval)

    plot = commands.add_parser(
        "plot", help="draw the figures of a trained run into RUN/figures",
        description="Write RUN/figures/samples.png, latent.png, interpolation.png, manifold.png and curves.png.")
    plot.add_argument("run", metavar="RUN", help="a VAE run folder")
    add_config_arguments(plot, VAEEvalConfig, exclude=("iw", "samples"))
    plot.set_defaults(func=run_plot)

    sample = commands.add_parser(
        "sample", help="draw images from the prior of a trained run into a .npy file",
        description="Draw N images x from z ~ N(0, I): the decoder's probabilities p(x|z), or binary draws "
                    "with --binary. Saved as an (N, 28, 28) float32 array in [0, 1].")
    sample.add_argument("run", metavar="RUN", help="a VAE run folder")
    sample.add_argument("--n", required=True, type=int, metavar="N", help="number of images")
    sample.add_argument("--out", required=True, metavar="FILE.npy", help="where to save the array")
    sample.add_argument("--binary", action="store_true", help="binary draws x ~ p(x|z) instead of p(x|z)")
    add_config_arguments(sample, VAEEvalConfig, exclude=("iw", "samples"))
    sample.set_defaults(func=run_sample)


def run_train(args: argparse.Namespace) -> int:
    from ..train.vae import train_vae

    def summary(last: dict) -> str:
        held_out = next(k for k in last if k.endswith("_elbo") and k != "train_elbo")
        trained = f"train {last.get('train_elbo_is', 'ELBO')}"  # iwae, K > 1: what train_elbo is
        return (f"{trained} {last['train_elbo']:.2f}, {held_out.replace('_elbo', '')} ELBO {last[held_out]:.2f} "
                "nats per image")

    return train_command(args, "vae", VAEConfig, lambda config, run: train_vae(config, run, resume=args.resume),
                         summary)


def run_eval(args: argparse.Namespace) -> int:
    from ..evaluate.vae import evaluate_replicas, evaluate_run
    from ..progress import progress

    run = RunDir(args.run).require()
    options = config_from_args(VAEEvalConfig, args)
    replicas = run.replicas()
    with progress(0, f"log p(x), K={options.iw}" + (f", {len(replicas)} seeds" if replicas else "")) as bar:
        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = (evaluate_replicas if replicas else evaluate_run)(run, options, on_progress=advance)
    if replicas:
        return print_replica_eval(run, result, options)
    error = result["test_elbo_mc_standard_error"]
    spread = f"; Monte Carlo standard error {error:.3f}" if error is not None else ""
    print(f"test ELBO      {result['test_elbo']:9.2f} nats per image (mean of {result['elbo_samples']} draw(s) "
          f"of z per image{spread})")
    print(f"train ELBO     {result['train_elbo']:9.2f} nats per image")
    print(f"test log p(x)  {result['test_iw_log_likelihood']:9.2f} nats per image (importance-weighted, "
          f"K={result['iw_samples']})")
    print(f"wrote {run.eval}")
    return 0


def print_replica_eval(run: RunDir, result: dict, options: VAEEvalConfig) -> int:
    """The table of a replica run's eval.json: each headline number's mean ± interval, std and per-seed values."""
    from ..evaluate.replicas import summary_table

    print(f"{run.path}: nats per image; test ELBO: mean of {options.samples} draw(s) of z per image; log p(x): "
          f"importance-weighted, K={options.iw}")
    for line in summary_table(result, {"test_elbo": "test ELBO", "train_elbo": "train ELBO",
                                       "test_iw_log_likelihood": "test log p(x)"}):
        print(line)
    print(f"wrote {run.eval} (and each seed's eval.json in {run.path / 'seed=N'})")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from ..evaluate.replicas import figure_lines
    from ..evaluate.vae import write_figures

    run = RunDir(args.run).require()
    paths = write_figures(run, config_from_args(VAEEvalConfig, args))
    for line in figure_lines(paths, run.replicas(), every_seed="curves"):
        print(line)
    return 0


def run_sample(args: argparse.Namespace) -> int:
    from ..evaluate.replicas import first_seed
    from ..evaluate.vae import sample_run

    out = npy_output(args.out)
    run = first_seed(RunDir(args.run).require(), "sampling", say=to_stderr, kind="vae")
    images = sample_run(run, args.n, args.binary, config_from_args(VAEEvalConfig, args))
    atomic_write(out, lambda handle: np.save(handle, images))  # a reader never sees half an array
    kind = "binary draws x ~ p(x|z)" if args.binary else "decoder means p(x|z)"
    print(f"wrote {out}: {images.shape[0]} images {images.shape[1]}x{images.shape[2]}, float32, {kind}")
    return 0
