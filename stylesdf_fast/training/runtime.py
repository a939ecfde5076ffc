"""Process-level plumbing of a training run: devices and torch.distributed (torchrun), gradient
averaging across ranks, RNG states, and the stop signal (Ctrl-C / SIGTERM).

Multi-process training follows DistributedDataParallel's contract: every rank starts from rank 0's
parameters (broadcast), computes gradients on its own shard, and the gradients are averaged across
ranks (bucketed all-reduce) before every optimizer step, so the replicas stay identical. The averaging
is done explicitly after the chunk loop rather than by wrapping the modules in
`nn.parallel.DistributedDataParallel`, because StyleSDF's steps do not fit the wrapper's
one-forward-then-backward pattern: the D step calls D twice (fakes and R1 reals), the eikonal and R1
terms differentiate through autograd.grad, gradient accumulation spans chunks, and the sphere
initialisation trains through a method other than forward.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "barrier", "average_gradients", "broadcast_parameters", "replica_checksum",
           "rng_state", "set_rng_state", "StopSignal"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(device_name: str) -> DistInfo:
    """Reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; joins the process group (NCCL on GPU, gloo on
    CPU) when WORLD_SIZE > 1. Without torchrun: one process, rank 0."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def _buckets(tensors: List[torch.Tensor], bucket_bytes: int = 25 * 2**20) -> Iterable[List[torch.Tensor]]:
    bucket, size = [], 0
    for tensor in tensors:
        bucket.append(tensor)
        size += tensor.numel() * tensor.element_size()
        if size >= bucket_bytes:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def average_gradients(parameters: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Average .grad over ranks (bucketed, flattened all-reduce); a no-op for one process.
    Parameters without a gradient on every rank contribute zeros."""
    if not info.distributed:
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    for bucket in _buckets(grads):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= info.world_size
        offset = 0
        for g in bucket:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (after rank 0 wrote a file the others read)."""
    if info.distributed:
        dist.barrier()


def broadcast_parameters(module: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's parameters and persistent buffers (the state_dict) to every rank; derived constants
    (non-persistent buffers) are equal by construction."""
    if not info.distributed:
        return
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src=0)


def replica_checksum(module: torch.nn.Module, info: DistInfo) -> Optional[List[float]]:
    """Every rank's float64 sum of |parameters| (gathered); None for one process."""
    if not info.distributed:
        return None
    total = torch.zeros((), dtype=torch.float64, device=info.device)
    for p in module.parameters():
        total += p.detach().double().abs().sum()
    gathered = [torch.zeros_like(total) for _ in range(info.world_size)]
    dist.all_gather(gathered, total)
    return [float(t) for t in gathered]


def rng_state() -> Dict[str, object]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, object]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class StopSignal:
    """SIGINT / SIGTERM set a flag that the loop checks after every iteration (then it saves a
    checkpoint and exits); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.received: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> "StopSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:   # not the main thread: signals stay as they are
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def stop_requested(self, info: DistInfo) -> bool:
        """True on every rank once any rank got a signal (so all save and stop together)."""
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=info.device)
        if info.distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)
