"""What was measured, and on what: the machine's copy bandwidth (the reference for GB/s), which
compiled extension was loaded, and the environment every result file records."""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Dict, Optional

import torch

from .memory import MIB
from .timing import time_step

__all__ = ["copy_bandwidth", "extension_file_info", "torch_op_available", "cpu_model", "git_info",
           "environment_metadata", "allocator_note",
           "huge_pages_probe", "huge_pages_note", "max_rss_mib"]


def copy_bandwidth(device, *, size_mib: int = 256, repeats: int = 10, max_seconds: float = 10.0) -> Dict[str, object]:
    """GB/s (1e9 bytes/s, read + write counted) of copying a `size_mib` MiB float32 tensor:
    - "clone": x.clone() (allocates its output each time, as the ops do; on CPU that includes the
      first-touch page faults of a fresh large allocation): the reference bandwidth of the benchmarks;
    - "copy_": y.copy_(x) into a preallocated tensor (pure streaming copy, for comparison)."""
    numel = size_mib * MIB // 4
    x = torch.rand(numel, device=device)
    y = torch.empty_like(x)
    moved = 2 * x.numel() * x.element_size()
    result: Dict[str, object] = {"size_mib": size_mib, "bytes_per_copy": moved}
    for name, step in (("clone", lambda: x.clone()), ("copy_", lambda: y.copy_(x))):
        timing = time_step(step, device=device, repeats=repeats, warmup=2, max_seconds=max_seconds)
        result[name] = {"median_ms": timing["median_ms"], "repeats": timing["repeats"],
                        "gb_per_s": moved / (timing["median_ms"] * 1e-3) / 1e9}
    result["gb_per_s"] = result["clone"]["gb_per_s"]
    return result


def extension_file_info(module: str = "stylesdf_fast._C") -> Dict[str, object]:
    """Which compiled library was measured: path, modification time (UTC) and SHA-256 of `module`'s
    file (the extension can be rebuilt in place between or during runs). {"file": None} when absent."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return {"file": None}
    path = Path(spec.origin)
    try:
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return {"file": str(path)}
    mtime = _dt.datetime.fromtimestamp(stat.st_mtime, _dt.timezone.utc).isoformat(timespec="seconds")
    return {"file": str(path), "file_mtime": mtime, "file_sha256": digest}


def torch_op_available(namespace: str, name: str) -> bool:
    """Whether torch.ops.<namespace>.<name> is registered in this process (False, never an error,
    when the namespace or the op is missing)."""
    try:
        getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_info(path: Optional[os.PathLike] = None) -> Dict[str, object]:
    """Commit hash (None when there is no repository or no commit yet) and whether the tree is dirty."""
    cwd = str(path or Path(__file__).resolve().parent)

    def git(*args):
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None or commit is None else bool(status)}


def _read_text(path: str) -> Optional[str]:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def environment_metadata(device) -> Dict[str, object]:
    device = torch.device(device)
    meta: Dict[str, object] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": str(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        # large CPU tensors on transparent huge pages (benchmarks/_allocator.py) or glibc's default
        "thp_mem_alloc_enable_env": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "transparent_hugepage": _read_text("/sys/kernel/mm/transparent_hugepage/enabled"),
        # other processes competing for the cores make every number noisier
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta["device_name"] = props.name
        meta["device_memory_gib"] = props.total_memory / 2**30
        meta["device_capability"] = f"{props.major}.{props.minor}"
    else:
        meta["device_name"] = meta["cpu_model"]
    meta["git"] = git_info()
    return meta


def allocator_note(env: Dict[str, object]) -> str:
    """One line saying how large CPU tensors were allocated (it changes CPU times by up to 1.5x)."""
    flag = env.get("thp_mem_alloc_enable_env")
    mode = "transparent huge pages" if flag == "1" else "glibc default (page by page)"
    return (f"CPU allocator for large tensors: {mode} (THP_MEM_ALLOC_ENABLE={flag}; "
            f"system setting: {env.get('transparent_hugepage')})")


def huge_pages_probe(size_mib: int = 64) -> Dict[str, object]:
    """Whether large CPU tensors really sit on transparent huge pages in this process (the allocator
    setting THP_MEM_ALLOC_ENABLE changes CPU times by up to 1.5x, the reference's most): a fresh
    `size_mib` MiB tensor is written once and the AnonHugePages of its mapping are read from
    /proc/self/smaps. "on" is None where that cannot be read (not Linux)."""
    result: Dict[str, object] = {
        "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "system_setting": None, "probe_mib": size_mib, "anon_huge_pages_mib": None, "on": None,
    }
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            result["system_setting"] = f.read().strip()
    except OSError:
        pass
    probe = torch.empty(size_mib * MIB // 4, dtype=torch.float32).fill_(1.0)
    address = probe.data_ptr()
    try:
        inside = False
        with open("/proc/self/smaps") as f:
            for line in f:
                fields = line.split()
                if "-" in fields[0] and ":" not in fields[0]:  # a mapping's header: start-end perms ...
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    inside = start <= address < end
                elif inside and fields[0] == "AnonHugePages:":
                    result["anon_huge_pages_mib"] = int(fields[1]) / 1024  # kB
                    result["on"] = int(fields[1]) > 0
                    break
    except (OSError, ValueError, IndexError):
        pass
    del probe
    return result


def huge_pages_note(probe: Dict[str, object]) -> str:
    state = {True: "ON", False: "OFF", None: "unknown"}[probe["on"]]
    measured = ("" if probe["anon_huge_pages_mib"] is None else
                f"; a fresh {probe['probe_mib']} MiB tensor sits on {probe['anon_huge_pages_mib']:.0f} MiB of huge pages")
    return (f"huge pages: {state} (THP_MEM_ALLOC_ENABLE={probe['thp_mem_alloc_enable']}, system "
            f"{probe['system_setting']}{measured})")


def max_rss_mib() -> Optional[float]:
    """This process's peak resident memory in MiB (None where getrusage is missing)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
