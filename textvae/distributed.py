"""Multi-process training with ``torchrun`` (DistributedDataParallel): the few collective
pieces the training loop needs, all of them no-ops in a single process.

``torchrun --nproc_per_node N -m textvae train --config ...`` starts N copies of the same
command with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set. Every rank builds the same
global batches (same seed, same data) and keeps its share of each: ``data.batch_size`` is
the global batch and each rank takes ``batch_size / world_size`` sentences of it. The loss
is a mean per sentence, so DDP's averaging of the ranks' gradients gives the gradient of the
global batch, as one process would compute it. Only rank 0 logs, validates and writes the
run folder; logged metrics are reduced over the ranks first.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Sequence, TypeVar

import torch

from textvae.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job: rank 0 of 1 when not started by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """Read the variables torchrun sets; a plain process is rank 0 of 1."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def check_batch_size(batch_size: int, info: DistInfo) -> None:
    """``data.batch_size`` is the global batch: every rank takes an equal share of it."""
    if batch_size % info.world_size:
        raise ConfigError(
            f"data.batch_size ({batch_size}) must be divisible by the number of processes ({info.world_size}): "
            f"it is the global batch and each rank takes batch_size / world_size sentences")


def init(info: DistInfo, device: torch.device) -> torch.device:
    """Join the process group (NCCL on GPUs, gloo on CPU) and return this rank's device.

    On CUDA each rank drives the GPU of its ``LOCAL_RANK``. Ranks other than 0 log warnings only.
    """
    import torch.distributed as dist

    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} CUDA devices")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size, timeout=timedelta(minutes=30))
    if not info.is_main:
        logging.getLogger("textvae").setLevel(logging.WARNING)
    return device


def cleanup(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.enabled and dist.is_initialized():
        dist.barrier()  # every rank waits for rank 0's final writes: a group torn down under a peer can abort it
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def main_first(info: DistInfo) -> Iterator[None]:
    """Rank 0 runs the block first (it fills the ``datasets`` cache), then the other ranks
    (which read that cache instead of racing to write it)."""
    if info.enabled and not info.is_main:
        barrier(info)
    yield
    if info.enabled and info.is_main:
        barrier(info)


def broadcast_object(obj: T, info: DistInfo) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects only)."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: Sequence[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few floats over the ranks (one collective call, float64)."""
    if not info.enabled:
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's share of a global batch.

    The batch is cut to a multiple of the world size (a last, short batch of a length
    bucket loses at most world_size - 1 sentences) and rank r takes items r, r + N, r + 2N...
    Batches are sorted by length, so the strided split gives every rank sentences of about
    the same lengths (equal work per step). With one process the batch is returned whole.
    """
    if not info.enabled:
        return list(items)
    n = len(items) - len(items) % info.world_size
    return list(items[info.rank : n : info.world_size])


def usable(n: int, info: DistInfo) -> int:
    """How many sentences of a global batch of ``n`` the ranks use together."""
    return n - n % info.world_size


def next_global_batch(batches: Iterator[tuple[int, int, Sequence[T]]], info: DistInfo) -> tuple[int, int, Sequence[T]]:
    """The next global batch all ranks can share, as ``(epoch, position after it, batch)``.

    The batch is cut to a multiple of the world size (see :func:`shard`); a batch smaller than
    the world size (the short end of a length bucket) is skipped. Every rank reads the same batches.
    """
    seqs: Sequence[T] = []
    while not seqs:
        epoch, position, seqs = next(batches)
        seqs = seqs[: usable(len(seqs), info)]
    return epoch, position, seqs


def rank_rows(info: DistInfo) -> slice:
    """This rank's rows of a tensor drawn for the whole (cut) global batch: the rows :func:`shard` gives it.

    Drawing random numbers for the global batch and keeping one's rows makes N ranks use the
    noise one process would.
    """
    return slice(info.rank, None, info.world_size)


def no_sync(ddp_model: torch.nn.Module, info: DistInfo, sync: bool) -> contextlib.AbstractContextManager:
    """Around a backward pass: DDP all-reduces the gradients only when ``sync`` is set (the last
    micro-batch of an optimiser step), so they are averaged over the ranks once per step."""
    return ddp_model.no_sync() if info.enabled and not sync else contextlib.nullcontext()


def reduce_log(means: dict[str, float], counts: Sequence[int], info: DistInfo,
               device: torch.device) -> tuple[dict[str, float], list[int]]:
    """Logged values over the ranks: the mean of each of ``means`` (loss terms) and the sum of each
    of ``counts`` (tokens, sentences), in one collective call. Unchanged in a single process."""
    if not info.enabled:
        return means, list(counts)
    red = all_reduce_sum([*means.values(), *counts], info, device)
    return {k: v / info.world_size for k, v in zip(means, red)}, [int(x) for x in red[len(means):]]


def wrap_ddp(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """Wrap the model in DistributedDataParallel (a no-op in a single process)."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def broadcast_tokenizer(tok: Any, info: DistInfo) -> Any:
    """Rank 0's tokenizer on every rank (sent as its tokenizer.json text; ``tok`` is None elsewhere)."""
    if not info.enabled:
        return tok
    from tokenizers import Tokenizer as HFTokenizer

    from textvae.tokenizer import Tokenizer

    payload = broadcast_object((tok.to_json(), tok.specials) if info.is_main else None, info)
    if info.is_main:
        return tok
    return Tokenizer(HFTokenizer.from_str(payload[0]), payload[1])
