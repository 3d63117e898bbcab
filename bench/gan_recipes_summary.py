"""The tables of bench/gan_recipes.sh: each GAN training option's Fréchet distance and classifier score (mnistgen
score, 10,000 samples per seed), mean ± the 95% Student-t interval over the seeds, each seed's value beside it;
with ``--balance``, one table per epoch of the Fréchet distance's worst seed (and its ratio to the mean) and of the
classes: the total variation distance of the class histogram from uniform (mean, worst seed) and the smallest and
largest share of a digit over all seeds (which digit), and how many seeds have every digit within the goal's
7-13% of their samples.

    python bench/gan_recipes_summary.py runs/recipes [--balance]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gan_class_shares

from mnistgen.stats import spread

ROWS = (  # (training, sample set, what it is)
    ("spec", "raw", "SPEC's defaults"),
    ("spec", "average", "+ EMA 0.999 of G (the same training)"),
    ("betas", "raw", "betas 0.5,0.999"),
    ("betas", "average", "betas 0.5,0.999 + EMA 0.999"),
    ("ttur", "raw", "lr-d 4e-4, lr-g 1e-4 (TTUR)"),
    ("ttur", "average", "TTUR + EMA 0.999"),
    ("combo", "raw", "betas 0.5, TTUR, the trained G"),
    ("combo", "average", "betas 0.5, TTUR, EMA 0.999"),
    ("improved", "raw", "--recipe improved, the trained G"),  # its values: GAN_RECIPES in mnistgen/config.py
    ("improved", "average", "--recipe improved, its moving average of G"),
    ("b32", "raw", "betas 0.5, TTUR, batch 32, the trained G"),
    ("b32", "average", "betas 0.5, TTUR, batch 32, EMA 0.9999"),
    ("fastd", "raw", "betas 0.5, lr-d 1e-3, lr-g 2e-4, batch 64, the trained G"),
    ("fastd", "average", "betas 0.5, lr-d 1e-3, lr-g 2e-4, batch 64, EMA 0.9999"),
    ("imp-b32", "average", "--recipe improved, batch 32"),
    ("imp-lrg1e-4", "average", "--recipe improved, lr-g 1e-4"),
    ("imp-lrd2e-3", "average", "--recipe improved, lr-d 2e-3"),
    ("imp-cosine", "average", "--recipe improved, both rates by a cosine to 1% over 100 epochs (at 16af1be)"),
    ("imp-b32-r1g1e-2", "average", "--recipe improved, batch 32, R1 gamma 0.01 every 16 steps"),
    ("imp-b32-r1g1e-1", "average", "--recipe improved, batch 32, R1 gamma 0.1 every 16 steps"),
    ("imp-r1g1e-2", "average", "--recipe improved, R1 gamma 0.01 every 16 steps"),
    ("imp-r1g1e-1", "average", "--recipe improved, R1 gamma 0.1 every 16 steps"),
    ("imp-r1g1", "average", "--recipe improved, R1 gamma 1 every 16 steps"),
    ("imp-r1g3e-2", "average", "--recipe improved, R1 gamma 0.03 every 16 steps"),
    ("imp-ema9999", "raw", "--recipe improved, the trained G"),
    ("imp-ema9999", "average", "--recipe improved, EMA 0.9999"),
    ("imp-b0", "average", "--recipe improved, betas 0,0.99"),
    ("imp-b0-ema9999", "average", "--recipe improved, betas 0,0.99, EMA 0.9999"),
    ("imp-t3c14", "average", "--recipe improved, translate 3, cutout 14 (DiffAugment)"),
    ("imp-t2", "average", "--recipe improved, translate 2"),
    ("imp-ema9999-warm", "average", "--recipe improved, EMA 0.9999 with the warm-up"),
    ("imp-b0-ema9999-warm", "average", "--recipe improved, betas 0,0.99, EMA 0.9999 with the warm-up"),
    ("imp-noise1", "average", "--recipe improved, instance noise 0.1 falling to 0 (bench/gan_instance_noise.py)"),
    ("imp-noise2", "average", "--recipe improved, instance noise 0.2 falling to 0 (bench/gan_instance_noise.py)"),
    ("imp-b05", "average", "--recipe improved, betas 0.5,0.999, lr-d 1e-3, lr-g 2e-4 (the recipe before its betas)"),
    ("imp-b0-lr15", "average", "--recipe improved, betas 0,0.99, lr-d 1.5e-3, lr-g 3e-4"),
    ("imp-b0-lr15-ema999", "average", "--recipe improved, betas 0,0.99, lr-d 1.5e-3, lr-g 3e-4, EMA 0.999"),
    ("imp-la5", "raw", "--recipe improved, lookahead every 5 steps at 0.5, the trained G"),
    ("imp-la5", "average", "--recipe improved, lookahead every 5 steps at 0.5"),
    ("imp-la5-lr2", "average", "--recipe improved, lookahead every 5 steps at 0.5, lr-d 3e-3, lr-g 6e-4"),
    ("imp-b0-lr15-xeon", "average", "--recipe improved without lookahead (lr-d 1.5e-3, lr-g 3e-4), the Xeon VM"),
    ("imp-la5-lr2-xeon", "average", "--recipe improved, lookahead 5 steps at 0.5, lr-d 3e-3, lr-g 6e-4, the Xeon VM"),
    ("imp-la10-xeon", "average", "--recipe improved --lookahead-steps 10, the Xeon VM"),
    ("imp-balanced-xeon", "average", "--recipe improved, every digit equally often in D's real batches, the Xeon VM"),
    ("imp-topk-xeon", "average", "--recipe improved, top-k training of G, the Xeon VM"),
    ("imp-mmd1-xeon", "average", "--recipe improved with --mmd-weight 1 (lookahead, rates doubled), the Xeon VM"),
    ("imp-mmd3-xeon", "average", "--recipe improved with --mmd-weight 3 (lookahead, rates doubled), the Xeon VM"),
    ("imp-mmd10-xeon", "average", "--recipe improved with --mmd-weight 10 (lookahead, rates doubled), the Xeon VM"),
    ("imp-mmd30-xeon", "average", "--recipe improved with --mmd-weight 30 (lookahead, rates doubled), the Xeon VM"),
    ("imp-cluster100-xeon", "average", "--recipe improved + a cluster MMD term, weight 100, the Xeon VM"),
    ("imp-cluster500-xeon", "average", "--recipe improved + a cluster MMD term, weight 500, the Xeon VM"),
    ("imp-balmmd-xeon", "average", "--recipe improved (--mmd-weight 10), every digit equally often, the Xeon VM"),
)


def balance_tables(out: Path, epochs: list[int], seeds: list[int]) -> None:
    for epoch in epochs:
        print(f"\nepoch {epoch}, seeds {', '.join(map(str, seeds))}")
        print("| option | FD | worst seed (x mean) | class TV, mean (worst seed) | smallest digit share | largest | "
              "seeds with every digit 7-13% |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for training, kind, text in ROWS:
            files = [out / training / f"seed={seed}" / f"epoch{epoch}-{kind}.score.json" for seed in seeds]
            if not all(file.is_file() for file in files):
                continue
            reports = [json.loads(file.read_text()) for file in files]
            distances = [r["frechet_distance"] for r in reports]
            worst = max(range(len(seeds)), key=lambda i: distances[i])
            mean = spread(distances).mean
            tv = [r["class_tv_distance"] for r in reports]
            shares = [(count / r["n_images"], digit, seed) for r, seed in zip(reports, seeds, strict=True)
                      for digit, count in enumerate(r["class_histogram"])]
            low, high = min(shares), max(shares)
            even = sum(gan_class_shares.in_band(gan_class_shares.shares(r)) for r in reports)  # all 7-13%
            print(f"| {text} | {spread(distances).text(1)} | {distances[worst]:.1f}, seed {seeds[worst]} "
                  f"({distances[worst] / mean:.2f}x) | {spread(tv).mean:.3f} ({max(tv):.3f}, seed "
                  f"{seeds[tv.index(max(tv))]}) | {low[0]:.1%} ({low[1]}s, seed {low[2]}) | "
                  f"{high[0]:.1%} ({high[1]}s, seed {high[2]}) | {even} of {len(seeds)} |")


def main() -> None:
    out = Path(sys.argv[1])
    epochs = sorted({int(p.name.split("-")[0].removeprefix("epoch")) for p in out.glob("*/seed=*/epoch*.score.json")})
    seeds = sorted({int(p.name.split("=")[1]) for p in out.glob("*/seed=*")})
    print(f"seeds {', '.join(map(str, seeds))}; Fréchet distance (lower is better) and classifier score, "
          "mean ± 95% Student-t interval over the seeds, then each seed's value")
    print("| option | " + " | ".join(f"FD, epoch {e} | CS, epoch {e}" for e in epochs) + " |")
    print("|---|" + "---:|---:|" * len(epochs))
    for training, kind, text in ROWS:
        if not (out / training).is_dir():
            continue
        cells = []
        for epoch in epochs:
            files = [out / training / f"seed={seed}" / f"epoch{epoch}-{kind}.score.json" for seed in seeds]
            if not all(file.is_file() for file in files):
                cells.append("— | —")
                continue
            reports = [json.loads(file.read_text()) for file in files]
            for key, digits in (("frechet_distance", 1), ("classifier_score", 2)):
                values = [r[key] for r in reports]
                each = ", ".join(f"{v:.{digits}f}" for v in values)
                cells.append(f"{spread(values).text(digits)} ({each})")
        print(f"| {text} | " + " | ".join(cells) + " |")
    if "--balance" in sys.argv[2:]:
        balance_tables(out, epochs, seeds)


if __name__ == "__main__":
    main()
