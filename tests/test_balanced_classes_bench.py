"""bench/gan_balanced_classes.py, the measurement of class-balanced real batches through mnistgen's own loop: the
balanced order of an epoch, and that it changes nothing else of the training."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from bench_support import load_bench_module
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gan_options import SMALL, checkpoint, images

from mnistgen.runs import RunDir
from mnistgen.train import gan as gan_train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


@settings(max_examples=60, deadline=None)
@given(labels=st.lists(st.integers(0, 5), min_size=1, max_size=80), batch_size=st.integers(1, 20),
       seed=st.integers(0, 2 ** 32 - 1))
def test_each_class_comes_equally_often_and_a_small_class_whole(labels, batch_size, seed):
    bench = load_bench_module("gan_balanced_classes")
    labels = torch.tensor(labels)
    present = torch.unique(labels).tolist()
    per_class = len(labels) // len(present)
    order = bench.balanced_epoch_order(labels, batch_size, torch.Generator().manual_seed(seed), CPU)
    assert len(order) == per_class * len(present)
    for label in present:
        members = torch.nonzero(labels == label).flatten()
        chosen = order[labels[order] == label]
        assert len(chosen) == per_class  # whatever the class's size
        if len(members) >= per_class:  # a subset, each at most once
            assert len(torch.unique(chosen)) == per_class
        else:  # every member, then again at most as often as the rounds allow
            assert set(chosen.tolist()) == set(members.tolist())
            assert torch.bincount(chosen).max() <= -(-per_class // len(members))
    again = bench.balanced_epoch_order(labels, batch_size, torch.Generator().manual_seed(seed), CPU)
    assert torch.equal(order, again)  # drawn from the generator alone: a resume draws it again
    cut = bench.balanced_epoch_order(labels, batch_size, torch.Generator().manual_seed(seed), CPU, drop_last=True)
    assert len(cut) % batch_size == 0 and torch.equal(cut, order[:len(cut)]) and len(order) - len(cut) < batch_size


def test_mnists_shares_become_ten_percent_each():
    bench = load_bench_module("gan_balanced_classes")
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # MNIST's 60,000 training labels
    labels = torch.cat([torch.full((count,), digit) for digit, count in enumerate(counts)])
    order = bench.balanced_epoch_order(labels, 64, torch.Generator().manual_seed(0), CPU, drop_last=True)
    assert len(order) == 937 * 64  # the loop's steps of an epoch, as without the balancing
    shares = torch.bincount(labels[order], minlength=10) / len(order)
    assert (shares - 0.1).abs().max() < 0.002  # against 0.090 to 0.112 in MNIST
    first = torch.bincount(labels[order[:640]], minlength=10)  # the first 10 batches: the classes shuffled together
    assert first.min() > 30 and first.max() < 100  # 64 expected, standard deviation 7.6
    whole = bench.balanced_epoch_order(labels, 64, torch.Generator().manual_seed(0), CPU)  # before the cut
    assert set(whole[labels[whole] == 5].tolist()) == set(torch.nonzero(labels == 5).flatten().tolist())


def test_the_loop_trains_on_the_balanced_order_and_is_its_own_after(tmp_path):
    bench = load_bench_module("gan_balanced_classes")
    config = dataclasses.replace(SMALL, epochs=1, batch_size=10)  # 10 steps: every image once, or not
    labels = torch.cat([torch.zeros(70, dtype=torch.long), torch.ones(30, dtype=torch.long)])
    seen = []
    index_select = torch.Tensor.index_select

    def recording(tensor, dim, index):  # the real images of each step, as the loop reads them
        seen.append(index.clone())
        return index_select(tensor, dim, index)

    runs = {name: RunDir(tmp_path / name) for name in ("plain", "balanced")}
    gan_train.train_gan(config, images(), runs["plain"], show_progress=False)
    original = gan_train.epoch_order
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "index_select", recording)
        with bench.installed(labels):
            gan_train.train_gan(config, images(), runs["balanced"], show_progress=False)
    assert gan_train.epoch_order is original
    read = torch.cat([index for index in seen if index.numel() == 10])
    assert torch.bincount(labels[read]).tolist() == [50, 50]  # not 70 and 30
    plain, balanced = checkpoint(runs["plain"]), checkpoint(runs["balanced"])
    assert any(not torch.equal(balanced["discriminator"][name], value)
               for name, value in plain["discriminator"].items())
    with pytest.raises(ValueError, match="not a multiple"), bench.installed(labels[:99]):
        pass
