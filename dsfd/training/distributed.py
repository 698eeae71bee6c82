"""Distributed helpers: process-group setup (``torchrun``), data sharding, global loss normalisation.

Launch with ``torchrun --nproc_per_node=G -m dsfd train ...`` (or
``--nnodes/--node_rank/--rdzv_endpoint`` for several nodes): the trainer
reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment and
initialises NCCL on GPUs, gloo on CPU (``DSFD_DIST_BACKEND=gloo`` lets ranks share a
GPU). Only rank 0 writes checkpoints and logs.

Loss normalisation under DDP (see :func:`pal_loss`): DSFD's loss divides the
summed per-anchor losses ``S`` by the number of positives ``N`` of the
*batch*. With the global batch split over ``W`` ranks, rank ``r`` only knows
its own ``S_r`` and ``N_r``. Using ``S_r / N_r`` per rank and letting DDP
average the gradients would weight each rank's positives differently from
single-process training. Instead the positive counts (per shot) are
all-reduced and each rank backpropagates ``W * S_r / max(1, N)``, with
``N = sum_r N_r``; DDP's gradient *average* then equals the gradient of
``sum_r S_r / max(1, N)``, i.e. exactly the single-process loss of the
global batch (hard negative mining is per image, so it is unaffected).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from ..data import EpochRandomSampler

__all__ = [
    "DistInfo",
    "init_distributed",
    "dist_backend",
    "ShardedBatchSampler",
    "pal_loss",
    "all_reduce_sum",
]


@dataclass
class DistInfo:
    """Rank layout of this process (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: gloo group for small CPU control messages (stop flags) when the main
    #: backend is NCCL; ``None`` uses the default group.
    control_group: Any = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_backend(device_type: str) -> str:
    """NCCL on GPUs, gloo on CPU; ``DSFD_DIST_BACKEND`` (``nccl`` / ``gloo``) overrides.

    gloo on GPUs is slower but lets several ranks share one GPU (NCCL refuses
    two ranks on one device).
    """
    forced = os.environ.get("DSFD_DIST_BACKEND", "").strip().lower()
    if forced:
        if forced not in ("nccl", "gloo"):
            raise ValueError(f"DSFD_DIST_BACKEND must be nccl or gloo, got {forced!r}")
        if forced == "nccl" and device_type != "cuda":
            raise ValueError("DSFD_DIST_BACKEND=nccl needs CUDA devices")
        return forced
    return "nccl" if device_type == "cuda" else "gloo"


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by ``torchrun``'s environment (or the one already set up).

    Returns a single-process :class:`DistInfo` when ``WORLD_SIZE`` is unset
    or 1 and no group exists.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return DistInfo()
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        backend = dist_backend(device_type)
        if device_type == "cuda":
            gpus = torch.cuda.device_count()
            if local >= gpus and backend == "nccl":
                raise RuntimeError(
                    f"LOCAL_RANK {local} but this node has {gpus} GPU(s): NCCL needs one GPU per rank. Start at "
                    f"most {gpus} processes per node, or set DSFD_DIST_BACKEND=gloo to share GPUs between ranks"
                )
            local = local % max(gpus, 1)
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    control = None
    if dist.get_backend() != "gloo":
        control = dist.new_group(backend="gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, control_group=control)


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    """In-place sum over ranks (no-op when not distributed); returns ``t``."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True when ``flag`` is set on any rank (a CPU all-reduce on the control group)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.control_group)
    return bool(t.item())


class ShardedBatchSampler:
    """Endless per-rank batches of ``(index, epoch)`` pairs, resumable at any iteration.

    Epoch ``e`` visits the images in the order of
    :class:`dsfd.data.EpochRandomSampler` (a function of ``(seed, e)``); it
    is cut into ``num_images // global_batch`` global batches (the remainder
    of an epoch is dropped). Global batch ``i`` of the run (iteration ``i``)
    is ``order[p * B : (p + 1) * B]`` of epoch ``i // batches_per_epoch``
    with ``p = i % batches_per_epoch``, and rank ``r`` takes the contiguous
    slice ``[r * b, (r + 1) * b)`` of it (``b = B / W``). The concatenation
    of the ranks' batches in rank order is therefore exactly the batch a
    single process with batch ``B`` sees, for any ``W``; and the data
    position is a function of the iteration only, so resuming needs nothing
    but the iteration count.
    """

    def __init__(
        self,
        num_images: int,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start_iteration: int = 0,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by the world size {world_size}")
        if num_images < global_batch:
            raise ValueError(f"{num_images} training images cannot fill one batch of {global_batch}")
        self.num_images = int(num_images)
        self.global_batch = int(global_batch)
        self.local_batch = self.global_batch // world_size
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.start_iteration = int(start_iteration)
        self.batches_per_epoch = self.num_images // self.global_batch

    def position(self, iteration: int) -> Tuple[int, int]:
        """``(epoch, batch_in_epoch)`` of a global iteration."""
        return divmod(int(iteration), self.batches_per_epoch)

    def epoch_order(self, epoch: int) -> List[int]:
        s = EpochRandomSampler(self.num_images, seed=self.seed, shuffle=self.shuffle)
        s.set_epoch(epoch)
        return [i for i, _ in s]

    def batch(self, iteration: int) -> List[Tuple[int, int]]:
        """This rank's ``(index, epoch)`` list for a global iteration."""
        epoch, p = self.position(iteration)
        order = self.epoch_order(epoch)
        start = p * self.global_batch + self.rank * self.local_batch
        return [(i, epoch) for i in order[start:start + self.local_batch]]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        it = self.start_iteration
        cached_epoch, order = -1, []
        while True:
            epoch, p = self.position(it)
            if epoch != cached_epoch:
                cached_epoch, order = epoch, self.epoch_order(epoch)
            start = p * self.global_batch + self.rank * self.local_batch
            yield [(i, epoch) for i in order[start:start + self.local_batch]]
            it += 1


def pal_loss(
    criterion: Any,
    first: Optional[Sequence[Tensor]],
    second: Optional[Sequence[Tensor]],
    gt_boxes: Tensor,
    gt_counts: Tensor,
    info: Optional[DistInfo] = None,
    ignore_boxes: Optional[Tensor] = None,
    ignore_counts: Optional[Tensor] = None,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Progressive Anchor Loss normalised by the *global* positive counts.

    A thin adapter: the sum itself lives in
    :class:`dsfd.losses.ProgressiveAnchorLoss` (``world_size`` / ``all_reduce``).

    Args:
        criterion: a :class:`dsfd.losses.ProgressiveAnchorLoss`.
        first, second: ``(loc, conf, anchors)`` of each shot (``None``: skipped).
        gt_boxes, gt_counts: this rank's targets.
        info: rank layout; ``None`` or one process gives exactly
            ``criterion(first, second, gt_boxes, gt_counts)``.
        ignore_boxes, ignore_counts: this rank's ignore regions (or ``None``).

    Returns:
        ``(loss to backpropagate, parts)``. ``parts`` (detached) hold this
        rank's *contributions* to the global loss of the batch:
        ``{first,second}_loss_{l,c}`` and ``total`` summed over ranks give the
        single-process values, and ``{first,second}_num_pos`` summed give the
        global counts (see :func:`all_reduce_sum`).
    """
    world = 1 if info is None else info.world_size
    kw: Dict[str, Any] = {}
    if ignore_boxes is not None:
        kw = {"ignore_boxes": ignore_boxes, "ignore_counts": ignore_counts}
    if world <= 1:
        return criterion(first, second, gt_boxes, gt_counts, **kw)
    return criterion(first, second, gt_boxes, gt_counts, world_size=world, all_reduce=dist.all_reduce, **kw)
