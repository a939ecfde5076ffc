"""Folder of images -> `python -m stylesdf_fast.prepare_data` -> MultiResolutionDataset, the atomic
writer, and image folders as cached training datasets."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from stylesdf_fast import prepare_data
from stylesdf_fast.data import (DatasetError, LmdbWriter, MultiResolutionDataset, is_lmdb_dir, prepare_dataset,
                                resize_and_center_crop, resolve_dataset)
from stylesdf_fast.data import prepare as prepare_module


def _noise_image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), "RGB")


@pytest.fixture
def image_folder(tmp_path):
    """Images in the folder itself and in nested folders, non-square and of several modes."""
    root = tmp_path / "images"
    (root / "b" / "deeper").mkdir(parents=True)
    (root / "a").mkdir()
    _noise_image(0, 40, 30).save(root / "b" / "deeper" / "z.png")
    _noise_image(1, 30, 50).save(root / "a" / "y.jpg", quality=95)
    _noise_image(2, 24, 24).convert("L").save(root / "top.png")        # greyscale -> RGB
    _noise_image(3, 33, 21).convert("RGBA").save(root / "a" / "x.webp")
    (root / "notes.txt").write_text("not an image")
    return root


def _expected_order(root):
    return sorted((str(p) for p in root.rglob("*") if p.suffix in (".png", ".jpg", ".webp")))


def _expected_pixels(path, size):
    """What the official conversion gives, computed step by step with PIL: RGB, shorter side to
    `size` (LANCZOS, longer side int(size * long / short)), central crop."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    width, height = image.size
    scale_w, scale_h = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
    image = image.resize((scale_w, scale_h), Image.LANCZOS)
    left, top = int(round((scale_w - size) / 2.0)), int(round((scale_h - size) / 2.0))
    array = np.array(image.crop((left, top, left + size, top + size)))
    return (torch.from_numpy(array).permute(2, 0, 1).float() / 255 - 0.5) / 0.5


def test_round_trip_through_the_command_line(image_folder, tmp_path, capsys):
    out = tmp_path / "lmdb"
    assert prepare_data.main(["--out", str(out), "--size", "8,16", "--workers", "1", str(image_folder)]) == 0
    assert "wrote 4 images at 8, 16 px" in capsys.readouterr().out
    for size in (8, 16):
        dataset = MultiResolutionDataset(out, resolution=size, nerf_resolution=8, hflip=False)
        assert len(dataset) == 4
        for index, path in enumerate(_expected_order(image_folder)):
            torch.testing.assert_close(dataset[index][0], _expected_pixels(path, size), rtol=0, atol=0)


def test_official_aliases_and_a_process_pool(image_folder, tmp_path):
    out_one, out_two = tmp_path / "one", tmp_path / "two"
    assert prepare_data.main(["--out_path", str(out_one), "--size", "8", "--n_worker", "1", str(image_folder)]) == 0
    assert prepare_data.main(["--out", str(out_two), "--size", "8", "--workers", "2", str(image_folder)]) == 0
    one, two = (MultiResolutionDataset(p, resolution=8, nerf_resolution=8, hflip=False) for p in (out_one, out_two))
    assert all(torch.equal(one[i][0], two[i][0]) for i in range(len(one)))


def test_resize_rule_matches_torchvision_numbers():
    assert resize_and_center_crop(Image.new("RGB", (1000, 600)), 256).size == (256, 256)
    assert resize_and_center_crop(Image.new("RGB", (7, 9)), 5).size == (5, 5)


def test_unreadable_files_are_skipped_and_listed(image_folder, tmp_path, capsys):
    (image_folder / "a" / "broken.png").write_bytes(b"not really a png")
    out = tmp_path / "lmdb"
    assert prepare_data.main(["--out", str(out), "--size", "8", "--workers", "1", str(image_folder)]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 file(s)" in captured.err and "broken.png" in captured.err
    assert "ignored 1 file(s) without an image extension" in captured.out
    assert len(MultiResolutionDataset(out, resolution=8, nerf_resolution=8)) == 4


def test_existing_output_is_refused_unless_overwrite(image_folder, tmp_path, capsys):
    out = tmp_path / "lmdb"
    prepare_dataset(image_folder, out, "8", workers=1, progress=False)
    assert prepare_data.main(["--out", str(out), "--size", "8", str(image_folder)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert prepare_data.main(["--out", str(out), "--size", "16", "--overwrite", "--workers", "1",
                              str(image_folder)]) == 0
    assert MultiResolutionDataset(out, resolution=16).length == 4
    assert sorted(os.listdir(tmp_path)) == ["images", "lmdb"]


def test_interrupted_conversion_leaves_nothing_that_looks_whole(image_folder, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = prepare_module.convert_image

    def interrupt_on_third(path, sizes, resample):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(path, sizes, resample)

    monkeypatch.setattr(prepare_module, "convert_image", interrupt_on_third)
    out = tmp_path / "lmdb"
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(image_folder, out, "8", workers=1, progress=False)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["images"]   # the temporary directory is gone too


def test_stale_partial_of_a_dead_process_is_removed(tmp_path):
    stale = tmp_path / "out.incomplete-999999999"
    stale.mkdir()
    with LmdbWriter(tmp_path / "out") as writer:
        writer.put_image(8, 0, b"x")
    assert not stale.exists() and is_lmdb_dir(tmp_path / "out")


def test_writer_rejects_gaps_in_indices(tmp_path):
    with pytest.raises(ValueError, match="without gaps"):
        with LmdbWriter(tmp_path / "out") as writer:
            writer.put_image(8, 1, b"x")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--size", "8,abc"], "comma-separated integers"),
    (["--size", "0"], "positive image sizes"),
    (["--resample", "lanczos", "--workers", "0"], "workers must be >= 1"),
])
def test_bad_arguments(image_folder, tmp_path, capsys, args, message):
    assert prepare_data.main(["--out", str(tmp_path / "o"), *args, str(image_folder)]) == 2
    assert message in capsys.readouterr().err


def test_missing_and_empty_input_folders(tmp_path, capsys):
    assert prepare_data.main(["--out", str(tmp_path / "o"), str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert prepare_data.main(["--out", str(tmp_path / "o"), str(tmp_path / "empty")]) == 2
    assert "no image files" in capsys.readouterr().err


def test_module_entry_point_runs(image_folder, tmp_path):
    result = subprocess.run([sys.executable, "-m", "stylesdf_fast.prepare_data", "--out", str(tmp_path / "o"),
                             "--size", "8", "--workers", "1", str(image_folder)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert is_lmdb_dir(tmp_path / "o")


def test_image_folder_as_dataset_is_converted_once(image_folder, tmp_path):
    cache = tmp_path / "cache"
    first = resolve_dataset(image_folder, (8, 16), cache_dir=cache, workers=1, progress=False)
    assert is_lmdb_dir(first) and str(first).startswith(str(cache))
    mtime = (first / "data.mdb").stat().st_mtime_ns
    assert resolve_dataset(image_folder, (8, 16), cache_dir=cache, progress=False) == first
    assert (first / "data.mdb").stat().st_mtime_ns == mtime
    _noise_image(9, 20, 20).save(image_folder / "new.png")       # a changed folder gets a new entry
    second = resolve_dataset(image_folder, (8, 16), cache_dir=cache, workers=1, progress=False)
    assert second != first and MultiResolutionDataset(second, resolution=8).length == 5


def test_lmdb_dataset_path_is_used_as_is(image_folder, tmp_path):
    out = tmp_path / "lmdb"
    prepare_dataset(image_folder, out, "8", workers=1, progress=False)
    assert resolve_dataset(out, cache_dir=tmp_path / "cache") == out
    assert not (tmp_path / "cache").exists()


def test_resolve_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        resolve_dataset(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="neither an LMDB dataset directory nor a folder"):
        resolve_dataset(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .* files under it"):
        resolve_dataset(tmp_path / "empty")
