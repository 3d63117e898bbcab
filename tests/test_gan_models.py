"""SPEC §3's networks and losses: layer types and order, the shape after every stage, parameter counts,
the initialization, and both losses against values computed by hand."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

from mnistgen.losses import discriminator_loss, generator_loss
from mnistgen.models.gan import Discriminator, Generator

# SPEC §3's tables, written out here independently of the code:
# (name, type, kernel, stride, padding, in channels/features, out channels/features)
D_TABLE = [
    ("conv1", nn.Conv2d, 3, 1, 1, 1, 2),
    ("relu1", nn.ReLU, None, None, None, None, 2),
    ("pool1", nn.MaxPool2d, 2, 2, None, None, 2),
    ("conv2", nn.Conv2d, 3, 1, 1, 2, 4),
    ("relu2", nn.ReLU, None, None, None, None, 4),
    ("pool2", nn.MaxPool2d, 2, 2, None, None, 4),
    ("conv3", nn.Conv2d, 3, 1, 0, 4, 8),
    ("relu3", nn.ReLU, None, None, None, None, 8),
    ("linear", nn.Linear, None, None, None, 200, 1),
]
D_SHAPES = [(2, 28, 28), (2, 28, 28), (2, 14, 14), (4, 14, 14), (4, 14, 14), (4, 7, 7), (8, 5, 5), (8, 5, 5), (1,)]

G_TABLE = [
    ("linear", nn.Linear, None, None, None, 64, 1568),
    ("act1", nn.LeakyReLU, None, None, None, None, 1568),
    ("up1", nn.Upsample, None, None, None, None, 32),
    ("conv1", nn.Conv2d, 3, 1, 1, 32, 16),
    ("act2", nn.LeakyReLU, None, None, None, None, 16),
    ("up2", nn.Upsample, None, None, None, None, 16),
    ("conv2", nn.Conv2d, 3, 1, 1, 16, 8),
    ("act3", nn.LeakyReLU, None, None, None, None, 8),
    ("conv3", nn.Conv2d, 3, 1, 1, 8, 1),
    ("sigmoid", nn.Sigmoid, None, None, None, None, 1),
]
G_SHAPES = [(1568,), (1568,), (32, 14, 14), (16, 14, 14), (16, 14, 14), (16, 28, 28), (8, 28, 28), (8, 28, 28),
            (1, 28, 28), (1, 28, 28)]


def _check_table(model: nn.Module, table) -> None:
    children = list(model.named_children())
    assert [name for name, _ in children] == [row[0] for row in table]
    for (name, layer), (_, kind, kernel, stride, padding, inputs, outputs) in zip(children, table, strict=True):
        assert type(layer) is kind, name
        if kind is nn.Conv2d:
            assert (layer.in_channels, layer.out_channels) == (inputs, outputs), name
            assert layer.kernel_size == (kernel, kernel) and layer.stride == (stride, stride), name
            assert layer.padding == (padding, padding) and layer.bias is not None, name
            assert layer.dilation == (1, 1) and layer.groups == 1, name
        elif kind is nn.Linear:
            assert (layer.in_features, layer.out_features) == (inputs, outputs) and layer.bias is not None, name
        elif kind is nn.MaxPool2d:
            assert (layer.kernel_size, layer.stride, layer.padding) == (kernel, stride, 0), name
        elif kind is nn.LeakyReLU:
            assert layer.negative_slope == 0.2, name
        elif kind is nn.Upsample:
            assert float(layer.scale_factor) == 2.0 and layer.mode == "nearest", name


def test_discriminator_layers_in_table_order():
    _check_table(Discriminator(), D_TABLE)


def test_generator_layers_in_table_order():
    _check_table(Generator(zdim=64), G_TABLE)
    assert Generator(zdim=10).linear.in_features == 10


def _stage_shapes(model: nn.Module, inputs: torch.Tensor) -> tuple[list[str], list[tuple[int, ...]]]:
    called, shapes = [], []

    def record(name):
        def hook(module, args, output):  # returns None: the output is left as it is
            called.append(name)
            shapes.append(tuple(output.shape[1:]))
        return hook

    hooks = [layer.register_forward_hook(record(name)) for name, layer in model.named_children()]
    try:
        output = model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return called, shapes, output


def test_discriminator_shape_after_every_stage():
    called, shapes, logits = _stage_shapes(Discriminator(), torch.rand(3, 1, 28, 28))
    assert called == [row[0] for row in D_TABLE]  # each layer runs once, in the table's order
    assert shapes == D_SHAPES
    assert logits.shape == (3, 1)


def test_generator_shape_after_every_stage():
    called, shapes, images = _stage_shapes(Generator(), torch.rand(5, 64) * 2 - 1)
    assert called == [row[0] for row in G_TABLE]
    assert shapes == G_SHAPES
    assert images.shape == (5, 1, 28, 28)
    assert 0.0 < images.min() and images.max() < 1.0  # a sigmoid output


def _count(table) -> int:
    """Parameters from the table alone: weights (in * out * k * k or in * out) plus one bias per output."""
    total = 0
    for _, kind, kernel, _, _, inputs, outputs in table:
        if kind is nn.Conv2d:
            total += inputs * outputs * kernel * kernel + outputs
        elif kind is nn.Linear:
            total += inputs * outputs + outputs
    return total


def test_parameter_counts():
    assert _count(D_TABLE) == 593 and _count(G_TABLE) == 107_777  # SPEC §3's totals, from the tables
    assert sum(p.numel() for p in Discriminator().parameters()) == 593
    assert sum(p.numel() for p in Generator(64).parameters()) == 107_777
    assert sum(p.numel() for p in Generator(10).parameters()) == 107_777 - 54 * 1568


def test_kaiming_uniform_defaults_give_bound_sqrt_6_over_fan_in():
    # torch's kaiming_uniform_ defaults: a = 0, mode fan_in, nonlinearity leaky_relu, whose gain is
    # sqrt(2 / (1 + a^2)) = sqrt(2); the bound is gain * sqrt(3 / fan_in) = sqrt(6 / fan_in).
    defaults = {k: v.default for k, v in inspect.signature(nn.init.kaiming_uniform_).parameters.items()}
    assert defaults["a"] == 0 and defaults["mode"] == "fan_in" and defaults["nonlinearity"] == "leaky_relu"
    assert nn.init.calculate_gain("leaky_relu", 0) == pytest.approx(math.sqrt(2.0))


@pytest.mark.parametrize("network", [Discriminator, Generator], ids=["D", "G"])
def test_init_zero_biases_and_kaiming_uniform_weights(network):
    torch.manual_seed(0)
    model = network()
    for name, layer in model.named_children():
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            assert not list(layer.parameters()), name
            continue
        fan_in = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels * 9
        bound = math.sqrt(6.0 / fan_in)
        assert torch.count_nonzero(layer.bias) == 0, name
        weight = layer.weight.detach()
        assert weight.abs().max() <= bound, name
        if weight.numel() >= 1000:  # uniform on [-bound, bound]: fills the interval, std bound / sqrt(3)
            assert weight.abs().max() > 0.99 * bound, name
            assert weight.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.05), name
            assert abs(weight.mean().item()) < 0.05 * bound, name


def test_init_is_not_pytorch_default_init():
    # PyTorch's own default for Linear/Conv2d is kaiming_uniform with a = sqrt(5) (bound sqrt(1 / fan_in))
    # and non-zero biases: the spec's init must be visibly wider, with zero biases.
    torch.manual_seed(1)
    linear = Generator().linear
    assert linear.weight.abs().max() > 2.0 * math.sqrt(1.0 / 64)


# --------------------------------------------------------------------------- losses, by hand

LOG3, LOG4 = math.log(3.0), math.log(4.0)  # sigmoid(log 3) = 3/4, sigmoid(-log 4) = 1/5


def test_discriminator_loss_by_hand():
    real = torch.tensor([[LOG3], [0.0]])  # D(x) = 3/4, 1/2
    fake = torch.tensor([[-LOG4], [LOG3]])  # D(G(z)) = 1/5, 3/4
    expected = (-math.log(0.75) - math.log(0.5)) / 2 + (-math.log(1 - 0.2) - math.log(1 - 0.75)) / 2
    assert discriminator_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)
    # at D = 1/2 everywhere the loss is 2 log 2
    assert discriminator_loss(torch.zeros(4, 1), torch.zeros(4, 1)).item() == pytest.approx(2 * math.log(2))


def test_generator_loss_by_hand_is_non_saturating():
    fake = torch.tensor([[-LOG4], [LOG3]])
    assert generator_loss(fake).item() == pytest.approx((-math.log(0.2) - math.log(0.75)) / 2, rel=1e-6)
    # -log D(G(z)) keeps a gradient of about -1/B when D confidently rejects G(z) (logit -20), where
    # the saturating log(1 - D(G(z))) would give about -sigmoid(-20) / B, i.e. nothing.
    logits = torch.tensor([[-20.0], [-20.0]], requires_grad=True)
    generator_loss(logits).backward()
    assert logits.grad.flatten().tolist() == pytest.approx([-0.5, -0.5], rel=1e-6)


def test_losses_are_stable_for_extreme_logits():
    real, fake = torch.tensor([[100.0]]), torch.tensor([[100.0]])
    assert discriminator_loss(real, fake).item() == pytest.approx(100.0, rel=1e-6)  # log(1 - D) = -100
    assert generator_loss(torch.tensor([[-100.0]])).item() == pytest.approx(100.0, rel=1e-6)
    assert generator_loss(torch.tensor([[100.0]])).item() == pytest.approx(0.0, abs=1e-12)
