"""A cluster kernel's MMD term measured as a candidate for the GAN's training, without it being a mnistgen option: G's
objective gains ``--weight`` times the squared MMD between G's batch and the whole training set under the kernel
k(x, y) = a(x) . a(y), where a(x) is the softmax over ``--clusters`` k-means centroids of the training images of
-||x - c||^2 / ``--temperature``. The data's side, the mean of a over the 60,000 images, is exact (computed once),
so only G's batch is sampled; the term is large where G fills some clusters more than the data do. It goes beside
the recipe's pixel MMD (``--mmd-weight``, which must be set): mnistgen's step, engines and accelerators run as they
are, with :func:`mnistgen.losses.mmd_squared` in the step returning the pixel term plus the cluster term divided by
the pixel term's weight. The run is bench/gan_scored_run.py's (same files, read by bench/gan_recipes_summary.py), its
config.json without the term. The other arguments are gan_scored_run.py's:

    python bench/gan_cluster_mmd.py runs/recipes/imp-cluster100 --weight 100 --seeds 2,3,4 --epochs 100 \
        --score-at 30,100 --settings '{"recipe": "improved"}'

With ``--shares SAMPLES.npy ...`` (as `mnistgen gan sample` writes them) it prints instead how far each set's shares
of the nearest centroids are from the training images' (total variation), beside how much of one digit a centroid's
training images are on average.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import gan_scored_run
import torch

from mnistgen.config import GAN_RECIPES, DataConfig
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.losses import mmd_squared
from mnistgen.models import gan as gan_model
from mnistgen.scoring import load_images

CENTROID_SEED, KMEANS_ROUNDS = 1, 20  # the first centroids: a permutation's first K images; Lloyd's rounds after


def squared_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:  # (..., 784), (K, 784) -> (..., K)
    return (x * x).sum(-1, keepdim=True) - 2 * x @ centroids.T + (centroids * centroids).sum(-1)


def nearest_centroid(images: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:  # (N, 784), (K, 784) -> (N,)
    return squared_distances(images, centroids).argmin(-1)


def kmeans(images: torch.Tensor, clusters: int) -> torch.Tensor:
    """Lloyd's k-means of ``images`` (N, 784): (K, 784) centroids, started from K images drawn by
    :data:`CENTROID_SEED`; an empty cluster keeps its centroid."""
    centroids = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(CENTROID_SEED))[:clusters]]
    for _ in range(KMEANS_ROUNDS):
        nearest = nearest_centroid(images, centroids)  # (N,)
        centroids = torch.stack([images[nearest == k].mean(0) if bool((nearest == k).any()) else centroids[k]
                                 for k in range(clusters)])
    return centroids


def assignments(x: torch.Tensor, centroids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft assignments of images (..., 784) to the centroids: (..., K), each row summing to 1."""
    return torch.softmax(squared_distances(x, centroids) / -temperature, dim=-1)


def cluster_mmd_squared(generated: torch.Tensor, centroids: torch.Tensor, data_mean: torch.Tensor,
                        temperature: float) -> torch.Tensor:
    """The unbiased estimate of MMD^2 between a batch and the data under k(x, y) = a(x) . a(y), the data's mean
    assignment ``data_mean`` (K,) known exactly: the mean of k over the distinct pairs of the batch, less twice the
    batch's mean assignment . data_mean, plus data_mean . data_mean. Shapes: ([R,] B, 1, 28, 28) -> ([R],)."""
    a = assignments(generated.flatten(-3), centroids, temperature)  # ([R,] B, K)
    n, total = a.shape[-2], a.sum(-2)  # ([R,] K)
    within = ((total * total).sum(-1) - (a * a).sum((-2, -1))) / (n * (n - 1))
    return within - 2 * (a.mean(-2) * data_mean).sum(-1) + (data_mean * data_mean).sum()


@contextmanager
def installed(ratio: float, centroids: torch.Tensor, data_mean: torch.Tensor, temperature: float) -> Iterator[None]:
    """Within the block, the step's :func:`mnistgen.losses.mmd_squared` (taken where ``--mmd-weight`` is set)
    returns the pixel term plus ``ratio`` times :func:`cluster_mmd_squared` of the generated batch; mnistgen's own
    function is back after it."""
    def with_clusters(generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return mmd_squared(generated, real) + ratio * cluster_mmd_squared(generated, centroids, data_mean, temperature)

    gan_model.mmd_squared = with_clusters
    try:
        yield
    finally:
        gan_model.mmd_squared = mmd_squared


def nearest_shares(nearest: torch.Tensor, clusters: int) -> torch.Tensor:
    """The share of the images whose nearest centroid (N,) is each of the K: (K,)."""
    return torch.bincount(nearest, minlength=clusters) / len(nearest)


def print_cluster_shares(paths: list[str], images: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> None:
    nearest, clusters = nearest_centroid(images, centroids), len(centroids)
    purity = sum(int(torch.bincount(labels[nearest == k]).max()) for k in range(clusters) if (nearest == k).any())
    print(f"{clusters} centroids; their training images are {purity / len(images):.1%} one digit on average")
    data = nearest_shares(nearest, clusters)
    for path in paths:
        samples = torch.from_numpy(load_images(path)).float().flatten(1)  # (N, 784) in [0, 1]
        distance = float((nearest_shares(nearest_centroid(samples, centroids), clusters) - data).abs().sum()) / 2
        print(f"{path}: total variation of the nearest centroids' shares from the training images' {distance:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--weight", type=float, help="the cluster term's weight in G's objective")
    parser.add_argument("--clusters", type=int, default=30, help="k-means centroids of the training images")
    parser.add_argument("--temperature", type=float, default=10.0, help="the softmax's, in squared pixel distance")
    parser.add_argument("--settings", default="{}")
    parser.add_argument("--shares", nargs="+", metavar="SAMPLES", help="print the sets' nearest-centroid shares")
    args, rest = parser.parse_known_args()
    protocol = load_protocol("gan", load_raw(DataConfig()))
    images = protocol.train_images.flatten(1)  # (60000, 784)
    centroids = kmeans(images, args.clusters)
    if args.shares:
        print_cluster_shares(args.shares, images, protocol.train_labels, centroids)
        return
    if args.weight is None:
        sys.exit("gan_cluster_mmd.py: give --weight W to train, or --shares SAMPLES.npy ... to compare")
    settings = json.loads(args.settings)
    pixel_weight = settings.get("mmd_weight", GAN_RECIPES[settings.get("recipe", "spec")]["mmd_weight"])
    if pixel_weight is None:
        sys.exit("gan_cluster_mmd.py: the term rides on the pixel MMD's: give --mmd-weight in --settings or a recipe")
    data_mean = assignments(images, centroids, args.temperature).mean(0)  # (K,)
    sys.argv = [sys.argv[0], *rest, "--settings", args.settings]
    with installed(args.weight / pixel_weight, centroids, data_mean, args.temperature):
        gan_scored_run.main()


if __name__ == "__main__":
    main()
