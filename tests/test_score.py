"""The score's mathematics (Frechet distance, classifier score, histogram) and its input checks.

No classifier and no data here: every expected value is computed independently (closed forms,
scipy.linalg.sqrtm, hand reasoning), and every bad input is refused before any work is done.
"""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest
import scipy.linalg

import mnistgen
from mnistgen.cli import main
from mnistgen.data.sources import RawData
from mnistgen.errors import MnistgenError
from mnistgen.scoring import (
    REFERENCE_KEY,
    ReferenceScore,
    ScoreFile,
    SetScore,
    check_images,
    class_histogram,
    classifier_score,
    compute_reference,
    feature_statistics,
    format_report,
    frechet_distance,
    load_images,
    read_score,
    score_path,
    trace_sqrt_product,
    write_report,
)


def random_spd(rng: np.random.Generator, dim: int, rank: int | None = None) -> np.ndarray:
    """A random symmetric positive (semi-)definite matrix, not diagonal, of the given rank."""
    factor = rng.normal(size=(dim, rank or dim))
    return factor @ factor.T / dim


# --------------------------------------------------------------------------- Frechet distance


def test_frechet_distance_one_dimensional_by_hand():
    # N(0, 1) vs N(3, 4): (0 - 3)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 9 + 1 = 10
    assert frechet_distance(np.zeros(1), np.eye(1), np.full(1, 3.0), 4 * np.eye(1)) == pytest.approx(10.0, abs=1e-12)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    # commuting (diagonal) covariances: FD = |m1 - m2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 5.0, 30), rng.uniform(0.1, 5.0, 30)
    m1, m2 = rng.normal(size=30), rng.normal(size=30)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_for_general_covariances():
    rng = np.random.default_rng(1)
    dim = 40
    cov1, cov2 = random_spd(rng, dim), random_spd(rng, dim)
    assert not np.allclose(cov1 @ cov2, cov2 @ cov1)  # the non-commuting case, where shortcuts break
    m1, m2 = rng.normal(size=dim), rng.normal(size=dim)
    root = scipy.linalg.sqrtm(cov1 @ cov2).real
    expected = np.sum((m1 - m2) ** 2) + np.trace(cov1 + cov2 - 2 * root)
    assert frechet_distance(m1, cov1, m2, cov2) == pytest.approx(expected, rel=1e-8)
    assert trace_sqrt_product(cov1, cov2) == pytest.approx(np.trace(root), rel=1e-8)
    # symmetric in its two arguments, as a distance must be
    assert frechet_distance(m2, cov2, m1, cov1) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_handles_singular_covariances_like_scipy():
    # fewer samples than dimensions (N = 20 < 64): rank-deficient covariances must not give NaN
    rng = np.random.default_rng(2)
    cov1, cov2 = random_spd(rng, 64, rank=19), random_spd(rng, 64, rank=19)
    mean = np.zeros(64)
    value = frechet_distance(mean, cov1, mean, cov2)
    root = scipy.linalg.sqrtm(cov1 @ cov2).real
    assert math.isfinite(value)
    assert value == pytest.approx(np.trace(cov1 + cov2 - 2 * root), rel=1e-5)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(3)
    for rows in (500, 50):  # full-rank and rank-deficient (50 < 128) covariances
        features = np.maximum(rng.normal(size=(rows, 128)) @ rng.normal(size=(128, 128)), 0)  # ReLU-like
        mean, cov = feature_statistics(features)
        # round-off only: the square roots of the ~1e-16 relative noise in zero eigenvalues stay ~1e-8
        assert frechet_distance(mean, cov, mean, cov) < 1e-7 * np.trace(cov)
        shifted = frechet_distance(mean + 1.0, cov, mean, cov)  # only the mean moves: |1|^2 * 128
        assert shifted == pytest.approx(128.0, abs=1e-7 * np.trace(cov))


def test_feature_statistics_are_mean_and_unbiased_covariance():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(7, 3)).astype(np.float32)
    mean, cov = feature_statistics(features)
    x = features.astype(np.float64)
    centred = x - x.sum(axis=0) / 7
    assert mean.dtype == cov.dtype == np.float64
    np.testing.assert_allclose(mean, x.sum(axis=0) / 7, rtol=1e-12)
    np.testing.assert_allclose(cov, centred.T @ centred / 6, rtol=1e-12)  # divided by N - 1
    with pytest.raises(MnistgenError, match="at least 2"):
        feature_statistics(features[:1])


# --------------------------------------------------------------------------- classifier score


def test_classifier_score_of_a_perfect_balanced_set_is_ten():
    # each p(y|x) one-hot, p(y) uniform: every KL is log 10, exp(log 10) = 10
    probabilities = np.eye(10)[np.repeat(np.arange(10), 7)]
    assert classifier_score(probabilities) == pytest.approx(10.0, rel=1e-12)


def test_classifier_score_of_a_single_class_set_is_one():
    # p(y|x) = p(y) for every x: every KL is 0
    probabilities = np.eye(10)[np.full(50, 3)]
    assert classifier_score(probabilities) == pytest.approx(1.0, abs=1e-12)


def test_classifier_score_of_unconfident_predictions_is_one_and_of_two_classes_is_two():
    assert classifier_score(np.full((20, 10), 0.1)) == pytest.approx(1.0, abs=1e-12)
    two_classes = np.eye(10)[[0, 5] * 10]  # half 0s, half 5s, confident: KL = log 2 each
    assert classifier_score(two_classes) == pytest.approx(2.0, rel=1e-12)


def test_classifier_score_by_hand_for_two_images():
    # p1 = (1/2, 1/2), p2 = (1, 0); p(y) = (3/4, 1/4)
    # KL1 = 1/2 log((1/2)/(3/4)) + 1/2 log((1/2)/(1/4)); KL2 = log(1/(3/4)) (the 0 log 0 term is 0)
    kl1 = 0.5 * math.log(2 / 3) + 0.5 * math.log(2)
    kl2 = math.log(4 / 3)
    expected = math.exp((kl1 + kl2) / 2)
    assert classifier_score(np.array([[0.5, 0.5], [1.0, 0.0]])) == pytest.approx(expected, rel=1e-12)


def test_class_histogram_counts_the_most_probable_class():
    probabilities = np.array([[0.1, 0.9, 0.0], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.2, 0.7, 0.1]])
    assert class_histogram(probabilities) == [1, 3, 0]  # every class listed, even an empty one


@pytest.mark.parametrize(("histogram", "tv", "smallest"), [
    # shares 0.2, 0.1 x 7, 0.05, 0.05: TV = (|0.2 - 0.1| + 7 * 0 + 2 * |0.05 - 0.1|) / 2 = (0.1 + 0.1) / 2 = 0.1
    ((4, 2, 2, 2, 2, 2, 2, 2, 1, 1), 0.1, 0.05),
    ((7,) * 10, 0.0, 0.1),  # balanced
    ((0, 0, 0, 30, 0, 0, 0, 0, 0, 0), 0.9, 0.0),  # one class: (0.9 + 9 * 0.1) / 2
    # shares 0.3, 0.3, 0.4, then 7 empty classes: (0.2 + 0.2 + 0.3 + 7 * 0.1) / 2 = 0.7
    ((3, 3, 4, 0, 0, 0, 0, 0, 0, 0), 0.7, 0.0),
])
def test_class_balance_is_the_total_variation_from_uniform_by_hand(histogram, tv, smallest):
    numbers = SetScore(sum(histogram), 1.5, 2.5, histogram)
    assert numbers.balance == pytest.approx({"class_tv_distance": tv, "min_class_share": smallest}, abs=1e-12)
    written = numbers.as_json()  # what a score file holds beside the Frechet distance
    assert written["class_tv_distance"] == pytest.approx(tv, abs=1e-12)
    assert written["min_class_share"] == pytest.approx(smallest, abs=1e-12)


def test_the_class_balance_is_reported_beside_the_real_vs_real_reference(tmp_path, capsys):
    numbers = SetScore(20, 12.5, 6.25, (4, 2, 2, 2, 2, 2, 2, 2, 1, 1))  # TV 0.1, smallest share 0.05
    reference = ReferenceScore(10_000, 0.75, 9.61, (1100, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 900),
                               what="real against real")  # TV (0.01 + 0.01) / 2 = 0.01, smallest share 0.09
    report = {**numbers.as_json(), REFERENCE_KEY: {"what": reference.what, **reference.as_json()},
              "classifier": {"sha256": "ab" * 32}}
    assert report[REFERENCE_KEY]["class_tv_distance"] == pytest.approx(0.01, abs=1e-12)
    lines = format_report(report, "x.npy").splitlines()
    assert [line.split()[-2:] for line in lines if line.startswith(("class TV to uniform", "min class share"))] == [
        ["0.100", "0.010"], ["0.050", "0.090"]]
    # a score file read back gives the same numbers; one written before they were recorded gives them too
    path = write_report(tmp_path / "x.npy", report)
    assert read_score(path).balance == numbers.balance and read_score(path).reference.balance == reference.balance
    old = {key: value for key, value in report.items() if key not in numbers.balance}
    path.write_text(json.dumps(old))
    assert read_score(path).balance == pytest.approx({"class_tv_distance": 0.1, "min_class_share": 0.05})


# --------------------------------------------------------------------------- input checks


def images(n: int = 4, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, size=(n, 28, 28)).astype(dtype)


def out_of_range() -> np.ndarray:
    array = images()
    array[0, 0, 0], array[3, 27, 27] = -0.25, 1.5
    return array


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_good_images_pass_the_check(dtype):
    array = images(dtype=dtype)
    array[0, 0, 0], array[0, 0, 1] = 0.0, 1.0  # the closed interval [0, 1]
    assert check_images(array) is array


def test_eight_bit_images_are_read_as_levels_over_255():
    """uint8 levels (as MNIST and mnistgen's reproductions store images) are the floats level / 255."""
    levels = np.random.default_rng(1).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    levels[0, 0, :2] = (0, 255)
    checked = check_images(levels)
    assert checked.dtype == np.float32 and checked[0, 0, 0] == 0.0 and checked[0, 0, 1] == 1.0
    assert np.array_equal(checked, levels.astype(np.float32) / np.float32(255))


def score_error(tmp_path, capsys, array=None, raw_bytes: bytes | None = None, name: str = "bad.npy") -> str:
    """Run ``mnistgen score`` on a bad file: exit 1, exactly one stderr line, no score JSON written."""
    path = tmp_path / name
    if raw_bytes is not None:
        path.write_bytes(raw_bytes)
    elif array is not None:
        np.save(path, array, allow_pickle=True)
    code = main(["score", str(path), "--device", "cpu"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("mnistgen: error: ")
    assert "Traceback" not in captured.err and captured.out == ""
    assert not score_path(path).exists()
    return lines[0]


@pytest.mark.parametrize(("array", "expected"), [
    (images()[:, :27], "shape (4, 27, 28), expected (N, 28, 28)"),
    (images().reshape(4, 1, 28, 28), "shape (4, 1, 28, 28)"),
    (images()[0], "shape (28, 28)"),
    ((images() * 255).astype(np.int16), "dtype int16, expected float32 or float64 in [0, 1], or uint8 0-255"),
    (out_of_range(), "values outside [0, 1] (min -0.25, max 1.5)"),
    (images(1), "1 image(s), need at least 2 for a covariance"),
    (images(0), "0 image(s)"),
])
def test_cli_refuses_bad_arrays_with_one_line(tmp_path, capsys, array, expected):
    assert expected in score_error(tmp_path, capsys, array)


def test_cli_refuses_nan_and_infinity(tmp_path, capsys):
    with_nan, with_inf = images(), images()
    with_nan[1, 2, 3] = with_nan[2, 0, 0] = np.nan
    with_inf[0, 0, 0] = np.inf
    assert "2 NaN value(s)" in score_error(tmp_path, capsys, with_nan)
    assert "1 infinite value(s)" in score_error(tmp_path, capsys, with_inf)


def test_cli_refuses_files_that_are_not_npy(tmp_path, capsys):
    assert "not a .npy file (no NumPy header" in score_error(tmp_path, capsys, raw_bytes=b"just some text\n")
    assert "not a .npy file" in score_error(tmp_path, capsys, raw_bytes=b"")
    truncated = tmp_path / "whole.npy"
    np.save(truncated, images())
    assert "not a .npy file" in score_error(tmp_path, capsys, raw_bytes=truncated.read_bytes()[:500])
    objects = np.array([images(), "text"], dtype=object)
    assert "not a .npy file (holds pickled objects)" in score_error(tmp_path, capsys, objects)
    assert "no such file" in score_error(tmp_path, capsys, name="missing.npy")


def test_an_npz_of_one_array_reads_as_that_array(tmp_path):
    """numpy.savez_compressed(FILE, images=ARRAY): what a reproduction stores, read exactly as the .npy would be."""
    levels = np.random.default_rng(2).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    np.savez_compressed(tmp_path / "levels.npz", images=levels)
    np.save(tmp_path / "levels.npy", levels)
    np.savez(tmp_path / "floats.npz", np.asfortranarray(images()))  # unnamed, uncompressed, Fortran order
    assert np.array_equal(load_images(tmp_path / "levels.npz"), load_images(tmp_path / "levels.npy"))
    assert np.array_equal(load_images(tmp_path / "floats.npz"), images())
    assert score_path(tmp_path / "levels.npz") == tmp_path / "levels.score.json"


def test_cli_refuses_an_npz_of_several_arrays_or_a_lying_header(tmp_path, capsys):
    np.savez(tmp_path / "two.npz", a=images(), b=images())
    two = (tmp_path / "two.npz").read_bytes()
    assert "an .npz archive of 2 files; mnistgen reads one array" in score_error(tmp_path, capsys, name="two.npz",
                                                                                 raw_bytes=two)
    import io
    import zipfile
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (100_000_000, 28, 28)})
    lying = io.BytesIO()
    with zipfile.ZipFile(lying, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("images.npy", header.getvalue() + bytes(784))
    assert "(100000000, 28, 28) and dtype uint8, 78,400,000,000 bytes, but only 784 follow it" in score_error(
        tmp_path, capsys, name="lying.npz", raw_bytes=lying.getvalue())
    small = io.BytesIO()
    np.lib.format.write_array_header_1_0(header := io.BytesIO(), {"descr": "|u1", "fortran_order": False,
                                                                  "shape": (1000, 28, 28)})
    with zipfile.ZipFile(small, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("images.npy", header.getvalue() + bytes(784 * 3))
    assert "damaged" in score_error(tmp_path, capsys, name="short.npz", raw_bytes=small.getvalue())


def test_one_bad_file_among_several_stops_before_any_work(tmp_path, capsys):
    good = tmp_path / "good.npy"
    np.save(good, images())
    np.save(tmp_path / "bad.npy", images()[:, :20])
    code = main(["score", str(good), str(tmp_path / "bad.npy"), "--device", "cpu"])
    assert code == 1
    assert "bad.npy: shape (4, 20, 28)" in capsys.readouterr().err
    assert not score_path(good).exists()


def test_score_file_lies_beside_the_images():
    assert score_path("/runs/gan/samples.npy").as_posix() == "/runs/gan/samples.score.json"
    assert score_path("x.y.npy").name == "x.y.score.json"


def test_the_reference_refuses_the_mnist_sample_stand_in():
    # load_raw may fall back to the bundled 5,000-digit sample; a reference from it would not be MNIST's
    rng = np.random.default_rng(0)
    sample = RawData(rng.integers(0, 256, (4000, 28, 28), dtype=np.uint8), np.zeros(4000, np.int64),
                     rng.integers(0, 256, (1000, 28, 28), dtype=np.uint8), np.zeros(1000, np.int64),
                     {"sample": True, "fallback_reason": "offline and no files in the cache"})
    with pytest.raises(MnistgenError, match=r"needs full MNIST, not a sample \(offline and no files in the cache\)"):
        compute_reference(None, sample)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens here once the probe is closed


def test_the_score_without_full_mnist_says_what_to_do_in_one_line(tmp_path, monkeypatch, capsys):
    """No MNIST in $MNISTGEN_DATA_DIR and no mirror answering: one line naming the fix, in flags from the command line
    and in keyword arguments from Python; not each mirror's failure."""
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("MNISTGEN_DATA_DIR", str(tmp_path / "empty"))
    mirrors = [f"http://127.0.0.1:{closed_port()}/{name}/" for name in ("a", "b")]
    monkeypatch.setenv("MNISTGEN_MIRRORS", ",".join(mirrors))
    monkeypatch.delenv("MNISTGEN_OFFLINE", raising=False)
    np.save(tmp_path / "x.npy", images())
    expected = (f"the score needs full MNIST (its test images and 10,000 training images): 4 of 4 files missing from "
                f"{tmp_path / 'empty'} ($MNISTGEN_DATA_DIR), and the network is unreachable (no answer from "
                f"{', '.join(mirrors)}); run `mnistgen data fetch` or pass {{}}=FOLDER that holds its files")
    assert main(["score", str(tmp_path / "x.npy"), "--device", "cpu", "--download-retries", "0"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["mnistgen: error: " + expected.format("--data-dir")]  # one line
    with pytest.raises(MnistgenError) as error:
        mnistgen.score(images(), device="cpu", download_retries=0)
    assert str(error.value) == expected.format("data_dir")
    assert not score_path(tmp_path / "x.npy").exists() and not list((tmp_path / "empty").iterdir())


# --------------------------------------------------------------------------- the score file, read back


def test_a_score_file_reads_back_as_the_record_it_was_written_from(tmp_path):
    """The numbers go into FILE.score.json through SetScore and come back as the same record, the reference and the
    classifier beside them; null stands for a NaN distance."""
    numbers = SetScore(64, None, 3.25, (10, 2, 5, 7, 0, 9, 11, 3, 8, 9))
    reference = ReferenceScore(10_000, 0.75, 9.61, (1000,) * 10, what="real training images against the test images")
    written = write_report(tmp_path / "gan.npz", {**numbers.as_json(), REFERENCE_KEY: {
        "what": reference.what, **reference.as_json()}, "classifier": {"sha256": "ab" * 32}})
    assert written == tmp_path / "gan.score.json"
    assert read_score(written) == ScoreFile(**vars(numbers), reference=reference, classifier={"sha256": "ab" * 32})


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("class_histogram", [1000] * 9 + [-1], '"real_vs_real_reference.class_histogram" holds a number -1, not a count'),
    ("n_images", 10_000.5, '"real_vs_real_reference.n_images" is a number, not a count of images'),
    ("what", ["not", "text"], '"real_vs_real_reference.what" is a list, not a string'),
])
def test_a_damaged_score_file_is_one_line_naming_the_file_and_the_field(tmp_path, field, value, problem):
    reference = {"what": "real against real", "n_images": 10_000, "frechet_distance": 0.75, "classifier_score": 9.61,
                 "class_histogram": [1000] * 10}
    path = tmp_path / "gan.score.json"
    path.write_text(json.dumps({"n_images": 64, "frechet_distance": 123.5, "classifier_score": 3.25,
                                "class_histogram": [6] * 10, REFERENCE_KEY: {**reference, field: value}}))
    with pytest.raises(MnistgenError) as error:
        read_score(path)
    assert str(error.value) == (f"{path}: not a score written by mnistgen score ({problem}); score the images again "
                                "or remove the file")
