"""Accelerators: faster ways to compute a training step than the reference step (autograd through the modules'
``forward``), each checking first, on the actual models, optimizer and config, that it computes what the reference
step would: the layers' structure, dtype, device, optimizer, then a numerical probe on copies of the modules
(:data:`PROBE_TOLERANCE`). :func:`choose` picks one under ``--cpu-kernels`` (docs/TRAINING.md)."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from ..distributed import is_main_process
from ..errors import MnistgenError

PROBE_TOLERANCE = 1e-4  # largest relative difference (in norm) between the accelerator and the module's forward
PROBE_SEED = 0  # the probes' inputs come from their own generator: the run's random streams are not touched
CPU_KERNELS = ("auto", "native", "torch", "reference")  # the values of --cpu-kernels
REFERENCE_DESCRIPTION = "the reference path (autograd through the modules' forward)"

Implementation = TypeVar("Implementation")


@dataclass(frozen=True)
class Accelerator(Generic[Implementation]):
    """One fast path, the conditions under which it applies, and what the training loop uses from it."""

    name: str  # recorded in each metrics line ("native", "torch")
    description: str  # what it is, for the note when a faster one does not apply ("mnistgen's C kernels")
    native: bool  # runs mnistgen's C kernels (--cpu-kernels torch excludes it, native insists on it)
    devices: tuple[str, ...]  # device types it runs on ("cpu", "cuda", "mps")
    # (models..., config, device) -> why it does not apply, or None; a MnistgenError it raises (the C library
    # cannot be built, say) is taken as the reason by :func:`choose`
    check: Callable[..., str | None]
    implementation: Implementation
    # what it changes in its module before training (the parameters' memory layout; never their values), or None
    prepare: Callable[[nn.Module, torch.device], None] | None = None


@dataclass(frozen=True)
class Choice(Generic[Implementation]):
    """What :func:`choose` decided: the accelerator (None: the reference path) and why faster ones were skipped."""

    accelerator: Accelerator[Implementation] | None
    skipped: tuple[str, ...]  # "<name>: <reason>" of each accelerator for this device that did not apply

    @property
    def name(self) -> str:
        return self.accelerator.name if self.accelerator is not None else "reference"

    @property
    def description(self) -> str:
        return self.accelerator.description if self.accelerator is not None else REFERENCE_DESCRIPTION


def note_choice(what: str, choices: dict[str, Choice], say: Callable[[str], None] | None = None) -> None:
    """One note (``say``, default stderr; rank 0 only) if a faster accelerator was skipped for any of ``choices`` (by
    network: "G", "D", or ""): what trains with what, and why the faster ones do not apply."""
    reasons: dict[str, list[str]] = {}  # "native: no C compiler found" -> ["G", "D"]
    for network, choice in choices.items():
        for reason in choice.skipped:
            reasons.setdefault(reason, []).append(network)
    if not reasons or not is_main_process():
        return
    paths = ", ".join(f"{network} with {choice.description}".lstrip() for network, choice in choices.items())
    why = "; ".join(_for_networks(reason, networks) for reason, networks in reasons.items())
    say = say or (lambda line: print(line, file=sys.stderr))
    say(f"mnistgen: note: the {what} trains {paths}, as faster paths do not apply: {why}")


def _for_networks(reason: str, networks: list[str]) -> str:
    """A skipped accelerator's reason with the networks it concerns: ``native: why`` -> ``native for G and D: why``."""
    named = [network for network in networks if network]
    if not named:
        return reason
    name, _, why = reason.partition(": ")
    return f"{name} for {' and '.join(named)}: {why}"


def choose(candidates: Sequence[Accelerator[Implementation]], cpu_kernels: str, device: torch.device,
           optimizer: torch.optim.Optimizer, *check_arguments: Any) -> Choice[Implementation]:
    """The first of ``candidates`` (fastest first) that ``cpu_kernels`` allows on ``device`` and that passes
    :func:`adam_mismatch` and ``check(*check_arguments)``, else ``Choice(None, ...)``; "native" on a CPU insists."""
    if cpu_kernels not in CPU_KERNELS:
        raise MnistgenError(f"--cpu-kernels must be one of {', '.join(CPU_KERNELS)}, got {cpu_kernels!r}")
    skipped: list[str] = []
    chosen = None
    if cpu_kernels != "reference":
        for accelerator in candidates:
            if device.type not in accelerator.devices or (accelerator.native and cpu_kernels == "torch"):
                continue
            try:
                reason = adam_mismatch(optimizer) or accelerator.check(*check_arguments)
            except MnistgenError as exc:
                reason = str(exc)
            except Exception as exc:  # an accelerator that cannot even run on these models does not apply to them
                reason = f"its check failed ({describe_exception(exc)})"
            if reason is None:
                chosen = accelerator
                break
            skipped.append(f"{accelerator.name}: {reason}")
    if cpu_kernels == "native" and device.type == "cpu" and (chosen is None or not chosen.native):
        raise MnistgenError("--cpu-kernels native: the C kernels do not apply: " + "; ".join(skipped))
    return Choice(chosen, tuple(skipped))


def layout_mismatch(module: nn.Module, expected: dict[str, nn.Module], what: str) -> str | None:
    """Why ``module``'s leaf modules and parameters differ from ``expected`` (leaf name -> module, e.g. built on
    the meta device), or None if the names, types, settings and parameter shapes are the same."""
    leaves = {name: leaf for name, leaf in module.named_modules() if name and not list(leaf.children())}
    extra = [name for name in leaves if name not in expected]
    missing = [name for name in expected if name not in leaves]
    if extra or missing:
        parts = ([f"has {', '.join(extra)}"] if extra else []) + ([f"lacks {', '.join(missing)}"] if missing else [])
        return f"{what} {' and '.join(parts)} (written for the spec's layers)"
    for name, layer in expected.items():
        actual = leaves[name]
        if type(actual) is not type(layer) or actual.extra_repr() != layer.extra_repr():
            return f"{what}.{name} is {_describe(actual)}, written for {_describe(layer)}"
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    wanted = {f"{leaf}.{name}": tuple(p.shape) for leaf, layer in expected.items()
              for name, p in layer.named_parameters()}
    if shapes != wanted:
        differing = sorted(name for name in shapes.keys() | wanted.keys() if shapes.get(name) != wanted.get(name))
        return f"{what}'s parameters differ from the spec's ({', '.join(differing)})"
    return None


def _describe(layer: nn.Module) -> str:
    return f"{type(layer).__name__}({layer.extra_repr()})"


def parameter_mismatch(module: nn.Module, device: torch.device) -> str | None:
    """Why the parameters of ``module`` are not float32 tensors on ``device``, contiguous or channels-last, or None."""
    for name, parameter in module.named_parameters():
        if parameter.dtype != torch.float32:
            return f"{type(module).__name__}.{name} is {str(parameter.dtype).removeprefix('torch.')}, " \
                   "the accelerators compute in float32"
        if parameter.device.type != device.type:
            return f"{type(module).__name__}.{name} is on {parameter.device}, training on {device}"
        if not (parameter.is_contiguous() or parameter.is_contiguous(memory_format=torch.channels_last)):
            return f"{type(module).__name__}.{name} is not contiguous"
    return None


def on_meta_device(build: Callable[[], dict[str, nn.Module]]) -> dict[str, nn.Module]:
    """``build()``'s modules created on the meta device: shapes and settings only, no memory, no initialization."""
    with torch.device("meta"):
        return build()


@contextmanager
def probing(*modules: Any) -> Iterator[list[Any]]:
    """Copies of ``modules`` to probe (their buffers and gradients stay untouched), with the global random
    state (CPU, and the CUDA devices the modules are on) restored when the block ends."""
    devices = sorted({p.device.index or 0 for m in modules for p in m.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        yield [copy.deepcopy(module) for module in modules]


def probe_generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(PROBE_SEED)


def relative_difference(mine: torch.Tensor | None, reference: torch.Tensor | None) -> float:
    """||mine - reference|| / ||reference|| in float64 (inf for other shapes or a missing one; 0 if both are 0)."""
    if mine is None or reference is None or mine.shape != reference.shape:
        return float("inf")
    mine, reference = mine.detach().double(), reference.detach().double()
    scale = reference.norm().item()
    difference = (mine - reference).norm().item()
    if difference == 0.0:
        return 0.0
    return difference / scale if scale > 0.0 else float("inf")


def gradients_of(output: torch.Tensor, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """d output / d inputs, with zeros for an input the output does not depend on."""
    gradients = torch.autograd.grad(output, list(inputs), allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, gradients, strict=True)]


def probe_mismatch(pairs: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
                   reference: str = "the module's forward") -> str | None:
    """The first (what, accelerator's value, the reference's value) that differs beyond :data:`PROBE_TOLERANCE`
    (NaN included), as a reason naming ``reference``; None if all agree."""
    for what, mine, theirs in pairs:
        difference = relative_difference(mine, theirs)
        if not difference <= PROBE_TOLERANCE:
            return f"the probe found {what} {difference:.2g} away (relative) from {reference}"
    return None


def describe_exception(exc: BaseException) -> str:
    """``Type: message``, on one line, at most 200 characters of the message."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def adam_mismatch(optimizer: torch.optim.Optimizer) -> str | None:
    """Why ``optimizer`` is not SPEC's plain Adam (one group; no weight decay, amsgrad or maximize), or None."""
    if type(optimizer) is not torch.optim.Adam:
        return f"it is written for SPEC's optimizer, Adam; the optimizer is {type(optimizer).__name__}"
    group = optimizer.param_groups[0]
    if len(optimizer.param_groups) > 1 or group["weight_decay"] or group["amsgrad"] or group["maximize"]:
        return "it is written for SPEC's optimizer, plain Adam (one parameter group, no weight decay, amsgrad or " \
               "maximize)"
    return None
