"""upfirdn2d: kernel vs reference over every StyleGAN2 configuration and unusual ones, gradients of
first and second order, opcheck, dtypes, layouts, wrappers, bad input."""
import importlib

import pytest
import torch

from stylesdf_fast import ops, reference

from _inputs import LAYOUTS, UPFIRDN_CASES, assert_close, leaf, make_fir_kernel, upfirdn_case_ids, with_layout
from _marks import DEVICES, requires_cuda, requires_kernels

pytestmark = requires_kernels
# the submodule (the package attribute of the same name is the function)
upfirdn2d_module = importlib.import_module("stylesdf_fast.ops.upfirdn2d")


def forward_and_input_grad(impl, x, kernel, up, down, pad, cotangent_seed=1):
    xi = leaf(x)
    if impl == "kernel":
        out = ops.upfirdn2d(xi, kernel, up, down, pad, impl="kernel")
    else:
        out = reference.upfirdn2d(xi, kernel, up, down, pad)
    generator = torch.Generator().manual_seed(cotangent_seed)
    cotangent = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out)
    (grad,) = torch.autograd.grad(out, xi, cotangent) if out.numel() else (torch.zeros_like(x),)
    return out, grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, shape, kshape, up, down, pad", UPFIRDN_CASES, ids=upfirdn_case_ids())
def test_forward_backward_match_reference(device, dtype, name, shape, kshape, up, down, pad):
    x = torch.randn(shape, dtype=dtype, device=device)
    kernel = make_fir_kernel(kshape, dtype=dtype, device=device)
    out_k, grad_k = forward_and_input_grad("kernel", x, kernel, up, down, pad)
    out_r, grad_r = forward_and_input_grad("reference", x, kernel, up, down, pad)
    assert out_k.shape == out_r.shape and out_k.dtype == dtype
    assert_close(out_k, out_r)
    assert grad_k.shape == x.shape
    assert_close(grad_k, grad_r)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name, shape, kshape, up, down, pad", UPFIRDN_CASES[:3] + UPFIRDN_CASES[6:7],
                         ids=upfirdn_case_ids()[:3] + upfirdn_case_ids()[6:7])
def test_layouts(device, layout, name, shape, kshape, up, down, pad):
    base = torch.randn(shape, device=device)
    x = with_layout(base, layout)
    kernel = make_fir_kernel(kshape, dtype=torch.float32, device=device)
    out = ops.upfirdn2d(x, kernel, up, down, pad, impl="kernel")
    assert_close(out, reference.upfirdn2d(base, kernel, up, down, pad))
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    out_k, grad_k = forward_and_input_grad("kernel", x, kernel, up, down, pad)
    out_r, grad_r = forward_and_input_grad("reference", base, kernel, up, down, pad)
    assert_close(grad_k, grad_r)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel_dtype", ["float32", "same"])
def test_low_precision_against_float32(device, dtype, kernel_dtype):
    x = torch.randn(2, 8, 9, 7, device=device).to(dtype)
    kernel = ops.make_kernel([1, 3, 3, 1]).to(device) * 4
    kernel = kernel if kernel_dtype == "float32" else kernel.to(dtype)
    for up, down, pad in [(2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (2, 2))]:
        out = ops.upfirdn2d(x, kernel, up, down, pad, impl="kernel")
        assert out.dtype == dtype
        expected = reference.upfirdn2d(x.float(), kernel.float(), up, down, pad)
        assert_close(out, expected, dtype=dtype)
        xk = leaf(x)
        cotangent = torch.randn(out.shape, device=device).to(dtype)
        (grad,) = torch.autograd.grad(ops.upfirdn2d(xk, kernel, up, down, pad, impl="kernel"), xk, cotangent)
        xr = leaf(x.float())
        (grad_r,) = torch.autograd.grad(reference.upfirdn2d(xr, kernel.float(), up, down, pad), xr, cotangent.float())
        assert grad.dtype == dtype
        assert_close(grad, grad_r, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, shape, kshape, up, down, pad", UPFIRDN_CASES[:-1], ids=upfirdn_case_ids()[:-1])
def test_gradcheck_and_gradgradcheck(device, name, shape, kshape, up, down, pad):
    x = leaf(torch.randn(shape, dtype=torch.float64, device=device)[:, :, :6, :6])
    kernel = make_fir_kernel(kshape, device=device)

    def fn(input):
        return ops.upfirdn2d(input, kernel, up, down, pad, impl="kernel")

    try:
        fn(x)
    except ValueError:
        pytest.skip("cropped input leaves no output")
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_matches_reference(device):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device=device)
    kernel = make_fir_kernel((4, 4), device=device)
    weight = torch.randn(2, 3, 16, 16, dtype=torch.float64, device=device)
    results = []
    for impl in ("kernel", "reference"):
        xi = leaf(x)
        out = ops.upfirdn2d(xi, kernel, 2, 1, (2, 1), impl=impl)
        (gx,) = torch.autograd.grad((out**2 * weight).sum(), xi, create_graph=True)
        (gx2,) = torch.autograd.grad((gx**3).sum(), xi)
        results.append((out, gx, gx2))
    for k, r in zip(*results):
        assert_close(k, r)


@pytest.mark.parametrize("name, shape, kshape, up, down, pad", UPFIRDN_CASES, ids=upfirdn_case_ids())
def test_opcheck(name, shape, kshape, up, down, pad):
    x = torch.randn(shape, requires_grad=True)
    kernel = make_fir_kernel(kshape, dtype=torch.float32)
    up_x, up_y = (up, up) if isinstance(up, int) else up
    down_x, down_y = (down, down) if isinstance(down, int) else down
    pads = tuple(pad) * 2 if len(pad) == 2 else tuple(pad)
    args = (x, kernel, up_x, up_y, down_x, down_y) + pads
    torch.library.opcheck(torch.ops.stylesdf_fast.upfirdn2d.default, args)


def test_opcheck_channels_last():
    x = torch.randn(2, 5, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    kernel = make_fir_kernel((4, 4), dtype=torch.float32)
    torch.library.opcheck(torch.ops.stylesdf_fast.upfirdn2d.default, (x, kernel, 2, 2, 1, 1, 2, 1, 2, 1))


def test_kernel_gradient_request_raises():
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    kernel = make_fir_kernel((4, 4), dtype=torch.float32).requires_grad_()
    for impl in ("kernel", "reference"):
        with pytest.raises(RuntimeError, match="FIR kernel"):
            ops.upfirdn2d(x, kernel, 2, 1, (2, 1), impl=impl).sum().backward()
        # asking only for the input gradient is fine
        (grad,) = torch.autograd.grad(ops.upfirdn2d(x, kernel, 2, 1, (2, 1), impl=impl).sum(), x)
        assert grad.shape == x.shape


def test_backward_arguments_restore_input_shape():
    for name, shape, kshape, up, down, pad in UPFIRDN_CASES:
        up_xy = (up, up) if isinstance(up, int) else up
        down_xy = (down, down) if isinstance(down, int) else down
        pads = tuple(pad) * 2 if len(pad) == 2 else tuple(pad)
        out_hw = upfirdn2d_module.output_size(shape[2:], kshape, up_xy, down_xy, pads)
        g_up, g_down, g_pads = upfirdn2d_module.backward_arguments(shape[2:], out_hw, kshape, up_xy, down_xy, pads)
        assert upfirdn2d_module.output_size(out_hw, kshape, g_up, g_down, g_pads) == tuple(shape[2:]), name


def test_stylegan_wrappers():
    x = torch.randn(2, 3, 8, 8)
    taps = [1, 3, 3, 1]
    kernel = ops.make_kernel(taps)
    assert torch.isclose(kernel.sum(), torch.tensor(1.0))
    up = ops.upsample2d(x, kernel, impl="kernel")
    assert up.shape == (2, 3, 16, 16)
    assert_close(up, reference.upfirdn2d(x, kernel * 4, 2, 1, (2, 1)))
    down = ops.downsample2d(x, kernel, impl="kernel")
    assert down.shape == (2, 3, 4, 4)
    assert_close(down, reference.upfirdn2d(x, kernel, 1, 2, (1, 1)))
    assert ops.blur2d(x, kernel, (2, 2)).shape == (2, 3, 9, 9)
    # a constant image stays constant away from the borders (the kernels are normalised)
    ones = torch.ones(1, 1, 8, 8)
    assert torch.allclose(ops.upsample2d(ones, kernel)[..., 3:-3, 3:-3], torch.ones(1))
    assert torch.allclose(ops.Upsample(taps)(x), up)
    assert torch.allclose(ops.Downsample(taps)(x), down)
    blur = ops.Blur(taps, pad=(1, 1), upsample_factor=2)
    assert torch.allclose(blur.kernel, kernel * 4)
    assert set(dict(blur.named_buffers())) == {"kernel"}


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: ops.upfirdn2d(torch.randn(3, 8, 8), torch.ones(2, 2)), ValueError, ["input", "4-D"]),
        (lambda: ops.upfirdn2d(torch.randn(1, 3, 8, 8), torch.ones(2, 2, 2)), ValueError, ["kernel", "2-D"]),
        (lambda: ops.upfirdn2d(torch.randn(1, 3, 8, 8), torch.ones(2, 2), pad=(1, 1, 1)), ValueError, ["pad", "4"]),
        (lambda: ops.upfirdn2d(torch.randn(1, 3, 8, 8), torch.ones(2, 2), pad=1), TypeError, ["pad"]),
        (lambda: ops.upfirdn2d(torch.randn(1, 3, 8, 8), torch.ones(2, 2), up=0), ValueError, ["up"]),
        (lambda: ops.upfirdn2d(torch.randn(1, 3, 8, 8), torch.ones(2, 2), down=(1, 2, 3)), TypeError, ["down"]),
        (lambda: ops.upfirdn2d(torch.randn(1, 3, 8, 8), torch.ones(2, 2), up=1.5), TypeError, ["up"]),
        (lambda: ops.upfirdn2d(torch.randint(0, 4, (1, 3, 8, 8)), torch.ones(2, 2)), TypeError, ["input", "floating"]),
        (lambda: ops.upfirdn2d(torch.randn(1, 3, 8, 8), torch.ones(2, 2, dtype=torch.int32)), TypeError, ["kernel"]),
        (lambda: ops.upfirdn2d(torch.randn(1, 3, 8, 8), torch.ones(2, 2, device="meta")), ValueError, ["kernel", "device"]),
        (lambda: ops.upfirdn2d(torch.randn(1, 3, 4, 4), torch.ones(2, 2), pad=(-4, -4)), ValueError, ["output", "crop"]),
        (lambda: ops.upfirdn2d(torch.randn(1, 3, 4, 4), torch.ones(2, 2), impl="cuda"), ValueError, ["impl"]),
    ],
)
def test_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), str(info.value)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name, shape, kshape, up, down, pad", UPFIRDN_CASES, ids=upfirdn_case_ids())
def test_cpu_and_cuda_kernels_agree(dtype, name, shape, kshape, up, down, pad):
    x = torch.randn(shape).to(dtype)
    kernel = make_fir_kernel(kshape, dtype=torch.float32)
    results = []
    for device in ("cpu", "cuda"):
        out, grad = forward_and_input_grad("kernel", x.to(device), kernel.to(device), up, down, pad)
        results.append((out.cpu(), grad.cpu()))
    for cpu_value, cuda_value in zip(*results):
        assert_close(cuda_value, cpu_value, dtype=dtype if dtype in (torch.float16, torch.bfloat16) else None)
