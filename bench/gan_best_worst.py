"""The best and the worst seed of a GAN training measured by bench/gan_recipes.sh, side by side: each seed's 8x8
grid of the fixed noise batch at one epoch (the moving average's, as the recipe samples), titled with its Fréchet
distance and its least and most frequent digit (mnistgen score, 10,000 samples of that seed at that epoch).

    python bench/gan_best_worst.py runs/recipes/improved --epoch 30 --out docs/figures/gan-improved-epoch30.png \
        --title "--recipe improved"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mnistgen.imaging import tile
from mnistgen.plots.gan import INK
from mnistgen.runs import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("training", help="a replica run folder of gan_recipes.sh (holding seed=N folders)")
    parser.add_argument("--epoch", type=int, required=True, help="the epoch whose grids and scores are shown")
    parser.add_argument("--kind", default="average", help="the scored sample set: average or raw")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--title", help="what the training is, for the figure's title (default: its folder's name)")
    args = parser.parse_args()
    scores = {int(folder.name.split("=")[1]): json.loads(path.read_text())
              for folder in sorted(Path(args.training).glob("seed=*"))
              for path in [folder / f"epoch{args.epoch}-{args.kind}.score.json"] if path.is_file()}
    distances = {seed: score["frechet_distance"] for seed, score in scores.items()}
    best, worst = min(distances, key=distances.get), max(distances, key=distances.get)
    mean = float(np.mean(list(distances.values())))
    figure = Figure(figsize=(8.4, 4.9), layout="constrained")
    for axis, (word, seed) in zip(figure.subplots(1, 2), (("best", best), ("worst", worst)), strict=True):
        shares = np.asarray(scores[seed]["class_histogram"]) / scores[seed]["n_images"]
        grid = RunDir(Path(args.training) / f"seed={seed}").load_grid(args.epoch, raw=args.kind == "raw")
        axis.imshow(tile(grid, 8, 8, padding=1), cmap=INK, vmin=0.0, vmax=1.0, interpolation="nearest")
        axis.set(xticks=[], yticks=[])
        axis.set_title(f"{word} seed ({seed}): Fréchet distance {distances[seed]:.1f}\n"
                       f"fewest {shares.argmin()}s ({shares.min():.1%}), most {shares.argmax()}s ({shares.max():.1%})",
                       fontsize=10)
    title = args.title or Path(args.training).name
    figure.suptitle(f"{title}, epoch {args.epoch}\nthe best and the worst of {len(distances)} seeds (mean Fréchet "
                    f"distance {mean:.1f}), the same fixed noise", fontsize=10)
    figure.savefig(args.out, dpi=100)
    print(f"best seed {best} ({distances[best]:.1f}), worst seed {worst} ({distances[worst]:.1f}), mean {mean:.1f}: "
          f"{args.out}")


if __name__ == "__main__":
    main()
