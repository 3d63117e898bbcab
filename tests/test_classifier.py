"""The classifier behind ``mnistgen score``: its network, its training loop, and the shipped weights.

The shipped weights must load only through their checksum and classify the real 10k test images
with >= 99% accuracy; a corrupted weights file is a one-line error, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from mnistgen.classifier import train_and_save, train_classifier
from mnistgen.cli import main
from mnistgen.config import ClassifierConfig
from mnistgen.data.sources import RawData
from mnistgen.errors import MnistgenError
from mnistgen.models.classifier import MnistClassifier
from mnistgen.scoring import load_classifier, metadata_path, save_classifier, shipped_weights

# --------------------------------------------------------------------------- the network


def test_parameter_count_by_layer():
    model = MnistClassifier()
    expected = {
        "conv1": 1 * 16 * 9 + 16,  # 160
        "norm1": 2 * 16,  # scale and shift per channel
        "conv2": 16 * 32 * 9 + 32,  # 4,640
        "norm2": 2 * 32,
        "conv3": 32 * 64 * 9 + 64,  # 18,496
        "norm3": 2 * 64,
        "hidden": 64 * 3 * 3 * 128 + 128,  # 73,856: 7x7 pooled to 3x3
        "head": 128 * 10 + 10,  # 1,290
    }
    for name, count in expected.items():
        assert sum(p.numel() for p in getattr(model, name).parameters()) == count, name
    assert sum(p.numel() for p in model.parameters()) == sum(expected.values()) == 98_666


def test_features_are_128_d_post_relu_and_logits_come_from_them():
    model = MnistClassifier().eval()
    images = torch.rand(5, 1, 28, 28)
    features = model.features(images)
    assert features.shape == (5, 128) and bool((features >= 0).all())
    logits = model(images)
    assert logits.shape == (5, 10)
    torch.testing.assert_close(logits, features @ model.head.weight.T + model.head.bias)


def test_features_in_eval_mode_do_not_depend_on_the_batch():
    # batch norm must use its running statistics: an image's features are the same alone or in a batch
    model = MnistClassifier().eval()
    images = torch.rand(6, 1, 28, 28)
    torch.testing.assert_close(model.features(images)[2:3], model.features(images[2:3]))


# --------------------------------------------------------------------------- the shipped weights


def test_shipped_weights_are_small_and_their_checksum_is_recorded():
    weights = shipped_weights()
    info = json.loads(metadata_path(weights).read_text())
    assert weights.stat().st_size < 1_000_000
    assert info["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["test_accuracy"] >= 0.99
    assert info["command"].startswith("mnistgen score-classifier train")
    state = torch.load(weights, weights_only=True)  # a plain state_dict, safe to load
    assert set(state) == set(MnistClassifier().state_dict())


def test_shipped_weights_reach_99_percent_on_the_real_test_images(mnist_raw):
    classifier = load_classifier()
    assert classifier.sha256 == hashlib.sha256(shipped_weights().read_bytes()).hexdigest()
    assert not classifier.model.training  # dropout off
    images = torch.from_numpy(mnist_raw.test_images.astype(np.float32) / 255.0).unsqueeze(1)
    with torch.no_grad():
        predictions = torch.cat([classifier.model(images[i:i + 2000]).argmax(1) for i in range(0, 10_000, 2000)])
    accuracy = float((predictions.numpy() == mnist_raw.test_labels).mean())
    assert accuracy >= 0.99
    assert accuracy == pytest.approx(classifier.info["test_accuracy"], abs=2e-4)  # what the .json claims


@pytest.fixture
def copied_weights(tmp_path):
    weights = tmp_path / "classifier.pt"
    shutil.copy(shipped_weights(), weights)
    shutil.copy(metadata_path(shipped_weights()), metadata_path(weights))
    return weights


def test_copied_weights_load_and_a_corrupted_copy_is_refused(copied_weights):
    assert load_classifier(copied_weights).sha256 == load_classifier().sha256
    data = bytearray(copied_weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor
    copied_weights.write_bytes(bytes(data))
    with pytest.raises(MnistgenError, match="checksum mismatch .* corrupt or was replaced"):
        load_classifier(copied_weights)


def test_corrupted_weights_are_one_line_on_the_command_line(copied_weights, tmp_path, capsys):
    copied_weights.write_bytes(copied_weights.read_bytes()[:-100])  # truncated
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(0).uniform(size=(3, 28, 28)))
    code = main(["score", str(images), "--weights", str(copied_weights), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("mnistgen: error: ") and "checksum mismatch" in err[0]


def test_weights_with_a_matching_checksum_but_wrong_content_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    metadata_path(garbage).write_text(json.dumps({"sha256": hashlib.sha256(b"not a torch file at all").hexdigest()}))
    with pytest.raises(MnistgenError, match="not weights of mnistgen's classifier"):
        load_classifier(garbage)
    other = tmp_path / "other.pt"  # a valid state_dict of another network
    save_classifier(other, torch.nn.Linear(784, 10).state_dict(), {})
    with pytest.raises(MnistgenError, match="not weights of mnistgen's classifier"):
        load_classifier(other)


def test_weights_without_their_checksum_file_are_refused(copied_weights):
    metadata_path(copied_weights).unlink()
    with pytest.raises(MnistgenError, match="no checksum file classifier.json beside it"):
        load_classifier(copied_weights)
    with pytest.raises(MnistgenError, match="no classifier weights here"):
        load_classifier(copied_weights.with_name("absent.pt"))


# --------------------------------------------------------------------------- the training loop


def tiny(mnist_raw, train: int = 320, test: int | None = 200) -> RawData:
    """A small real subset; ``test=None`` leaves the test split out entirely."""
    return RawData(mnist_raw.train_images[:train], mnist_raw.train_labels[:train],
                   None if test is None else mnist_raw.test_images[:test],
                   None if test is None else mnist_raw.test_labels[:test])


TINY = ClassifierConfig(epochs=2, batch_size=64, validation_size=64, seed=5, device="cpu")


def test_training_never_reads_the_test_split_and_keeps_the_best_validation_epoch(mnist_raw):
    raw = tiny(mnist_raw, test=None)  # touching the test split would fail on None
    result = train_classifier(TINY, raw, torch.device("cpu"), show_progress=False)
    accuracies = [record["validation_accuracy"] for record in result.history]
    assert [record["epoch"] for record in result.history] == [1, 2]
    assert result.best_epoch == 1 + int(np.argmax(accuracies))
    # the kept weights are those of the best epoch: re-measure on the last 64 (validation) images
    model = MnistClassifier()
    model.load_state_dict(result.state_dict)
    model.eval()
    validation = torch.from_numpy(raw.train_images[-64:].astype(np.float32) / 255.0).unsqueeze(1)
    with torch.no_grad():
        measured = float((model(validation).argmax(1).numpy() == raw.train_labels[-64:]).mean())
    assert measured == pytest.approx(max(accuracies), abs=1e-9)


def test_training_is_fixed_by_its_seed(mnist_raw):
    raw = tiny(mnist_raw, train=192, test=None)  # 128 to fit, 64 to validate
    one_epoch = ClassifierConfig(epochs=1, batch_size=64, validation_size=64, seed=5, device="cpu")
    first = train_classifier(one_epoch, raw, torch.device("cpu"), show_progress=False).state_dict
    again = train_classifier(one_epoch, raw, torch.device("cpu"), show_progress=False).state_dict
    other = train_classifier(ClassifierConfig(epochs=1, batch_size=64, validation_size=64, seed=6, device="cpu"),
                             raw, torch.device("cpu"), show_progress=False).state_dict
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_train_and_save_writes_weights_checksum_and_test_accuracy(mnist_raw, tmp_path):
    raw = tiny(mnist_raw)
    out = tmp_path / "classifier-run"
    meta = train_and_save(TINY, str(out), raw, torch.device("cpu"), ["score-classifier", "train", "--out", "X"])
    weights = out / "classifier.pt"
    on_disk = json.loads((out / "classifier.json").read_text())
    assert on_disk == meta
    assert on_disk["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert on_disk["command"] == "mnistgen score-classifier train --out X"
    assert on_disk["config"]["validation_size"] == 64 and on_disk["test_images"] == 200
    # the recorded test accuracy, measured independently with the saved weights
    model = MnistClassifier()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    images = torch.from_numpy(raw.test_images.astype(np.float32) / 255.0).unsqueeze(1)
    with torch.no_grad():
        expected = float((model(images).argmax(1).numpy() == raw.test_labels).mean())
    assert on_disk["test_accuracy"] == pytest.approx(expected, abs=1e-12)
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((out / "config.json").read_text())["kind"] == "classifier"
    assert load_classifier(weights).sha256 == on_disk["sha256"]


def test_validation_size_must_leave_training_images(mnist_raw):
    with pytest.raises(MnistgenError, match="--validation-size must be between 1 and 319"):
        train_classifier(ClassifierConfig(validation_size=320, device="cpu"), tiny(mnist_raw, test=None),
                         torch.device("cpu"), show_progress=False)


def test_the_recorded_command_repeats_the_flags_given():
    from mnistgen.cli import build_parser
    from mnistgen.cli.score import _command_line
    from mnistgen.config import config_from_args

    args = build_parser().parse_args(
        ["score-classifier", "train", "--out", "runs/c", "--seed", "7", "--offline", "--epochs", "3"])
    config = config_from_args(ClassifierConfig, args)
    assert (config.epochs, config.seed, config.data.offline) == (3, 7, True)
    assert _command_line(args, config) == [
        "score-classifier", "train", "--out", "runs/c", "--epochs", "3", "--seed", "7", "--offline"]
