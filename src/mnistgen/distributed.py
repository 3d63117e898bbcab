"""Training under torchrun: ``torchrun --nproc-per-node N -m mnistgen vae train ...`` (or ``gan train``).
:func:`torchrun_job` joins the job's process group from torchrun's environment and leaves it at the end; without
that environment every function here does what one process does. How the ranks share the work: docs/SCALING.md."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import MnistgenError, NonFiniteLossError

T = TypeVar("T")

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
EXIT_USER_ERROR = 1  # as mnistgen.cli
EXIT_INTERRUPTED = 130


def is_main_process() -> bool:
    return rank_and_size()[0] == 0


def rank_and_size() -> tuple[int, int]:
    """(this process's rank, the number of processes) of the initialised process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def torchrun_job() -> Iterator[None]:
    """Inside the block, this process belongs to its torchrun job's process group. On ranks other than 0, an error
    that every rank raised (a NaN too) and a Ctrl-C exit with no message; another names the rank: ``rank 3: ...``."""
    launched = all(name in os.environ for name in TORCHRUN_VARIABLES)  # by torchrun, or a launcher setting them
    if not launched or int(os.environ["WORLD_SIZE"]) <= 1 or (dist.is_available() and dist.is_initialized()):
        yield
        return
    rank = int(os.environ["RANK"])
    try:
        _join_process_group()
        try:
            yield
            dist.barrier()  # a job that ends well: no rank tears the group down while another still uses it
        finally:
            dist.destroy_process_group()
    except KeyboardInterrupt:
        if rank != 0:
            raise SystemExit(EXIT_INTERRUPTED) from None
        raise
    except MnistgenError as exc:
        if rank == 0:
            raise
        if getattr(exc, "said_by_rank_0", False) or isinstance(exc, NonFiniteLossError):  # every rank raised it
            raise SystemExit(EXIT_USER_ERROR) from None
        exc.args = (f"rank {rank}: {exc}",)
        raise
    except RuntimeError as exc:
        peer_ended = isinstance(exc, dist.DistError) or any(  # a collective failed, not a bug of this process
            words in str(exc) for words in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))
        if not peer_ended:
            raise
        first = " ".join(str(exc).split())[:200]
        raise MnistgenError(f"rank {rank}: stopped, as another process of this torchrun job ended ({first})") from None


def _join_process_group() -> None:
    if not dist.is_available():
        raise MnistgenError("torchrun: this build of PyTorch has no torch.distributed")
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "gloo"
    if torch.cuda.is_available():
        backend = "cpu:gloo,cuda:nccl"  # CPU tensors (the small agreements) through gloo, CUDA ones through NCCL
        if local_rank < torch.cuda.device_count():
            torch.cuda.set_device(local_rank)  # "cuda" is cuda:LOCAL_RANK from here on
    try:
        dist.init_process_group(backend)  # the env:// rendezvous of torchrun's variables
    except (RuntimeError, ValueError) as exc:
        first = " ".join(str(exc).split())[:300]
        raise MnistgenError(f"torchrun: could not join the job's process group ({first})") from None


def check_device(device: torch.device) -> None:
    """Under torchrun on CUDA, each process of a machine needs its own GPU (``cuda:LOCAL_RANK``); MPS has one."""
    if rank_and_size()[1] == 1:
        return
    if device.type == "mps":
        raise MnistgenError("torchrun: training on MPS with more than one process is not supported; "
                            "use --device cpu")
    if device.type == "cuda" and int(os.environ.get("LOCAL_RANK", 0)) >= (gpus := torch.cuda.device_count()):
        raise MnistgenError(f"torchrun started more processes on this machine than it has GPUs ({gpus}): give "
                            f"--nproc-per-node {gpus} at most, or --device cpu")


def _agreed(exc: MnistgenError) -> MnistgenError:
    exc.said_by_rank_0 = True
    return exc


@contextlib.contextmanager
def ranks_agree() -> Iterator[None]:
    """Run the block on every rank (each must enter it); a :class:`MnistgenError` raised in it on any rank is then
    raised on every rank: the lowest failing rank's, named ``rank R: ...`` on the others unless R is 0."""
    rank, world_size = rank_and_size()
    if world_size == 1:
        yield
        return
    error: MnistgenError | None = None
    try:
        yield
    except MnistgenError as exc:
        error = exc
    messages: list[str | None] = [None] * world_size
    dist.all_gather_object(messages, None if error is None else str(error))
    failed = next((r for r, message in enumerate(messages) if message is not None), None)
    if failed is None:
        return
    if failed == rank and error is not None:
        raise _agreed(error)
    raise _agreed(MnistgenError(messages[failed] if failed == 0 else f"rank {failed}: {messages[failed]}"))


def from_main_rank(work: Callable[[], T]) -> T:
    """``work()`` on rank 0 only; every rank gets its result, or its :class:`MnistgenError` (also a barrier)."""
    rank, world_size = rank_and_size()
    if world_size == 1:
        return work()
    payload: list[Any] = [None]
    error: MnistgenError | None = None
    if rank == 0:
        try:
            payload = [(None, work())]
        except MnistgenError as exc:
            error, payload = exc, [(str(exc), None)]
    dist.broadcast_object_list(payload, src=0)
    message, result = payload[0]
    if message is not None:
        raise _agreed(error if error is not None else MnistgenError(message))
    return result


def main_rank_first(work: Callable[[], T]) -> T:
    """``work()`` on every rank: first on each machine's local rank 0 (a download happens once), then on the others,
    their stderr silenced (rank 0 shows the notes). Errors as :func:`ranks_agree`."""
    rank, world_size = rank_and_size()
    if world_size == 1:
        return work()
    first = int(os.environ.get("LOCAL_RANK", rank)) == 0
    result: Any = None
    for turn in (True, False):
        with ranks_agree():
            if first == turn:
                if rank == 0:
                    result = work()
                else:
                    with open(os.devnull, "w") as nowhere, contextlib.redirect_stderr(nowhere):
                        result = work()
    return result


def check_global_batch(batch_size: int, num_items: int | None = None, drop_last: bool = True) -> None:
    """The global ``--batch-size`` (and an epoch's last batch, unless dropped) must split evenly over the ranks."""
    world_size = rank_and_size()[1]
    if world_size == 1:
        return
    if batch_size % world_size:
        raise MnistgenError(f"--batch-size {batch_size} is the global batch, shared equally by the {world_size} "
                            f"processes of this torchrun job: give a multiple of {world_size}")
    last = 0 if num_items is None or drop_last else num_items % batch_size
    if last % world_size:
        raise MnistgenError(f"the last batch of each epoch holds {last} images ({num_items} training images, "
                            f"--batch-size {batch_size}), which the {world_size} processes of this torchrun job "
                            f"cannot share equally: choose a --batch-size that leaves a multiple of {world_size}")


def rank_share(batch_length: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [start, end) of a global batch of ``batch_length`` rows that are rank ``rank``'s."""
    share = batch_length // world_size
    return rank * share, (rank + 1) * share


def average_over_ranks(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor by its mean over the ranks of a torchrun job; nothing to do in one process."""
    for tensor in tensors:
        sum_over_ranks(tensor, mean=True)


def average_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Average the gradients of ``optimizer``'s parameters over the ranks (each rank's loss is over its share)."""
    average_over_ranks([p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None])


def gathered_over_ranks(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along ``dim`` in rank order (the global batch, where each rank holds its
    share), this rank's part being ``tensor`` itself: gradients flow into it, the other ranks' parts are constants.
    ``tensor`` itself in one process."""
    rank, world_size = rank_and_size()
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[rank] = tensor
    return torch.cat(parts, dim=dim)


def sum_over_ranks(tensor: torch.Tensor, mean: bool = False) -> torch.Tensor:
    """``tensor`` (contiguous) replaced in place by its sum (or mean) over the ranks; unchanged in one process."""
    world_size = rank_and_size()[1]
    if world_size > 1 and tensor.numel():
        dist.all_reduce(tensor)
        if mean:
            tensor.div_(world_size)
    return tensor


def stop_on_every_rank(stop: Callable[[], bool]) -> Callable[[], bool]:
    """``stop`` as the loops poll it before each step, True on every rank as soon as it is on one."""
    if rank_and_size()[1] == 1:
        return stop
    flag = torch.zeros(1, dtype=torch.int32)

    def stop_anywhere() -> bool:
        flag.fill_(1 if stop() else 0)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    return stop_anywhere
