"""fused_leaky_relu: kernel vs reference, gradients of first and second order, opcheck, dtypes,
layouts, bad input."""
import pytest
import torch

from stylesdf_fast import ops, reference
from stylesdf_fast.ops import FusedLeakyReLU

from _inputs import LAYOUTS, assert_close, leaf, with_layout
from _marks import DEVICES, requires_cuda, requires_kernels

pytestmark = requires_kernels

SHAPES = [(4, 6), (2, 5, 7), (2, 3, 5, 4), (2, 3, 2, 3, 4), (0, 3, 4, 4)]
SLOPE_SCALE = [(0.2, 2**0.5), (0.2, 1.0), (0.0, 1.0), (1.5, 0.5)]


def run_both(x, bias, slope, scale, cotangent):
    """(output, grads) of kernel and reference for the same inputs and cotangent."""
    results = []
    for impl in ("kernel", "reference"):
        xi = leaf(x)
        bi = None if bias is None else leaf(bias)
        fn = ops.fused_leaky_relu if impl == "kernel" else None
        out = (fn(xi, bi, slope, scale, impl="kernel") if fn else reference.fused_leaky_relu(xi, bi, slope, scale))
        inputs = [xi] + ([bi] if bi is not None else [])
        grads = torch.autograd.grad(out, inputs, cotangent, allow_unused=True) if out.numel() else [None] * len(inputs)
        results.append((out, grads))
    return results


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_backward_match_reference(device, shape, with_bias, dtype):
    x = torch.randn(shape, dtype=dtype, device=device)
    bias = torch.randn(shape[1], dtype=dtype, device=device) if with_bias else None
    cotangent = torch.randn(shape, dtype=dtype, device=device)
    for slope, scale in SLOPE_SCALE:
        (out_k, grads_k), (out_r, grads_r) = run_both(x, bias, slope, scale, cotangent)
        assert out_k.shape == out_r.shape and out_k.dtype == dtype
        assert_close(out_k, out_r)
        for gk, gr in zip(grads_k, grads_r):
            if gr is not None:
                assert_close(gk, gr)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(device, layout):
    base = torch.randn(2, 8, 5, 6, device=device)
    x = with_layout(base, layout)
    bias = torch.randn(8, device=device)
    out = ops.fused_leaky_relu(x, bias, impl="kernel")
    assert_close(out, reference.fused_leaky_relu(base, bias))
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    cotangent = with_layout(torch.randn_like(base), layout)
    (out_k, grads_k), (out_r, grads_r) = run_both(x, bias, 0.2, 2**0.5, cotangent)
    for gk, gr in zip(grads_k, grads_r):
        assert_close(gk, gr)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_against_float32(device, dtype):
    x = torch.randn(2, 16, 9, 7, device=device).to(dtype)
    bias = torch.randn(16, device=device).to(dtype)
    out = ops.fused_leaky_relu(leaf(x), bias, impl="kernel")
    expected = reference.fused_leaky_relu(x.float(), bias.float())
    assert out.dtype == dtype
    assert_close(out, expected, dtype=dtype)
    xk, bk = leaf(x), leaf(bias)
    cotangent = torch.randn(x.shape, device=device).to(dtype)
    gx, gb = torch.autograd.grad(ops.fused_leaky_relu(xk, bk, impl="kernel"), (xk, bk), cotangent)
    xr, br = leaf(x.float()), leaf(bias.float())
    gxr, gbr = torch.autograd.grad(reference.fused_leaky_relu(xr, br), (xr, br), cotangent.float())
    assert_close(gx, gxr, dtype=dtype)
    # the bias gradient sums 9*7*2 terms: allow the rounding of each stored grad_input term
    torch.testing.assert_close(gb.float(), gbr, rtol=0.02, atol=0.02 * gbr.abs().max().item())


def test_float32_bias_with_half_input_is_cast():
    x = torch.randn(2, 4, 3, 3).half()
    bias = torch.randn(4, requires_grad=True)
    out = ops.fused_leaky_relu(x, bias, impl="kernel")
    assert out.dtype == torch.float16
    out.float().sum().backward()
    assert bias.grad.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck_and_gradgradcheck(device, with_bias):
    # keep x + b away from 0, where the function has a kink
    x = torch.randn(2, 3, 4, 3, dtype=torch.float64, device=device)
    x = x + 0.1 * x.sign()
    bias = torch.zeros(3, dtype=torch.float64, device=device) if with_bias else None
    inputs = (leaf(x),) + ((leaf(bias),) if with_bias else ())

    def fn(*args):
        return ops.fused_leaky_relu(args[0], args[1] if with_bias else None, 0.2, 2**0.5, impl="kernel")

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_matches_reference(device):
    """The R1 pattern: differentiate a function of the input gradient."""
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, device=device)
    bias = torch.randn(4, dtype=torch.float64, device=device)
    weight = torch.randn(2, 4, 5, 5, dtype=torch.float64, device=device)
    results = []
    for impl in ("kernel", "reference"):
        xi, bi = leaf(x), leaf(bias)
        out = ops.fused_leaky_relu(xi, bi, impl=impl) * weight
        (gx,) = torch.autograd.grad(out.sum(), xi, create_graph=True)
        gx2, gb2 = torch.autograd.grad((gx**2 * weight).sum() + gx.sum(), (xi, bi), allow_unused=True)
        results.append((gx, gx2, gb2))
    for k, r in zip(*results):
        # None (unused) and zeros both mean a zero gradient: the mask has no derivative
        if k is None and r is None:
            continue
        k = torch.zeros_like(r) if k is None else k
        r = torch.zeros_like(k) if r is None else r
        assert_close(k, r)


def test_opcheck():
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    bias = torch.randn(3, requires_grad=True)
    torch.library.opcheck(torch.ops.stylesdf_fast.fused_leaky_relu.default, (x, bias, 0.2, 2**0.5))
    torch.library.opcheck(torch.ops.stylesdf_fast.fused_leaky_relu.default, (x, None, 0.2, 1.0))
    cl = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.stylesdf_fast.fused_leaky_relu.default, (cl, bias, 0.2, 2**0.5))
    out = torch.randn(2, 3, 4, 5)
    grad = torch.randn(2, 3, 4, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.stylesdf_fast.fused_leaky_relu_backward.default, (grad, out, 0.2, 2**0.5, True))


def test_module_matches_official_interface():
    module = FusedLeakyReLU(5)
    assert module.bias.shape == (5,) and torch.all(module.bias == 0)
    x = torch.randn(3, 5)
    assert_close(module(x), reference.fused_leaky_relu(x, module.bias.detach()))
    assert FusedLeakyReLU(5, bias=False).bias is None
    assert set(dict(module.named_parameters())) == {"bias"}


def test_kernel_and_reference_agree_under_auto():
    x = torch.randn(3, 4, 2)
    assert_close(ops.fused_leaky_relu(x, impl="auto"), ops.fused_leaky_relu(x, impl="reference"))


@pytest.mark.parametrize(
    "build, error, words",
    [
        (lambda: (torch.randn(5), None), ValueError, ["input", "rank"]),
        (lambda: (torch.randn(2, 3), torch.randn(4)), ValueError, ["bias", "[3]"]),
        (lambda: (torch.randn(2, 3), torch.randn(3, 1)), ValueError, ["bias"]),
        (lambda: (torch.randint(0, 3, (2, 3)), None), TypeError, ["input", "floating"]),
        (lambda: (torch.randn(2, 3), torch.ones(3, dtype=torch.int64)), TypeError, ["bias", "floating"]),
        (lambda: ([1.0, 2.0], None), TypeError, ["input", "Tensor"]),
        (lambda: (torch.randn(2, 3), torch.randn(3, device="meta")), ValueError, ["bias", "device"]),
    ],
)
def test_bad_input(build, error, words):
    x, bias = build()
    with pytest.raises(error) as info:
        ops.fused_leaky_relu(x, bias, impl="kernel")
    for word in words:
        assert word in str(info.value)


def test_bad_slope_scale_and_impl():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="negative_slope"):
        ops.fused_leaky_relu(x, negative_slope=-0.1)
    with pytest.raises(ValueError, match="scale"):
        ops.fused_leaky_relu(x, scale=0.0)
    with pytest.raises(ValueError, match="impl"):
        ops.fused_leaky_relu(x, impl="fast")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cpu_and_cuda_kernels_agree(dtype, layout):
    x = with_layout(torch.randn(2, 8, 5, 6).to(dtype), layout)
    bias = torch.randn(8).to(dtype)
    cotangent = torch.randn(2, 8, 5, 6).to(dtype)
    results = []
    for device in ("cpu", "cuda"):
        xi, bi = leaf(x.to(device)), leaf(bias.to(device))
        out = ops.fused_leaky_relu(xi, bi, impl="kernel")
        grads = torch.autograd.grad(out, (xi, bi), cotangent.to(device))
        results.append([t.cpu() for t in (out,) + grads])
    for cpu_value, cuda_value in zip(*results):
        assert_close(cuda_value, cpu_value, dtype=dtype if dtype in (torch.float16, torch.bfloat16) else None)
