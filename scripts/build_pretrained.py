#!/usr/bin/env python3
"""Rebuild the trained models shipped in ``src/mnistgen/assets/pretrained/`` (``mnistgen pretrained``).

    MNISTGEN_DATA_DIR=../shared/data/mnist python scripts/build_pretrained.py --work ../pretrained-runs

1. Trains each model of :data:`MODELS` with its command into WORK/NAME, with this checkout's mnistgen: a run finished
   there is kept as it is, an unfinished one resumed. (On a 2-core CPU: the VAEs take minutes and about 1.5 hours,
   the GANs about 20 and 40 minutes; the four run one after another.)
2. Writes each model's package files: its checkpoint's weights in float16 (no optimizer state), its GAN grids in 8-bit
   levels, its config.json and metrics.jsonl, its data.json without this machine's paths.
3. Exports each (``mnistgen.pretrained.export``, as ``mnistgen pretrained export`` does) and measures it there, on
   the weights as stored: a VAE as ``mnistgen vae eval`` (test ELBO, 10 draws per image; IW log p(x), K = 1000; the
   10,000 test images), a GAN as ``mnistgen score RUN --samples 10000`` (Frechet distance, and the real-vs-real
   reference). Those files (eval.json, samples.score.json) ship beside the weights, the numbers in pretrained.json
   with the command, commit, seed, machine and date of each training.
4. Stores the encoder means of the explorer's VAE (``mnistgen explore --pretrained``), as ``mnistgen explore`` computes
   them, subsampled as the page does.

Needs full MNIST. ``--commit`` names the commit the runs were trained at (default: this checkout's HEAD);
``--models NAME ...`` builds those alone, keeping the other models' shipped files.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's mnistgen, also for the trainings (PYTHONPATH below)

from mnistgen import pretrained  # noqa: E402
from mnistgen.config import ScoreConfig, VAEEvalConfig  # noqa: E402
from mnistgen.evaluate.score_runs import run_to_score, score_run  # noqa: E402
from mnistgen.evaluate.vae import evaluate_run  # noqa: E402
from mnistgen.explore import explorer_from_run, subsample  # noqa: E402
from mnistgen.files import read_json, write_json  # noqa: E402
from mnistgen.imaging import to_uint8  # noqa: E402
from mnistgen.runs import RunDir, load_checkpoint  # noqa: E402
from mnistgen.scoring import REFERENCE_KEY, load_classifier, reference_statistics  # noqa: E402

THREADS = ["--threads", "1", "--flush-denormals"]
MODELS = {  # name: (what it is, the flags of its training after `mnistgen KIND train --out RUN`)
    "vae-spec": ("SPEC's VAE: hw protocol, 200 epochs", ["vae", *THREADS]),
    "vae-iwae": ("the best full-protocol VAE: the importance-weighted bound (k = 5), cosine learning rate, 200 epochs",
                 ["vae", "--protocol", "full", "--objective", "iwae", "--train-samples", "5", "--lr-schedule", "cosine",
                  "--epochs", "200", *THREADS]),
    "gan-spec": ("SPEC's GAN: 100 epochs", ["gan", *THREADS]),
    "gan-improved": ("the GAN of --recipe improved, sampled from the moving average of G's weights, 100 epochs",
                     ["gan", "--recipe", "improved", *THREADS]),
}
KEPT = {"vae": ("model",), "gan": ("generator", "discriminator", "generator_ema")}  # the weights a checkpoint ships
GAN_SAMPLES = 10_000
MACHINE_PATHS = ("folder", "located_by")  # data.json's entries that describe the training machine's files only


def command(name: str, out: str) -> list[str]:
    kind, *flags = MODELS[name][1]
    return ["mnistgen", kind, "train", "--out", out, *flags]


def epochs_done(run: RunDir) -> tuple[int, int]:
    """(epochs in the checkpoint, epochs configured); (0, 1) where nothing was saved yet."""
    if not run.checkpoint.is_file():
        return 0, 1
    return int(load_checkpoint(run.checkpoint)["epoch"]), int(run.read_config()["config"]["epochs"])


def train(name: str, work: Path) -> RunDir:
    run = RunDir(work / name)
    done, wanted = epochs_done(run)
    if done < wanted:
        resume = ["--resume"] if run.checkpoint.is_file() else []
        environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        print(f"{name}: training ({' '.join(command(name, str(run.path)) + resume)})", flush=True)
        with open(work / f"{name}.log", "a") as log:
            subprocess.run([sys.executable, "-m", *command(name, str(run.path)), *resume], env=environment, stdout=log,
                           stderr=subprocess.STDOUT, check=True)
    return run


def package_files(name: str, run: RunDir, folder: Path) -> dict:
    """Write ``name``'s files into ``folder`` (but its numbers) and return its weights.pt's arrays."""
    saved = run.read_config()
    kind = saved["kind"]
    state = load_checkpoint(run.checkpoint)
    weights = {key: {k: v.half() for k, v in state[key].items()} for key in KEPT[kind] if key in state}
    arrays = {"checkpoint": {"epoch": int(state["epoch"]), "step": int(state["step"]), **weights}}
    if kind == "gan":
        for key, raw in (("grids", False), ("raw_grids", True)):
            grids = {epoch: torch.from_numpy(to_uint8(run.load_grid(epoch, raw))) for epoch in run.grid_epochs(raw)}
            if grids:
                arrays[key] = grids
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", saved)
    (folder / "metrics.jsonl").write_bytes(run.metrics.read_bytes())
    data = {key: value for key, value in read_json(run.data).items() if key not in MACHINE_PATHS}
    data["files"] = [{key: value for key, value in file.items() if key != "path"} for file in data.get("files", [])]
    write_json(folder / "data.json", data)
    return arrays


def write_manifest(entries: dict) -> None:
    write_json(pretrained.assets() / pretrained.MANIFEST, {name: entries[name] for name in MODELS if name in entries})


def save_weights(name: str, arrays: dict, folder: Path, entries: dict) -> None:
    buffer = io.BytesIO()
    torch.save(arrays, buffer)
    (folder / pretrained.WEIGHTS).write_bytes(buffer.getvalue())
    entries[name]["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    write_manifest(entries)


def measure(name: str, kind: str, exported: RunDir, folder: Path) -> dict:
    """The numbers of the exported run (its float16 weights), and their file beside the weights."""
    if kind == "vae":
        result = evaluate_run(exported, VAEEvalConfig(iw=1000))
        write_json(folder / "eval.json", result)
        return {"test_elbo": result["test_elbo"], "test_iw_log_likelihood": result["test_iw_log_likelihood"]}
    config = ScoreConfig(samples=GAN_SAMPLES)
    classifier = load_classifier(config.weights)
    report = score_run(run_to_score(exported.path), classifier, reference_statistics(classifier, config.data), config,
                       say=print)
    report = {**report, "classifier": {**report["classifier"], "file": "mnistgen/assets/classifier.pt"}}
    write_json(folder / "samples.score.json", report)
    return {"frechet_distance": report["frechet_distance"], "real_vs_real": report[REFERENCE_KEY]["frechet_distance"]}


def machine() -> str:
    """This machine's CPU in words (the trainings' and the measurements')."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, type=Path, help="folder of the training runs (kept)")
    parser.add_argument("--commit", default=None, help="the commit the runs are trained at (default: HEAD)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                        help="build these alone, keeping the others' shipped files (default: all four)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", args.commit or "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = {name: train(name, args.work) for name in args.models}
    manifest = pretrained.assets() / pretrained.MANIFEST
    entries = read_json(manifest) if manifest.is_file() else {}
    for name, run in runs.items():
        saved, folder = run.read_config(), pretrained.assets() / name
        entries[name] = {"kind": saved["kind"], "title": MODELS[name][0],
                         "command": " ".join(command(name, "RUN")), "commit": commit,
                         "seed": saved["config"]["seed"], "epochs": epochs_done(run)[0], "machine": machine(),
                         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run.checkpoint.stat().st_mtime)),
                         "storage": "float16 weights; every number is measured on them"}
        save_weights(name, package_files(name, run, folder), folder, entries)
        with tempfile.TemporaryDirectory() as scratch:
            exported = pretrained.export(name, Path(scratch) / name)
            entries[name]["numbers"] = measure(name, saved["kind"], exported, folder)
            if name == pretrained.EXPLORER[0]:
                data = explorer_from_run(exported.path)
                means, labels = subsample(np.asarray(data.means, np.float32), np.asarray(data.labels))
                arrays = torch.load(folder / pretrained.WEIGHTS, weights_only=True)
                arrays["explorer"] = {"means": torch.from_numpy(means).half(),
                                      "labels": torch.from_numpy(labels.astype(np.uint8))}
                save_weights(name, arrays, folder, entries)
        write_manifest(entries)
        print(pretrained.headline(name), flush=True)
    total = sum(path.stat().st_size for path in pretrained.assets().rglob("*") if path.is_file())
    print(f"written: {pretrained.assets()} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
