"""One training iteration of each stage with the official presets' recipe against a transcription of
the official update rules (train_volume_renderer.py / train_full_pipeline.py): equal weights, data,
latents, cameras and noise must give the same gradients at every optimiser step and the same g, d
and g_ema afterwards.

The random inputs are fixed: the latents, cameras and mixing points come from one queue that both
sides read in the order the official loops draw them, and every generator call starts from a seed
given by its rank in the call sequence (decoder noise, depth jitter and, after the call, the
path-length noise then match).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import autograd

from stylesdf_fast.training import loop, stages
from stylesdf_fast.training.config import EMA_DECAY_OFFICIAL, preset_config
from stylesdf_fast.training.runtime import DistInfo

TOL = dict(rtol=2e-4, atol=1e-6)


def official_recipe(preset="ffhq1024", **overrides):
    """The preset's recipe (chunk losses summed, R1 in the D step, official weights and optimisers) on
    tiny networks; batches keep a chunk count above one so the accumulation rules show."""
    tiny = dict(size=32, renderer_size=16, style_dim=32, width=32, depth=2, n_samples=6, channel_max=32,
                d1_channel_max=32, batch1=4, chunk1=2, batch2=8, chunk2=2, iter1=1, iter2=1, workers=0, device="cpu")
    return preset_config(preset, **{**tiny, **overrides})


# --- fixed randomness ------------------------------------------------------------------------------

def seeded_calls(generator: torch.nn.Module, base: int) -> list:
    """Make every call of `generator` start from torch.manual_seed(base + its rank); returns the log of
    the calls' keyword arguments (to check both sides made the same calls)."""
    original, calls = generator.forward, []

    def forward(*args, **kwargs):
        torch.manual_seed(base + len(calls))
        calls.append(sorted(kwargs))
        return original(*args, **kwargs)

    generator.forward = forward
    return calls


def draw_queue(state, counts_and_mixing, seed=123):
    """The draws both sides read, made with the trainer's own draw function."""
    torch.manual_seed(seed)
    return [stages.draw_inputs(state, count, mixing) for count, mixing in counts_and_mixing]


def serve_draws(monkeypatch, queue):
    pending = list(queue)

    def draw_inputs(state, count, mixing):
        draw = pending.pop(0)
        assert draw.count == count, (draw.count, count)
        return draw

    monkeypatch.setattr(loop, "draw_inputs", draw_inputs)
    return pending


def record_steps(optimizer, log: list) -> None:
    """Log every step's gradients (the update rules, before Adam's normalisation hides their scale)."""
    original = optimizer.step

    def step(*args, **kwargs):
        log.append([None if p.grad is None else p.grad.clone() for group in optimizer.param_groups
                    for p in group["params"]])
        return original(*args, **kwargs)

    optimizer.step = step


class FixedReals:
    def __init__(self, batch):
        self.batch = batch

    def next(self):
        return self.batch


def twins(state):
    """Independent copies of the models and optimisers, for the transcription."""
    g, d, g_ema = copy.deepcopy(state.g), copy.deepcopy(state.d), copy.deepcopy(state.g_ema)
    return g, d, g_ema


def requires_grad(module, flag):
    for p in module.parameters():
        p.requires_grad_(flag)


def accumulate(g_ema, g, decay):
    ema, own = dict(g_ema.named_parameters()), dict(g.named_parameters())
    with torch.no_grad():
        for name, value in ema.items():
            value.mul_(decay).add_(own[name].data, alpha=1 - decay)


def call(g, draw, **kwargs):
    cams = draw.cams
    return g(draw.latents, cams.c2w, cams.focal, cams.near, cams.far, **kwargs)


def logistic(real_pred, fake_pred):
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def r1_penalty(real_pred, reals):
    (grad,) = autograd.grad(real_pred.sum(), reals, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


# --- the official loops, transcribed ---------------------------------------------------------------

def official_stage1_iteration(cfg, g, d, g_ema, g_optim, d_optim, draws, reals):
    batch, chunk = cfg.batch1, cfg.chunk1
    # D: fakes generated chunk by chunk from one draw of the batch, D on the whole batch at once
    requires_grad(g, False)
    requires_grad(d, True)
    d.zero_grad()
    whole = draws.pop(0)
    fakes = [call(g, whole.rows(j, j + chunk), return_sdf=True)[1] for j in range(0, batch, chunk)]
    fake_pred, fake_view = d(torch.cat(fakes).detach())
    d_view = cfg.view_lambda * F.smooth_l1_loss(fake_view, whole.cams.viewpoint)
    reals = reals.detach().requires_grad_(True)
    real_pred, _ = d(reals)
    d_loss = logistic(real_pred, fake_pred) + cfg.r1_stage1 * 0.5 * r1_penalty(real_pred, reals) + d_view
    d_loss.backward()
    d_optim.step()
    # G: each chunk's own draw and loss, backward per chunk (the gradients add up), one step
    requires_grad(g, True)
    requires_grad(d, False)
    for _ in range(0, batch, chunk):
        part = draws.pop(0)
        out = call(g, part, return_sdf=True, return_eikonal=True)
        thumb, sdf, eikonal = out[1], out[2], out[3]
        fake_pred, fake_view = d(thumb)
        g_view = cfg.view_lambda * F.smooth_l1_loss(fake_view, part.cams.viewpoint)
        g_eikonal = cfg.eikonal_lambda * ((eikonal.norm(dim=-1) - 1) ** 2).mean()
        g_surface = cfg.min_surf_lambda * torch.exp(-cfg.min_surf_beta * sdf.abs()).mean()
        (F.softplus(-fake_pred).mean() + g_view + g_eikonal + g_surface).backward()
    g_optim.step()
    g.zero_grad()
    accumulate(g_ema, g, EMA_DECAY_OFFICIAL)


def official_stage2_iteration(cfg, i, g, d, g_ema, g_optim, d_optim, draws, reals, mean_path_length):
    batch, chunk = cfg.batch2, cfg.chunk2
    decoder = list(g.decoder.parameters())
    # D: one draw of the batch, per chunk: D(fake), D(real), the logistic loss and (every d_reg_every
    # iterations) R1 in the same backward; one step
    requires_grad(g, False)
    requires_grad(d, True)
    d.zero_grad()
    d_regularize = i % cfg.d_reg_every == 0
    whole = draws.pop(0)
    for j in range(0, batch, chunk):
        part = whole.rows(j, j + chunk)
        gen = call(g, part, inject_index=part.inject_index)[0]
        fake_pred = d(gen.detach())
        real = reals[j:j + chunk].detach()
        if d_regularize:
            real.requires_grad_(True)
        real_pred = d(real)
        d_loss = logistic(real_pred, fake_pred)
        if d_regularize:
            d_loss = d_loss + cfg.r1_stage2 * 0.5 * r1_penalty(real_pred, real) * cfg.d_reg_every
        d_loss.backward()
    d_optim.step()
    # G: a draw per chunk, backward per chunk, one step
    for p in decoder:
        p.requires_grad_(True)
    requires_grad(d, False)
    for _ in range(0, batch, chunk):
        part = draws.pop(0)
        fake = call(g, part, inject_index=part.inject_index)[0]
        F.softplus(-d(fake)).mean().backward()
    g_optim.step()
    g.zero_grad()
    # path length: one draw of the path batch, the whole batch once per chunk of it, one step
    if i % cfg.g_reg_every == 0:
        path_batch = max(1, batch // cfg.path_batch_shrink)
        part = draws.pop(0)
        for _ in range(0, path_batch, chunk):
            image, latents = call(g, part, inject_index=part.inject_index, return_latents=True)
            noise = torch.randn_like(image) / math.sqrt(image.shape[2] * image.shape[3])
            (grad,) = autograd.grad((image * noise).sum(), latents, create_graph=True)
            lengths = torch.sqrt(grad.pow(2).sum(2).mean(1))
            path_mean = mean_path_length + 0.01 * (lengths.mean() - mean_path_length)
            path_loss = (lengths - path_mean).pow(2).mean()
            mean_path_length = path_mean.detach()
            (cfg.path_regularize * cfg.g_reg_every * path_loss + 0 * image[0, 0, 0, 0]).backward()
        g_optim.step()
        g.zero_grad()
    accumulate(g_ema, g, EMA_DECAY_OFFICIAL)
    return mean_path_length


# --- the comparisons -----------------------------------------------------------------------------------

def assert_same_models(ours, theirs):
    for name, (a, b) in {"g": (ours.g, theirs[0]), "d": (ours.d, theirs[1]), "g_ema": (ours.g_ema, theirs[2])}.items():
        for (key, value), (_, expected) in zip(a.state_dict().items(), b.state_dict().items()):
            torch.testing.assert_close(value, expected, **TOL, msg=f"{name}.{key}")


def assert_same_steps(ours, theirs):
    assert len(ours) == len(theirs)
    for k, (mine, official) in enumerate(zip(ours, theirs)):
        for index, (a, b) in enumerate(zip(mine, official)):
            assert (a is None) == (b is None), f"step {k} parameter {index}"
            if a is not None:
                torch.testing.assert_close(a, b, **TOL, msg=f"step {k} parameter {index}")


@pytest.mark.parametrize("preset", ["ffhq1024", "afhq512"])
def test_stage1_iteration_follows_the_official_update(monkeypatch, preset):
    cfg = official_recipe(preset)
    torch.manual_seed(0)
    state = stages.build_stage(1, cfg, DistInfo())
    g, d, g_ema = twins(state)
    g_optim = torch.optim.Adam(g.parameters(), lr=2e-5, betas=(0.0, 0.9))
    d_optim = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.0, 0.9))
    counts = [(cfg.batch1, 0.0)] + [(cfg.chunk1, 0.0)] * (cfg.batch1 // cfg.chunk1)
    queue = draw_queue(state, counts)
    reals = torch.rand(cfg.batch1, 3, 16, 16) * 2 - 1
    ours_steps, official_steps = [], []
    for optimizer in (state.d_optim, state.g_optim):
        record_steps(optimizer, ours_steps)
    for optimizer in (d_optim, g_optim):
        record_steps(optimizer, official_steps)
    ours_calls, official_calls = seeded_calls(state.g, 1000), seeded_calls(g, 1000)

    left = serve_draws(monkeypatch, queue)
    loop.train_iteration(state, 0, FixedReals(reals))
    assert not left
    official_stage1_iteration(cfg, g, d, g_ema, g_optim, d_optim, list(queue), reals)

    assert len(ours_calls) == len(official_calls) == 2 * cfg.batch1 // cfg.chunk1
    assert_same_steps(ours_steps, official_steps)
    assert_same_models(state, (g, d, g_ema))


@pytest.mark.parametrize("preset", ["ffhq1024", "afhq512"])
def test_stage2_iteration_follows_the_official_update(monkeypatch, preset):
    cfg = official_recipe(preset, chunk2=2)
    torch.manual_seed(0)
    renderer = stages.build_stage(1, cfg, DistInfo()).g_ema.state_dict()
    state = stages.build_stage(2, cfg, DistInfo(), renderer)
    state.g_ema.load_state_dict(state.g.state_dict())
    g, d, g_ema = twins(state)
    g_ratio, d_ratio = cfg.g_reg_every / (cfg.g_reg_every + 1), cfg.d_reg_every / (cfg.d_reg_every + 1)
    g_optim = torch.optim.Adam(g.decoder.parameters(), lr=cfg.lr2 * g_ratio, betas=(0.0 ** g_ratio, 0.99 ** g_ratio))
    d_optim = torch.optim.Adam(d.parameters(), lr=cfg.lr2 * d_ratio, betas=(0.0 ** d_ratio, 0.99 ** d_ratio))
    path_batch = cfg.batch2 // cfg.path_batch_shrink
    counts = ([(cfg.batch2, cfg.mixing)] + [(cfg.chunk2, cfg.mixing)] * (cfg.batch2 // cfg.chunk2)
              + [(path_batch, cfg.mixing)])
    queue = next(q for q in (draw_queue(state, counts, seed) for seed in range(100))   # mixed and unmixed draws
                 if any(len(draw.latents) == 2 for draw in q) and any(len(draw.latents) == 1 for draw in q))
    reals = torch.rand(cfg.batch2, 3, 32, 32) * 2 - 1
    ours_steps, official_steps = [], []
    for optimizer in (state.d_optim, state.g_optim):
        record_steps(optimizer, ours_steps)
    for optimizer in (d_optim, g_optim):
        record_steps(optimizer, official_steps)
    ours_calls, official_calls = seeded_calls(state.g, 2000), seeded_calls(g, 2000)

    left = serve_draws(monkeypatch, queue)
    loop.train_iteration(state, 0, FixedReals(reals))
    assert not left
    mean_path_length = official_stage2_iteration(cfg, 0, g, d, g_ema, g_optim, d_optim, list(queue), reals,
                                                 torch.zeros(()))

    passes = math.ceil(path_batch / cfg.chunk2)
    assert len(ours_calls) == len(official_calls) == 2 * cfg.batch2 // cfg.chunk2 + passes
    assert len(ours_steps) == 3   # D (with R1), G, path length: as the official loop
    assert_same_steps(ours_steps, official_steps)
    assert_same_models(state, (g, d, g_ema))
    torch.testing.assert_close(state.mean_path_length, mean_path_length, **TOL)
