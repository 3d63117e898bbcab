"""Whether a GAN's uneven digits are uneven images or uneven guesses: for each run folder (one seed), 10,000 samples
of its G (the moving average where it keeps one; as ``mnistgen gan sample``), classified by mnistgen's classifier,
and the share of each digit among all of them, among those the classifier is sure of (its top probability over 0.9
and over 0.99), and as the mean of its probabilities. If a digit is rare only among all samples, its missing share is
ambiguous images called something else; if it is as rare among the sure ones, G makes too few of it.

    python bench/gan_confident_shares.py runs/recipes/imp-la5-lr2/seed=5 runs/recipes/imp-la5-lr2/seed=6
"""

from __future__ import annotations

import sys

import numpy as np

import mnistgen
from mnistgen.scoring import classify, load_classifier

SAMPLES = 10_000
SURE = (0.9, 0.99)


def percent(counts: np.ndarray) -> str:
    return " ".join(f"{100 * c / counts.sum():5.1f}" for c in counts)


def main() -> None:
    classifier = load_classifier()
    print("digit:" + " ".join(f"{d:>5}" for d in range(10)))
    for folder in sys.argv[1:]:
        _, probabilities = classify(classifier, mnistgen.load_run(folder).sample(SAMPLES))  # (N, 10)
        guess, sureness = probabilities.argmax(axis=1), probabilities.max(axis=1)
        print(folder)
        print("all   " + percent(np.bincount(guess, minlength=10)) + f"   ({SAMPLES} samples, %)")
        for level in SURE:
            sure = sureness > level
            print(f">{level:<5}" + percent(np.bincount(guess[sure], minlength=10)) + f"   ({sure.sum()} samples)")
        print("mean p" + percent(probabilities.mean(axis=0)))


if __name__ == "__main__":
    main()
