"""The training recipe's rules: how chunk losses add up (chunk-size independent by default, the
official sums in the official presets), the path-length running mean over the whole path batch, the
logged speed, previews that leave the training's random streams alone, sphere-init files, the global
batch the presets are meant for, and the official renderer switches in training."""
from __future__ import annotations

import json

import pytest
import torch

from stylesdf_fast import train
from stylesdf_fast.data import synthetic
from stylesdf_fast.training import checkpoints, config as config_module, loop, losses, stages
from stylesdf_fast.training.config import global_batch_warning, preset_config
from stylesdf_fast.training.reporting import Reporter
from stylesdf_fast.training.runtime import DistInfo

from test_training_parity import FixedReals, record_steps

TINY = dict(size=32, renderer_size=16, style_dim=32, width=32, depth=2, n_samples=6, channel_max=32,
            d1_channel_max=32, iter1=1, iter2=1, workers=0, device="cpu")


def tiny_config(**overrides):
    return preset_config("small", **{**TINY, **overrides})


def stage1_g_gradients(monkeypatch, cfg):
    """The stage-1 G step's gradients for one fixed batch of 4 draws, split by cfg.chunk1."""
    torch.manual_seed(0)
    state = stages.build_stage(1, cfg, DistInfo())
    state.g.renderer.perturb = 0.0   # no depth jitter: the chunking is the only difference
    torch.manual_seed(1)
    whole = stages.draw_inputs(state, 4, 0.0)
    parts = [whole.rows(j, j + cfg.chunk1) for j in range(0, 4, cfg.chunk1)]
    monkeypatch.setattr(loop, "draw_inputs", lambda state, count, mixing: parts.pop(0))
    steps = []
    record_steps(state.g_optim, steps)
    loop._run_phase(state, state.phases[1], None)
    return steps[0]


def assert_gradients_close(a, b):
    """Equal up to summation order: relative to each gradient's largest entry."""
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_mean_reduction_does_not_depend_on_the_chunk_size(monkeypatch):
    whole = stage1_g_gradients(monkeypatch, tiny_config(batch1=4, chunk1=4))
    halves = stage1_g_gradients(monkeypatch, tiny_config(batch1=4, chunk1=2))
    for a, b in zip(whole, halves):
        assert_gradients_close(a, b)


def test_sum_reduction_adds_the_chunk_losses_as_the_official_scripts(monkeypatch):
    whole = stage1_g_gradients(monkeypatch, tiny_config(batch1=4, chunk1=4, chunk_losses="sum"))
    halves = stage1_g_gradients(monkeypatch, tiny_config(batch1=4, chunk1=2, chunk_losses="sum"))
    for a, b in zip(whole, halves):
        assert_gradients_close(2 * a, b)


def test_official_presets_sum_their_chunks_and_put_r1_in_the_d_step():
    for name in ("ffhq1024", "afhq512"):
        cfg = preset_config(name)
        assert cfg.chunk_losses == "sum" and cfg.r1_with_d_step
    small = preset_config("small")
    assert small.chunk_losses == "mean" and not small.r1_with_d_step


def test_path_length_running_mean_covers_the_whole_path_batch(monkeypatch):
    """With the path batch split into chunks, the running mean moves toward the mean over all of them
    (it used to keep the last chunk's)."""
    cfg = tiny_config(batch2=8, chunk2=2, path_batch_shrink=2)
    torch.manual_seed(0)
    state = stages.build_stage(2, cfg, DistInfo())
    seen = []
    original = losses.g_path_regularize

    def capture(fake, latents, mean):
        out = original(fake, latents, mean)
        seen.append(out[2].detach())
        return out

    monkeypatch.setattr(losses, "g_path_regularize", capture)
    path_phase = state.phases[-1]
    assert path_phase.name == "G_reg" and path_phase.batch == 4
    loop._run_phase(state, path_phase, None)
    assert len(seen) == 2
    expected = 0.01 * torch.cat(seen).mean()
    torch.testing.assert_close(state.mean_path_length, expected)


def test_logged_speed_counts_the_images_of_an_iteration(monkeypatch, tmp_path):
    """Stage 2's images/s is its batch per second (not the smaller path-length batch)."""
    cfg = tiny_config(batch2=4, chunk2=4, iter2=4, log_every=2, g_reg_every=2, sample_every=100,
                      checkpoint_every=100)
    torch.manual_seed(0)
    state = stages.build_stage(2, cfg, DistInfo())
    clock = {"now": 0.0}
    real_iteration = loop.train_iteration

    def one_second_per_iteration(*args):
        clock["now"] += 1.0
        return real_iteration(*args)

    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(loop, "train_iteration", one_second_per_iteration)

    class NeverStop:
        def stop_requested(self, info):
            return False

    reals = FixedReals(torch.rand(4, 3, 32, 32) * 2 - 1)
    assert loop._train_stage(state, reals, 0, tmp_path, Reporter(tmp_path, DistInfo()), NeverStop())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2, 4]
    assert [r["images_per_s"] for r in records[1:]] == [cfg.batch2, cfg.batch2]


def test_sphere_init_file_loads_g_d_and_g_ema(tmp_path):
    cfg = tiny_config()
    torch.manual_seed(0)
    source = stages.build_stage(1, cfg, DistInfo())
    with torch.no_grad():
        for p in source.g_ema.parameters():
            p.add_(1.0)   # an EMA that differs from g, as in the official file
        for p in source.d.parameters():
            p.mul_(-1.0)
    path = tmp_path / "sphere_init.pt"
    torch.save({"g": source.g.state_dict(), "d": source.d.state_dict(), "g_ema": source.g_ema.state_dict()}, path)
    torch.manual_seed(5)
    target = stages.build_stage(1, cfg, DistInfo())
    checkpoints.load_sphere_init(target, path, DistInfo())
    for name in ("g", "d", "g_ema"):
        for key, value in getattr(source, name).state_dict().items():
            assert torch.equal(getattr(target, name).state_dict()[key], value), f"{name}.{key}"


def test_sphere_init_file_with_g_only_starts_the_ema_from_g(tmp_path):
    cfg = tiny_config()
    torch.manual_seed(0)
    source = stages.build_stage(1, cfg, DistInfo())
    path = tmp_path / "g_only.pt"
    torch.save({"g": source.g.state_dict()}, path)
    target = stages.build_stage(1, cfg, DistInfo())
    d_before = {k: v.clone() for k, v in target.d.state_dict().items()}
    checkpoints.load_sphere_init(target, path, DistInfo())
    assert all(torch.equal(target.g_ema.state_dict()[k], v) for k, v in source.g.state_dict().items())
    assert all(torch.equal(target.d.state_dict()[k], v) for k, v in d_before.items())


@pytest.mark.parametrize("stage, processes, warned", [(1, 2, False), (1, 4, True), (2, 4, False), (2, 2, True)])
def test_presets_warn_when_the_process_count_changes_the_global_batch(stage, processes, warned):
    message = global_batch_warning(preset_config("ffhq1024"), stage, processes)
    assert (message is not None) == warned
    if warned:
        intended = config_module.PRESET_GLOBAL_BATCH["ffhq1024"][stage]
        assert f"global batch of {intended}" in message and "--nproc_per_node" in message
    assert global_batch_warning(preset_config("small"), stage, processes) is None


# --- the official renderer switches, through the trainer's generator ------------------------------------

@pytest.mark.parametrize("field, attribute, value", [
    ("offset_sampling", "offset_sampling", False), ("z_normalize", "z_normalize", False),
    ("static_viewdirs", "static_viewdirs", True), ("force_background", "force_background", True),
    ("sdf", "sdf", False), ("raw_noise_std", "raw_noise_std", 0.5)])
def test_renderer_switches_reach_the_trained_generator(field, attribute, value):
    args = train.build_parser().parse_args(
        {bool: [f"--{'no-' if not value else ''}{field.replace('_', '-')}"]}.get(type(value), [
            f"--{field.replace('_', '-')}", str(value)]))
    cfg = config_module.config_from_args(args)
    assert getattr(cfg, field) == value
    for full in (False, True):
        generator = stages.make_generator(tiny_config(**{field: value}), full_pipeline=full)
        assert getattr(generator.renderer, attribute) == value


def test_nerf_mode_trains_without_sdf_terms():
    cfg = tiny_config(sdf=False, batch1=2, chunk1=2)
    torch.manual_seed(0)
    state = stages.build_stage(1, cfg, DistInfo())
    assert state.g.renderer.sigmoid_beta is None and "renderer.sigmoid_beta" not in state.g.state_dict()
    metrics = loop.train_iteration(state, 0, FixedReals(torch.rand(2, 3, 16, 16) * 2 - 1))
    assert "G/g_adv" in metrics and "G/eikonal" not in metrics and "G/min_surface" not in metrics
    assert "beta" not in metrics


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic"
    return str(synthetic.build_synthetic_dataset(path, synthetic.SyntheticConfig(num_images=8, sizes=(16, 32)),
                                                 progress=False))


def test_nerf_mode_runs_both_stages_and_loads(tmp_path, tiny_dataset):
    from stylesdf_fast import load_generator

    run = tmp_path / "run"
    flags = ["--size", "32", "--renderer-size", "16", "--width", "16", "--depth", "2", "--n-samples", "4",
             "--channel-max", "16", "--d1-channel-max", "16", "--batch1", "2", "--chunk1", "2", "--batch2", "2",
             "--chunk2", "2", "--iter1", "2", "--iter2", "2", "--workers", "0", "--log-every", "1",
             "--sample-every", "2", "--checkpoint-every", "2", "--preview-identities", "1", "--preview-views", "2",
             "--no-sdf", "--raw-noise-std", "0.5"]
    assert train.main(["--run-dir", str(run), "--dataset", tiny_dataset, *flags]) == 0
    assert not (run / "checkpoints" / "sphere_init.pt").exists()   # no SDF to initialise
    generator = load_generator(run / "final.pt")
    assert not generator.renderer.sdf and generator.renderer.sigmoid_beta is None
