"""Data-parallel training: process group set-up from torchrun's environment."""
import contextlib
import os

import torch
import torch.distributed as dist


def init_distributed(device: torch.device) -> tuple:
    """``(rank, world_size, device)``; initialises the default process group under torchrun.

    Without ``WORLD_SIZE`` in the environment (a plain run) nothing is initialised and
    ``(0, 1, device)`` is returned. Backend: NCCL for CUDA devices (each rank on GPU
    ``LOCAL_RANK``), gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and not dist.is_initialized():
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


@contextlib.contextmanager
def distributed(device: torch.device):
    """:func:`init_distributed` as a context: yields ``(rank, world_size, device)`` and destroys
    the process group on leaving if it created it.

    The ranks leave together (a barrier first, unless an exception is on its way out): a rank
    that exited while another still held its gloo connections aborted ("terminate called
    without an active exception") in CI.
    """
    owned = not (dist.is_available() and dist.is_initialized())
    rank, world, device = init_distributed(device)
    owned = owned and dist.is_initialized()
    try:
        yield rank, world, device
    except BaseException:
        if owned:
            dist.destroy_process_group()
        raise
    if owned:
        dist.barrier()
        dist.destroy_process_group()


def barrier_if_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@torch.no_grad()
def max_divergence(module: torch.nn.Module) -> float:
    """Largest absolute difference of any parameter or buffer from rank 0's copy.

    0.0 when data-parallel replicas are in sync (always 0.0 without a process group).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    tensors = list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    gap = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    return float(gap)


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them before each forward, but the last forward's update is local.
    """
    if dist.is_available() and dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def rank_max(value: float, device=None) -> float:
    """The largest ``value`` over the ranks (so that all ranks take the same decision).

    ``device``: where the collective runs (a CUDA device for NCCL).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())
