"""The protocols of SPEC §2 and §3 on real MNIST (and on the sample): shapes, values, binarization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnistgen.config import DataConfig
from mnistgen.data.protocols import binarize_batch, load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.errors import DataError


@pytest.fixture(scope="module")
def hw(mnist_raw):
    return load_protocol("hw", mnist_raw)


@pytest.fixture(scope="module")
def full(mnist_raw):
    return load_protocol("full", mnist_raw, validation_size=10_000)


@pytest.fixture(scope="module")
def gan(mnist_raw):
    return load_protocol("gan", mnist_raw)


def all_tensors(protocol):
    return [getattr(protocol, k) for k in ("train_images", "train_labels", "eval_images", "eval_labels",
                                           "test_images", "test_labels")]


def test_every_tensor_is_contiguous_and_owns_its_storage(hw, full, gan):
    for protocol in (hw, full, gan):
        for tensor in all_tensors(protocol):
            assert tensor.is_contiguous()
            # no view into a bigger tensor (e.g. the 50k training part must not keep all 60k alive)
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
        assert protocol.train_images.dtype == torch.float32 and protocol.train_labels.dtype == torch.int64


def test_hw_is_the_first_10k_and_the_test_set_rounded(hw, mnist_raw):
    assert hw.train_images.shape == (10000, 784) and hw.test_images.shape == (10000, 784)
    assert hw.eval_name == "test" and not hw.dynamic_binarization
    # rounding: pixel/255 >= 0.5  <=>  pixel >= 128 (no 8-bit value is exactly half of 255)
    expected_train = (mnist_raw.train_images[:10000].reshape(10000, 784) >= 128).astype(np.float32)
    expected_test = (mnist_raw.test_images.reshape(10000, 784) >= 128).astype(np.float32)
    assert torch.equal(hw.train_images, torch.from_numpy(expected_train))
    assert torch.equal(hw.test_images, torch.from_numpy(expected_test))
    assert set(torch.unique(hw.train_images).tolist()) == {0.0, 1.0}
    gray = torch.from_numpy(mnist_raw.train_images[:10000].reshape(10000, 784).astype(np.float64)) / 255.0
    assert torch.equal(hw.train_images, torch.round(gray).float())  # round(pixel), as SPEC words it
    assert hw.train_labels.tolist() == mnist_raw.train_labels[:10000].tolist()
    assert torch.equal(hw.eval_images, hw.test_images)


def test_full_keeps_gray_levels_and_holds_out_the_last_images(full, mnist_raw):
    assert full.train_images.shape == (50000, 784) and full.eval_images.shape == (10000, 784)
    assert full.dynamic_binarization and full.eval_name == "validation"
    rows = np.arange(0, 50000, 97)  # a spread of rows, checked in float64
    expected = mnist_raw.train_images[rows].reshape(len(rows), 784).astype(np.float64) / 255.0
    np.testing.assert_allclose(full.train_images[rows].numpy(), expected, rtol=0, atol=1e-7)
    assert 0.0 <= full.train_images.min() and full.train_images.max() <= 1.0
    assert ((full.train_images > 0) & (full.train_images < 1)).any()  # not binary
    assert full.eval_labels.tolist() == mnist_raw.train_labels[50000:].tolist()
    assert full.test_images.shape == (10000, 784)
    for fixed in (full.eval_images, full.test_images):
        assert set(torch.unique(fixed).tolist()) == {0.0, 1.0}
    # the validation images are binarized from the held-out gray levels: a 1 only where the pixel is > 0
    held_out = torch.from_numpy(mnist_raw.train_images[50000:].reshape(10000, 784).astype(np.float32))
    assert not (full.eval_images.bool() & (held_out == 0)).any()


def test_full_evaluation_binarization_is_repeatable(full, mnist_raw):
    again = load_protocol("full", mnist_raw, validation_size=10_000)
    assert torch.equal(again.eval_images, full.eval_images) and torch.equal(again.test_images, full.test_images)


def test_dynamic_binarization_draws_anew(full):
    batch = full.train_images[:500]
    first, second = binarize_batch(batch), binarize_batch(batch)
    assert set(torch.unique(first).tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)
    assert not first[batch == 0].any() and first[batch == 1].all()  # p = 0 or 1 is deterministic


def test_dynamic_binarization_has_the_pixel_as_its_mean():
    probabilities = torch.linspace(0, 1, 11).repeat(20000, 1)  # (20000, 11)
    draws = binarize_batch(probabilities, torch.Generator().manual_seed(0))
    # 20000 draws per column: standard error <= 0.0036, so 0.015 is > 4 standard errors
    assert torch.allclose(draws.mean(0), torch.linspace(0, 1, 11), atol=0.015)


def test_gan_is_all_60k_in_unit_range(gan, mnist_raw):
    assert gan.train_images.shape == (60000, 1, 28, 28) and gan.test_images.shape == (10000, 1, 28, 28)
    rows = np.arange(0, 60000, 97)  # a spread of rows, checked in float64
    expected = mnist_raw.train_images[rows].astype(np.float64)[:, None] / 255.0
    np.testing.assert_allclose(gan.train_images[rows].numpy(), expected, rtol=0, atol=1e-7)
    assert 0.0 <= gan.train_images.min() and gan.train_images.max() <= 1.0
    assert gan.train_labels.tolist() == mnist_raw.train_labels.tolist()


def test_protocol_provenance_extends_the_data_provenance(hw, full, mnist_raw):
    assert hw.provenance["protocol"] == "hw" and hw.provenance["dataset"] == "mnist"
    assert hw.provenance["files"] == mnist_raw.provenance["files"]
    assert (full.provenance["protocol_train_images"], full.provenance["protocol_eval_images"]) == (50000, 10000)


@pytest.mark.parametrize("size", [0, 60000, -5])
def test_full_rejects_impossible_validation_sizes(mnist_raw, size):
    with pytest.raises(DataError, match="--validation-size must be between 1 and 59999"):
        load_protocol("full", mnist_raw, validation_size=size)


def test_unknown_protocol(mnist_raw):
    with pytest.raises(DataError, match="unknown protocol 'hv'"):
        load_protocol("hv", mnist_raw)


def test_protocols_on_the_sample():
    sample = load_raw(DataConfig(dataset="mnist-sample"))
    hw = load_protocol("hw", sample)
    assert hw.train_images.shape == (4000, 784) and hw.test_images.shape == (1000, 784)
    full = load_protocol("full", sample, validation_size=500)
    assert full.train_images.shape == (3500, 784) and full.eval_images.shape == (500, 784)
    assert load_protocol("gan", sample).train_images.shape == (4000, 1, 28, 28)
    with pytest.raises(DataError, match="between 1 and 3999 for the 4,000 training images of mnist-sample"):
        load_protocol("full", sample)
