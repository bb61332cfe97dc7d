"""Pooling against its definitions (float64 by hand): GAP, GMP, GeM, and P-pooling (ES-Net eq. 6-7)."""

import math

import numpy as np
import pytest
import torch

from esreid.models.pooling import POOLING, build_pooling, lehmer_pool


def _map(seed=0, shape=(2, 3, 4, 3), scale=5.0, zeros=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64) * scale + 0.05
    if zeros:
        x[torch.rand(shape, generator=g) < zeros] = 0.0
    return x


def _lehmer64(a, l):
    """eq. 6 per (b, c), numpy float64, straight from the definition."""
    a = a.reshape(a.shape[0], a.shape[1], -1)
    return (a**l).sum(-1) / (a ** (l - 1)).sum(-1)


def _dF_dl64(a, l):
    """eq. 7, first line."""
    a = a.reshape(a.shape[0], a.shape[1], -1)
    F = _lehmer64(a, l)
    ln = np.log(a)
    return F * ((a**l * ln).sum(-1) / (a**l).sum(-1) - (a ** (l - 1) * ln).sum(-1) / (a ** (l - 1)).sum(-1))


def _dF_da64(a, l):
    """eq. 7, second line (spec §1.5): [l a_j^(l-1) - (l-1) F a_j^(l-2)] / Σ a^(l-1)."""
    flat = a.reshape(a.shape[0], a.shape[1], -1)
    F = _lehmer64(flat, l)[..., None]
    den = (flat ** (l - 1)).sum(-1, keepdims=True)
    return ((l * flat ** (l - 1) - (l - 1) * F * flat ** (l - 2)) / den).reshape(a.shape)


@pytest.mark.parametrize("l", [1.0, 1.5, 3.0, 7.3, 20.0])
def test_lehmer_value_and_gradients_match_eq6_eq7(l):
    x64 = _map(seed=int(l * 10))
    a = x64.numpy()
    x = x64.float().requires_grad_()
    lt = torch.tensor(l, requires_grad=True)
    out = lehmer_pool(x, lt)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out.detach().double().numpy(), _lehmer64(a, l), rtol=2e-6)
    w = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    g_x, g_l = torch.autograd.grad((out * w).sum(), (x, lt))
    wn = w.double().numpy()
    np.testing.assert_allclose(g_l.item(), (wn * _dF_dl64(a, l)).sum(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_x.double().numpy(), wn[..., None, None] * _dF_da64(a, l), rtol=1e-4, atol=1e-7)


def test_lehmer_order_one_is_gap_and_large_order_tends_to_gmp():
    x = _map(seed=3).float()
    torch.testing.assert_close(lehmer_pool(x, 1.0), x.mean(dim=(2, 3)), rtol=1e-6, atol=0)
    # make the maximum stand out (others <= 0.9 max) so that order 60 is within 0.1% of the max
    x = x / x.amax(dim=(2, 3), keepdim=True) * 0.9
    x[:, :, 1, 2] = 1.0 + torch.arange(3.0)
    gmp = x.amax(dim=(2, 3))
    assert torch.all(lehmer_pool(x, 60.0) <= gmp * (1 + 1e-6))
    torch.testing.assert_close(lehmer_pool(x, 60.0), gmp, rtol=1e-3, atol=0)
    errs = [(gmp - lehmer_pool(x, l)).abs().max().item() for l in (2.0, 5.0, 20.0, 60.0)]
    assert errs == sorted(errs, reverse=True)  # monotone approach to GMP


def _large_map():
    """The spec's numerics case: a 24x8 map with max 20 where naive float32 overflows (20^30 > 3.4e38)."""
    x = _map(seed=5, shape=(2, 4, 24, 8), scale=6.0, zeros=0.3)
    x[:, :, 3, 4] = 20.0
    return x


def test_large_order_is_finite_in_float32():
    x64 = _large_map()
    x = x64.float().requires_grad_()
    naive = (x.detach() ** 60).sum(dim=(2, 3)) / (x.detach() ** 59).sum(dim=(2, 3))
    assert not torch.isfinite(naive).all()  # the case really overflows naively
    lt = torch.tensor(60.0, requires_grad=True)
    out = lehmer_pool(x, lt)
    g_x, g_l = torch.autograd.grad(out.sum(), (x, lt))
    assert torch.isfinite(out).all() and torch.isfinite(g_x).all() and torch.isfinite(g_l)
    np.testing.assert_allclose(out.detach().double().numpy(), _lehmer64(x64.clamp(min=1e-6).numpy(), 60.0), rtol=1e-5)


def test_large_order_under_bf16_autocast():
    pool = build_pooling("ppool", init=60.0)
    conv = torch.nn.Conv2d(4, 4, 1)
    with torch.no_grad():  # identity 1x1 conv: no dead channel (whose float64 reference would be 0/0)
        conv.weight.copy_(torch.eye(4)[:, :, None, None])
        conv.bias.zero_()
    x = _large_map().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.relu(conv(x)) * 10  # bf16 map, like a backbone output under autocast
        assert y.dtype == torch.bfloat16
        out = pool(y)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = _lehmer64(y.detach().double().clamp(min=1e-6).numpy(), 60.0)
    np.testing.assert_allclose(out.detach().double().numpy(), ref, rtol=1e-5)
    out.sum().backward()
    assert torch.isfinite(pool.raw.grad) and torch.isfinite(conv.weight.grad).all()


@pytest.mark.parametrize("l", [1.5, 3.0])
def test_maps_with_zeros(l):
    x64 = _map(seed=7, zeros=0.5)
    x64[0, 0] = 0.0  # an all-zero channel
    x = x64.float().requires_grad_()
    out = lehmer_pool(x, l)
    # zeros contribute nothing to either sum for l > 1 (eps = 1e-6 changes the result by < 1e-6 relative)
    ref = _lehmer64(x64.clamp(min=1e-6).numpy(), l)
    np.testing.assert_allclose(out.detach().double().numpy(), ref, rtol=1e-5)
    assert out[0, 0].item() == pytest.approx(1e-6)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all()
    assert torch.all(g[x64 == 0] == 0)  # below the clamp: no gradient, no singular a^(l-2)


def test_ppool_module_parametrisation():
    pool = build_pooling("ppool", init=3.0)
    assert pool.exponent.item() == pytest.approx(3.0)
    assert pool.no_weight_decay() == {"raw"} and pool.stats() == {"l": pytest.approx(3.0)}
    x64 = _map(seed=9)
    out = pool(x64.float())
    np.testing.assert_allclose(out.detach().double().numpy(), _lehmer64(x64.numpy(), 3.0), rtol=2e-6)
    out.sum().backward()
    sig = 1 / (1 + math.exp(-pool.raw.item()))  # l = 1 + softplus(raw)  ->  dl/draw = sigmoid(raw)
    np.testing.assert_allclose(pool.raw.grad.item(), _dF_dl64(x64.numpy(), 3.0).sum() * sig, rtol=1e-4)
    with torch.no_grad():
        pool.raw.fill_(-30.0)  # l stays >= 1 however far raw goes
    assert 1.0 <= pool.exponent.item() < 1.0 + 1e-9


def test_gap_gmp_gem_definitions():
    x64 = _map(seed=11)
    a = x64.numpy().reshape(2, 3, -1)
    x = x64.float()
    np.testing.assert_allclose(build_pooling("gap")(x).double().numpy(), a.mean(-1), rtol=1e-6)
    np.testing.assert_allclose(build_pooling("gmp")(x).double().numpy(), a.max(-1), rtol=1e-7)
    gem = build_pooling("gem")
    assert gem.stats() == {"p": pytest.approx(3.0)} and gem.no_weight_decay() == {"raw"}
    np.testing.assert_allclose(gem(x).detach().double().numpy(), ((a**3).mean(-1)) ** (1 / 3), rtol=2e-6)
    gem = build_pooling("gem", init=5.5)
    np.testing.assert_allclose(gem(x).detach().double().numpy(), ((a**5.5).mean(-1)) ** (1 / 5.5), rtol=2e-6)


def test_registry_and_bad_input():
    assert POOLING.names() == ["gap", "gem", "gmp", "ppool"]
    with pytest.raises(KeyError, match="ppool"):
        build_pooling("avg")
    assert build_pooling("gap", init=3.0).stats() == {}  # the initial exponent only concerns gem / ppool
    with pytest.raises(ValueError, match="init must be > 1"):
        build_pooling("ppool", init=1.0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        build_pooling("ppool")(torch.rand(2, 3))
