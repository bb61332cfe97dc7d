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
    """eq. 7, second line (docs/methods.md §1.5): [l a_j^(l-1) - (l-1) F a_j^(l-2)] / Σ a^(l-1)."""
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
    """The numerics case of docs/methods.md §1.5: a 24x8 map with max 20 where naive float32 overflows (20^30 >
    3.4e38)."""
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
    np.testing.assert_allclose(out.detach().double().numpy(), _lehmer64(x64.numpy(), 60.0), rtol=1e-5)


@pytest.mark.parametrize("l", [1.001, 1.5, 60.0])
def test_bf16_autocast_post_relu(l):
    """A bf16 post-ReLU map (with zeros) under autocast: float32 result equal to eq. 6, finite gradients."""
    pool = build_pooling("ppool", init=l)
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
    ref = _lehmer64(y.detach().double().numpy(), pool.exponent.item())
    np.testing.assert_allclose(out.detach().double().numpy(), ref, rtol=1e-5)
    out.sum().backward()
    assert torch.isfinite(pool.raw.grad) and torch.isfinite(conv.weight.grad).all()


ORDERS = [1.0, 1.001, 1.5, 2.0, 3.0, 10.0, 60.0]


def _relu_map(seed=7):
    """A post-ReLU map (about half zeros) with one all-zero channel, (2, 3, 4, 3) float64."""
    x = torch.relu(torch.randn(2, 3, 4, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)) * 3
    x[0, 0] = 0.0
    x[1, 2, 0, 0] = 4.0  # a live channel whose maximum is unique
    return x


def _references_with_zeros(a, l):
    """float64 references on a map with zeros, per (b, c): eq. 6 unclamped (0^(l-1) = 0 for l > 1, 0^0 = 1 at l = 1),
    eq. 7's ∂F/∂a (at a zero input: GAP's 1/N at l = 1, -F/Σa at l = 2 where a^(l-2) = 1, 0 for l > 2, and for
    1 < l < 2, where eq. 7 is -inf, the 0 lehmer_pool defines) and eq. 7's ∂F/∂l over the non-zero values.
    All-zero channels come out as NaN."""
    flat = a.reshape(a.shape[0], a.shape[1], -1)
    zero = flat == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        F = _lehmer64(flat, l)
        dF_da = _dF_da64(flat, l)
        at_zero = {1.0: np.full(F.shape, 1.0 / flat.shape[-1]), 2.0: -F / flat.sum(-1)}.get(l, np.zeros(F.shape))
        dF_da[zero] = np.broadcast_to(at_zero[..., None], flat.shape)[zero]
        a_nz = np.where(zero, 1.0, flat)  # ln 1 = 0: the zeros drop out of the ln sums (0^l·ln 0 -> 0)
        s_l, s_l1 = (flat**l).sum(-1), (flat ** (l - 1)).sum(-1)
        dF_dl = F * ((a_nz**l * np.log(a_nz)).sum(-1) / s_l - (a_nz ** (l - 1) * np.log(a_nz)).sum(-1) / s_l1)
    return F, dF_da.reshape(a.shape), dF_dl


@pytest.mark.parametrize("l", ORDERS)
def test_eq6_eq7_exact_on_maps_with_zeros(l):
    """Value and gradients against the float64 references of eq. 6-7 on a post-ReLU map; an all-zero channel pools
    to exactly 0 with zero gradients. (The former clamp at 1e-6 was 67% off at l = 1.001.)"""
    x64 = _relu_map()
    a = x64.numpy()
    live = a.reshape(2, 3, -1).max(-1) > 0
    assert (a == 0).mean() > 0.4 and not live[0, 0]
    x = x64.float().requires_grad_()
    lt = torch.tensor(l, requires_grad=True)
    out = lehmer_pool(x, lt)
    assert out[0, 0].item() == 0.0
    F, dF_da, dF_dl = _references_with_zeros(a, l)
    np.testing.assert_allclose(out.detach().double().numpy()[live], F[live], rtol=2e-6)
    w = torch.randn(2, 3, generator=torch.Generator().manual_seed(2))
    g_x, g_l = torch.autograd.grad((out * w).sum(), (x, lt))
    assert torch.isfinite(g_x).all() and torch.isfinite(g_l)
    assert torch.all(g_x[0, 0] == 0)
    wn = w.double().numpy()
    np.testing.assert_allclose(g_x[live].double().numpy(), (wn[..., None, None] * dF_da)[live], rtol=1e-4, atol=1e-6)
    if l > 1:  # F jumps at l = 1 on a map with zeros (GAP over all vs over the non-zero values): no ∂F/∂l there
        np.testing.assert_allclose(g_l.item(), (wn * dF_dl)[live].sum(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("l", [1.001, 1.5, 2.0, 3.0, 10.0, 60.0])
def test_gradcheck_float64(l):
    """torch.autograd.gradcheck (finite differences) in float64 where the derivative exists: the order on maps with
    zeros (F is smooth in l > 1), the input on strictly positive maps, and at zeros for integer orders (a^(l-1) and
    a^l are then smooth through 0)."""
    x0 = _relu_map(seed=3)
    assert lehmer_pool(x0, l).dtype == torch.float64
    lt = torch.tensor(l, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: lehmer_pool(x0, t), (lt,))
    pos = (_map(seed=4) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, t: lehmer_pool(x, t), (pos, lt))
    if l == int(l):
        x = x0.clone()
        x[0, 0, 0, 0] = 1.0  # no all-zero channel: its F = 0 is not differentiable
        assert torch.autograd.gradcheck(lambda t: lehmer_pool(t, l), (x.requires_grad_(),))


@pytest.mark.parametrize("l", [1.0001, 1.01, 1.5])
def test_tiny_values_count_exactly_and_keep_gradients_finite(l):
    """Values far below the max still count in eq. 6 (r^(l-1) ~ 1 near l = 1, so flushing them to 0 would be wrong),
    while their singular eq. 7 term -(l-1)·F·a^(l-2)/Σa^(l-1), ~1e39 for a subnormal float32 a/max, is dropped:
    the input gradient stays finite under a large upstream gradient."""
    x64 = torch.zeros(1, 2, 3, 2, dtype=torch.float64)
    x64[0, :, 0, 0] = 50.0
    x64[0, :, 1, 1] = torch.tensor([1e-20, 1e-39])  # 1e-39/50: subnormal in float32
    x64[0, :, 2, 0] = 1e-3
    x = x64.float().requires_grad_()
    out = lehmer_pool(x, l)
    np.testing.assert_allclose(out.detach().double().numpy(), _lehmer64(x.detach().double().numpy(), l), rtol=2e-6)
    (g,) = torch.autograd.grad(out.sum() * 1e3, x)
    assert torch.isfinite(g).all()


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
    assert gem.stats() == {"p": pytest.approx(3.0)} and gem.no_weight_decay() == set()  # AGW decays p
    np.testing.assert_allclose(gem(x).detach().double().numpy(), ((a**3).mean(-1)) ** (1 / 3), rtol=2e-6)
    gem = build_pooling("gem", init=5.5)
    np.testing.assert_allclose(gem(x).detach().double().numpy(), ((a**5.5).mean(-1)) ** (1 / 5.5), rtol=2e-6)


def test_gem_large_exponent_stays_finite_and_exact():
    """x^p overflows float32 at x = 30, p = 40 (the fuzzer's ppool_init=50 gave NaN features); the max-normalised
    evaluation matches the float64 definition and has finite gradients."""
    x64 = _map(seed=12) * 30
    a = x64.numpy().reshape(2, 3, -1)
    x = x64.float().requires_grad_(True)
    gem = build_pooling("gem", init=40.0)
    out = gem(x)
    np.testing.assert_allclose(out.detach().double().numpy(), ((a**40).mean(-1)) ** (1 / 40), rtol=1e-5)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(gem.p.grad).all()


def test_registry_and_bad_input():
    assert POOLING.names() == ["gap", "gem", "gmp", "ppool"]
    with pytest.raises(KeyError, match="ppool"):
        build_pooling("avg")
    assert build_pooling("gap", init=3.0).stats() == {}  # the initial exponent only concerns gem / ppool
    with pytest.raises(ValueError, match="init must be > 1"):
        build_pooling("ppool", init=1.0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        build_pooling("ppool")(torch.rand(2, 3))
