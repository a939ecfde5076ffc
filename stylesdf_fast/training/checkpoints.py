"""Training checkpoints: what they hold, writing them atomically, finding and restoring the newest.

Every checkpoint holds the official keys 'g', 'd', 'g_ema' (so `load_generator` and the official
tools read it) plus ours: 'g_optim', 'd_optim', 'stage', 'iteration' (the next one to run),
'config', 'rng' (every rank's RNG states), 'data' (the real-image stream's position) and 'stats'
(the running path-length mean).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from .._atomic import save_torch, stale_temporaries
from .runtime import DistInfo, rng_state, set_rng_state
from .stages import StageState

__all__ = ["CHECKPOINT_FORMAT", "latest_checkpoint", "save_checkpoint", "prune_checkpoints", "restore",
           "load_resume_point", "load_sphere_init", "remove_stale_temporaries"]

CHECKPOINT_FORMAT = "stylesdf_fast.train/1"
_PERIODIC_NAME = re.compile(r"stage([12])_(\d+)\.pt$")


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest periodic checkpoint (highest stage, then iteration), or None."""
    found = []
    for path in (run_dir / "checkpoints").glob("stage*_*.pt"):
        match = _PERIODIC_NAME.search(path.name)
        if match:
            found.append(((int(match.group(1)), int(match.group(2))), path))
    return max(found)[1] if found else None


def _gather_rng(info: DistInfo) -> List[Dict]:
    state = rng_state()
    if not info.distributed:
        return [state]
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, state)
    return gathered


def _contents(state: StageState, iteration: int, data_position: Optional[Dict], info: DistInfo) -> Dict:
    mean_path = state.mean_path_length
    return {
        "g": state.g.state_dict(), "d": state.d.state_dict(), "g_ema": state.g_ema.state_dict(),
        "g_optim": state.g_optim.state_dict(), "d_optim": state.d_optim.state_dict(),
        "format": CHECKPOINT_FORMAT, "stage": state.stage, "iteration": iteration,
        "config": state.config.to_dict(), "rng": _gather_rng(info), "data": data_position,
        "stats": {"mean_path_length": float(mean_path) if mean_path is not None else None},
    }


def save_checkpoint(run_dir: Path, name: str, state: StageState, iteration: int, data_position: Optional[Dict],
                    info: DistInfo) -> Optional[Path]:
    """Every rank joins (the RNG gather); rank 0 writes run_dir/name atomically and returns its path."""
    contents = _contents(state, iteration, data_position, info)
    if not info.is_main:
        return None
    return save_torch(contents, run_dir / name)


def prune_checkpoints(run_dir: Path, stage: int, keep: int) -> None:
    """Delete all but the newest `keep` periodic checkpoints of a stage (keep 0: delete none)."""
    if keep <= 0:
        return
    periodic = sorted(p for p in (run_dir / "checkpoints").glob(f"stage{stage}_*.pt") if _PERIODIC_NAME.search(p.name))
    for path in periodic[:-keep]:
        path.unlink()


def restore(state: StageState, checkpoint: Dict, info: DistInfo) -> None:
    """Models, optimisers, the path-length mean and this rank's RNG streams from a checkpoint."""
    state.g.load_state_dict(checkpoint["g"])
    state.d.load_state_dict(checkpoint["d"])
    state.g_ema.load_state_dict(checkpoint["g_ema"])
    state.g_optim.load_state_dict(checkpoint["g_optim"])
    state.d_optim.load_state_dict(checkpoint["d_optim"])
    if state.mean_path_length is not None and checkpoint["stats"].get("mean_path_length") is not None:
        state.mean_path_length = torch.full((), checkpoint["stats"]["mean_path_length"], device=info.device)
    rng = checkpoint["rng"]
    if len(rng) != info.world_size:
        raise ValueError(f"the checkpoint was written by {len(rng)} processes; resume it with as many "
                         f"(this run has {info.world_size}) to continue the same random streams")
    set_rng_state(rng[info.rank])


def load_resume_point(run_dir: Path, info: DistInfo) -> Optional[Dict]:
    """The newest periodic checkpoint of a run, checked to be ours, or None."""
    path = latest_checkpoint(run_dir)
    if path is None:
        return None
    checkpoint = torch.load(path, map_location=info.device, weights_only=False)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint of this trainer (format {checkpoint.get('format')!r})")
    if info.is_main:
        print(f"resuming from {path} (stage {checkpoint['stage']}, iteration {checkpoint['iteration']})")
    return checkpoint


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the half-written temporary files that a killed run (SIGKILL, a power cut) left in its
    run directory; called by a resumed run's rank 0 before it writes anything."""
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "samples"):
        for path in stale_temporaries(folder):
            print(f"removing {path}, left by an interrupted write")
            path.unlink(missing_ok=True)


def load_sphere_init(state: StageState, path: Path, info: DistInfo) -> None:
    """A sphere-initialised start: g, and d and g_ema when the file has them (the official
    sphere_init.pt holds all three; g_ema starts as g otherwise)."""
    init = torch.load(path, map_location=info.device, weights_only=False)
    if not isinstance(init, dict) or "g" not in init:
        raise ValueError(f"--sphere-init {path}: expected a checkpoint dict with a 'g' entry (the official "
                         f"sphere_init.pt or our checkpoints/sphere_init.pt)")
    state.g.load_state_dict(init["g"])
    state.g_ema.load_state_dict(init.get("g_ema", init["g"]))
    if "d" in init:
        state.d.load_state_dict(init["d"])
