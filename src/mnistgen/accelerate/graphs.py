"""The step captured once in a CUDA graph and replayed (:class:`CapturedStep`): the step's own kernels, without
launching them one by one from Python, for inputs of one shape (another, such as an epoch's last partial batch, takes
the step eagerly). Where it applies: :func:`graph_problem` and :func:`mnistgen.accelerate.engines.check_graph`."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..distributed import rank_and_size

WARM_UP_CALLS = 3  # eager calls on a side stream before the capture (cuBLAS/cuDNN workspaces, the Adam state)


def graph_problem(device: torch.device, fixed_lr: bool = True) -> str | None:
    """Why the step cannot be captured here, or None."""
    if device.type != "cuda":
        return "CUDA graphs run on CUDA devices only"
    if rank_and_size()[1] > 1:
        return "under torchrun each step all-reduces the gradients, which the graph does not capture"
    if not fixed_lr:
        return "the learning rate changes from epoch to epoch (a captured step keeps the lr it was captured with)"
    return None


def capturable_adam(optimizer: torch.optim.Optimizer) -> torch.optim.Adam:
    """An Adam over the same parameters, hyper-parameters and state as ``optimizer``, with ``capturable=True``
    (its step count lives on the device, so that a replayed step advances it)."""
    group = optimizer.param_groups[0]
    captured = torch.optim.Adam([p for g in optimizer.param_groups for p in g["params"]], lr=group["lr"],
                                betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"],
                                fused=True, capturable=True)
    copy_state(optimizer, captured)
    return captured


@torch.no_grad()
def copy_state(source: torch.optim.Optimizer, target: torch.optim.Optimizer) -> None:
    """Adam's per-parameter state (step, moments) of ``source`` into ``target`` (same parameters): copies in place
    where ``target`` holds the tensor already (a captured graph reads those addresses), new tensors otherwise."""
    for parameter, state in source.state.items():
        held = target.state.get(parameter)
        for key, value in state.items():
            value = torch.as_tensor(value)
            if held is not None and key in held and torch.is_tensor(held[key]):
                held[key].copy_(value.to(held[key].device).reshape(held[key].shape))
            else:
                target.state.setdefault(parameter, {})[key] = value.to(parameter.device).clone().reshape(
                    () if key == "step" else parameter.shape)


class CapturedStep:
    """``step(*inputs)`` recorded once in a CUDA graph and replayed on new inputs of the same shapes; the warm-up's
    changes to ``parameters`` and ``optimizers`` are undone, so the first replay starts from their state now."""

    def __init__(self, step: Callable[..., torch.Tensor], example_inputs: Sequence[torch.Tensor],
                 parameters: Sequence[torch.Tensor], optimizers: Sequence[torch.optim.Optimizer]):
        self.step = step
        self.inputs = [x.clone() for x in example_inputs]
        with torch.no_grad():
            saved_parameters = [p.detach().clone() for p in parameters]
        saved_states = [copy.deepcopy(o.state_dict()["state"]) for o in optimizers]
        with self._side_stream():
            for _ in range(WARM_UP_CALLS):
                step(*self.inputs)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.output = self._capture()
        with torch.no_grad():  # undo the warm-up: the same tensors (the graph reads them), the values before it
            for parameter, saved in zip(parameters, saved_parameters, strict=True):
                parameter.copy_(saved)
            for optimizer, saved in zip(optimizers, saved_states, strict=True):
                for index, parameter in enumerate(p for g in optimizer.param_groups for p in g["params"]):
                    for key, value in optimizer.state[parameter].items():
                        before = saved.get(index, {}).get(key)
                        value.copy_(before.to(value.device).reshape(value.shape) if before is not None else
                                    torch.zeros_like(value))  # a fresh Adam: zero moments, step 0

    def __call__(self, *inputs: torch.Tensor) -> Any:
        if any(x.shape != static.shape for x, static in zip(inputs, self.inputs, strict=True)):
            return self.step(*inputs)
        for static, x in zip(self.inputs, inputs, strict=True):
            static.copy_(x)
        self._replay()
        return self.output.clone()

    # the three CUDA calls, apart (tests on the CPU replace them by eager calls to check the bookkeeping around)

    @contextmanager
    def _side_stream(self) -> Iterator[None]:
        """Warm-up work on a side stream, as PyTorch's documentation of CUDA graphs asks."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self) -> torch.Tensor:
        """Record one call of the step into ``self.graph``; returns its output tensor (rewritten by each replay)."""
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            return self.step(*self.inputs)

    def _replay(self) -> None:
        self.graph.replay()

