"""What the GAN's class shares follow, over every seed scored by bench/gan_recipes.sh or bench/gan_scored_run.py in
the given folders (OUT/TRAINING/seed=N/epochE-{average,raw}.score.json):

- by the Fréchet distance of the moving average of G: how many seeds, their mean class TV (distance of the class
  histogram from uniform), and how many have every digit between 7% and 13% of the samples; the Pearson
  correlation of log(FD) with the TV;
- the moving average against the trained G of the same seeds, per training and epoch: the mean Fréchet distance and
  how many seeds have every digit between 7% and 13%.

    python bench/gan_class_shares.py runs/recipes-a runs/recipes-b ...
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

BAND = (0.07, 0.13)  # the goal: every digit between 7% and 13% of a seed's samples
BINS = (0, 15, 20, 30, 50, math.inf)


def shares(report: dict) -> tuple[float, float]:
    counts = report["class_histogram"]
    return min(counts) / report["n_images"], max(counts) / report["n_images"]


def in_band(low_high: tuple[float, float]) -> bool:
    return BAND[0] <= low_high[0] and low_high[1] <= BAND[1]


def main() -> None:
    folders = [Path(arg) for arg in sys.argv[1:]]
    averages = sorted(path for folder in folders for path in folder.glob("*/seed=*/epoch*-average.score.json"))
    reports = {path: json.loads(path.read_text()) for path in averages}
    print(f"{len(reports)} seeds scored (the moving average of G), {len(folders)} folders")
    print("| Fréchet distance | seeds | class TV, mean | every digit 7-13% |")
    print("|---|---:|---:|---:|")
    for low, high in zip(BINS, BINS[1:], strict=False):
        chosen = [r for r in reports.values() if low <= r["frechet_distance"] < high]
        if chosen:
            tv = statistics.fmean(r["class_tv_distance"] for r in chosen)
            band = sum(in_band(shares(r)) for r in chosen)
            print(f"| {low}-{high} | {len(chosen)} | {tv:.3f} | {band} ({band / len(chosen):.0%}) |")
    r = statistics.correlation([math.log(x["frechet_distance"]) for x in reports.values()],
                               [x["class_tv_distance"] for x in reports.values()])
    print(f"Pearson correlation of log(FD) with the class TV: {r:.2f}")

    pairs = [(path, path.with_name(path.name.replace("-average.", "-raw."))) for path in averages]
    pairs = [(average, raw) for average, raw in pairs if raw.is_file()]
    if not pairs:
        return
    print("\n| training, epoch | seeds | average: FD, mean | every digit 7-13% | trained G: FD, mean "
          "| every digit 7-13% |")
    print("|---|---:|---:|---:|---:|---:|")
    groups: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    for average, raw in pairs:
        key = (f"{average.parent.parent.parent.name}/{average.parent.parent.name}", average.name.split("-")[0])
        groups.setdefault(key, []).append((reports[average], json.loads(raw.read_text())))
    totals = [0, 0, 0]
    for (training, epoch), both in sorted(groups.items()):
        cells = []
        for index in (0, 1):
            distance = statistics.fmean(pair[index]["frechet_distance"] for pair in both)
            band = sum(in_band(shares(pair[index])) for pair in both)
            totals[index] += band
            cells.append(f"{distance:.1f} | {band}")
        totals[2] += len(both)
        print(f"| {training}, {epoch} | {len(both)} | " + " | ".join(cells) + " |")
    print(f"every digit 7-13%: the average {totals[0]} of {totals[2]} seeds, the trained G {totals[1]}")


if __name__ == "__main__":
    main()
