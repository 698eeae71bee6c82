"""upsample_mul (the fused FEM top-down step): forward, autograd, layouts."""

import pytest
import torch

import dsfd.ops.compiled as ops
from dsfd.ops import reference as ref

from conftest import cpu_and_cuda

SHAPES = [
    # (upper h, w), (lateral H, W)
    ((5, 5), (10, 10)),  # exact 2x
    ((3, 4), (5, 7)),  # odd sizes (ceil-mode maps)
    ((1, 1), (4, 6)),  # 1x1 upper broadcasts
    ((8, 8), (8, 8)),  # same size
    ((7, 9), (13, 17)),
]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("up_hw,lat_hw", SHAPES)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_upsample_mul_forward(device, up_hw, lat_hw, align_corners, relu):
    g = torch.Generator().manual_seed(0)
    upper = torch.randn(2, 3, *up_hw, generator=g).to(device)
    lateral = torch.randn(2, 3, *lat_hw, generator=g).to(device)
    out = ops.upsample_mul(upper, lateral, align_corners, relu)
    torch.testing.assert_close(out, ref.upsample_mul(upper, lateral, align_corners, relu), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_upsample_mul_gradcheck(device, align_corners, relu):
    g = torch.Generator().manual_seed(1)
    upper = torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64).to(device).requires_grad_()
    lateral = torch.randn(2, 2, 5, 7, generator=g, dtype=torch.float64).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda u, l: ops.upsample_mul(u, l, align_corners, relu), (upper, lateral))
    # non-contiguous inputs
    upper_t = torch.randn(2, 2, 4, 3, generator=g, dtype=torch.float64).to(device).transpose(2, 3).requires_grad_()
    lateral_t = torch.randn(2, 2, 7, 5, generator=g, dtype=torch.float64).to(device).transpose(2, 3).requires_grad_()
    assert not upper_t.is_contiguous()
    assert torch.autograd.gradcheck(lambda u, l: ops.upsample_mul(u, l, align_corners, relu), (upper_t, lateral_t))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_upsample_mul_grads_match_reference(device):
    g = torch.Generator().manual_seed(2)
    upper = torch.randn(2, 4, 6, 5, generator=g).to(device)
    lateral = torch.randn(2, 4, 11, 9, generator=g).to(device)
    grad = torch.randn(2, 4, 11, 9, generator=g).to(device)
    grads = []
    for fn in (ops.upsample_mul, ref.upsample_mul):
        u, l = upper.clone().requires_grad_(), lateral.clone().requires_grad_()
        fn(u, l, False, True).backward(grad)
        grads.append((u.grad, l.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_upsample_mul_channels_last_and_dtypes(device):
    g = torch.Generator().manual_seed(3)
    upper = torch.randn(2, 8, 5, 5, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    lateral = torch.randn(2, 8, 9, 10, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    out = ops.upsample_mul(upper, lateral, False, True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref.upsample_mul(upper, lateral, False, True), rtol=1e-6, atol=1e-6)
    for dtype, tol in [(torch.float16, 2e-3), (torch.bfloat16, 2e-2), (torch.float64, 1e-12)]:
        u, l = upper.to(dtype), lateral.to(dtype)
        out = ops.upsample_mul(u, l, True, False)
        assert out.dtype == dtype
        expected = ref.upsample_mul(u.double(), l.double(), True, False)
        torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol * 4)


CL = torch.channels_last


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("up_hw,lat_hw", SHAPES)
@pytest.mark.parametrize("layouts", [("cl", "cl"), ("nchw", "cl"), ("cl", "nchw")])
def test_upsample_mul_channels_last_paths_match_reference(device, up_hw, lat_hw, layouts):
    """The NHWC kernels (lateral channels_last) and the mixed layouts: forward, both gradients, output layout."""
    g = torch.Generator().manual_seed(4)
    fmt = {"cl": CL, "nchw": torch.contiguous_format}
    upper = torch.randn(2, 5, *up_hw, generator=g).to(device).contiguous(memory_format=fmt[layouts[0]])
    lateral = torch.randn(2, 5, *lat_hw, generator=g).to(device).contiguous(memory_format=fmt[layouts[1]])
    grad = torch.randn(2, 5, *lat_hw, generator=g).to(device)
    for align_corners, relu in [(False, True), (True, False)]:
        results = []
        for fn in (ops.upsample_mul, ref.upsample_mul):
            u, l = upper.clone().requires_grad_(), lateral.clone().requires_grad_()
            out = fn(u, l, align_corners, relu)
            out.backward(grad)
            results.append((out, u.grad, l.grad))
        (out, gu, gl), (r_out, r_gu, r_gl) = results
        if layouts[1] == "cl":
            assert out.is_contiguous(memory_format=CL)
        torch.testing.assert_close(out, r_out, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(gu, r_gu, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gl, r_gl, rtol=1e-5, atol=1e-5)
        assert gu.is_contiguous(memory_format=fmt[layouts[0]]) and gl.is_contiguous(memory_format=fmt[layouts[1]])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_upsample_mul_gradcheck_channels_last(device):
    g = torch.Generator().manual_seed(5)
    upper = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64).to(device).contiguous(memory_format=CL)
    lateral = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64).to(device).contiguous(memory_format=CL)
    for relu in (False, True):
        assert torch.autograd.gradcheck(lambda u, l: ops.upsample_mul(u, l, False, relu),
                                        (upper.requires_grad_(), lateral.requires_grad_()))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_upsample_mul_empty_batch(device):
    upper = torch.zeros(0, 3, 2, 2, device=device, requires_grad=True)
    lateral = torch.zeros(0, 3, 4, 4, device=device, requires_grad=True)
    out = ops.upsample_mul(upper, lateral)
    assert out.shape == (0, 3, 4, 4)
    out.sum().backward()
    assert upper.grad.shape == upper.shape


def test_upsample_mul_input_errors():
    with pytest.raises(RuntimeError, match="differ in batch or channels"):
        ops.upsample_mul(torch.rand(1, 3, 2, 2), torch.rand(1, 4, 4, 4))
    with pytest.raises(RuntimeError, match=r"\[B, C, H, W\]"):
        ops.upsample_mul(torch.rand(3, 2, 2), torch.rand(3, 4, 4))
    with pytest.raises(RuntimeError, match="Float but lateral is Double"):
        ops.upsample_mul(torch.rand(1, 3, 2, 2), torch.rand(1, 3, 4, 4, dtype=torch.float64))
