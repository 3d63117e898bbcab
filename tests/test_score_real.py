"""``mnistgen score`` on real MNIST with the shipped classifier: real images score like the real-vs-real
reference, uniform noise is far from it, the reference is cached, and the command writes its JSON.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import mnistgen.scoring as score
from mnistgen.cli import main
from mnistgen.config import DataConfig, ScoreConfig


@pytest.fixture(scope="module")
def scoring(mnist_raw, tmp_path_factory):
    """The shipped classifier and the real-vs-real reference, computed once for this file."""
    with pytest.MonkeyPatch.context() as patch:  # the same isolated user cache as conftest's
        patch.setenv("MNISTGEN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "user-cache"))
        classifier = score.load_classifier(device="cpu")
        return classifier, score.compute_reference(classifier, mnist_raw)


def unit(images_uint8: np.ndarray) -> np.ndarray:
    return images_uint8.astype(np.float32) / 255.0


def test_real_vs_real_reference_is_what_a_99_percent_classifier_implies(scoring, mnist_raw):
    _, reference = scoring
    labels = mnist_raw.train_labels[-score.REFERENCE_TRAIN_IMAGES:]
    true_counts = np.bincount(labels, minlength=10)
    # >= 99% accuracy: at most ~1% of the 10k images move, each changing two counts by one
    assert sum(reference.class_histogram) == 10_000
    assert np.abs(np.array(reference.class_histogram) - true_counts).sum() <= 2 * 150
    # confident, correct predictions make the classifier score exp(H(p(y))) of the label frequencies
    frequencies = true_counts / true_counts.sum()
    entropy_bound = math.exp(-(frequencies * np.log(frequencies)).sum())  # 9.98 for MNIST's classes
    assert entropy_bound - 0.5 < reference.classifier_score <= entropy_bound + 1e-9
    assert entropy_bound - 0.5 < reference.test_classifier_score <= 10.0
    # real against real is small: uniform noise is ~1,900 in this feature space (measured, see the report)
    assert 0.0 < reference.frechet_distance < 5.0


def test_real_test_images_score_close_to_the_reference(scoring, mnist_raw):
    classifier, reference = scoring
    # a random half, not test[:5000] or test[5000:]: MNIST's two test halves come from different writers
    # (Census employees vs students) and differ measurably from each other
    chosen = np.random.default_rng(0).permutation(10_000)[:5000]
    report = score.score_images(unit(mnist_raw.test_images[chosen]), classifier, reference)
    assert report["n_images"] == 5000
    assert report["frechet_distance"] < 2 * reference.frechet_distance
    assert abs(report["classifier_score"] - reference.classifier_score) < 0.2
    assert report["real_vs_real_reference"]["frechet_distance"] == reference.frechet_distance


def test_uniform_noise_scores_far_from_the_reference(scoring):
    classifier, reference = scoring
    noise = np.random.default_rng(0).uniform(0.0, 1.0, size=(2000, 28, 28)).astype(np.float32)
    report = score.score_images(noise, classifier, reference)
    assert report["frechet_distance"] > 100 * reference.frechet_distance
    assert report["classifier_score"] < reference.classifier_score / 3


def test_the_reference_is_cached_and_keyed_by_classifier_and_data(scoring, mnist_raw, monkeypatch):
    classifier, reference = scoring
    assert score._reference_file(reference.key).is_file()

    def no_recomputation(*args, **kwargs):
        raise AssertionError("the cached reference should have been used")

    monkeypatch.setattr(score, "classify", no_recomputation)
    cached = score.compute_reference(classifier, mnist_raw)
    assert cached.frechet_distance == reference.frechet_distance
    np.testing.assert_array_equal(cached.test_cov, reference.test_cov)
    # one changed pixel, or another classifier, is another key
    changed = mnist_raw.test_images.copy()
    changed[0, 0, 0] ^= 1
    reference_images = mnist_raw.train_images[-score.REFERENCE_TRAIN_IMAGES:]
    assert score._reference_key(classifier, reference_images, changed) != reference.key
    other = score.Classifier(classifier.model, "0" * 64, {}, classifier.device, classifier.path)
    assert score._reference_key(other, reference_images, mnist_raw.test_images) != reference.key


def test_an_unreadable_cache_file_is_ignored(tmp_path):
    broken = tmp_path / "reference.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    assert score._read_cached_reference(broken, "key") is None


def test_command_writes_the_score_beside_the_file(scoring, mnist_raw, mnist_dir, tmp_path, capsys):
    classifier, reference = scoring
    images = unit(mnist_raw.test_images[:1000]).astype(np.float64)
    path = tmp_path / "real.npy"
    np.save(path, images)
    code = main(["score", str(path), "--data-dir", str(mnist_dir), "--offline", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    written = json.loads((tmp_path / "real.score.json").read_text())
    expected = score.score_images(images, classifier, reference, ScoreConfig(data=DataConfig(offline=True)))
    assert written["file"] == "real.npy" and written["n_images"] == 1000
    assert written["frechet_distance"] == pytest.approx(expected["frechet_distance"], rel=1e-9)
    assert written["classifier_score"] == pytest.approx(expected["classifier_score"], rel=1e-9)
    assert written["class_histogram"] == expected["class_histogram"]
    assert written["real_vs_real_reference"]["frechet_distance"] == pytest.approx(reference.frechet_distance)
    assert written["classifier"]["sha256"] == classifier.sha256
    assert "real vs real" in out and f"{reference.frechet_distance:.3f}" in out


def test_eight_bit_samples_score_as_their_levels_over_255(scoring, mnist_raw):
    """A reproduction stores its samples as uint8 levels: the score of the levels is the score of level / 255."""
    classifier, reference = scoring
    levels = mnist_raw.test_images[:1000]
    from_levels = score.score_images(levels, classifier, reference)
    from_floats = score.score_images(levels.astype(np.float32) / np.float32(255), classifier, reference)
    assert from_levels["frechet_distance"] == from_floats["frechet_distance"]
    assert from_levels["class_histogram"] == from_floats["class_histogram"]


def test_the_score_does_not_depend_on_the_batch_size(scoring, mnist_raw):
    # batch norm in eval mode and per-image features: cutting the images into other batches changes nothing
    classifier, reference = scoring
    images = unit(mnist_raw.test_images[:120])
    whole = score.score_images(images, classifier, reference, ScoreConfig(batch_size=1000))
    pieces = score.score_images(images, classifier, reference, ScoreConfig(batch_size=7))
    assert pieces["frechet_distance"] == pytest.approx(whole["frechet_distance"], rel=1e-6)
    assert pieces["classifier_score"] == pytest.approx(whole["classifier_score"], rel=1e-6)
    assert pieces["class_histogram"] == whole["class_histogram"]
