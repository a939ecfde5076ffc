"""The training loop: one function runs every stage from its table of phases (stages.py).

    run_training(config, run_dir)           # a new run
    run_training(config, run_dir, resume=True)

Run directory:
    config.json                      the resolved config
    metrics.jsonl                    one JSON line per report (losses, beta, speed); TensorBoard in tb/
    samples/stage{S}_{iter}.png      sample grids (fixed latents, a sweep of views)
    checkpoints/sphere_init.pt, stage1_{iter}.pt, stage2_{iter}.pt   periodic and interrupt checkpoints
    volume_renderer.pt               end of stage 1 ({'g', 'd', 'g_ema'}, the official renderer file)
    final.pt                         end of stage 2 ({'g', 'd', 'g_ema'}, the official full-model file)

Every checkpoint holds the official keys 'g', 'd', 'g_ema' (so `load_generator` and the official
tools read it) plus ours: 'g_optim', 'd_optim', 'stage', 'iteration' (the next one to run),
'config', 'rng' (every rank's RNG states), 'data' (the real-image stream's position) and 'stats'
(the running path-length mean). Checkpoints are written atomically.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from PIL import Image

from ..data import MultiResolutionDataset, ensure_synthetic_dataset, resolve_dataset
from ..data.synthetic import SyntheticConfig
from ..models.cameras import generate_camera_params, sweep_angles
from .config import TrainConfig
from .data import RealImageStream
from .runtime import (DistInfo, StopSignal, average_gradients, barrier, broadcast_parameters, init_distributed,
                      replica_checksum, rng_state, save_atomic, set_rng_state)
from .stages import StageState, build_stage, sphere_init_view

__all__ = ["run_training", "latest_checkpoint", "CHECKPOINT_FORMAT", "prepare_datasets"]

CHECKPOINT_FORMAT = "stylesdf_fast.train/1"
STAGE1_DATA_MAX = 256      # stage 1 thumbnails come from records of min(size, 256) px (official --size 256)
_CKPT_NAME = re.compile(r"stage([12])_(\d+)\.pt$")


# --- data -------------------------------------------------------------------------------------------

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


# --- checkpoints ------------------------------------------------------------------------------------

def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest periodic checkpoint (highest stage, then iteration), or None."""
    found = []
    for path in (run_dir / "checkpoints").glob("stage*_*.pt"):
        match = _CKPT_NAME.search(path.name)
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


def _checkpoint(state: StageState, iteration: int, stream: Optional[RealImageStream], info: DistInfo) -> Dict:
    return {
        "g": state.g.state_dict(), "d": state.d.state_dict(), "g_ema": state.g_ema.state_dict(),
        "g_optim": state.g_optim.state_dict(), "d_optim": state.d_optim.state_dict(),
        "format": CHECKPOINT_FORMAT, "stage": state.stage, "iteration": iteration,
        "config": state.config.to_dict(), "rng": _gather_rng(info),
        "data": stream.position if stream is not None else None,
        "stats": {"mean_path_length": float(state.mean_path_length) if state.mean_path_length is not None else None},
    }


def _save(run_dir: Path, name: str, state: StageState, iteration: int, stream, info: DistInfo) -> Optional[Path]:
    checkpoint = _checkpoint(state, iteration, stream, info)   # every rank joins the RNG gather
    if not info.is_main:
        return None
    return save_atomic(checkpoint, run_dir / name)


def _prune(run_dir: Path, stage: int, keep: int) -> None:
    if keep <= 0:
        return
    periodic = sorted(p for p in (run_dir / "checkpoints").glob(f"stage{stage}_*.pt") if _CKPT_NAME.search(p.name))
    for path in periodic[:-keep]:
        path.unlink()


def _restore(state: StageState, checkpoint: Dict, info: DistInfo) -> None:
    state.g.load_state_dict(checkpoint["g"])
    state.d.load_state_dict(checkpoint["d"])
    state.g_ema.load_state_dict(checkpoint["g_ema"])
    state.g_optim.load_state_dict(checkpoint["g_optim"])
    state.d_optim.load_state_dict(checkpoint["d_optim"])
    if state.mean_path_length is not None and checkpoint["stats"].get("mean_path_length") is not None:
        state.mean_path_length.fill_(checkpoint["stats"]["mean_path_length"])
    rng = checkpoint["rng"]
    if len(rng) != info.world_size:
        raise ValueError(f"the checkpoint was written by {len(rng)} processes; resume it with as many "
                         f"(this run has {info.world_size}) to continue the same random streams")
    set_rng_state(rng[info.rank])


# --- one iteration ----------------------------------------------------------------------------------

def _set_trainable(state: StageState, who: str) -> None:
    for name, params in state.params.items():
        for p in params:
            p.requires_grad_(name == who)


def _run_phase(state: StageState, phase, reals: Optional[torch.Tensor]) -> Dict[str, float]:
    """Zero grads, accumulate the loss over chunks (weighted by their share), average across ranks, step."""
    _set_trainable(state, phase.trains)
    optimizer = state.g_optim if phase.trains == "g" else state.d_optim
    optimizer.zero_grad(set_to_none=True)
    totals: Dict[str, float] = {}
    for start in range(0, phase.batch, state.chunk):
        count = min(state.chunk, phase.batch - start)
        chunk_reals = reals[start:start + count] if phase.needs_reals else None
        with state.autocast():
            named = phase.loss(state, count, chunk_reals)
        (named["loss"] * (count / phase.batch)).backward()
        for key, value in named.items():
            totals[key] = totals.get(key, 0.0) + float(value.detach()) * count / phase.batch
    average_gradients(state.params[phase.trains], state.info)
    optimizer.step()
    if state.pending_path_mean is not None:
        state.mean_path_length = state.pending_path_mean
        state.pending_path_mean = None
    return {f"{phase.name}/{key}": value for key, value in totals.items()}


@torch.no_grad()
def _update_ema(state: StageState) -> None:
    decay = state.config.ema_decay
    for ema_param, param in zip(state.g_ema.parameters(), state.g.parameters()):
        ema_param.mul_(decay).add_(param.detach(), alpha=1 - decay)


def _iteration(state: StageState, iteration: int, stream: Optional[RealImageStream]) -> Dict[str, float]:
    due = [phase for phase in state.phases if iteration % phase.interval == 0]
    reals = None
    if any(phase.needs_reals for phase in due):
        reals = stream.next().to(state.info.device, non_blocking=True)
    metrics: Dict[str, float] = {}
    for phase in due:
        metrics.update(_run_phase(state, phase, reals))
    _update_ema(state)
    metrics["beta"] = float(state.g.renderer.sigmoid_beta.detach())
    return metrics


# --- reporting --------------------------------------------------------------------------------------

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
    """Rank 0's outputs: metrics.jsonl, TensorBoard (when installed), the progress bar, sample grids."""

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


@torch.no_grad()
def save_sample_grid(state: StageState, path: Path) -> Path:
    """Rows: fixed identities (latents from a fixed seed); columns: a sweep of azimuths. Stage 1 shows
    thumbnails, stage 2 full images; g_ema with the preview truncation."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


# --- stages ---------------------------------------------------------------------------------------------

def _progress(state: StageState, start: int, info: DistInfo):
    from tqdm import tqdm

    names = {0: "sphere init", 1: "stage 1 (volume renderer)", 2: "stage 2 (full pipeline)"}
    return tqdm(total=state.iterations, initial=start, desc=names[state.stage], unit="it", disable=not info.is_main,
                dynamic_ncols=True)


_BAR_KEYS = {0: ("init/sphere_l1",), 1: ("D/d_adv", "G/g_adv", "G/eikonal", "D/d_view_error"),
             2: ("D/d_adv", "G/g_adv", "D_reg/r1", "G_reg/path_length")}


def _train_stage(state: StageState, stream: Optional[RealImageStream], start: int, run_dir: Path,
                 reporter: Reporter, signals: StopSignal, info: DistInfo) -> bool:
    """Iterations start .. state.iterations - 1. Returns False if stopped by a signal (after saving)."""
    cfg = state.config
    tag = "sphere_init" if state.stage == 0 else f"stage{state.stage}"
    bar = _progress(state, start, info)
    window, window_start, window_images = MetricWindow(), time.perf_counter(), 0
    for iteration in range(start, state.iterations):
        metrics = _iteration(state, iteration, stream)
        window.add(metrics)
        window_images += state.phases[-1].batch * info.world_size
        done = iteration + 1
        # the first iteration is logged too: it shows where each loss starts (the eikonal term right
        # after the sphere initialisation, say)
        if done == 1 or done % cfg.log_every == 0 or done == state.iterations:
            speed = window_images / max(time.perf_counter() - window_start, 1e-9)
            means = window.means_and_reset() | {"beta": metrics["beta"]}
            reporter.log(state.stage, done, means, speed)
            bar.set_postfix({key.split("/")[-1]: f"{means[key]:.3g}" for key in _BAR_KEYS[state.stage]
                             if key in means} | {"beta": f"{means['beta']:.4f}"}, refresh=False)
            window_start, window_images = time.perf_counter(), 0
        bar.update(1)
        if state.stage > 0 and info.is_main and (done % cfg.sample_every == 0 or done == state.iterations):
            save_sample_grid(state, run_dir / "samples" / f"{tag}_{done:07d}.png")
        if state.stage > 0 and done % cfg.checkpoint_every == 0 and done < state.iterations:
            _check_replicas(state, info)
            _save(run_dir, f"checkpoints/{tag}_{done:07d}.pt", state, done, stream, info)
            if info.is_main:
                _prune(run_dir, state.stage, cfg.keep_checkpoints)
        if signals.stop_requested(info):
            bar.close()
            if state.stage > 0:
                path = _save(run_dir, f"checkpoints/{tag}_{done:07d}.pt", state, done, stream, info)
                if info.is_main:
                    print(f"\nstopped by signal: saved {path}; continue with --resume {run_dir}")
            return False
    bar.close()
    return True


def _check_replicas(state: StageState, info: DistInfo) -> None:
    sums = replica_checksum(state.g, info)
    if sums is not None and max(sums) != min(sums):
        raise RuntimeError(f"replicas diverged: parameter checksums per rank {sums}")


def _seed_everything(cfg: TrainConfig, info: DistInfo) -> None:
    torch.manual_seed(cfg.seed + info.rank)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def _stage1_start(cfg: TrainConfig, run_dir: Path, info: DistInfo, reporter, signals) -> Optional[StageState]:
    """Stage-1 models after the sphere initialisation (run, loaded from a file, or skipped)."""
    state = build_stage(1, cfg, info)
    broadcast_parameters(state.g, info)
    broadcast_parameters(state.d, info)
    if cfg.sphere_init == "skip":
        pass
    elif cfg.sphere_init != "auto":
        init = torch.load(cfg.sphere_init, map_location=info.device, weights_only=False)
        state.g.load_state_dict(init["g"])
    else:
        init_path = run_dir / "checkpoints" / "sphere_init.pt"
        barrier(info)   # every rank decides on the same files
        if init_path.exists():
            state.g.load_state_dict(torch.load(init_path, map_location=info.device, weights_only=False)["g"])
        else:
            if not _train_stage(sphere_init_view(state), None, 0, run_dir, reporter, signals, info):
                return None
            state.g_ema.load_state_dict(state.g.state_dict())
            _save(run_dir, "checkpoints/sphere_init.pt", state, 0, None, info)
    state.g_ema.load_state_dict(state.g.state_dict())   # the EMA starts from the initialised generator
    return state


def run_training(cfg: TrainConfig, run_dir: Path, *, resume: bool = False) -> int:
    """Runs the configured stages in run_dir (continuing from its newest checkpoint when resume).
    Returns 0 when finished, 130 when stopped by a signal (a checkpoint was saved)."""
    info = init_distributed(cfg.device)
    stages = cfg.stage_list()
    if cfg.bf16 and info.device.type != "cuda":
        raise ValueError("--bf16 autocast is for GPUs; this run is on the CPU")
    datasets = prepare_datasets(cfg, info, stages)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(cfg.to_json() + "\n")
    _seed_everything(cfg, info)
    checkpoint = _resume_point(run_dir, info) if resume else None
    reporter = Reporter(run_dir, info)
    try:
        with StopSignal() as signals:
            return _run_stages(cfg, stages, datasets, run_dir, checkpoint, reporter, signals, info)
    finally:
        reporter.close()


def _resume_point(run_dir: Path, info: DistInfo) -> Optional[Dict]:
    path = latest_checkpoint(run_dir)
    if path is None:
        return None
    checkpoint = torch.load(path, map_location=info.device, weights_only=False)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint of this trainer (format {checkpoint.get('format')!r})")
    if info.is_main:
        print(f"resuming from {path} (stage {checkpoint['stage']}, iteration {checkpoint['iteration']})")
    return checkpoint


def _stream(cfg: TrainConfig, dataset, stage: int, info: DistInfo, position=None) -> RealImageStream:
    batch = cfg.batch2 if stage == 2 else cfg.batch1
    return RealImageStream(dataset, batch, rank=info.rank, world_size=info.world_size, seed=cfg.seed + 1000 * stage,
                           workers=cfg.workers, hflip=cfg.hflip, want="image" if stage == 2 else "thumbnail",
                           position=position)


def _run_stages(cfg, stages, datasets, run_dir, checkpoint, reporter, signals, info) -> int:
    resume_stage = checkpoint["stage"] if checkpoint is not None else None
    if 1 in stages and resume_stage != 2 and not (run_dir / "volume_renderer.pt").exists():
        if resume_stage == 1:
            state = build_stage(1, cfg, info)
            _restore(state, checkpoint, info)
            start, position = checkpoint["iteration"], checkpoint["data"]
        else:
            state = _stage1_start(cfg, run_dir, info, reporter, signals)
            if state is None:
                return 130
            start, position = 0, None
        if not _finish_stage(state, datasets[1], start, position, "volume_renderer.pt", run_dir, reporter, signals):
            return 130
    if 2 not in stages:
        return 0
    if resume_stage == 2:
        state = build_stage(2, cfg, info)
        _restore(state, checkpoint, info)
        start, position = checkpoint["iteration"], checkpoint["data"]
    else:
        state = build_stage(2, cfg, info, _stage2_renderer(cfg, run_dir, info))
        broadcast_parameters(state.g, info)
        broadcast_parameters(state.d, info)
        state.g_ema.load_state_dict(state.g.state_dict())
        start, position = 0, None
    if not _finish_stage(state, datasets[2], start, position, "final.pt", run_dir, reporter, signals):
        return 130
    return 0


def _finish_stage(state: StageState, dataset, start: int, position, final_name: str, run_dir: Path,
                  reporter: Reporter, signals: StopSignal) -> bool:
    """Train the stage from `start` (data stream at `position`) to its end and write its final file;
    False when a signal stopped it (a checkpoint was saved)."""
    stream = _stream(state.config, dataset, state.stage, state.info, position)
    if not _train_stage(state, stream, start, run_dir, reporter, signals, state.info):
        return False
    _check_replicas(state, state.info)
    _save(run_dir, final_name, state, state.iterations, stream, state.info)
    return True


def _stage2_renderer(cfg: TrainConfig, run_dir: Path, info: DistInfo) -> Dict[str, torch.Tensor]:
    """The stage-1 g_ema that stage 2 starts from: cfg.stage2_renderer, else this run's volume_renderer.pt."""
    path = Path(cfg.stage2_renderer) if cfg.stage2_renderer else run_dir / "volume_renderer.pt"
    barrier(info)   # rank 0 may have just written it
    if not path.is_file():
        raise ValueError(f"stage 2 needs a trained volume renderer: {path} does not exist (run stage 1 first, "
                         f"or pass --stage2-renderer FILE)")
    checkpoint = torch.load(path, map_location=info.device, weights_only=False)
    if not isinstance(checkpoint, dict) or "g_ema" not in checkpoint:
        raise ValueError(f"{path} holds no 'g_ema' generator state")
    return checkpoint["g_ema"]
