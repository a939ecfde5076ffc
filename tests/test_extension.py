"""Loading the extension and choosing between kernel and reference."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

import stylesdf_fast
from stylesdf_fast import _extension, ops, reference


def test_extension_is_loaded_where_kernels_are_required():
    """CI sets STYLESDF_FAST_REQUIRE_KERNELS=1: the installed package must carry its CPU kernels."""
    state = stylesdf_fast.extension_status()
    if os.environ.get("STYLESDF_FAST_REQUIRE_KERNELS") == "1":
        assert state.loaded, state.reason
    if state.loaded:
        assert state.built_with_torch.split(".")[:2] == torch.__version__.split("+")[0].split(".")[:2]


def test_auto_falls_back_with_one_loud_warning(extension_absent):
    x = torch.randn(2, 3, 4, 4)
    kernel = ops.make_kernel([1, 3, 3, 1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ops.fused_leaky_relu(x, impl="auto")
        up = ops.upfirdn2d(x, kernel, 2, 1, (2, 1), impl="auto")
        ops.fused_leaky_relu(x, impl="auto")
    fallback = [w for w in caught if issubclass(w.category, stylesdf_fast.KernelFallbackWarning)]
    assert len(fallback) == 1, [str(w.message) for w in caught]
    assert "could not be imported (test)" in str(fallback[0].message)
    torch.testing.assert_close(out, reference.fused_leaky_relu(x))
    torch.testing.assert_close(up, reference.upfirdn2d(x, kernel, 2, 1, (2, 1)))


def test_kernel_impl_raises_when_unavailable(extension_absent):
    with pytest.raises(stylesdf_fast.KernelUnavailableError, match="could not be imported"):
        ops.fused_leaky_relu(torch.randn(2, 3), impl="kernel")
    with pytest.raises(stylesdf_fast.KernelUnavailableError, match="upfirdn2d"):
        ops.upfirdn2d(torch.randn(1, 1, 4, 4), torch.ones(2, 2), impl="kernel")


def test_require_kernels_turns_the_fallback_into_an_error(extension_absent, monkeypatch):
    monkeypatch.setenv("STYLESDF_FAST_REQUIRE_KERNELS", "1")
    with pytest.raises(stylesdf_fast.KernelUnavailableError, match="STYLESDF_FAST_REQUIRE_KERNELS"):
        ops.fused_leaky_relu(torch.randn(2, 3), impl="auto")


def test_reference_impl_never_warns(extension_absent):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.fused_leaky_relu(torch.randn(2, 3), impl="reference")


def test_build_without_cuda_names_the_reason(extension_without_cuda):
    reason = _extension.kernel_unavailable_reason(torch.device("cuda"))
    assert "without CUDA" in reason
    assert _extension.kernel_unavailable_reason(torch.device("cpu")) == ""
    assert "mps" in _extension.kernel_unavailable_reason(torch.device("mps"))


def test_import_never_compiles():
    """Importing the package must not reach torch's JIT build machinery."""
    code = (
        "import sys, stylesdf_fast, stylesdf_fast.ops, stylesdf_fast.reference; "
        "print('torch.utils.cpp_extension' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_disable_switch_reports_reason():
    code = "import stylesdf_fast; print(stylesdf_fast.extension_status().reason)"
    env = dict(os.environ, STYLESDF_FAST_DISABLE_KERNELS="1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert "STYLESDF_FAST_DISABLE_KERNELS" in result.stdout


def _thp_setting_after(imports, preset=None):
    """THP_MEM_ALLOC_ENABLE in a fresh interpreter after `import <imports>`, with the variable unset
    (preset None) or set to preset beforehand."""
    code = f"import os, {imports}; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if preset is not None:
        env["THP_MEM_ALLOC_ENABLE"] = preset
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(stylesdf_fast.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return result.stdout.strip()


def test_import_turns_on_huge_page_allocation_unless_the_user_chose():
    assert _thp_setting_after("stylesdf_fast") == "1"
    assert _thp_setting_after("stylesdf_fast", preset="0") == "0"


def test_import_after_torch_leaves_the_allocator_setting_alone():
    # torch reads the variable once, when it starts: setting it afterwards would only mislead
    assert _thp_setting_after("torch, stylesdf_fast") == "None"


# --- a source checkout uses the installed kernels -------------------------------------------------------

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_in(cwd, code_or_args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra or {})
    args = code_or_args if isinstance(code_or_args, list) else ["-c", code_or_args]
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _installed_extension_with_fingerprint():
    """The installed _C and its recorded fingerprint, or a skip when this environment has none."""
    from stylesdf_fast._sources import read_sidecar

    state = stylesdf_fast.extension_status()
    if not state.loaded or not read_sidecar(state.path):
        pytest.skip("needs an installed stylesdf_fast._C with its source fingerprint (pip install .)")
    return state.path


OP_CALL_USING_KERNELS = (
    "import stylesdf_fast, torch; from stylesdf_fast import ops; "
    "x = torch.randn(2, 3, 4, 4); ops.fused_leaky_relu(x, impl='auto'); "
    "state = stylesdf_fast.extension_status(); assert state.loaded, state.reason; "
    "print(stylesdf_fast.__file__); print(state.path)"
)


def test_commands_from_the_clone_root_use_the_kernels():
    """After `pip install .`, Python started in the clone's root imports the source tree (no _C of its
    own); the documented commands must still run the compiled kernels."""
    if not os.path.isdir(os.path.join(REPO_ROOT, "csrc")):
        pytest.skip("the tests do not sit in a source checkout")
    _installed_extension_with_fingerprint()
    result = _run_in(REPO_ROOT, OP_CALL_USING_KERNELS, {"STYLESDF_FAST_REQUIRE_KERNELS": "1"})
    assert result.returncode == 0, result.stderr
    package_file, extension_path = result.stdout.split()[-2:]
    assert os.path.dirname(os.path.dirname(package_file)) == REPO_ROOT   # the checkout is what was imported
    assert os.path.isfile(extension_path)
    help_text = _run_in(REPO_ROOT, ["-m", "stylesdf_fast.train", "--help"])
    assert help_text.returncode == 0, help_text.stderr
    assert "stylesdf_fast kernels: C++ CPU" in " ".join(help_text.stdout.split())


def _copy_checkout(destination):
    """A checkout without a build: the Python package (no _C), csrc/ and setup.py."""
    import shutil

    package = os.path.dirname(os.path.abspath(stylesdf_fast.__file__))
    shutil.copytree(package, destination / "stylesdf_fast", ignore=shutil.ignore_patterns("_C.*", "__pycache__"))
    shutil.copytree(os.path.join(REPO_ROOT, "csrc"), destination / "csrc")
    shutil.copy(os.path.join(REPO_ROOT, "setup.py"), destination / "setup.py")


def test_checkout_loads_the_installed_extension_only_when_built_from_its_sources(tmp_path):
    if not os.path.isdir(os.path.join(REPO_ROOT, "csrc")):
        pytest.skip("the tests do not sit in a source checkout")
    extension = _installed_extension_with_fingerprint()
    _copy_checkout(tmp_path)
    same = _run_in(tmp_path, OP_CALL_USING_KERNELS)
    if same.returncode != 0 and "other kernel sources" in same.stderr:
        pytest.skip("the installed extension was built from other sources than this checkout's csrc/")
    assert same.returncode == 0, same.stderr
    assert same.stdout.split()[-2] == str(tmp_path / "stylesdf_fast" / "__init__.py")
    assert same.stdout.split()[-1] == extension

    with open(tmp_path / "csrc" / "ops.cpp", "a") as f:
        f.write("// an edit after the install\n")
    changed = _run_in(tmp_path, "import stylesdf_fast; print(stylesdf_fast.extension_status().describe())")
    assert changed.returncode == 0, changed.stderr
    message = " ".join(changed.stdout.split())
    assert "unavailable" in message and "other kernel sources" in message
    assert f"run `pip install .` in {tmp_path}" in message


def test_checkout_without_any_installed_copy_says_what_to_run(tmp_path):
    if not os.path.isdir(os.path.join(REPO_ROOT, "csrc")):
        pytest.skip("the tests do not sit in a source checkout")
    _copy_checkout(tmp_path)
    # no installed distribution is visible to the loader
    code = ("import importlib.metadata as m; m.distributions = lambda **kw: iter(()); "
            "import stylesdf_fast; print(stylesdf_fast.extension_status().reason)")
    result = _run_in(tmp_path, code)
    assert result.returncode == 0, result.stderr
    message = " ".join(result.stdout.split())
    assert "no installed copy of stylesdf_fast was found" in message
    assert f"run `pip install .` in {tmp_path}" in message
