"""On a CUDA GPU: the training steps captured in CUDA graphs against the eager reference path, same device.

tests/ run on the CPU, where no graph can be captured; this script shows on a GPU what those tests show for the
other accelerators: (1) one run of each model with the captured step (``--cpu-kernels auto``) against the eager
reference path (``--cpu-kernels reference``): the same numbers to float rounding; (2) a captured run stopped in
the middle of an epoch and resumed ends bit for bit where an uninterrupted captured run ends; (3) replicas, their
batched step captured, against separate captured single-seed runs. The GAN keeps a moving average of G and takes
lookahead, so that their inputs are captured too. TF32 is off, so only the order of sums differs.

    python bench/graph_device_check.py --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile

import torch

from mnistgen.config import DataConfig, GANConfig, VAEConfig, replica_config
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.errors import TrainingInterrupted
from mnistgen.runs import RunDir
from mnistgen.train.gan import train_gan
from mnistgen.train.vae import train_vae

VAE_KEYS, GAN_KEYS = ("model",), ("generator", "discriminator", "generator_ema", "generator_slow", "discriminator_slow")


def largest_difference(a: RunDir, b: RunDir, keys: tuple[str, ...]) -> float:
    first, second = a.load_checkpoint(), b.load_checkpoint()
    return max((first[k][n].double() - second[k][n].double()).abs().max().item() for k in keys for n in first[k])


def stop_after(steps: int):
    count = {"n": 0}

    def stop() -> bool:
        count["n"] += 1
        return count["n"] > steps

    return stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MNISTGEN_DATA_DIR"))
    args = parser.parse_args()
    raw = load_raw(DataConfig(data_dir=args.data_dir, offline=True))
    hw = load_protocol("hw", raw)
    images = load_protocol("gan", raw).train_images[:12800]
    out: dict[str, object] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        def train(kind: str, config, name: str, **kwargs):
            run = RunDir(f"{folder}/{name}")
            if kind == "vae":
                return run, train_vae(config, run, protocol=hw, show_progress=False, say=notes.append, **kwargs)
            return run, train_gan(config, images, run, show_progress=False, say=notes.append, **kwargs)

        offline = DataConfig(offline=True)
        for kind, config, keys in (("vae", VAEConfig(epochs=2, device="cuda", data=offline), VAE_KEYS),
                                   ("gan", GANConfig(epochs=2, device="cuda", data=offline, ema_decay=0.999,
                                                     lookahead_steps=5), GAN_KEYS)):
            graph_run, graph_history = train(kind, config, f"{kind}-graph")
            eager = dataclasses.replace(config, cpu_kernels="reference")
            eager_run, eager_history = train(kind, eager, f"{kind}-eager")
            stopped = None
            try:
                train(kind, config, f"{kind}-stopped", stop=stop_after(15))
            except TrainingInterrupted:
                stopped = RunDir(f"{folder}/{kind}-stopped")
            resumed, resumed_history = train(kind, config, f"{kind}-stopped", resume=True)
            value = "test_elbo" if kind == "vae" else "g_loss"
            out[kind] = {
                "trained_by": [graph_history[-1]["trained_by"], eager_history[-1]["trained_by"]],
                f"last {value}, graph vs eager": [graph_history[-1][value], eager_history[-1][value]],
                "largest weight difference, graph vs eager": largest_difference(graph_run, eager_run, keys),
                "stopped after 15 steps": stopped is not None,
                "resumed vs uninterrupted, largest weight difference": largest_difference(resumed, graph_run, keys),
                "resumed vs uninterrupted, same metrics": [
                    {k: v for k, v in r.items() if "seconds" not in k} for r in resumed_history] == [
                    {k: v for k, v in r.items() if "seconds" not in k} for r in graph_history],
            }
            replicas, histories = train(kind, dataclasses.replace(config, replicas=2), f"{kind}-replicas")
            out[kind]["replicas trained_by"] = next(iter(histories.values()))[-1]["trained_by"]
            out[kind]["replica vs separate graph run, largest weight difference"] = [
                largest_difference(replicas.seed_run(seed), train(kind, replica_config(config, seed),
                                                                  f"{kind}-separate-{seed}")[0], keys)
                for seed in histories]
    out["notes"] = sorted(set(notes))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    main()
