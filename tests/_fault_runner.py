"""`python -m stylesdf_fast.train` with one fault or one determinism patch applied, for tests/test_faults.py.

    python _fault_runner.py hang-in-save ITERATION MARKER -- TRAIN_ARGS...
        The atomic writer's torch.save, when it writes the stage-1 checkpoint of ITERATION to its
        temporary file, writes only the first half of the serialized bytes, flushes them, writes the
        full size to MARKER and sleeps: the test then kills the process with SIGKILL mid-write.

    python _fault_runner.py layout-free-draws -- TRAIN_ARGS...
    python -m torch.distributed.run --nproc_per_node W ... _fault_runner.py layout-free-draws -- TRAIN_ARGS...
        The training inputs do not depend on the process layout: a rank asked for `count` latents and
        cameras gets its rows [rank * count, (rank + 1) * count) of one global draw of
        world_size * count, made from a seed fixed by (iteration, call index within the iteration);
        the renderer's depth jitter is off (perturb = 0). With stage 1 only and no sphere
        initialisation nothing else is random, so W processes with batch b must train as one process
        with batch W * b.
"""
from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import torch


def write_half(original, obj, f, *args, **kwargs) -> int:
    """Serialize obj with the real torch.save, write the first half of its bytes to f (a path or a
    file object, whatever the atomic writer passes) and flush them; returns the full size."""
    buffer = io.BytesIO()
    original(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as handle:
            handle.write(data[:len(data) // 2])
    else:
        f.write(data[:len(data) // 2])
        f.flush()
    return len(data)


def hang_in_save(iteration: int, marker: Path) -> None:
    """Patch torch.save (which stylesdf_fast._atomic.save_torch calls on its temporary file): the
    stage-1 checkpoint of `iteration` is half written, then MARKER appears and the process sleeps."""
    original = torch.save

    def save(obj, f, *args, **kwargs):
        if not (isinstance(obj, dict) and obj.get("stage") == 1 and obj.get("iteration") == iteration):
            return original(obj, f, *args, **kwargs)
        size = write_half(original, obj, f, *args, **kwargs)
        marker.write_text(f"{size}\n")
        time.sleep(600)   # the test kills us long before this ends
        raise SystemExit("hang-in-save: not killed")

    torch.save = save


def layout_free_draws() -> None:
    from stylesdf_fast.training import loop, stages

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    original_draw, calls = stages.draw_inputs, {"iteration": None, "index": 0}

    def draw_inputs(state, count, mixing):
        if calls["iteration"] != state.iteration:
            calls["iteration"], calls["index"] = state.iteration, 0
        seed = 1_000 * state.iteration + calls["index"]
        calls["index"] += 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            whole = original_draw(state, world * count, mixing)
        return whole.rows(rank * count, (rank + 1) * count)

    original_make = stages.make_generator

    def make_generator(cfg, full_pipeline):
        generator = original_make(cfg, full_pipeline)
        generator.renderer.perturb = 0.0
        return generator

    loop.draw_inputs = draw_inputs
    stages.make_generator = make_generator


def main(argv) -> int:
    split = argv.index("--")
    mode, options, train_args = argv[0], argv[1:split], argv[split + 1:]
    if mode == "hang-in-save":
        iteration, marker = options
        hang_in_save(int(iteration), Path(marker))
    elif mode == "layout-free-draws":
        layout_free_draws()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    from stylesdf_fast import train

    return train.main(train_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
