"""What each stage trains: its models and optimisers, and its table of phases.

A phase is (name, which network it trains, its interval, its batch, its loss on one chunk) plus how
its chunks add up. The loop (loop.py) runs every due phase of an iteration the same way: draw the
random inputs (latents, cameras, mixing point), run the chunks (and passes), backpropagate each
chunk's weighted loss, average across ranks, step. The losses are built from losses.py.

Stage 0 (sphere initialisation) trains the stage-1 generator's SDF toward a sphere; stage 1 trains
the volume renderer against the CoordConv discriminator with the viewpoint, eikonal and minimal-
surface terms; stage 2 freezes the renderer and trains the StyleGAN2 decoder with lazy R1 and
path-length regularisation (docs/official.md sections 4.1-4.2).

How chunk losses add up (config `chunk_losses`, docs/official.md section 11.1 has the derivation):
- "mean" (our default): a step's gradient is the mean over its batch whatever the chunk size, and
  the path-length running mean is updated once per step from the whole path batch.
- "sum" (the official presets): as the official scripts, each chunk's mean loss is added, so the
  gradient is (batch / chunk) x the batch mean for the phases the official code accumulates (stage-1
  G; stage-2 D, G), while the stage-1 D step, which the official code runs on the whole batch at
  once, stays a mean; the path-length phase runs the whole path batch once per chunk of it
  (ceil(path batch / chunk) passes with the same latents and cameras), its running mean updated by
  every pass, and the passes' losses added.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from ..models import Discriminator, Generator, VolumeRenderDiscriminator
from ..models.cameras import CameraParams, generate_camera_params
from . import losses
from .config import TrainConfig
from .runtime import DistInfo

__all__ = ["Phase", "StageState", "Draw", "build_stage", "sphere_init_view", "sample_cameras", "sample_latents",
           "draw_inputs", "make_generator"]


@dataclass
class Draw:
    """The random inputs of generator calls on `count` images: latents, cameras and mixing point."""
    latents: List[torch.Tensor]          # [z] or [z1, z2], each [count, style_dim]
    cams: CameraParams                   # c2w [count, 3, 4], focal/near/far [count, 1, 1], viewpoint [count, 2]
    inject_index: Optional[int] = None   # the decoder's crossover with two latents

    @property
    def count(self) -> int:
        return self.latents[0].shape[0]

    def rows(self, start: int, stop: int) -> "Draw":
        return Draw([z[start:stop] for z in self.latents], CameraParams(*(t[start:stop] for t in self.cams)),
                    self.inject_index)


@dataclass
class Phase:
    name: str                    # reported in metrics: "init", "D", "G", "D_reg", "G_reg"
    trains: str                  # "g" or "d": whose parameters this phase updates
    interval: int                # runs when iteration % interval == 0
    needs_reals: bool            # whether a chunk of real images is passed to the loss
    batch: int                   # images per process for this phase
    loss: Callable               # (state, draw, reals or None) -> {"loss": total, name: value, ...}
    mixing: float = 0.0          # style-mixing probability of its latents
    draw_once: bool = False      # one draw for the whole batch, sliced per chunk (else a draw per chunk)
    chunk: Optional[int] = None  # images per forward pass (None: the stage's chunk)
    passes: int = 1              # forward/backward passes over the batch (same draw)
    sum_chunks: bool = False     # add the chunks' (and passes') losses instead of averaging over the batch
    after_pass: Optional[Callable] = None   # (state) -> None, after each pass over the batch


@dataclass
class StageState:
    """Everything one stage trains and the running statistics its losses keep."""
    stage: int
    config: TrainConfig
    info: DistInfo
    g: Generator
    g_ema: Generator
    d: nn.Module
    g_optim: torch.optim.Optimizer
    d_optim: torch.optim.Optimizer
    phases: List[Phase] = field(default_factory=list)
    iterations: int = 0
    batch: int = 1                           # images per process per iteration (the speed the log reports)
    real_kind: str = "image"                 # "image" (stage 2) or "thumbnail" (stage 1)
    mean_path_length: torch.Tensor = None    # stage 2's running path-length mean
    chunk: int = 1
    iteration: int = 0                       # the iteration being run (set by the loop)
    path_lengths: List[torch.Tensor] = field(default_factory=list)   # this pass's per-image path lengths

    def __post_init__(self):
        # fixed at build time: stage 2's frozen renderer must stay frozen whatever the loop toggles
        self.params = {"g": [p for p in self.g.parameters() if p.requires_grad], "d": list(self.d.parameters())}

    def autocast(self):
        enabled = self.config.bf16 and self.info.device.type == "cuda"
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16, enabled=enabled)


# --- random inputs -----------------------------------------------------------------------------------

def sample_latents(count: int, cfg: TrainConfig, device, mixing: float = 0.0) -> List[torch.Tensor]:
    """[z] or, with probability `mixing`, [z1, z2] (style mixing); each [count, style_dim]."""
    if mixing > 0 and torch.rand(()).item() < mixing:
        return list(torch.randn(2, count, cfg.style_dim, device=device).unbind(0))
    return [torch.randn(count, cfg.style_dim, device=device)]


def sample_cameras(count: int, cfg: TrainConfig, device) -> CameraParams:
    """Training cameras (the configured pose distribution) -> CameraParams with viewpoint [count, 2]."""
    return generate_camera_params(cfg.renderer_size, device, batch=count, uniform=cfg.uniform, azim_range=cfg.azim,
                                  elev_range=cfg.elev, fov_ang=cfg.fov, dist_radius=cfg.dist_radius)


def draw_inputs(state: StageState, count: int, mixing: float) -> Draw:
    """Cameras, latents and (with two latents) the decoder's crossover, all from torch's RNG, so a run
    is reproducible for its seed and a resumed run draws what an uninterrupted one would."""
    cfg, device = state.config, state.info.device
    cams = sample_cameras(count, cfg, device)
    latents = sample_latents(count, cfg, device, mixing)
    inject_index = None
    if len(latents) == 2 and state.g.decoder is not None:
        inject_index = int(torch.randint(1, state.g.decoder.n_latent, ()).item())
    return Draw(latents, cams, inject_index)


# --- models ------------------------------------------------------------------------------------------

def make_generator(cfg: TrainConfig, full_pipeline: bool) -> Generator:
    return Generator(cfg.size, full_pipeline=full_pipeline, style_dim=cfg.style_dim,
                     channel_multiplier=cfg.channel_multiplier, lr_mapping=cfg.lr_mapping,
                     renderer_spatial_output_dim=cfg.renderer_size, depth=cfg.depth, width=cfg.width,
                     n_samples=cfg.n_samples, offset_sampling=cfg.offset_sampling, z_normalize=cfg.z_normalize,
                     static_viewdirs=cfg.static_viewdirs, force_background=cfg.force_background, sdf=cfg.sdf,
                     raw_noise_std=cfg.raw_noise_std, channel_max=cfg.channel_max, impl=cfg.impl)


def _ema_copy(g: Generator) -> Generator:
    g_ema = copy.deepcopy(g).eval()
    g_ema.requires_grad_(False)
    return g_ema


def build_stage(stage: int, cfg: TrainConfig, info: DistInfo, renderer_state: Optional[Dict] = None) -> StageState:
    """Models, optimisers and phases of stage 0 (sphere init), 1 or 2. Stage 2 starts its renderer and
    renderer mapping from `renderer_state` (a stage-1 g_ema state_dict), matched by key and shape."""
    if stage in (0, 1):
        return _build_volume_stage(stage, cfg, info)
    return _build_full_stage(cfg, info, renderer_state)


def _build_volume_stage(stage: int, cfg: TrainConfig, info: DistInfo) -> StageState:
    g = make_generator(cfg, full_pipeline=False).to(info.device)
    d = VolumeRenderDiscriminator(cfg.renderer_size, viewpoint_head=cfg.view_lambda > 0,
                                  channel_max=cfg.d1_channel_max, impl=cfg.impl).to(info.device)
    g.renderer.return_sdf = cfg.sdf   # the minimal-surface loss reads the raw SDF
    state = StageState(1, cfg, info, g, _ema_copy(g), d,
                       torch.optim.Adam(g.parameters(), lr=cfg.g_lr1, betas=(0.0, 0.9)),
                       torch.optim.Adam(d.parameters(), lr=cfg.d_lr1, betas=(0.0, 0.9)),
                       iterations=cfg.iter1, batch=cfg.batch1, real_kind="thumbnail", chunk=cfg.chunk1)
    summed = cfg.chunk_losses == "sum"
    state.phases = [Phase("D", "d", 1, True, cfg.batch1, _stage1_d_loss, draw_once=True),
                    Phase("G", "g", 1, False, cfg.batch1, _stage1_g_loss, sum_chunks=summed)]
    return sphere_init_view(state) if stage == 0 else state


def sphere_init_view(state: StageState) -> StageState:
    """The sphere initialisation of a stage-1 state: the same models and G optimiser (as the official
    code), one phase pulling the SDF toward a sphere."""
    cfg = state.config
    return dataclasses.replace(state, stage=0, iterations=cfg.sphere_init_iters, chunk=cfg.sphere_init_batch,
                               batch=cfg.sphere_init_batch,
                               phases=[Phase("init", "g", 1, False, cfg.sphere_init_batch, _sphere_init_loss)])


def _build_full_stage(cfg: TrainConfig, info: DistInfo, renderer_state: Optional[Dict]) -> StageState:
    g = make_generator(cfg, full_pipeline=True).to(info.device)
    if renderer_state is not None:
        _load_matching(g, renderer_state)
    g.style.requires_grad_(False)       # the renderer and its mapping are frozen in stage 2
    g.renderer.requires_grad_(False)
    d = Discriminator(cfg.size, cfg.channel_multiplier, channel_max=cfg.channel_max, impl=cfg.impl).to(info.device)
    g_ratio = cfg.g_reg_every / (cfg.g_reg_every + 1)
    d_ratio = cfg.d_reg_every / (cfg.d_reg_every + 1)
    state = StageState(2, cfg, info, g, _ema_copy(g), d,
                       torch.optim.Adam(g.decoder.parameters(), lr=cfg.lr2 * g_ratio, betas=(0.0, 0.99 ** g_ratio)),
                       torch.optim.Adam(d.parameters(), lr=cfg.lr2 * d_ratio, betas=(0.0, 0.99 ** d_ratio)),
                       iterations=cfg.iter2, batch=cfg.batch2, real_kind="image", chunk=cfg.chunk2,
                       mean_path_length=torch.zeros((), device=info.device))
    summed = cfg.chunk_losses == "sum"
    state.phases = [Phase("D", "d", 1, True, cfg.batch2, _stage2_d_loss, cfg.mixing, draw_once=True,
                          sum_chunks=summed)]
    if not cfg.r1_with_d_step:
        state.phases.append(Phase("D_reg", "d", cfg.d_reg_every, True, cfg.batch2, _stage2_r1_loss,
                                  sum_chunks=summed))
    state.phases += [Phase("G", "g", 1, False, cfg.batch2, _stage2_g_loss, cfg.mixing, sum_chunks=summed),
                     _path_length_phase(cfg)]
    return state


def _path_length_phase(cfg: TrainConfig) -> Phase:
    path_batch = max(1, cfg.batch2 // cfg.path_batch_shrink)
    if cfg.chunk_losses == "sum":   # the official loop: the whole path batch once per chunk of it
        return Phase("G_reg", "g", cfg.g_reg_every, False, path_batch, _stage2_path_loss, cfg.mixing, draw_once=True,
                     chunk=path_batch, passes=math.ceil(path_batch / cfg.chunk2), sum_chunks=True,
                     after_pass=_update_path_mean)
    return Phase("G_reg", "g", cfg.g_reg_every, False, path_batch, _stage2_path_loss, cfg.mixing, draw_once=True,
                 after_pass=_update_path_mean)


def _load_matching(g: Generator, state: Dict[str, torch.Tensor]) -> None:
    """Copy the entries of a stage-1 state_dict whose key and shape match (the official stage-2 start)."""
    own = g.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing_renderer = [k for k in own if (k.startswith("renderer.") or k.startswith("style.")) and k not in matched]
    if missing_renderer:
        raise ValueError(f"the stage-1 renderer does not fit this stage-2 model: {len(missing_renderer)} renderer "
                         f"keys missing or of another shape (first: {missing_renderer[:3]}); check --width, "
                         f"--depth, --style-dim, --sdf")
    g.load_state_dict({**own, **matched})


# --- phase losses: (state, draw, reals) -> named losses, "loss" the total ------------------------------

def _render_thumbnails(state: StageState, draw: Draw, *, sdf: bool = False, eikonal: bool = False):
    """The stage-1 generator on the drawn latents and cameras -> (thumbnail [n, 3, R, R], sdf, eikonal)."""
    cams = draw.cams
    outputs = state.g(draw.latents[:1], cams.c2w, cams.focal, cams.near, cams.far, return_sdf=sdf,
                      return_eikonal=eikonal)
    rest = list(outputs[2:])
    sdf_out = rest.pop(0) if sdf else None
    eikonal_out = rest.pop(0) if eikonal else None
    return outputs[1], sdf_out, eikonal_out


def _sphere_init_loss(state: StageState, draw: Draw, reals) -> Dict[str, torch.Tensor]:
    cams = draw.cams
    styles = state.g.style(draw.latents[0])
    sdf, target = state.g.renderer.mlp_init_pass(cams.c2w, cams.focal, cams.near, cams.far, styles)
    loss = losses.sphere_init_loss(sdf, target)
    return {"loss": loss, "sphere_l1": loss}


def _stage1_d_loss(state: StageState, draw: Draw, reals: torch.Tensor) -> Dict[str, torch.Tensor]:
    cfg = state.config
    with torch.no_grad():
        fake = _render_thumbnails(state, draw)[0]
    fake_pred, fake_view = state.d(fake)
    reals = reals.detach().requires_grad_(True)
    real_pred, _ = state.d(reals)
    adversarial = losses.d_logistic_loss(real_pred, fake_pred)
    r1 = losses.d_r1_loss(real_pred, reals)
    total = adversarial + cfg.r1_stage1 * 0.5 * r1
    out = {"d_adv": adversarial, "r1": r1, "real_score": real_pred.mean(), "fake_score": fake_pred.mean()}
    if fake_view is not None:
        angles = draw.cams.viewpoint
        view = losses.viewpoints_loss(fake_view, angles)
        total = total + cfg.view_lambda * view
        out.update(d_view=view, d_view_error=(fake_view - angles).abs().mean())
    return {"loss": total, **out}


def _stage1_g_loss(state: StageState, draw: Draw, reals) -> Dict[str, torch.Tensor]:
    cfg = state.config
    want_sdf = cfg.sdf and cfg.min_surf_lambda > 0        # NeRF mode has neither term (as the official)
    want_eikonal = cfg.sdf and cfg.eikonal_lambda > 0
    fake, sdf, eikonal_term = _render_thumbnails(state, draw, sdf=want_sdf, eikonal=want_eikonal)
    fake_pred, fake_view = state.d(fake)
    adversarial = losses.g_nonsaturating_loss(fake_pred)
    total, out = adversarial, {"g_adv": adversarial}
    if fake_view is not None:
        view = losses.viewpoints_loss(fake_view, draw.cams.viewpoint)
        total = total + cfg.view_lambda * view
        out["g_view"] = view
    if eikonal_term is not None:
        eikonal = losses.eikonal_loss(eikonal_term)
        total = total + cfg.eikonal_lambda * eikonal
        out["eikonal"] = eikonal
    if sdf is not None:
        surface = losses.min_surface_loss(sdf, cfg.min_surf_beta)
        total = total + cfg.min_surf_lambda * surface
        out["min_surface"] = surface
    return {"loss": total, **out}


def _full_images(state: StageState, draw: Draw, *, return_latents: bool = False):
    cams = draw.cams
    return state.g(draw.latents, cams.c2w, cams.focal, cams.near, cams.far, return_latents=return_latents,
                   inject_index=draw.inject_index)


def _stage2_d_loss(state: StageState, draw: Draw, reals: torch.Tensor) -> Dict[str, torch.Tensor]:
    cfg = state.config
    with torch.no_grad():
        fake = _full_images(state, draw)[0]
    fake_pred = state.d(fake)
    with_r1 = cfg.r1_with_d_step and state.iteration % cfg.d_reg_every == 0
    if with_r1:
        reals = reals.detach().requires_grad_(True)
    real_pred = state.d(reals)
    adversarial = losses.d_logistic_loss(real_pred, fake_pred)
    out = {"d_adv": adversarial, "real_score": real_pred.mean(), "fake_score": fake_pred.mean()}
    total = adversarial
    if with_r1:   # the official D step of a regularising iteration: one step for both terms
        r1 = losses.d_r1_loss(real_pred, reals)
        total = total + cfg.r1_stage2 * 0.5 * r1 * cfg.d_reg_every
        out["r1"] = r1
    return {"loss": total, **out}


def _stage2_r1_loss(state: StageState, draw: Draw, reals: torch.Tensor) -> Dict[str, torch.Tensor]:
    cfg = state.config
    reals = reals.detach().requires_grad_(True)
    real_pred = state.d(reals)
    r1 = losses.d_r1_loss(real_pred, reals)
    # the lazy term is scaled by its interval; 0 * pred keeps every D output in the graph
    total = cfg.r1_stage2 * 0.5 * r1 * cfg.d_reg_every + 0 * real_pred[0, 0]
    return {"loss": total, "r1": r1}


def _stage2_g_loss(state: StageState, draw: Draw, reals) -> Dict[str, torch.Tensor]:
    fake = _full_images(state, draw)[0]
    adversarial = losses.g_nonsaturating_loss(state.d(fake))
    return {"loss": adversarial, "g_adv": adversarial}


def _stage2_path_loss(state: StageState, draw: Draw, reals) -> Dict[str, torch.Tensor]:
    cfg = state.config
    fake, latents = _full_images(state, draw, return_latents=True)
    penalty, chunk_mean, lengths = losses.g_path_regularize(fake, latents, state.mean_path_length)
    state.path_lengths.append(lengths.detach())
    total = cfg.path_regularize * cfg.g_reg_every * penalty + 0 * fake[0, 0, 0, 0]
    return {"loss": total, "path_penalty": penalty, "path_length": lengths.mean()}


def _update_path_mean(state: StageState) -> None:
    """The running mean a <- a + decay (mean length - a), with the mean over the whole pass (all its
    chunks), once per pass over the path batch."""
    lengths = torch.cat(state.path_lengths)
    state.path_lengths = []
    decay = losses.PATH_LENGTH_DECAY
    state.mean_path_length = (state.mean_path_length + decay * (lengths.mean() - state.mean_path_length)).detach()
