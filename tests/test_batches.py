"""Batch order: a permutation per epoch, drop_last, and the epoch's order as the loops read it."""

from __future__ import annotations

import torch

from mnistgen.data.batches import epoch_order, num_batches, shuffled_batches


def test_one_epoch_covers_every_item_once():
    batches = list(shuffled_batches(10, 3, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert num_batches(10, 3, drop_last=False) == 4


def test_drop_last_drops_the_partial_batch():
    batches = list(shuffled_batches(10, 3, torch.Generator().manual_seed(0), drop_last=True))
    assert [len(b) for b in batches] == [3, 3, 3]
    assert num_batches(10, 3, drop_last=True) == 3


def test_same_seed_same_order_and_epochs_differ():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    first = torch.cat(list(shuffled_batches(50, 7, g1)))
    assert torch.equal(first, torch.cat(list(shuffled_batches(50, 7, g2))))
    assert not torch.equal(first, torch.cat(list(shuffled_batches(50, 7, g1))))


def test_the_epoch_order_is_the_batches_in_a_row():
    batches = list(shuffled_batches(10, 3, torch.Generator().manual_seed(2), drop_last=True))
    order = epoch_order(10, 3, torch.Generator().manual_seed(2), torch.device("cpu"), drop_last=True)
    assert order.tolist() == torch.cat(batches).tolist() and len(order) == 9
