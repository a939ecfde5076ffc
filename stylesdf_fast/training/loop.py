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
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional

import torch

from .._atomic import write_text
from . import checkpoints
from .config import TrainConfig, global_batch_warning
from .data import RealImageStream, prepare_datasets, stage_stream
from .reporting import MetricWindow, Reporter, bar_postfix, progress_bar, save_sample_grid
from .runtime import (DistInfo, StopSignal, average_gradients, barrier, broadcast_parameters, init_distributed,
                      replica_checksum)
from .stages import Phase, StageState, build_stage, draw_inputs, sphere_init_view

__all__ = ["run_training", "train_iteration", "latest_checkpoint", "CHECKPOINT_FORMAT"]

latest_checkpoint = checkpoints.latest_checkpoint
CHECKPOINT_FORMAT = checkpoints.CHECKPOINT_FORMAT
STOPPED = 130   # the exit status of a run stopped by a signal (a checkpoint was saved)


# --- one iteration ----------------------------------------------------------------------------------

def train_iteration(state: StageState, iteration: int, stream: Optional[RealImageStream]) -> Dict[str, float]:
    """Every phase due at `iteration`, then the EMA; returns the phases' metrics (and beta)."""
    state.iteration = iteration
    due = [phase for phase in state.phases if iteration % phase.interval == 0]
    reals = None
    if any(phase.needs_reals for phase in due):
        reals = stream.next().to(state.info.device, non_blocking=True)
    metrics: Dict[str, float] = {}
    for phase in due:
        metrics.update(_run_phase(state, phase, reals))
    _update_ema(state)
    if state.g.renderer.sdf:
        metrics["beta"] = float(state.g.renderer.sigmoid_beta.detach())
    if state.mean_path_length is not None:
        metrics["mean_path_length"] = float(state.mean_path_length)
    return metrics


def _run_phase(state: StageState, phase: Phase, reals: Optional[torch.Tensor]) -> Dict[str, float]:
    """Zero the gradients; for each pass over the batch, backpropagate every chunk's loss (weighted by
    its share of the batch, or 1 when the phase sums its chunks); average across ranks; step."""
    _set_trainable(state, phase.trains)
    optimizer = state.g_optim if phase.trains == "g" else state.d_optim
    optimizer.zero_grad(set_to_none=True)
    chunk = phase.chunk or state.chunk
    whole = draw_inputs(state, phase.batch, phase.mixing) if phase.draw_once else None
    totals: Dict[str, float] = {}
    for _ in range(phase.passes):
        for start in range(0, phase.batch, chunk):
            count = min(chunk, phase.batch - start)
            draw = whole.rows(start, start + count) if whole is not None else draw_inputs(state, count, phase.mixing)
            chunk_reals = reals[start:start + count] if phase.needs_reals else None
            with state.autocast():
                named = phase.loss(state, draw, chunk_reals)
            share = count / phase.batch
            (named["loss"] * (1.0 if phase.sum_chunks else share)).backward()
            for key, value in named.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach()) * share / phase.passes
        if phase.after_pass is not None:
            phase.after_pass(state)
    average_gradients(state.params[phase.trains], state.info)
    optimizer.step()
    return {f"{phase.name}/{key}": value for key, value in totals.items()}


def _set_trainable(state: StageState, who: str) -> None:
    for name, params in state.params.items():
        for p in params:
            p.requires_grad_(name == who)


@torch.no_grad()
def _update_ema(state: StageState) -> None:
    decay = state.config.ema_decay
    for ema_param, param in zip(state.g_ema.parameters(), state.g.parameters()):
        ema_param.mul_(decay).add_(param.detach(), alpha=1 - decay)


# --- one stage ----------------------------------------------------------------------------------------

def _train_stage(state: StageState, stream: Optional[RealImageStream], start: int, run_dir: Path,
                 reporter: Reporter, signals: StopSignal) -> bool:
    """Iterations start .. state.iterations - 1. Returns False if stopped by a signal (after saving)."""
    info = state.info
    tag = "sphere_init" if state.stage == 0 else f"stage{state.stage}"
    bar = progress_bar(state, start, info)
    try:
        return _iterate(state, stream, start, run_dir, reporter, signals, bar, tag)
    finally:
        bar.close()   # also when an iteration raises: no stray bar at exit


def _iterate(state: StageState, stream, start: int, run_dir: Path, reporter: Reporter, signals: StopSignal,
             bar, tag: str) -> bool:
    cfg, info = state.config, state.info
    window, window_start, window_images = MetricWindow(), time.perf_counter(), 0
    for iteration in range(start, state.iterations):
        metrics = train_iteration(state, iteration, stream)
        window.add(metrics)
        window_images += state.batch * info.world_size
        done = iteration + 1
        # the first iteration is logged too: it shows where each loss starts
        if done == 1 or done % cfg.log_every == 0 or done == state.iterations:
            speed = window_images / max(time.perf_counter() - window_start, 1e-9)
            means = window.means_and_reset()
            reporter.log(state.stage, done, means, speed)
            bar.set_postfix(bar_postfix(state.stage, means), refresh=False)
            window_start, window_images = time.perf_counter(), 0
        bar.update(1)
        if state.stage > 0 and info.is_main and (done % cfg.sample_every == 0 or done == state.iterations):
            save_sample_grid(state, run_dir / "samples" / f"{tag}_{done:07d}.png")
        if state.stage > 0 and done % cfg.checkpoint_every == 0 and done < state.iterations:
            _save_periodic(state, run_dir, f"checkpoints/{tag}_{done:07d}.pt", done, stream)
        if signals.stop_requested(info):
            bar.close()
            if state.stage > 0:
                path = _save(state, run_dir, f"checkpoints/{tag}_{done:07d}.pt", done, stream)
                if info.is_main:
                    print(f"\nstopped by signal: saved {path}; continue with --resume {run_dir}")
            return False
    return True


def _save(state: StageState, run_dir: Path, name: str, iteration: int, stream) -> Optional[Path]:
    position = stream.position if stream is not None else None
    return checkpoints.save_checkpoint(run_dir, name, state, iteration, position, state.info)


def _save_periodic(state: StageState, run_dir: Path, name: str, iteration: int, stream) -> None:
    _check_replicas(state)
    _save(state, run_dir, name, iteration, stream)
    if state.info.is_main:
        checkpoints.prune_checkpoints(run_dir, state.stage, state.config.keep_checkpoints)


def _check_replicas(state: StageState) -> None:
    sums = replica_checksum(state.g, state.info)
    if sums is not None and max(sums) != min(sums):
        raise RuntimeError(f"replicas diverged: parameter checksums per rank {sums}")


def _finish_stage(state: StageState, dataset, start: int, position, final_name: str, run_dir: Path,
                  reporter: Reporter, signals: StopSignal) -> bool:
    """Train the stage from `start` (data stream at `position`) to its end and write its final file;
    False when a signal stopped it (a checkpoint was saved)."""
    warning = global_batch_warning(state.config, state.stage, state.info.world_size)
    if warning and state.info.is_main:
        print(warning)
    stream = stage_stream(state.config, dataset, state.stage, state.info, position)
    if not _train_stage(state, stream, start, run_dir, reporter, signals):
        return False
    _check_replicas(state)
    _save(state, run_dir, final_name, state.iterations, stream)
    return True


# --- starting each stage ------------------------------------------------------------------------------

def _fresh_stage(stage: int, cfg: TrainConfig, info: DistInfo, renderer_state=None) -> StageState:
    """A stage's models with rank 0's initial weights on every rank, g_ema starting as g."""
    state = build_stage(stage, cfg, info, renderer_state)
    broadcast_parameters(state.g, info)
    broadcast_parameters(state.d, info)
    state.g_ema.load_state_dict(state.g.state_dict())
    return state


def _resumed_stage(stage: int, cfg: TrainConfig, info: DistInfo, checkpoint: Dict) -> StageState:
    state = build_stage(stage, cfg, info)
    checkpoints.restore(state, checkpoint, info)
    return state


def _stage1_start(cfg: TrainConfig, run_dir: Path, info: DistInfo, reporter, signals) -> Optional[StageState]:
    """Stage-1 models after the sphere initialisation (run, loaded from a file, or skipped); None
    when a signal stopped the initialisation."""
    state = _fresh_stage(1, cfg, info)
    if cfg.sphere_init == "skip" or not cfg.sdf:   # NeRF mode has no SDF to initialise (official)
        return state
    if cfg.sphere_init != "auto":
        checkpoints.load_sphere_init(state, Path(cfg.sphere_init), info)
        return state
    init_path = run_dir / "checkpoints" / "sphere_init.pt"
    barrier(info)   # every rank decides on the same files
    if init_path.exists():
        checkpoints.load_sphere_init(state, init_path, info)
        return state
    if not _train_stage(sphere_init_view(state), None, 0, run_dir, reporter, signals):
        return None
    state.g_ema.load_state_dict(state.g.state_dict())   # the EMA starts from the initialised generator
    _save(state, run_dir, "checkpoints/sphere_init.pt", 0, None)
    return state


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


def _run_stages(cfg, stages, datasets, run_dir, checkpoint, reporter, signals, info) -> int:
    resume_stage = checkpoint["stage"] if checkpoint is not None else None
    if 1 in stages and resume_stage != 2 and not (run_dir / "volume_renderer.pt").exists():
        if resume_stage == 1:
            state, start, position = _resumed_stage(1, cfg, info, checkpoint), checkpoint["iteration"], checkpoint["data"]
        else:
            state, start, position = _stage1_start(cfg, run_dir, info, reporter, signals), 0, None
            if state is None:
                return STOPPED
        if not _finish_stage(state, datasets[1], start, position, "volume_renderer.pt", run_dir, reporter, signals):
            return STOPPED
    if 2 not in stages:
        return 0
    if resume_stage == 2:
        state, start, position = _resumed_stage(2, cfg, info, checkpoint), checkpoint["iteration"], checkpoint["data"]
    else:
        state, start, position = _fresh_stage(2, cfg, info, _stage2_renderer(cfg, run_dir, info)), 0, None
    if not _finish_stage(state, datasets[2], start, position, "final.pt", run_dir, reporter, signals):
        return STOPPED
    return 0


def _seed_everything(cfg: TrainConfig, info: DistInfo) -> None:
    torch.manual_seed(cfg.seed + info.rank)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


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
        write_text(run_dir / "config.json", cfg.to_json() + "\n")
    _seed_everything(cfg, info)
    checkpoint = checkpoints.load_resume_point(run_dir, info) if resume else None
    if resume and info.is_main:
        checkpoints.remove_stale_temporaries(run_dir)
    reporter = Reporter(run_dir, info)
    try:
        with StopSignal() as signals:
            return _run_stages(cfg, stages, datasets, run_dir, checkpoint, reporter, signals, info)
    finally:
        reporter.close()
