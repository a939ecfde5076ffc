"""Training: config and its errors, the losses' formulas, a tiny two-stage run end to end, resume
equal to an uninterrupted run, Ctrl-C saving a checkpoint, and two gloo processes staying identical."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import stylesdf_fast
from stylesdf_fast import load_generator, train
from stylesdf_fast.data import synthetic
from stylesdf_fast.training import config as config_module
from stylesdf_fast.training import losses, loop
from stylesdf_fast.training.config import preset_config, validate_config

TINY = ["--size", "32", "--renderer-size", "16", "--width", "32", "--depth", "2", "--n-samples", "8",
        "--channel-max", "32", "--d1-channel-max", "32", "--batch1", "2", "--chunk1", "1", "--batch2", "2",
        "--chunk2", "2", "--iter1", "4", "--iter2", "4", "--sphere-init-iters", "2", "--workers", "0",
        "--log-every", "1", "--sample-every", "2", "--checkpoint-every", "2", "--preview-identities", "2",
        "--preview-views", "2", "--ema-decay", "0.5"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic"
    config = synthetic.SyntheticConfig(num_images=12, sizes=(16, 32))
    return str(synthetic.build_synthetic_dataset(path, config, progress=False))


def _train(run_dir, dataset, *extra) -> int:
    return train.main(["--run-dir", str(run_dir), "--dataset", dataset, *TINY, *extra])


# --- config ---------------------------------------------------------------------------------------

def test_presets_and_overrides():
    for name in config_module.PRESETS:
        validate_config(preset_config(name))
    assert preset_config("ffhq1024").size == 1024 and preset_config("afhq512").r1_stage2 == 50
    args = train.build_parser().parse_args(["--preset", "afhq512", "--batch1", "6", "--chunk1", "3", "--no-hflip"])
    cfg = config_module.config_from_args(args)
    assert (cfg.size, cfg.batch1, cfg.chunk1, cfg.hflip, cfg.azim) == (512, 6, 3, False, 0.15)
    assert "stage-1 images per process per iteration" in train.build_parser().format_help()   # field comments


@pytest.mark.parametrize("args, message", [
    (["--batch1", "6", "--chunk1", "4"], "not divisible by --chunk1"),
    (["--dataset", "/no/such/dataset"], "no such file or directory"),
    (["--size", "48"], "power of two"),
    (["--stages", "3"], "--stages"),
    (["--sphere-init", "/no/init.pt"], "no such file"),
])
def test_bad_input_fails_before_any_work(tmp_path, capsys, args, message):
    assert train.main(["--run-dir", str(tmp_path / "run"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unknown_preset_is_an_argument_error(capsys):
    with pytest.raises(SystemExit):
        train.main(["--preset", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    assert train.main(["--run-dir", str(tmp_path / "run"), "--dataset", str(tmp_path / "notes"), *TINY]) == 2
    assert "neither an LMDB dataset" in capsys.readouterr().err


# --- losses ---------------------------------------------------------------------------------------

def test_loss_formulas_on_known_values():
    zeros = torch.zeros(4, 1)
    assert math.isclose(losses.d_logistic_loss(zeros, zeros).item(), 2 * math.log(2), rel_tol=1e-6)
    assert math.isclose(losses.g_nonsaturating_loss(zeros).item(), math.log(2), rel_tol=1e-6)
    unit = torch.nn.functional.normalize(torch.randn(2, 3, 3, 5, 3), dim=-1)
    assert losses.eikonal_loss(unit).item() < 1e-10
    assert math.isclose(losses.eikonal_loss(2 * unit).item(), 1.0, rel_tol=1e-6)
    assert math.isclose(losses.min_surface_loss(torch.zeros(2, 4, 4, 3, 1)).item(), 1.0)
    pred, target = torch.tensor([[0.5, 3.0]]), torch.tensor([[0.0, 0.0]])
    assert math.isclose(losses.viewpoints_loss(pred, target).item(), (0.5 * 0.25 + 2.5) / 2, rel_tol=1e-6)


def test_r1_of_a_linear_discriminator():
    weight = torch.randn(3, 4, 4)
    images = torch.randn(5, 3, 4, 4, requires_grad=True)
    pred = (images * weight).sum((1, 2, 3))[:, None]
    assert torch.allclose(losses.d_r1_loss(pred, images), weight.pow(2).sum())


def test_path_length_of_a_linear_generator():
    # image = sum over latents of A w_l: J^T y has the same norm for every y-scale; check the running mean
    torch.manual_seed(0)
    latents = torch.randn(3, 2, 8, requires_grad=True)
    matrix = torch.randn(8, 3 * 16 * 16)
    image = (latents.sum(1) @ matrix).reshape(3, 3, 16, 16)
    penalty, new_mean, lengths = losses.g_path_regularize(image, latents, torch.tensor(0.0))
    assert lengths.shape == (3,) and torch.allclose(new_mean, 0.01 * lengths.mean())
    assert torch.allclose(penalty, (lengths - new_mean).pow(2).mean())


def test_metric_window_reports_means_of_the_iterations_a_metric_ran():
    window = loop.MetricWindow()
    window.add({"G/eikonal": 0.4, "D_reg/r1": 2.0})
    window.add({"G/eikonal": 0.2})
    window.add({"G/eikonal": 0.3})
    assert window.means_and_reset() == pytest.approx({"G/eikonal": 0.3, "D_reg/r1": 2.0})
    window.add({"G/eikonal": 1.0})
    assert window.means_and_reset() == {"G/eikonal": 1.0}     # reset between reports


# --- runs -----------------------------------------------------------------------------------------

def test_tiny_run_end_to_end(tmp_path, tiny_dataset):
    run = tmp_path / "run"
    assert _train(run, tiny_dataset) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["iter1"] == 4 and config["dataset"] == tiny_dataset
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    stage1 = [r for r in records if r["stage"] == 1]
    stage2 = [r for r in records if r["stage"] == 2]
    assert [r["iter"] for r in stage1] == [1, 2, 3, 4] and len(stage2) == 4
    for key in ("D/d_adv", "D/r1", "D/d_view", "G/g_adv", "G/g_view", "G/eikonal", "G/min_surface", "beta"):
        assert math.isfinite(stage1[-1][key]), key
    assert "D_reg/r1" in stage2[0] and "G_reg/path_length" in stage2[0]
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "stage1_0000002.png", "stage1_0000004.png", "stage2_0000002.png", "stage2_0000004.png"]
    final = torch.load(run / "final.pt", weights_only=False)
    assert {"g", "d", "g_ema", "g_optim", "d_optim", "config", "rng", "data", "stats"} <= set(final)
    generator = load_generator(run / "final.pt")
    assert generator.size == 32 and generator.renderer.out_im_res == 16
    renderer = load_generator(run / "volume_renderer.pt")   # resolution and samples come from the config
    assert renderer.decoder is None and renderer.renderer.out_im_res == 16 and renderer.renderer.n_samples == 8
    # stage 2 starts from stage 1's g_ema renderer and keeps it frozen
    stage1 = torch.load(run / "volume_renderer.pt", weights_only=False)["g_ema"]
    assert all(torch.equal(final["g"][k], v) for k, v in stage1.items() if k.startswith("renderer."))


def _stop_after(monkeypatch, iterations: int) -> None:
    """Make the stop signal arrive after `iterations` stage-1 iterations (the Ctrl-C path)."""
    calls = {"n": 0}

    def stop_requested(self, info):
        calls["n"] += 1
        return calls["n"] == 2 + iterations   # 2 sphere-init iterations come first

    monkeypatch.setattr(loop.StopSignal, "stop_requested", stop_requested)


def test_resume_matches_an_uninterrupted_run(tmp_path, tiny_dataset, monkeypatch):
    assert _train(tmp_path / "straight", tiny_dataset, "--stages", "1", "--iter1", "6", "--checkpoint-every", "4") == 0
    with monkeypatch.context() as patch:
        _stop_after(patch, 3)
        assert _train(tmp_path / "cut", tiny_dataset, "--stages", "1", "--iter1", "6", "--checkpoint-every", "4") == 130
    assert (tmp_path / "cut" / "checkpoints" / "stage1_0000003.pt").exists()
    assert not (tmp_path / "cut" / "volume_renderer.pt").exists()
    assert train.main(["--resume", str(tmp_path / "cut")]) == 0
    straight = torch.load(tmp_path / "straight" / "volume_renderer.pt", weights_only=False)
    resumed = torch.load(tmp_path / "cut" / "volume_renderer.pt", weights_only=False)
    for key in ("g", "d", "g_ema"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name}"


def test_resume_in_stage_2_with_other_previews_matches_an_uninterrupted_run(tmp_path, tiny_dataset, monkeypatch):
    """Stage 2 draws style mixing and previews draw latents and depth jitter: a run resumed with other
    preview settings must still train exactly as the uninterrupted one (previews use a forked RNG,
    the mixing point comes from torch's saved RNG)."""
    common = ["--iter1", "2", "--iter2", "5", "--checkpoint-every", "2", "--mixing", "0.9"]
    assert _train(tmp_path / "straight", tiny_dataset, *common) == 0
    with monkeypatch.context() as patch:
        _stop_after(patch, 2 + 3)   # the 2 stage-1 iterations, then 3 of stage 2
        assert _train(tmp_path / "cut", tiny_dataset, *common) == 130
    assert (tmp_path / "cut" / "checkpoints" / "stage2_0000003.pt").exists()
    assert train.main(["--resume", str(tmp_path / "cut"), "--sample-every", "1", "--preview-identities", "3",
                       "--preview-views", "3", "--preview-truncation", "0.5"]) == 0
    straight = torch.load(tmp_path / "straight" / "final.pt", weights_only=False)
    resumed = torch.load(tmp_path / "cut" / "final.pt", weights_only=False)
    for key in ("g", "d", "g_ema"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name}"


def test_official_two_command_recipe_runs_stage_2_by_resuming(tmp_path, tiny_dataset, capsys):
    """README's recipe for the official runs: stage 1 in one command, then stage 2 by resuming the
    same run with --stages 2 (with its own process count on a cluster)."""
    run = tmp_path / "run"
    assert _train(run, tiny_dataset, "--stages", "1") == 0
    assert (run / "volume_renderer.pt").exists() and not (run / "final.pt").exists()
    assert train.main(["--resume", str(run), "--stages", "2"]) == 0
    assert (run / "final.pt").exists()
    stage1 = torch.load(run / "volume_renderer.pt", weights_only=False)["g_ema"]
    final = torch.load(run / "final.pt", weights_only=False)["g"]
    assert all(torch.equal(final[k], v) for k, v in stage1.items() if k.startswith("renderer."))


def test_resume_refuses_incompatible_changes(tmp_path, tiny_dataset, capsys):
    assert _train(tmp_path / "run", tiny_dataset, "--stages", "1", "--iter1", "2") == 0
    assert train.main(["--resume", str(tmp_path / "run"), "--width", "64"]) == 2
    assert "cannot change when resuming: width" in capsys.readouterr().err
    assert train.main(["--resume", str(tmp_path)]) == 2
    assert "not a training run directory" in capsys.readouterr().err
    assert _train(tmp_path / "run", tiny_dataset) == 2
    assert "already holds a run" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    """The environment of a child `python -m stylesdf_fast...`: it must import the package this test
    imported (installed, with its compiled extension), so its folder goes first on PYTHONPATH and the
    child runs outside the source tree (`python -m` puts the working directory first on sys.path)."""
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(stylesdf_fast.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def _stage1_running(run) -> bool:
    metrics = run / "metrics.jsonl"
    return metrics.exists() and any(json.loads(line)["stage"] == 1 for line in metrics.read_text().splitlines())


def test_sigint_saves_a_checkpoint_and_exits(tmp_path, tiny_dataset):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "stylesdf_fast.train", "--run-dir", str(run), "--dataset", tiny_dataset,
               *TINY, "--iter1", "100000", "--stages", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                               cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not _stage1_running(run):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert loop.latest_checkpoint(run) is not None and "--resume" in output


def test_two_gloo_processes_keep_identical_replicas(tmp_path, tiny_dataset):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "stylesdf_fast.train", "--run-dir", str(run), "--dataset", tiny_dataset,
               *TINY, "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    final = torch.load(run / "final.pt", weights_only=False)
    assert len(final["rng"]) == 2                        # both ranks' random streams were saved
    assert not torch.equal(final["rng"][0]["torch"], final["rng"][1]["torch"])   # and they differ
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in records if r["stage"] == 1]) == 4     # rank 0 alone logs
