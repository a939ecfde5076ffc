"""What a training run shows and writes besides checkpoints: metric windows, metrics.jsonl and
TensorBoard, the progress bar, and the preview grids.

Previews draw random numbers (the truncation mean's latents, the renderer's depth jitter): they run
under a forked RNG, so taking them, or changing how many and how big they are, never changes the
training's random streams (a resumed run with other preview settings trains the same).
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Dict

import torch
from PIL import Image

from .._atomic import atomic_path
from ..models.cameras import generate_camera_params, sweep_angles
from .runtime import DistInfo
from .stages import StageState

__all__ = ["MetricWindow", "Reporter", "progress_bar", "bar_postfix", "save_sample_grid"]

STAGE_NAMES = {0: "sphere init", 1: "stage 1 (volume renderer)", 2: "stage 2 (full pipeline)"}
_BAR_KEYS = {0: ("init/sphere_l1",), 1: ("D/d_adv", "G/g_adv", "G/eikonal", "D/d_view_error"),
             2: ("D/d_adv", "G/g_adv", "D_reg/r1", "D/r1", "G_reg/path_length")}


class MetricWindow:
    """Means of each metric over the iterations since the last report (a phase that runs every k
    iterations is averaged over the iterations it ran), so a logged value is not one noisy batch."""

    def __init__(self):
        self.sums: Dict[str, float] = {}
        self.counts: Dict[str, int] = {}

    def add(self, metrics: Dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def means_and_reset(self) -> Dict[str, float]:
        means = {key: total / self.counts[key] for key, total in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means


class Reporter:
    """Rank 0's outputs: metrics.jsonl, TensorBoard (when installed)."""

    def __init__(self, run_dir: Path, info: DistInfo):
        self.run_dir, self.info = run_dir, info
        self.tensorboard = None
        if info.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(run_dir / "tb"))
            except Exception:   # noqa: BLE001  (tensorboard not installed: JSONL only)
                self.tensorboard = None

    def log(self, stage: int, iteration: int, metrics: Dict[str, float], images_per_s: float) -> None:
        if not self.info.is_main:
            return
        record = {"stage": stage, "iter": iteration, "time": time.time(), "images_per_s": images_per_s, **metrics}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            step = iteration if stage < 2 else 10_000_000 + iteration
            for key, value in metrics.items():
                self.tensorboard.add_scalar(f"stage{stage}/{key}", value, step)
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def progress_bar(state: StageState, start: int, info: DistInfo):
    from tqdm import tqdm

    return tqdm(total=state.iterations, initial=start, desc=STAGE_NAMES[state.stage], unit="it",
                disable=not info.is_main, dynamic_ncols=True)


def bar_postfix(stage: int, means: Dict[str, float]) -> Dict[str, str]:
    shown = {key.split("/")[-1]: f"{means[key]:.3g}" for key in _BAR_KEYS[stage] if key in means}
    if "beta" in means:
        shown["beta"] = f"{means['beta']:.4f}"
    return shown


@torch.no_grad()
def save_sample_grid(state: StageState, path: Path) -> Path:
    """Rows: fixed identities (latents from a fixed seed); columns: a sweep of azimuths. Stage 1 shows
    thumbnails, stage 2 full images; g_ema with the preview truncation. Runs under a forked RNG."""
    devices = [state.info.device] if state.info.device.type == "cuda" else []
    python_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            return _write_sample_grid(state, path)
    finally:
        random.setstate(python_state)


def _write_sample_grid(state: StageState, path: Path) -> Path:
    cfg, device = state.config, state.info.device
    generator = torch.Generator().manual_seed(cfg.seed + 12345)
    identities, views = cfg.preview_identities, cfg.preview_views
    z = torch.randn(identities, cfg.style_dim, generator=generator).to(device)
    angles = sweep_angles(identities, azim_range=cfg.azim, elev_range=cfg.elev, num_views=views,
                          generator=generator).to(device)
    cams = generate_camera_params(cfg.renderer_size, device, locations=angles, fov_ang=cfg.fov,
                                  dist_radius=cfg.dist_radius)
    mean = state.g_ema.mean_latent(1000, device) if cfg.preview_truncation < 1 else None
    z = z.repeat_interleave(views, 0)
    tiles = []
    for start in range(0, z.shape[0], 8):
        end = start + 8
        image, thumb = state.g_ema([z[start:end]], cams.c2w[start:end], cams.focal[start:end], cams.near[start:end],
                                   cams.far[start:end], truncation=cfg.preview_truncation, truncation_latent=mean,
                                   randomize_noise=False)[:2]
        tiles.append(thumb if image is None else image)
    grid = torch.cat(tiles)                                                        # [I*V, 3, R, R]
    res = grid.shape[-1]
    grid = grid.reshape(identities, views, 3, res, res).permute(0, 3, 1, 4, 2).reshape(identities * res, views * res, 3)
    array = ((grid.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).cpu().numpy()
    with atomic_path(path) as temporary:
        Image.fromarray(array).save(temporary, format="PNG")
    return path
