"""Real images for training: each stage's dataset (the built-in synthetic one, an LMDB, or an image
folder converted once into the cache), and a resumable, rank-sharded stream of batches from it.

Order: epoch e shuffles all indices with a generator seeded by (seed, e), drops the tail that does
not fill a whole batch on every rank, and gives rank r every world_size-th batch-sized slice. Flips
are a hash of (seed, epoch, index), so they do not depend on worker processes or on global RNG state.
The stream's position (epoch, batches taken) goes into checkpoints, and a resumed stream continues
with exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from ..data import MultiResolutionDataset, ensure_synthetic_dataset, resolve_dataset
from ..data.synthetic import SyntheticConfig
from .config import TrainConfig
from .runtime import DistInfo

__all__ = ["RealImageStream", "stage_resolution", "prepare_datasets", "training_dataset_path", "stage_stream"]

STAGE1_DATA_MAX = 256      # stage 1 thumbnails come from records of min(size, 256) px (official --size 256)


def stage_resolution(cfg: TrainConfig, stage: int) -> int:
    return cfg.size if stage == 2 else min(cfg.size, STAGE1_DATA_MAX)


def prepare_datasets(cfg: TrainConfig, info: DistInfo, stages: List[int]) -> Dict[int, MultiResolutionDataset]:
    """The dataset of every stage, checked before any training (the built-in synthetic one when
    cfg.dataset is None; an image folder converted once into the cache). Rank 0 builds, then all read."""
    sizes = sorted({stage_resolution(cfg, s) for s in stages})
    if info.is_main:
        path = _dataset_path(cfg, sizes)
    if info.distributed:
        dist.barrier()
    if not info.is_main:
        path = _dataset_path(cfg, sizes, progress=False)
    return {s: MultiResolutionDataset(path, resolution=stage_resolution(cfg, s), nerf_resolution=cfg.renderer_size)
            for s in stages}


def training_dataset_path(cfg: TrainConfig, progress: bool = True) -> Path:
    """The LMDB a run with this config trains on (built or converted into the cache if needed)."""
    return _dataset_path(cfg, sorted({stage_resolution(cfg, s) for s in (1, 2)}), progress=progress)


def _dataset_path(cfg: TrainConfig, sizes, progress: bool = True) -> Path:
    if cfg.dataset is None:
        largest = max(128, max(sizes))
        synthetic = SyntheticConfig(num_images=cfg.synthetic_images, sizes=tuple(sorted({64, 128, largest, *sizes})))
        return ensure_synthetic_dataset(config=synthetic, progress=progress)
    return resolve_dataset(cfg.dataset, sizes=tuple(sorted({64, *sizes})), progress=progress)


def stage_stream(cfg: TrainConfig, dataset: MultiResolutionDataset, stage: int, info: DistInfo,
                 position: Optional[Dict[str, int]] = None) -> "RealImageStream":
    """The real-image stream of a stage: thumbnails for stage 1, full images for stage 2."""
    batch = cfg.batch2 if stage == 2 else cfg.batch1
    return RealImageStream(dataset, batch, rank=info.rank, world_size=info.world_size, seed=cfg.seed + 1000 * stage,
                           workers=cfg.workers, hflip=cfg.hflip, want="image" if stage == 2 else "thumbnail",
                           position=position)


class _FlipByHash(Dataset):
    """Items are (epoch, index) pairs; the flip of (epoch, index) is fixed by the seed."""

    def __init__(self, dataset: MultiResolutionDataset, seed: int, hflip: bool, want: str):
        self.dataset, self.seed, self.hflip, self.want = dataset, seed, hflip, want

    def __len__(self) -> int:
        return len(self.dataset)

    def _flip(self, epoch: int, index: int) -> bool:
        if not self.hflip:
            return False
        mixed = (self.seed * 1_000_003 + epoch * 9_176_467 + index * 2_654_435_761) & 0xFFFFFFFF
        mixed = ((mixed ^ (mixed >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
        return bool((mixed ^ (mixed >> 16)) & 1)

    def __getitem__(self, key: Tuple[int, int]) -> torch.Tensor:
        epoch, index = key
        image, thumbnail = self.dataset.item(index, self._flip(epoch, index))
        return image if self.want == "image" else thumbnail


class RealImageStream:
    """Endless batches [batch, 3, R, R] in [-1, 1] of images ("image") or thumbnails ("thumbnail")."""

    def __init__(self, dataset: MultiResolutionDataset, batch: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, workers: int = 0, hflip: bool = True, want: str = "image",
                 position: Dict[str, int] = None):
        if len(dataset) < batch * world_size:
            raise ValueError(f"the dataset holds {len(dataset)} images, fewer than one batch on every rank "
                             f"({batch} x {world_size} processes)")
        self.items = _FlipByHash(dataset, seed, hflip, want)
        self.batch, self.rank, self.world_size, self.seed, self.workers = batch, rank, world_size, seed, workers
        position = position or {"epoch": 0, "taken": 0}
        self.epoch, self.taken = int(position["epoch"]), int(position["taken"])
        self._iterator = None

    @property
    def position(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "taken": self.taken}

    def _epoch_batches(self) -> List[List[Tuple[int, int]]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.items), generator=generator).tolist()
        step = self.batch * self.world_size
        batches = []
        for start in range(0, len(order) - step + 1, step):
            mine = order[start + self.rank * self.batch:start + (self.rank + 1) * self.batch]
            batches.append([(self.epoch, index) for index in mine])
        return batches

    def _open_epoch(self) -> Iterator[torch.Tensor]:
        batches = self._epoch_batches()[self.taken:]
        # its own generator: creating a loader iterator draws a worker seed, which must not come from
        # (and shift) the global RNG that the training steps use
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + 1)
        loader = DataLoader(self.items, batch_sampler=batches, num_workers=self.workers,
                            persistent_workers=False, pin_memory=False, generator=generator)
        return iter(loader)

    def next(self) -> torch.Tensor:
        while True:
            if self._iterator is None:
                self._iterator = self._open_epoch()
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                self.epoch += 1
                self.taken = 0
                continue
            self.taken += 1
            return batch
