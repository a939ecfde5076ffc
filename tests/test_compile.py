"""torch.compile(fullgraph=True) of a small StyleGAN2 block that uses both ops: no graph breaks,
same values and gradients as eager."""
import pytest
import torch
from torch import nn

from stylesdf_fast import ops

from _marks import requires_kernels

pytestmark = requires_kernels


class TinyStyleGANBlock(nn.Module):
    """conv -> bias + leaky ReLU -> upsample -> blur -> conv -> bias + leaky ReLU -> downsample."""

    def __init__(self, channels=4):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.act1 = ops.FusedLeakyReLU(channels)
        self.up = ops.Upsample([1, 3, 3, 1])
        self.blur = ops.Blur([1, 3, 3, 1], pad=(2, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.act2 = ops.FusedLeakyReLU(channels, scale=1.0)
        self.down = ops.Downsample([1, 3, 3, 1])
        with torch.no_grad():
            self.act1.bias.normal_()
            self.act2.bias.normal_()

    def forward(self, x):
        x = self.act1(self.conv1(x))
        x = self.blur(self.up(x))
        x = self.act2(self.conv2(x))
        return self.down(x)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_block_matches_eager(backend):
    torch._dynamo.reset()
    block = TinyStyleGANBlock()
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    eager_out = block(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), [x] + list(block.parameters()))

    compiled = torch.compile(block, fullgraph=True, backend=backend)
    compiled_out = compiled(x)
    compiled_grads = torch.autograd.grad(compiled_out.square().sum(), [x] + list(block.parameters()))

    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-5, atol=1e-5)
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-4)


def test_compiled_ops_have_no_graph_breaks():
    torch._dynamo.reset()
    block = TinyStyleGANBlock()
    explanation = torch._dynamo.explain(block)(torch.randn(1, 4, 8, 8))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_volume_render_matches_eager():
    """The fused renderer inside a compiled function: no graph breaks, same values and gradients."""
    torch._dynamo.reset()
    raw = torch.randn(2, 3, 8, 4 + 5)
    z_vals = torch.sort(torch.rand(2, 3, 8) * 0.24 + 0.88, -1).values
    ray_norm = torch.ones(2, 3)

    def render(raw, beta):
        out = ops.sdf_volume_render(raw[..., 3], raw[..., :3], raw[..., 4:], z_vals, ray_norm, beta)
        return out.rgb.square().sum() + out.features.sum() + (out.weights * z_vals).sum()

    results = []
    for fn in (render, torch.compile(render, fullgraph=True, backend="aot_eager")):
        r, beta = raw.clone().requires_grad_(), torch.tensor([0.1], requires_grad=True)
        loss = fn(r, beta)
        results.append((loss,) + torch.autograd.grad(loss, (r, beta)))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
