"""Engines: the ways of executing the training step of R >= 1 replicas: :class:`OneAfterAnother` (each replica's
own step in turn, bit for bit its separate run), :class:`Stacked` (the same step function over parameters stacked
along a new first dimension, checked first by :func:`check_stacked`) and :class:`Captured` (a CUDA graph); how each
works and is chosen: docs/TRAINING.md, 'Engines'."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from . import adam_mismatch, describe_exception, probe_mismatch, probing
from .graphs import CapturedStep, capturable_adam, copy_state, graph_problem

STEPS_PER_TURN = 10  # steps each replica takes in turn between two polls of stop (its state stays in the CPU cache)


@dataclass
class Replica:
    """One replica's modules, the optimizer of each, and the averages of their weights that the step keeps (the GAN's:
    G's moving average, the lookahead's slow weights of G and D), by the names its checkpoint gives them."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    averages: dict[str, nn.Module] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor a step changes but the optimizers' state: the parameters and the averages, by name."""
        return {f"{prefix}{key}.{name}": tensor
                for prefix, modules in (("", self.modules), ("average of ", self.averages))
                for key, module in modules.items() for name, tensor in module.named_parameters()}

    def parameters(self) -> list[torch.Tensor]:
        return list(self.tensors().values())

    def optimizer_states(self) -> dict[str, torch.Tensor]:
        """Every tensor of the optimizers' states (Adam's moments, its step), by the parameter's name."""
        return {f"{key}.{name} {entry}": value for key, module in self.modules.items()
                for name, tensor in module.named_parameters()
                for entry, value in self.optimizers[key].state.get(tensor, {}).items() if torch.is_tensor(value)}


class Runner(Protocol):
    """How one replica's (or the stacked replicas') step is taken: :meth:`step` returns its values, on the device;
    :meth:`store` hands what the runner keeps aside (C buffers, a captured optimizer's state) back to the replica."""

    name: str  # what each metrics line records ("reference", "native", ...)

    def step(self, *inputs: torch.Tensor) -> torch.Tensor: ...

    def store(self) -> None: ...


@dataclass
class Bound:
    """A step function bound to its replica: nothing kept aside."""

    step: Callable[..., torch.Tensor]
    name: str = "reference"

    def store(self) -> None:
        pass


def optimizer_like(optimizer: torch.optim.Optimizer, params: Callable[[torch.Tensor], torch.Tensor],
                   **changes: Any) -> torch.optim.Optimizer:
    """A new optimizer of ``optimizer``'s type and group settings (``changes`` override) over ``params(p)``."""
    accepted = inspect.signature(type(optimizer)).parameters
    groups = [{**{k: v for k, v in group.items() if k in accepted and k != "params"}, **changes,
               "params": [params(p) for p in group["params"]]} for group in optimizer.param_groups]
    return type(optimizer)(groups)


class StackedModule:
    """R replicas of one module as one callable: the module's own forward on each replica's parameters, vmapped over
    the leading dimension R of every tensor input (other inputs, an objective's name, passed as they are)."""

    def __init__(self, module: nn.Module, params: dict[str, torch.Tensor]):
        self.module, self.params = module, params  # params: name -> (R, ...) tensors

    def __call__(self, *inputs: Any) -> Any:
        def one_replica(params: dict[str, torch.Tensor], *args: Any) -> Any:
            return torch.func.functional_call(self.module, params, args)

        in_dims = (0, *(0 if torch.is_tensor(x) else None for x in inputs))
        return torch.func.vmap(one_replica, in_dims=in_dims)(self.params, *inputs)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        return list(self.params.items())


class Stack:
    """R replicas' tensors stacked along a new first dimension, as one replica of the same keys (:attr:`replica`);
    :meth:`load` copies the replicas' values and optimizer states in, :meth:`store` back out."""

    def __init__(self, replicas: Sequence[Replica]):
        self.replicas = list(replicas)
        first = self.replicas[0]
        params = {key: torch.func.stack_module_state([r.modules[key] for r in self.replicas])[0]
                  for key in first.modules}  # key -> name -> (R, ...) leaf tensors
        optimizers = {}
        for key, optimizer in first.optimizers.items():
            name_of = {p: name for name, p in first.modules[key].named_parameters()}
            optimizers[key] = optimizer_like(optimizer, lambda p, key=key, name_of=name_of: params[key][name_of[p]])
        averages = {key: {name: t.detach() for name, t in
                          torch.func.stack_module_state([r.averages[key] for r in self.replicas])[0].items()}
                    for key in first.averages}
        self.replica = Replica({key: StackedModule(first.modules[key], params[key]) for key in params}, optimizers,
                               {key: StackedModule(first.averages[key], averages[key]) for key in averages})
        self.load()

    def _pairs(self, k: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.optim.Optimizer | None,
                                           torch.optim.Optimizer | None]]:
        """(replica k's tensor, the stacked one, their optimizers or None) for every parameter and average."""
        replica, stacked = self.replicas[k], self.replica
        return [(tensor, stacked.modules[key].params[name], replica.optimizers.get(key), stacked.optimizers.get(key))
                for key, module in replica.modules.items() for name, tensor in module.named_parameters()] + [
                (tensor, stacked.averages[key].params[name], None, None)
                for key, module in replica.averages.items() for name, tensor in module.named_parameters()]

    @torch.no_grad()
    def load(self) -> None:
        """The replicas' values and optimizer states into the stacked tensors."""
        for k in range(len(self.replicas)):
            for tensor, stacked, optimizer, stacked_optimizer in self._pairs(k):
                stacked[k].copy_(tensor)
                state = optimizer.state.get(tensor, {}) if optimizer is not None else {}
                held = stacked_optimizer.state.setdefault(stacked, {}) if state else {}
                for key, value in state.items():
                    if torch.is_tensor(value) and value.shape == tensor.shape:  # per element: one slice a replica
                        held.setdefault(key, torch.zeros_like(stacked))[k].copy_(value)
                    else:  # shared by the replicas (the step count)
                        held[key] = value.clone().to(stacked.device) if torch.is_tensor(value) else value

    @torch.no_grad()
    def store(self) -> None:
        """The stacked values and optimizer states into each replica's own tensors and optimizer."""
        for k in range(len(self.replicas)):
            for tensor, stacked, optimizer, stacked_optimizer in self._pairs(k):
                tensor.copy_(stacked[k])
                state = stacked_optimizer.state.get(stacked, {}) if stacked_optimizer is not None else {}
                if state:
                    optimizer.state[tensor] = {
                        key: (value[k].clone() if torch.is_tensor(value) and value.shape == stacked.shape else
                              value.clone().reshape(()) if torch.is_tensor(value) else value)
                        for key, value in state.items()}


def in_float64(replicas: Sequence[Replica]) -> torch.device:
    """The replicas (copies, for a probe) in float64, so that a step's rounding stays far below the probe's tolerance;
    on the CPU where they are on MPS (no float64 there). Returns the device they are on."""
    device = replicas[0].parameters()[0].device
    device = torch.device("cpu") if device.type == "mps" else device
    for replica in replicas:
        for module in (*replica.modules.values(), *replica.averages.values()):
            module.to(device, torch.float64)  # the parameters stay the same objects: the optimizers keep them
        for optimizer in replica.optimizers.values():
            for state in optimizer.state.values():
                for key, value in state.items():
                    if torch.is_tensor(value):
                        wide = value.is_floating_point() and value.dim() > 0  # not Adam's step count
                        state[key] = value.to(device, torch.float64 if wide else value.dtype)
    return device


def float64_inputs(inputs: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [x.to(device, torch.float64) if x.is_floating_point() else x.to(device) for x in inputs]


def check_stacked(replicas: Sequence[Replica], bind: Callable[[Replica], Callable[..., torch.Tensor]],
                  inputs: Sequence[Sequence[torch.Tensor]]) -> str | None:
    """Why the stacked step is not each replica's own step ``bind(replica)``, or None: one step of the first two
    replicas, stacked and one after another, from float64 copies on the same ``inputs``, must give the same state."""
    pair = list(replicas[:2])
    with probing(*pair, *pair) as copies:
        device = in_float64(copies)
        stacked, separate, inputs = copies[:2], copies[2:], [float64_inputs(x, device) for x in inputs[:2]]
        try:
            stack = Stack(stacked)
            stacked_values = bind(stack.replica)(*[torch.stack(parts) for parts in zip(*inputs, strict=True)])
            stack.store()
        except Exception as exc:  # a module or step that vmap cannot run (random draws, data-dependent Python)
            return f"the stacked step fails ({describe_exception(exc)})"
        separate_values = torch.stack([bind(r)(*x) for r, x in zip(separate, inputs, strict=True)])
        pairs = [("the step's values", stacked_values, separate_values)]
        for k, (mine, theirs) in enumerate(zip(stacked, separate, strict=True)):
            for values in (Replica.tensors, Replica.optimizer_states):
                actual = values(mine)
                pairs += [(f"replica {k}'s {name} after one step", actual.get(name), tensor)
                          for name, tensor in values(theirs).items()]
        return probe_mismatch(pairs, "each replica's own step")


class Captured:
    """A replica's step, ``bind(replica)`` (or the stacked replicas'), captured in a CUDA graph and replayed, on
    capturable copies of the replica's optimizers; :meth:`store` copies their state back into the replica's."""

    def __init__(self, replica: Replica, bind: Callable[[Replica], Callable[..., torch.Tensor]],
                 example_inputs: Sequence[torch.Tensor], name: str):
        self.optimizers = replica.optimizers
        self.copies = {key: capturable_adam(optimizer) for key, optimizer in replica.optimizers.items()}
        step = bind(dataclasses.replace(replica, optimizers=self.copies))
        self.step = CapturedStep(step, example_inputs, replica.parameters(), list(self.copies.values()))
        self.name = name

    def store(self) -> None:
        for key, optimizer in self.optimizers.items():
            copy_state(self.copies[key], optimizer)


def check_graph(replicas: Sequence[Replica], stacked: bool, bind: Callable[[Replica], Callable[..., torch.Tensor]],
                example_inputs: Sequence[torch.Tensor], device: torch.device, fixed_lr: bool) -> str | None:
    """Why ``bind`` of the first replica (or, ``stacked``, of the replicas stacked) cannot be captured here, or None:
    :func:`graph_problem`, not plain Adam, or one replayed and one eager step (float64 copies) that differ."""
    problem = graph_problem(device, fixed_lr) or next(
        (reason for reason in map(adam_mismatch, replicas[0].optimizers.values()) if reason), None)
    if problem is not None:
        return problem
    chosen = list(replicas if stacked else replicas[:1])
    with probing(*chosen, *chosen) as copies:
        inputs = float64_inputs(example_inputs, in_float64(copies))
        captured, eager = ((Stack(copies[:len(chosen)]).replica, Stack(copies[len(chosen):]).replica) if stacked
                           else copies)
        try:
            Captured(captured, bind, inputs, "").step(*inputs)
        except RuntimeError as exc:  # a module that cannot be captured (a host synchronisation inside forward)
            return f"the step could not be captured ({describe_exception(exc)})"
        bind(eager)(*inputs)
        theirs = eager.tensors()
        return probe_mismatch([(f"{name} after one step", tensor, theirs[name])
                               for name, tensor in captured.tensors().items()], "the eager step")


class OneAfterAnother:
    """Each replica's own runner in turn; ``optimizers``: the replicas' (the loop sets their learning rate)."""

    def __init__(self, runners: Sequence[Runner], optimizers: Sequence[torch.optim.Optimizer]):
        self.runners, self.optimizers = list(runners), list(optimizers)
        self.steps_between_polls = 1 if len(self.runners) == 1 else STEPS_PER_TURN
        count, inner = len(self.runners), self.runners[0].name
        self.name = inner if count == 1 else f"{count} replicas, one replica after another, {inner}"

    def run(self, first: int, last: int, inputs: Callable[[int, int], Sequence[torch.Tensor]],
            values: torch.Tensor) -> None:
        """Steps ``first..last-1`` of every replica: replica k's step s from ``inputs(k, s)`` to ``values[k, s]``."""
        for k, runner in enumerate(self.runners):
            for step in range(first, last):
                values[k, step] = runner.step(*inputs(k, step))

    def store(self) -> None:
        for runner in self.runners:
            runner.store()


class Stacked:
    """Every replica's step at once, on the stacked tensors (see the module)."""

    steps_between_polls = 1

    def __init__(self, stack: Stack, runner: Runner):
        self.stack, self.runner, self.name = stack, runner, runner.name
        self.optimizers = list(stack.replica.optimizers.values())  # the loop sets their learning rate

    def run(self, first: int, last: int, inputs: Callable[[int, int], Sequence[torch.Tensor]],
            values: torch.Tensor) -> None:
        for step in range(first, last):
            parts = [inputs(k, step) for k in range(len(self.stack.replicas))]
            values[:, step] = self.runner.step(*[torch.stack(x) for x in zip(*parts, strict=True)])

    def store(self) -> None:
        self.runner.store()
        self.stack.store()


Engine = OneAfterAnother | Stacked


PROBE_BATCH = 8  # images per replica in the stacked engine's probe


def choose_engine(replicas: Sequence[Replica], *, bind: Callable[[Replica], Callable[..., torch.Tensor]],
                  step: Callable[[Replica], Callable[..., torch.Tensor]], step_name: str,
                  runner: Callable[[Replica], Runner], accelerated: bool,
                  example: Callable[[int, int], Sequence[torch.Tensor]], batch_size: int, cpu_kernels: str,
                  fixed_lr: bool, device: torch.device, say: Callable[[str], None]) -> Engine:
    """How the replicas' steps are taken (docs/TRAINING.md, 'Engines'), with a note where a faster way does not apply.
    ``bind(replica)``: the reference step, which the stacked engine runs; ``step(replica)``: one replica's step as a
    CUDA graph captures it (named ``step_name``); ``runner(replica)``: one replica's runner where no graph is
    captured (an accelerator's where ``accelerated``); ``example(k, batch)``: replica k's random inputs for probes."""
    count = len(replicas)

    def graph_problem_of(stacked: bool, bind: Callable, inputs: Sequence[torch.Tensor]) -> str | None:
        problem = ("--cpu-kernels reference" if cpu_kernels == "reference" else
                   check_graph(replicas, stacked, bind, inputs, device, fixed_lr))
        if problem is not None and device.type == "cuda":
            say(f"mnistgen: note: the step is not captured in a CUDA graph: {problem}")
        return problem

    if count > 1 and (device.type != "cpu" or not accelerated):
        reason = check_stacked(replicas, bind, [example(k, PROBE_BATCH) for k in range(2)])
        if reason is None:
            stack = Stack(replicas)
            inputs = [torch.stack(parts) for parts in zip(*(example(k, batch_size) for k in range(count)), strict=True)]
            name = f"{count} replicas, batched (vmap over the reference path)"
            if graph_problem_of(True, bind, inputs) is None:
                return Stacked(stack, Captured(stack.replica, bind, inputs, f"{name}, captured in a CUDA graph"))
            return Stacked(stack, Bound(bind(stack.replica), name))
        say(f"mnistgen: note: the {count} replicas train one after another, not stacked: {reason}")
    inputs, optimizers = example(0, batch_size), [o for r in replicas for o in r.optimizers.values()]
    if graph_problem_of(False, step, inputs) is None:  # the same models and settings for every replica
        return OneAfterAnother([Captured(r, step, inputs, f"cuda-graph ({step_name})") for r in replicas], optimizers)
    return OneAfterAnother([runner(r) for r in replicas], optimizers)
