"""Dataset throughput: building the built-in synthetic dataset, converting an image folder with
prepare_data, and reading with MultiResolutionDataset (in the process and through DataLoader workers).

Target (issue 5): the default synthetic dataset, 2,000 images at 64 and 128 pixels, in under 2 minutes
on a 2-core CPU, including PNG encoding and the LMDB write.

    python benchmarks/data_speed.py            # full: 2,000 synthetic images
    python benchmarks/data_speed.py --quick    # smoke test: 64 images
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _allocator  # noqa: E402,F401  (before torch)
import torch  # noqa: E402

from bench import machine, report, run  # noqa: E402

run.use_this_checkout(Path(__file__).resolve().parent.parent)

SYNTHETIC_TARGET_SECONDS = 120.0   # for 2,000 images at 64 + 128 px


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench_synthetic(workdir: Path, count: int, sizes):
    from stylesdf_fast.data import synthetic

    config = synthetic.SyntheticConfig(num_images=count, sizes=sizes)
    path, seconds = _timed(lambda: synthetic.build_synthetic_dataset(workdir / "synthetic", config, progress=False))
    scenes = synthetic.make_scenes(range(16))
    angles = torch.tensor([synthetic.sample_pose(i) for i in range(16)])
    _, render_seconds = _timed(lambda: synthetic.render_scenes(scenes, angles, max(sizes)))
    row = {"case": f"synthetic {count} imgs @ {','.join(map(str, sizes))}", "images": count, "seconds": seconds,
           "images_per_s": count / seconds, "render_only_images_per_s": 16 / render_seconds}
    return path, row


def _export_folder(dataset_path: Path, folder: Path, count: int) -> None:
    """Write `count` stored 128-px images as PNG files (the input of the prepare_data case)."""
    from stylesdf_fast.data import MultiResolutionDataset

    dataset = MultiResolutionDataset(dataset_path, resolution=128, hflip=False)
    folder.mkdir(parents=True)
    for index in range(min(count, len(dataset))):
        dataset.read_image(index).save(folder / f"{index:05d}.png")


def bench_prepare(workdir: Path, folder: Path, workers: int):
    from stylesdf_fast.data import prepare_dataset

    out = workdir / f"prepared-{workers}"
    report, seconds = _timed(lambda: prepare_dataset(folder, out, (64, 128), workers=workers, progress=False))
    return {"case": f"prepare_data {report.count} imgs -> 64,128 ({workers} worker{'s' if workers > 1 else ''})",
            "images": report.count, "seconds": seconds, "images_per_s": report.count / seconds}


def bench_read(dataset_path: Path, workers: int):
    from torch.utils.data import DataLoader

    from stylesdf_fast.data import MultiResolutionDataset

    dataset = MultiResolutionDataset(dataset_path, resolution=128, nerf_resolution=64)
    loader = DataLoader(dataset, batch_size=16, num_workers=workers, shuffle=False)
    _, seconds = _timed(lambda: sum(1 for _ in loader))
    return {"case": f"read 128 + 64 thumbnails ({workers} loader workers)", "images": len(dataset),
            "seconds": seconds, "images_per_s": len(dataset) / seconds}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 synthetic images (smoke test)")
    parser.add_argument("--images", type=int, default=None, help="synthetic images (default 2000, quick 64)")
    parser.add_argument("--json", default=None, help="output path (default benchmarks/data_speed_cpu.json)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before running")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    count = args.images or (64 if args.quick else 2000)
    env = machine.environment_metadata(torch.device("cpu"))
    print(f"data_speed: {env['device_name']}, torch {env['torch']}, {env['torch_threads']} threads, "
          f"{os.cpu_count()} CPUs, load average at start {env['load_average_1_5_15']}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="stylesdf_data_speed_") as tmp:
        workdir = Path(tmp)
        dataset_path, row = bench_synthetic(workdir, count, (64, 128))
        rows.append(row)
        folder = workdir / "folder"
        _export_folder(dataset_path, folder, min(count, 500))
        for workers in sorted({1, os.cpu_count() or 1}):
            rows.append(bench_prepare(workdir, folder, workers))
        for workers in (0, 2):
            rows.append(bench_read(dataset_path, workers))
    report.print_table(rows, [("case", "case", ""), ("images", "images", "d"), ("seconds", "seconds", ".2f"),
                               ("images_per_s", "img/s", ".1f"), ("render_only_images_per_s", "render-only img/s", ".1f")])
    target = None
    if count == 2000:
        target = {"seconds": rows[0]["seconds"], "limit": SYNTHETIC_TARGET_SECONDS,
                  "met": rows[0]["seconds"] < SYNTHETIC_TARGET_SECONDS}
        print(f"target: 2000 synthetic images in < {SYNTHETIC_TARGET_SECONDS:.0f} s: "
              f"{'met' if target['met'] else 'NOT met'} ({rows[0]['seconds']:.1f} s)")
    json_path = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "data_speed_cpu.json")
    path = report.write_json(json_path, {"tool": "data_speed", "quick": args.quick, "rows": rows,
                                          "synthetic_target": target}, device=torch.device("cpu"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
