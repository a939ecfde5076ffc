"""film_siren: kernel vs reference, gradients of first, second and third order, opcheck,
torch.compile, dtypes, layouts, empty shapes, determinism, the eikonal pattern, bad input."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import stylesdf_fast
from stylesdf_fast import ops, reference

from _inputs import FILM_SIREN_SHAPES, assert_close, assert_scaled_close, leaf, make_film_siren_inputs
from _marks import DEVICES, requires_cuda, requires_kernels

LOW_PRECISION = (torch.float16, torch.bfloat16)


def run_both(x, gamma, beta, cotangent):
    """[(output, (grad_x, grad_gamma, grad_beta))] of kernel and reference for the same inputs and cotangent."""
    results = []
    for impl in ("kernel", "reference"):
        inputs = (leaf(x), leaf(gamma), leaf(beta))
        out = ops.film_siren(*inputs, impl=impl)
        grads = torch.autograd.grad(out, inputs, cotangent)
        results.append((out, grads))
    return results


@requires_kernels
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", FILM_SIREN_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("siren_scale", [False, True], ids=["unit", "siren_scale"])
def test_forward_backward_match_reference(device, shape, dtype, siren_scale):
    x, gamma, beta = make_film_siren_inputs(shape, dtype, device, siren_scale=siren_scale)
    cotangent = torch.randn(shape, dtype=dtype, device=device)
    (out_k, grads_k), (out_r, grads_r) = run_both(x, gamma, beta, cotangent)
    assert out_k.shape == x.shape and out_k.dtype == dtype and out_k.is_contiguous()
    (assert_scaled_close if siren_scale else assert_close)(out_k, out_r)
    for name, gk, gr in zip(("x", "gamma", "beta"), grads_k, grads_r):
        assert gk.shape == gr.shape and gk.dtype == gr.dtype, name
        scaled = siren_scale or (name != "x" and dtype == torch.float32)  # float32 sums over rows
        (assert_scaled_close if scaled else assert_close)(gk, gr, msg=f"grad {name}")
    if shape[1] == 0 and shape[0] * shape[-1] > 0:  # no rows: the sums over them are zero
        assert torch.all(grads_k[1] == 0) and torch.all(grads_k[2] == 0)


def float32_phase_case(phases):
    """x = the given float32 phases as [1, N, C] with gamma = 1 and beta = 0, so u = x exactly, and a
    random cotangent; float64 copies of all of it for the exact answer."""
    x = phases.reshape(1, -1, 8).float()
    gamma, beta = torch.ones(1, 8), torch.zeros(1, 8)
    cotangent = torch.randn_like(x)
    return (x, gamma, beta, cotangent), tuple(t.double() for t in (x, gamma, beta, cotangent))


def first_and_second_order(x, gamma, beta, cotangent, impl):
    """The output, its vjp and the vjp of that vjp's x-gradient (the eikonal pattern)."""
    inputs = (leaf(x), leaf(gamma), leaf(beta))
    out = ops.film_siren(*inputs, impl=impl)
    grads = torch.autograd.grad(out, inputs, cotangent, create_graph=True)
    second = torch.autograd.grad(grads[0].sin().sum(), inputs)
    return [out, *grads, *second]


@requires_kernels
def test_float32_sines_and_cosines_are_accurate_over_the_whole_fast_range():
    """The CPU kernel's own vectorised sine/cosine (float32 phases up to |u| = 8192): within 2 float32
    ulps of 1 of the exact float64 answer at the same float32 phases, in every output that uses them."""
    torch.manual_seed(0)
    phases = torch.cat([torch.linspace(-8192, 8192, 40_000), torch.rand(40_000) * 20 - 10,
                        torch.tensor([0.0, -0.0, 1e-30, torch.pi / 4, torch.pi / 2, torch.pi, 8191.99])])
    phases = phases[: phases.numel() // 8 * 8]
    case32, case64 = float32_phase_case(phases)
    got = first_and_second_order(*case32, impl="kernel")
    exact = first_and_second_order(*case64, impl="reference")
    # [out, grad_x, ...]: out and grad_x are elementwise (cotangent scale ~4); the rest are sums
    assert (got[0].double() - exact[0]).abs().max() <= 2.4e-7
    assert (got[1].double() - exact[1]).abs().max() <= 2.4e-7 * 4 * case64[3].abs().max()
    for g, e in zip(got[2:], exact[2:]):
        torch.testing.assert_close(g.detach().double(), e.detach(), rtol=1e-4, atol=1e-3 * float(e.detach().abs().max()) + 1e-6)


@requires_kernels
@pytest.mark.parametrize("bad", [1.0e5, -3.0e6, 2.0e7, float("inf"), float("nan")], ids=str)
def test_float32_phases_outside_the_fast_range_fall_back_to_the_c_library(bad):
    """A block holding a phase the fast reduction cannot handle (|u| > 8192, inf, NaN) is recomputed
    with sinf/cosf: large phases stay accurate and non-finite ones give NaN, as torch.sin does."""
    torch.manual_seed(1)
    phases = torch.rand(4096) * 20 - 10
    phases[1234] = bad
    case32, case64 = float32_phase_case(phases)
    got = first_and_second_order(*case32, impl="kernel")
    expected = first_and_second_order(*case32, impl="reference")
    exact = first_and_second_order(*case64, impl="reference")
    for g, e in zip(got, expected):
        assert torch.equal(g.isnan(), e.isnan())
    if torch.isfinite(torch.tensor(bad)):
        assert (got[0].double() - exact[0]).abs().max() <= 2.4e-7
        assert (got[1].double() - exact[1]).abs().max() <= 2.4e-7 * 4 * case64[3].abs().max()
    else:
        assert got[0].flatten()[1234].isnan() and got[0].flatten()[:1234].isfinite().all()


def strided_case(device, dtype=torch.float64):
    """Non-contiguous x_lin (a permuted view), gamma and beta (every other column), and cotangent."""
    base = torch.randn(2, 6, 5, 4, dtype=dtype, device=device)  # stored [B, W, H, C] ...
    x = base.transpose(1, 2)  # ... seen as [B, H, W, C]
    wide = torch.randn(2, 8, dtype=dtype, device=device)
    gamma, beta = wide[:, ::2], wide.flip(1)[:, ::2] * 0.5
    cotangent = torch.randn(2, 8, 5, 6, dtype=dtype, device=device).permute(0, 2, 3, 1)[..., ::2]  # [B, H, W, C]
    assert not x.is_contiguous() and not gamma.is_contiguous() and not cotangent.is_contiguous()
    return x, gamma, beta, cotangent


@requires_kernels
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    x, gamma, beta, cotangent = strided_case(device)
    (out_k, grads_k), (out_r, grads_r) = run_both(x, gamma, beta, cotangent)
    assert_close(out_k, out_r)
    for gk, gr in zip(grads_k, grads_r):
        assert_close(gk, gr)
    # a last-dim stride of 2 as well
    wide = torch.randn(3, 7, 10, dtype=torch.float64, device=device)
    x2 = wide[..., ::2]
    g2, b2 = torch.randn(3, 5, dtype=torch.float64, device=device), torch.randn(3, 5, dtype=torch.float64, device=device)
    (out_k, grads_k), (out_r, grads_r) = run_both(x2, g2, b2, torch.randn_like(x2))
    assert_close(out_k, out_r)
    for gk, gr in zip(grads_k, grads_r):
        assert_close(gk, gr)


@requires_kernels
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("param_dtype", ["same", "float32"])
def test_low_precision_against_float32(device, dtype, param_dtype):
    """Half storage with float32 math: the result is the float32 reference on the same (rounded)
    inputs, rounded once; the gamma/beta sums are float32 and only rounded at the end."""
    param = dtype if param_dtype == "same" else torch.float32
    x, gamma, beta = make_film_siren_inputs((2, 9, 7, 16), dtype, device, param_dtype=param, siren_scale=True)
    cotangent = torch.randn(x.shape, device=device).to(dtype)
    inputs = (leaf(x), leaf(gamma), leaf(beta))
    out = ops.film_siren(*inputs, impl="kernel")
    grads = torch.autograd.grad(out, inputs, cotangent)
    ref_inputs = (leaf(x.float()), leaf(gamma.float()), leaf(beta.float()))
    out_r = reference.film_siren(*ref_inputs)
    grads_r = torch.autograd.grad(out_r, ref_inputs, cotangent.float())
    assert out.dtype == dtype
    assert [g.dtype for g in grads] == [dtype, param, param]
    assert_close(out, out_r, dtype=dtype)
    assert_close(grads[0], grads_r[0], dtype=dtype)
    for g, gr in zip(grads[1:], grads_r[1:]):
        if param == torch.float32:
            assert_scaled_close(g, gr)
        else:
            assert_close(g, gr, dtype=dtype)
    # the reference op itself keeps x's dtype and computes in float32
    assert ops.film_siren(x, gamma, beta, impl="reference").dtype == dtype


@requires_kernels
def test_other_param_dtypes_are_cast_to_the_math_dtype():
    """float64 gamma/beta with float32 x run in float32; their gradients come back in float64."""
    x, gamma, beta = make_film_siren_inputs((2, 3, 4), torch.float32, param_dtype=torch.float64)
    g, b = leaf(gamma), leaf(beta)
    out = ops.film_siren(x, g, b, impl="kernel")
    assert out.dtype == torch.float32
    assert_close(out, reference.film_siren(x, gamma, beta))
    out.sum().backward()
    assert g.grad.dtype == torch.float64 and b.grad.dtype == torch.float64


GRADCHECK_SHAPES = [(2, 5, 3), (2, 3, 2, 3), (3, 4)]


@requires_kernels
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", GRADCHECK_SHAPES, ids=str)
def test_gradcheck_and_gradgradcheck(device, shape):
    inputs = tuple(leaf(t) for t in make_film_siren_inputs(shape, torch.float64, device))

    def fn(x, gamma, beta):
        return ops.film_siren(x, gamma, beta, impl="kernel")

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@requires_kernels
@pytest.mark.parametrize("device", DEVICES)
def test_third_order(device):
    """The double backward's own gradient (a PyTorch formula): gradgradcheck of the first derivative."""
    x, gamma, beta = (leaf(t) for t in make_film_siren_inputs((2, 3, 2), torch.float64, device))
    v = torch.randn(2, 3, 2, dtype=torch.float64, device=device)

    def first_derivative(x, gamma, beta):
        out = ops.film_siren(x, gamma, beta, impl="kernel")
        return torch.autograd.grad(out, (x, gamma, beta), v, create_graph=True)

    assert torch.autograd.gradgradcheck(first_derivative, (x, gamma, beta))


def reference_double_backward(gg_x, gg_gamma, gg_beta, grad, x, gamma, beta):
    """film_siren_double_backward by autograd through the reference."""
    leaves = [leaf(t) for t in (grad, x, gamma, beta)]
    first = torch.autograd.grad(reference.film_siren(*leaves[1:]), leaves[1:], leaves[0], create_graph=True)
    pairing = sum((f * c).sum() for f, c in zip(first, (gg_x, gg_gamma, gg_beta)) if c is not None)
    return torch.autograd.grad(pairing, leaves, allow_unused=True, materialize_grads=True)


@requires_kernels
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("present", ["xgb", "x", "gb", "g", "b"])
@pytest.mark.parametrize("shape", [(2, 5, 3), (2, 3, 4, 3), (3, 4)], ids=str)
def test_double_backward_op_matches_reference(device, present, shape):
    x, gamma, beta = make_film_siren_inputs(shape, torch.float64, device, siren_scale=True)
    grad = torch.randn(shape, dtype=torch.float64, device=device)
    gg_x = torch.randn(shape, dtype=torch.float64, device=device) if "x" in present else None
    gg_gamma = torch.randn_like(gamma) if "g" in present else None
    gg_beta = torch.randn_like(beta) if "b" in present else None
    got = torch.ops.stylesdf_fast.film_siren_double_backward(gg_x, gg_gamma, gg_beta, grad, x, gamma, beta)
    expected = reference_double_backward(gg_x, gg_gamma, gg_beta, grad, x, gamma, beta)
    for name, g, e in zip(("d_grad", "d_x", "d_gamma", "d_beta"), got, expected):
        assert_scaled_close(g, e, msg=name)  # SIREN-scale arguments


@requires_kernels
@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_matches_reference(device):
    """The R1 pattern: differentiate a function of the input gradient w.r.t. everything."""
    x, gamma, beta = make_film_siren_inputs((2, 4, 5, 6), torch.float64, device)
    weight = torch.randn(2, 4, 5, 6, dtype=torch.float64, device=device)
    results = []
    for impl in ("kernel", "reference"):
        inputs = (leaf(x), leaf(gamma), leaf(beta))
        out = ops.film_siren(*inputs, impl=impl) * weight
        gx, gg, gb = torch.autograd.grad(out.sum(), inputs, create_graph=True)
        loss = (gx**2 * weight).sum() + gg.square().sum() + (gb * gamma).sum()
        results.append((gx, gg, gb) + torch.autograd.grad(loss, inputs))
    for k, r in zip(*results):
        assert_close(k, r)


@requires_kernels
def test_saves_only_its_inputs():
    """The memory claim: the forward keeps x_lin (not a copy), gamma and beta, and nothing else."""
    x, gamma, beta = (leaf(t) for t in make_film_siren_inputs((2, 6, 5, 8)))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ops.film_siren(x, gamma, beta, impl="kernel")
    assert len(saved) == 3
    assert [t.data_ptr() for t in saved] == [x.data_ptr(), gamma.data_ptr(), beta.data_ptr()]


class FilmSirenMLP(torch.nn.Module):
    """Two FiLM-SIREN layers and a linear SDF head, as in StyleSDF's renderer."""

    def __init__(self, hidden=6, style_dim=5):
        super().__init__()
        self.w1, self.b1 = torch.nn.Parameter(torch.randn(hidden, 3) / 3), torch.nn.Parameter(torch.randn(hidden) * 0.1)
        self.w2 = torch.nn.Parameter(torch.randn(hidden, hidden) * (6 / hidden) ** 0.5 / 25)
        self.b2 = torch.nn.Parameter(torch.randn(hidden) * 0.1)
        self.film = torch.nn.Linear(style_dim, 4 * hidden)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, points, style, impl):
        g1, b1, g2, b2 = self.film(style).chunk(4, dim=-1)
        g1, g2 = 15 * g1 + 30, 15 * g2 + 30
        h = ops.film_siren(F.linear(points, self.w1, self.b1), g1, 0.25 * b1, impl=impl)
        h = ops.film_siren(F.linear(h, self.w2, self.b2), g2, 0.25 * b2, impl=impl)
        return self.head(h)


@requires_kernels
@pytest.mark.parametrize("device", DEVICES)
def test_eikonal_loss_gradients_match_reference(device):
    """sdf -> d sdf / d points (create_graph) -> (|grad| - 1)^2 -> every parameter's gradient."""
    model = FilmSirenMLP().double().to(device)
    points = torch.rand(2, 4, 3, 3, dtype=torch.float64, device=device) * 2 - 1  # [B, R, S, 3]
    style = torch.randn(2, 5, dtype=torch.float64, device=device)
    results = []
    for impl in ("kernel", "reference"):
        p, s = leaf(points), leaf(style)
        sdf = model(p, s, impl)
        (g,) = torch.autograd.grad(sdf.sum(), p, create_graph=True)
        loss = ((g.norm(dim=-1) - 1) ** 2).mean() + sdf.square().mean()
        results.append([sdf, g, loss] + list(torch.autograd.grad(loss, [s] + list(model.parameters()))))
    names = ["sdf", "d sdf / d points", "loss", "style"] + [n for n, _ in model.named_parameters()]
    for name, k, r in zip(names, *results):
        assert_scaled_close(k, r, msg=name)  # SIREN-scale arguments (gamma around 30)


@requires_kernels
def test_opcheck():
    check = torch.library.opcheck
    forward = torch.ops.stylesdf_fast.film_siren.default
    backward = torch.ops.stylesdf_fast.film_siren_backward.default
    double = torch.ops.stylesdf_fast.film_siren_double_backward.default
    for shape in [(2, 5, 3), (2, 3, 4, 3), (3, 4), (2, 0, 3)]:
        x, gamma, beta = (leaf(t) for t in make_film_siren_inputs(shape))
        grad = leaf(torch.randn(shape))
        check(forward, (x, gamma, beta))
        check(backward, (grad, x, gamma, beta))
        gg_x, gg_gamma, gg_beta = leaf(torch.randn(shape)), leaf(torch.randn_like(gamma)), leaf(torch.randn_like(beta))
        check(double, (gg_x, gg_gamma, gg_beta, grad, x, gamma, beta))
        check(double, (None, gg_gamma, None, grad, x, gamma, beta))
        check(double, (gg_x, None, None, grad, x, gamma, beta))
    # half storage with float32 gamma/beta (autocast), and a non-contiguous x
    x, gamma, beta = make_film_siren_inputs((2, 3, 4), torch.float16, param_dtype=torch.float32)
    check(forward, (x, leaf(gamma), leaf(beta)))
    check(backward, (torch.randn(2, 3, 4).half(), x, gamma, beta))
    x, gamma, beta, _ = strided_case("cpu", torch.float32)
    check(forward, (leaf(x), leaf(gamma), leaf(beta)))


class TinyRenderer(torch.nn.Module):
    """A FiLM-SIREN layer pair as a compiled model would run it."""

    def __init__(self):
        super().__init__()
        self.mlp = FilmSirenMLP()

    def forward(self, points, style):
        return self.mlp(points, style, "kernel")


@requires_kernels
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_matches_eager(backend):
    torch._dynamo.reset()
    model = TinyRenderer()
    points, style = torch.rand(2, 4, 3, 3) * 2 - 1, torch.randn(2, 5)
    results = []
    for fn in (model, torch.compile(model, fullgraph=True, backend=backend)):
        p, s = leaf(points), leaf(style)
        out = fn(p, s)
        results.append([out] + list(torch.autograd.grad(out.square().sum(), [p, s] + list(model.parameters()))))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


@requires_kernels
def test_compiled_has_no_graph_breaks():
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(TinyRenderer())(torch.rand(1, 4, 3, 3), torch.randn(1, 5))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@requires_kernels
def test_cpu_gradients_are_deterministic_across_thread_counts():
    x, gamma, beta = make_film_siren_inputs((3, 4000, 5), torch.float32, siren_scale=True)
    grad, gg_x, gg_gamma = torch.randn(x.shape), torch.randn(x.shape), torch.randn_like(gamma)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            results.append(torch.ops.stylesdf_fast.film_siren_backward(grad, x, gamma, beta)
                           + torch.ops.stylesdf_fast.film_siren_double_backward(gg_x, gg_gamma, None, grad, x, gamma,
                                                                                beta))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_reference_matches_eager_formula():
    x, gamma, beta = make_film_siren_inputs((2, 3, 4, 5), torch.float64)
    expected = torch.sin(gamma[:, None, None, :] * x + beta[:, None, None, :])
    torch.testing.assert_close(reference.film_siren(x, gamma, beta), expected, rtol=0, atol=0)


@requires_kernels
def test_kernel_and_reference_agree_under_auto():
    x, gamma, beta = make_film_siren_inputs((3, 4, 2))
    assert_close(ops.film_siren(x, gamma, beta, impl="auto"), ops.film_siren(x, gamma, beta, impl="reference"))


@pytest.mark.parametrize(
    "build, error, words",
    [
        (lambda: (torch.randn(5), torch.randn(5, 5), torch.randn(5, 5)), ValueError, ["x_lin", "rank"]),
        (lambda: (torch.randn(2, 4, 3), torch.randn(2, 4), torch.randn(2, 3)), ValueError, ["gamma", "[2, 3]", "[2, 4]"]),
        (lambda: (torch.randn(2, 4, 3), torch.randn(2, 3), torch.randn(3)), ValueError, ["beta", "[2, 3]"]),
        (lambda: (torch.randn(2, 4, 3), torch.randn(1, 3), torch.randn(1, 3)), ValueError, ["gamma", "[B, C]"]),
        (lambda: (torch.randint(0, 3, (2, 3)), torch.randn(2, 3), torch.randn(2, 3)), TypeError, ["x_lin", "floating"]),
        (lambda: (torch.randn(2, 3), torch.ones(2, 3, dtype=torch.int64), torch.randn(2, 3)), TypeError,
         ["gamma", "floating"]),
        (lambda: ([1.0, 2.0], torch.randn(2, 3), torch.randn(2, 3)), TypeError, ["x_lin", "Tensor"]),
        (lambda: (torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3, device="meta")), ValueError,
         ["beta", "device"]),
        (lambda: (torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64)), TypeError,
         ["gamma", "beta", "same dtype"]),
    ],
)
@pytest.mark.parametrize("impl", ["kernel", "reference", "auto"])
def test_bad_input(build, error, words, impl):
    x, gamma, beta = build()
    with pytest.raises(error) as info:
        ops.film_siren(x, gamma, beta, impl=impl)
    for word in words:
        assert word in str(info.value)


def test_bad_impl():
    with pytest.raises(ValueError, match="impl"):
        ops.film_siren(torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3), impl="fast")


@requires_kernels
def test_cpp_checks_back_up_the_python_ones():
    """Called directly, the registered ops reject bad input with a RuntimeError naming the op."""
    with pytest.raises(RuntimeError, match="film_siren: gamma and beta must be"):
        torch.ops.stylesdf_fast.film_siren(torch.randn(2, 4, 3), torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="film_siren_backward: grad must have x's shape"):
        torch.ops.stylesdf_fast.film_siren_backward(torch.randn(2, 4), torch.randn(2, 3), torch.randn(2, 3),
                                                    torch.randn(2, 3))
    with pytest.raises(RuntimeError, match="float32 when x is float16"):
        torch.ops.stylesdf_fast.film_siren(torch.randn(2, 3), torch.randn(2, 3).double(), torch.randn(2, 3).double())


def test_without_the_extension(extension_absent):
    x, gamma, beta = make_film_siren_inputs((2, 3, 4))
    with pytest.raises(stylesdf_fast.KernelUnavailableError, match="film_siren"):
        ops.film_siren(x, gamma, beta, impl="kernel")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ops.film_siren(x, gamma, beta, impl="auto")
    assert any(issubclass(w.category, stylesdf_fast.KernelFallbackWarning) for w in caught)
    torch.testing.assert_close(out, reference.film_siren(x, gamma, beta))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 5, 3), (3, 17, 33), (2, 3000, 40), (2, 4, 6, 64)], ids=str)
def test_cpu_and_cuda_kernels_agree(dtype, shape):
    x, gamma, beta = make_film_siren_inputs(shape, dtype, siren_scale=True)
    cotangent = torch.randn(shape).to(dtype)
    gg = [torch.randn(shape).to(dtype), torch.randn_like(gamma), torch.randn_like(beta)]
    results = []
    for device in ("cpu", "cuda"):
        inputs = [leaf(t.to(device)) for t in (x, gamma, beta)]
        out = ops.film_siren(*inputs, impl="kernel")
        grads = torch.autograd.grad(out, inputs, cotangent.to(device))
        double = torch.ops.stylesdf_fast.film_siren_double_backward(
            *[t.to(device) for t in gg], cotangent.to(device), *[t.detach() for t in inputs])
        results.append([t.cpu() for t in (out,) + grads + double])
    names = ["y", "grad_x", "grad_gamma", "grad_beta", "d_grad", "d_x", "d_gamma", "d_beta"]
    for name, cpu_value, cuda_value in zip(names, *results):
        if cpu_value.dtype in (torch.float32, torch.float64):  # SIREN scale; sums in different orders
            assert_scaled_close(cuda_value, cpu_value, msg=name)
        else:
            assert_close(cuda_value, cpu_value, dtype=dtype, msg=name)


@requires_cuda
def test_cuda_is_bitwise_deterministic():
    x, gamma, beta = make_film_siren_inputs((2, 5000, 96), torch.float32, "cuda", siren_scale=True)
    grad = torch.randn(x.shape, device="cuda")
    gg = torch.randn_like(gamma)
    first = torch.ops.stylesdf_fast.film_siren_backward(grad, x, gamma, beta) + \
        torch.ops.stylesdf_fast.film_siren_double_backward(grad, gg, gg, grad, x, gamma, beta)
    for _ in range(3):
        again = torch.ops.stylesdf_fast.film_siren_backward(grad, x, gamma, beta) + \
            torch.ops.stylesdf_fast.film_siren_double_backward(grad, gg, gg, grad, x, gamma, beta)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


@requires_cuda
@pytest.mark.parametrize("shape", [(2, 5, 3), (2, 3, 2, 3)], ids=str)
def test_cuda_gradcheck_and_gradgradcheck(shape):
    inputs = tuple(leaf(t) for t in make_film_siren_inputs(shape, torch.float64, "cuda"))
    fn = lambda x, g, b: ops.film_siren(x, g, b, impl="kernel")  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)
