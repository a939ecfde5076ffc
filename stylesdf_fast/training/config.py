"""Training configuration: one dataclass (a comment per field), named presets, command-line overrides.

Defaults are the official StyleSDF options (docs/official.md sections 3-4). Presets override a few fields:
`small` (the default: trains both stages on this package's synthetic dataset on a laptop CPU in
minutes), `ffhq1024` and `afhq512` (the official scripts' settings). Every field is a command-line
flag `--field value` (`--no-field` for booleans that default to true).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Sequence

from .._extension import IMPLS
from ..models.stylegan2 import stddev_group_size

__all__ = ["TrainConfig", "PRESETS", "PRESET_GLOBAL_BATCH", "preset_config", "add_config_arguments",
           "config_from_args", "RUN_CONTROL_FIELDS", "incompatible_fields", "validate_config", "global_batch_warning"]

EMA_DECAY_OFFICIAL = 0.5 ** (32 / (10 * 1000))   # 0.99778 per iteration
CHUNK_LOSSES = ("mean", "sum")


def option(default, help_text: str):
    """A config field with its --help text (kept as data, so the flags need no source files)."""
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclass
class TrainConfig:
    # --- run ---------------------------------------------------------------------------------------
    preset: str = option("small", "which preset these values started from")
    stages: str = option("1,2", "stages to run: '1', '2' or '1,2'")
    seed: int = option(0, "base seed; rank r draws from seed + r")
    deterministic: bool = option(False, "torch.use_deterministic_algorithms (fixed-seed mode)")
    device: str = option("auto", "'auto' (cuda if available), 'cpu', 'cuda', 'cuda:N'")
    bf16: bool = option(False, "bfloat16 autocast of the forward passes (GPU only)")
    log_every: int = option(10, "iterations between metric reports (window means; JSONL, TensorBoard, bar)")
    sample_every: int = option(200, "iterations between sample grids (PNG)")
    checkpoint_every: int = option(500, "iterations between checkpoints")
    keep_checkpoints: int = option(3, "newest periodic checkpoints kept per stage (0: keep all)")
    # --- data --------------------------------------------------------------------------------------
    dataset: Optional[str] = option(None, "LMDB or image folder; None: the built-in synthetic dataset")
    synthetic_images: int = option(2000, "size of the built-in dataset when dataset is None")
    workers: int = option(2, "DataLoader worker processes per rank")
    hflip: bool = option(True, "random horizontal flips of the real images")
    # --- model -------------------------------------------------------------------------------------
    size: int = option(256, "final image size (decoder output, stage 2)")
    renderer_size: int = option(64, "renderer output size (renderer_spatial_output_dim)")
    style_dim: int = option(256, "latent size of z and w_r")
    depth: int = option(8, "FiLM-SIREN layers of the SDF trunk")
    width: int = option(256, "SIREN width = renderer feature channels")
    n_samples: int = option(24, "samples per ray")
    channel_multiplier: int = option(2, "StyleGAN2 channel multiplier (decoder and stage-2 D)")
    channel_max: int = option(512, "cap on StyleGAN2 channels (512: official)")
    d1_channel_max: int = option(400, "cap on the stage-1 discriminator's channels (400: official)")
    lr_mapping: float = option(0.01, "learning-rate multiplier of the decoder mapping")
    impl: str = option("auto", "kernels: 'auto', 'kernel' or 'reference'")
    # --- renderer switches (the official training options) -----------------------------------------
    sdf: bool = option(True, "SDF renderer; --no-sdf: NeRF densities softplus(raw + noise), no eikonal, "
                             "minimal-surface or sphere init (official --no_sdf)")
    raw_noise_std: float = option(0.0, "std of the noise added to the raw density before softplus (NeRF mode "
                                       "only, as the official)")
    offset_sampling: bool = option(True, "one random offset per ray (official); --no-offset-sampling: "
                                         "stratified samples (official --no_offset_sampling)")
    z_normalize: bool = option(True, "network points = world points x 2 / (far - near) (official); "
                                     "--no-z-normalize as the official --no_z_normalize")
    static_viewdirs: bool = option(False, "view directions in the camera frame (official --static_viewdirs)")
    force_background: bool = option(False, "the last sample takes the remaining weight (official --force_background)")
    # --- cameras -----------------------------------------------------------------------------------
    azim: float = option(0.3, "azimuth std (or half-range with uniform), radians")
    elev: float = option(0.15, "elevation std (or half-range), radians")
    fov: float = option(6.0, "HALF field of view, degrees")
    dist_radius: float = option(0.12, "near/far = 1 -/+ dist_radius")
    uniform: bool = option(False, "uniform instead of Gaussian camera poses")
    # --- stage 1: volume renderer ------------------------------------------------------------------
    iter1: int = option(200001, "stage-1 iterations (the official run forces 200,001)")
    batch1: int = option(4, "stage-1 images per process per iteration")
    chunk1: int = option(4, "stage-1 images per forward pass (gradient accumulation)")
    g_lr1: float = option(2e-5, "stage-1 G learning rate, Adam betas (0, 0.9)")
    d_lr1: float = option(2e-4, "stage-1 D learning rate, Adam betas (0, 0.9)")
    r1_stage1: float = option(10.0, "R1 weight on the real thumbnails, every iteration")
    view_lambda: float = option(15.0, "viewpoint (pose) loss weight in D and G")
    eikonal_lambda: float = option(0.1, "eikonal loss weight")
    min_surf_lambda: float = option(0.05, "minimal-surface loss weight")
    min_surf_beta: float = option(100.0, "minimal-surface sharpness: exp(-beta |sdf|)")
    sphere_init: str = option("auto", "'auto' (run it), 'skip', or a checkpoint file to load")
    sphere_init_iters: int = option(10000, "sphere-initialisation iterations")
    sphere_init_batch: int = option(3, "sphere-initialisation batch")
    # --- stage 2: full pipeline --------------------------------------------------------------------
    iter2: int = option(300000, "stage-2 iterations")
    batch2: int = option(4, "stage-2 images per process per iteration")
    chunk2: int = option(4, "stage-2 images per forward pass")
    lr2: float = option(0.002, "stage-2 base learning rate (lazy-regularisation corrected)")
    r1_stage2: float = option(10.0, "R1 weight (lazy) on the full-resolution reals")
    d_reg_every: int = option(16, "lazy R1 interval")
    g_reg_every: int = option(4, "path-length regularisation interval")
    path_regularize: float = option(2.0, "path-length weight")
    path_batch_shrink: int = option(2, "path-length batch = batch2 // path_batch_shrink")
    mixing: float = option(0.9, "style-mixing probability")
    stage2_renderer: Optional[str] = option(None, "checkpoint whose g_ema renderer starts stage 2 (None: this run's stage 1)")
    # --- both stages -------------------------------------------------------------------------------
    chunk_losses: str = option("mean", "'mean': a step's gradient is the mean over its batch, whatever the chunk "
                                       "size; 'sum': the chunks' mean losses are added up, as the official scripts "
                                       "(the path-length pass then runs on the whole path batch once per chunk of it)")
    r1_with_d_step: bool = option(False, "stage 2: the lazy R1 term joins that iteration's D step (official) "
                                         "instead of a step of its own")
    ema_decay: float = option(EMA_DECAY_OFFICIAL, "per-iteration EMA decay of g_ema")
    preview_truncation: float = option(0.7, "truncation of the sample grids")
    preview_identities: int = option(8, "identities in a sample grid (rows)")
    preview_views: int = option(8, "views per identity in a sample grid (columns)")

    def stage_list(self):
        stages = [s.strip() for s in str(self.stages).split(",") if s.strip()]
        if not stages or any(s not in ("1", "2") for s in stages) or len(set(stages)) != len(stages):
            raise ValueError(f"--stages must be '1', '2' or '1,2', got {self.stages!r}")
        return sorted(int(s) for s in stages)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Fields that may change when resuming: they steer the run, not what is trained.
RUN_CONTROL_FIELDS = {"stages", "device", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints",
                      "workers", "iter1", "iter2", "preview_identities", "preview_views", "preview_truncation",
                      "impl", "dataset"}

PRESETS: Dict[str, Dict[str, Any]] = {
    # Both stages on the built-in synthetic dataset in about 6 minutes on a 2-core CPU: a 32 x 32
    # renderer (16 samples per ray, 4 + 1 SIREN layers of width 64), a 64-pixel decoder and narrow
    # discriminators. Sized for a few hundred iterations: learning rates well above the official ones
    # (with D slower than G, so the tiny D does not overpower G), R1 50 (the official README's advice
    # when the SDF does not converge) and a short EMA; the loss weights are the official ones.
    "small": dict(size=64, renderer_size=32, depth=4, width=64, n_samples=16, channel_max=64, d1_channel_max=64,
                  iter1=450, batch1=4, chunk1=4, g_lr1=3e-4, d_lr1=1e-4, r1_stage1=50.0, sphere_init_iters=200,
                  sphere_init_batch=4, iter2=120, batch2=4, chunk2=4, lr2=0.002, ema_decay=0.98,
                  log_every=10, sample_every=150, checkpoint_every=150, preview_identities=4, preview_views=6),
    # The official FFHQ scripts, per process: stage 1 batch 12 / chunk 6 on 2 GPUs (global 24), stage 2
    # batch 8 / chunk 2 at 1024 on 4 GPUs (global 32), with the official loss reduction.
    "ffhq1024": dict(size=1024, iter1=200001, batch1=12, chunk1=6, iter2=300000, batch2=8, chunk2=2,
                     chunk_losses="sum", r1_with_d_step=True,
                     log_every=100, sample_every=1000, checkpoint_every=10000, keep_checkpoints=0),
    # The official AFHQ scripts: the same process counts, azimuth 0.15, stage-2 chunk 4 and R1 50 at 512.
    "afhq512": dict(size=512, azim=0.15, iter1=200001, batch1=12, chunk1=6, iter2=300000, batch2=8, chunk2=4,
                    r1_stage2=50.0, chunk_losses="sum", r1_with_d_step=True,
                    log_every=100, sample_every=1000, checkpoint_every=10000, keep_checkpoints=0),
}


# The global batch (processes x batch per process) each stage of a preset is meant for: the official
# runs use 2 GPUs for stage 1 and 4 for stage 2, so one process count cannot serve both stages.
PRESET_GLOBAL_BATCH: Dict[str, Dict[int, int]] = {"ffhq1024": {1: 24, 2: 32}, "afhq512": {1: 24, 2: 32}}


def global_batch_warning(cfg: TrainConfig, stage: int, world_size: int) -> Optional[str]:
    """A warning when this run's global batch for `stage` differs from the one its preset is meant for."""
    intended = PRESET_GLOBAL_BATCH.get(cfg.preset, {}).get(stage)
    batch = cfg.batch1 if stage == 1 else cfg.batch2
    if intended is None or batch * world_size == intended:
        return None
    processes = intended // batch if intended % batch == 0 else None
    fix = (f"run stage {stage} with {processes} processes (torchrun --nproc_per_node {processes})"
           if processes else f"set --batch{stage} so that processes x batch = {intended}")
    return (f"warning: stage {stage} of the {cfg.preset} preset is meant for a global batch of {intended}, but this "
            f"run has {world_size} process(es) x {batch} = {batch * world_size}; to reproduce the official run, {fix}")


def preset_config(name: str, **overrides) -> TrainConfig:
    """The named preset with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; the presets are: {', '.join(sorted(PRESETS))}")
    values = {**PRESETS[name], **overrides, "preset": name}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config fields: {', '.join(unknown)}")
    return TrainConfig(**values)


def _field_type(field) -> type:
    text = str(field.type)
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if text.startswith(name) or text == f"<class '{name}'>":
            return kind
    return str


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (default None = keep the preset's value), its comment as help."""
    group = parser.add_argument_group("config fields (override the preset; defaults are the preset's)")
    for field in fields(TrainConfig):
        if field.name == "preset":
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = _field_type(field)
        text = field.metadata.get("help", "").replace("%", "%%")
        if kind is bool:
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(flag, dest=field.name, type=kind, default=None, metavar=kind.__name__.upper(),
                               help=text)


def config_from_args(args: argparse.Namespace, base: Optional[TrainConfig] = None) -> TrainConfig:
    """`base` (else the preset named by args.preset) with every flag given on the command line applied."""
    overrides = explicit_overrides(args)
    if base is None:
        return preset_config(args.preset, **overrides)
    return dataclasses.replace(base, **overrides)


def explicit_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig)
            if f.name != "preset" and getattr(args, f.name, None) is not None}


def incompatible_fields(stored: Dict[str, Any], requested: Dict[str, Any]) -> Sequence[str]:
    """Fields whose requested value differs from a run's stored config and may not change on resume."""
    return sorted(name for name, value in requested.items()
                  if name not in RUN_CONTROL_FIELDS and name in stored and stored[name] != value)


def _power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Clear errors for values that cannot train, before any work starts."""
    cfg.stage_list()
    problems = []
    positive = ("log_every", "sample_every", "checkpoint_every", "synthetic_images", "size", "renderer_size",
                "style_dim", "depth", "width", "n_samples", "channel_multiplier", "channel_max", "d1_channel_max",
                "batch1", "chunk1", "batch2", "chunk2", "sphere_init_batch", "d_reg_every", "g_reg_every",
                "path_batch_shrink", "preview_identities", "preview_views")
    problems += [f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}"
                 for name in positive if getattr(cfg, name) < 1]
    problems += [f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}"
                 for name in ("iter1", "iter2", "sphere_init_iters", "workers", "keep_checkpoints")
                 if getattr(cfg, name) < 0]
    for batch, chunk in (("batch1", "chunk1"), ("batch2", "chunk2")):
        if getattr(cfg, chunk) >= 1 and getattr(cfg, batch) % getattr(cfg, chunk):
            problems.append(f"--{batch} {getattr(cfg, batch)} is not divisible by --{chunk} {getattr(cfg, chunk)} "
                            f"(the batch is accumulated in equal chunks)")
    for name in ("size", "renderer_size"):
        if not _power_of_two(getattr(cfg, name)):
            problems.append(f"--{name.replace('_', '-')} must be a power of two, got {getattr(cfg, name)}")
    if cfg.renderer_size > cfg.size:
        problems.append(f"--renderer-size {cfg.renderer_size} must not exceed --size {cfg.size}")
    try:   # the stage-2 discriminator sees chunks of chunk2 images
        stddev_group_size(cfg.chunk2)
    except ValueError as error:
        problems.append(f"--chunk2 {cfg.chunk2}: {error}")
    if cfg.chunk_losses not in CHUNK_LOSSES:
        problems.append(f"--chunk-losses must be one of {', '.join(CHUNK_LOSSES)}, got {cfg.chunk_losses!r}")
    if cfg.raw_noise_std < 0:
        problems.append(f"--raw-noise-std must be >= 0, got {cfg.raw_noise_std}")
    if not cfg.sdf and cfg.sphere_init not in ("auto", "skip"):
        problems.append("--sphere-init FILE initialises an SDF; it does not apply with --no-sdf")
    if cfg.impl not in IMPLS:
        problems.append(f"--impl must be one of {', '.join(IMPLS)}, got {cfg.impl!r}")
    if not 0 <= cfg.mixing <= 1 or not 0 <= cfg.ema_decay < 1 or not 0 < cfg.preview_truncation <= 1:
        problems.append("--mixing must lie in [0, 1], --ema-decay in [0, 1), --preview-truncation in (0, 1]")
    for name in ("sphere_init", "stage2_renderer"):
        value = getattr(cfg, name)
        if value not in (None, "auto", "skip") and not os.path.isfile(value):
            problems.append(f"--{name.replace('_', '-')} {value}: no such file")
    if cfg.dataset is not None and not os.path.exists(cfg.dataset):
        problems.append(f"--dataset {cfg.dataset}: no such file or directory")
    if problems:
        raise ValueError("invalid training config:\n  " + "\n  ".join(problems))
    return cfg
