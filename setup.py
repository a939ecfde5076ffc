"""Builds stylesdf_fast._C ahead of time: the C++ CPU kernels always, the CUDA kernels when a CUDA
toolkit and a CUDA build of torch are both present.

Environment:
  STYLESDF_FAST_SKIP_CUDA=1   build the CPU kernels only, even where CUDA could be built
  TORCH_CUDA_ARCH_LIST        GPU architectures (default "7.5;8.0;8.6;8.9;9.0+PTX")
  MAX_JOBS                    parallel compile jobs (honoured by torch's ninja build)
  CUDA_HOME / CUDA_PATH       the CUDA toolkit (default: /usr/local/cuda when it has bin/nvcc)
"""
import glob
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

DEFAULT_CUDA_ARCH_LIST = "7.5;8.0;8.6;8.9;9.0+PTX"
ROOT = os.path.dirname(os.path.abspath(__file__))


def truthy(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def find_cuda_home():
    """The toolkit root. Checked before torch.utils.cpp_extension is imported, because that module
    guesses the root from the `nvcc` on PATH, which on some machines is a wrapper outside it."""
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.isfile(os.path.join(candidate, "bin", "nvcc")):
            return os.path.realpath(candidate)
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.isdir(os.path.join(root, "include")) and os.path.exists(os.path.join(root, "include", "cuda.h")):
            return root
    return None


def build_extension():
    cuda_home = None if truthy("STYLESDF_FAST_SKIP_CUDA") else find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    with_cuda = cuda_home is not None and torch.version.cuda is not None
    sources = ["csrc/ops.cpp", "csrc/python_module.cpp"] + sorted(glob.glob("csrc/*/*_cpu.cpp"))
    torch_version = torch.__version__.split("+")[0]
    define_macros = [("STYLESDF_FAST_TORCH_VERSION", f'"{torch_version}"')]
    # the C++ standard is chosen by torch (17 or 20). No FMA contraction: a vectorised loop may start
    # with a few scalar iterations for alignment, and with contraction those round differently from
    # the vector body, so results would depend on where a buffer happens to start (run to run).
    cxx_flags = ["-O3", "-ffp-contract=off"]
    extra_link_args = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is header code: without OpenMP here it silently runs on one thread.
        cxx_flags.append("-fopenmp")
        extra_link_args.append("-fopenmp")
    extra_compile_args = {"cxx": cxx_flags}
    if with_cuda:
        # torch's build helper indexes the detected GPUs when this is unset: no GPU, no build.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
        sources += sorted(glob.glob("csrc/*/*_cuda.cu"))
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        extension_class = CUDAExtension
    else:
        extension_class = CppExtension
    print(f"stylesdf_fast: building the CPU kernels{' and the CUDA kernels' if with_cuda else ''} "
          f"against torch {torch.__version__}"
          + ("" if with_cuda else f" (CUDA skipped: {cuda_skip_reason(cuda_home, torch)})"))
    extension = extension_class(
        name="stylesdf_fast._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )
    return [extension], {"build_ext": with_source_fingerprint(BuildExtension.with_options(use_ninja=True))}


def load_sources_module():
    """stylesdf_fast/_sources.py, loaded by path: the package itself cannot be imported while it builds."""
    spec = importlib.util.spec_from_file_location("_stylesdf_fast_sources", os.path.join(ROOT, "stylesdf_fast", "_sources.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_source_fingerprint(build_ext_class):
    """build_ext that also writes the fingerprint of csrc/ beside each extension it builds (`_C.sources`):
    a source checkout without its own build uses the installed extension only when the fingerprints
    match (stylesdf_fast/_extension.py)."""
    sources = load_sources_module()

    fingerprint = sources.sources_fingerprint(Path(ROOT) / "csrc") + "\n"

    class BuildExtWithFingerprint(build_ext_class):
        def build_extension(self, ext):
            super().build_extension(ext)
            Path(self.get_ext_fullpath(ext.name)).with_name(sources.SIDECAR_NAME).write_text(fingerprint)

        def run(self):
            super().run()
            if self.inplace:   # setuptools builds into build/ and copies only the library into the tree
                (Path(ROOT) / "stylesdf_fast" / sources.SIDECAR_NAME).write_text(fingerprint)

    return BuildExtWithFingerprint


def cuda_skip_reason(cuda_home, torch):
    if truthy("STYLESDF_FAST_SKIP_CUDA"):
        return "STYLESDF_FAST_SKIP_CUDA is set"
    if cuda_home is None:
        return "no CUDA toolkit found (set CUDA_HOME)"
    return f"torch {torch.__version__} is a CPU-only build"


ext_modules, cmdclass = build_extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
