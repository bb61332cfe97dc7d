"""Global pooling of a feature map ``(B, C, H, W) -> (B, C)``: GAP, GMP, GeM and ES-Net's P-pooling.

Chosen by name through the ``POOLING`` registry (:func:`build_pooling`). Every pooling is a :class:`Pool`:
``no_weight_decay()`` names its parameters that get no weight decay (relative to the module), ``lr_multipliers()``
those trained at a multiple of ``solver.lr`` and ``stats()`` its values worth logging; all are empty except for the
poolings with a learnable exponent, which are registered with ``exponent=True`` and take ``init`` and ``lr_mult``.
"""

from __future__ import annotations

import math
from typing import Dict, Set, Union

import torch
import torch.nn.functional as F
from torch import nn

from esreid.registry import Registry

POOLING = Registry("pooling")


def _check_map(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"pooling expects a feature map (B, C, H, W), got shape {tuple(x.shape)}")


def lehmer_pool(x: torch.Tensor, l: Union[torch.Tensor, float]) -> torch.Tensor:
    """P-pooling / Lehmer mean of order ``l`` over the spatial positions (ES-Net eq. 6), exact on maps with zeros.

    ``F^k = Σ_a a^l / Σ_a a^(l-1)`` per channel, evaluated as ``m · Σ r^l / Σ r^(l-1)`` with ``r = a / m`` and
    ``m = max(a)``, so that no power exceeds 1 (finite for any ``l >= 1``; docs/methods.md §1.5). Nothing is clamped:

    - zeros contribute ``0^l = 0`` and ``0^(l-1) = 0`` to the sums for ``l > 1``, exactly as in eq. 6; at ``l = 1``
      ``0^0 = 1`` and the result is GAP over all positions. (On a map with zeros eq. 6 is therefore discontinuous at
      ``l = 1``: ``l -> 1+`` gives the mean of the non-zero values. ``PPool``'s ``l = 1 + softplus(raw)`` is > 1.)
    - an all-zero channel pools to exactly 0, with zero gradient.
    - input gradient (eq. 7): ``∂F/∂a_j = [l·a_j^(l-1) - (l-1)·F·a_j^(l-2)] / Σ a^(l-1)``. For ``1 < l < 2`` the
      second term is infinite at ``a_j = 0`` (the one-sided derivative is -inf). It is dropped wherever
      ``a_j < ε·max a`` (ε = machine epsilon of the compute dtype, 2^-23 in float32), which makes the gradient at
      ``a_j = 0`` exactly 0, the value it has for every ``l > 2``. A finite value is needed because the gradient
      with respect to the map itself is used, not only through the backbone's ReLU (which discards it at a zero
      output): CG-RAM multiplies it by ``A = 0`` (ES-Net eq. 4: -inf·0 = NaN), Grad-CAM averages it. Values
      below ε·max are treated like zeros for this term only (their exact term reaches ~1e38 for subnormal ratios
      and overflows float32 once scaled by the upstream gradient); the forward value keeps them exactly. For
      ``l >= 2`` the gradient is eq. 7 everywhere (``-F / Σ a`` at a zero for ``l = 2``).
    - ``∂F/∂l`` is eq. 7 over the non-zero values (``0^l·ln 0 = 0``, the limit); the ``ln m`` of the normalisation
      cancels between the two sums.

    Runs with autocast disabled in float32 (float64 for float64 input).

    Args:
        x: ``(B, C, H, W)`` non-negative map (post-ReLU).
        l: order, a scalar (tensor, for a learnable order) ``>= 1``.
    Returns:
        ``(B, C)`` float32 (float64 for float64 ``x``).
    """
    _check_map(x)
    dtype = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        a = x.to(dtype).flatten(2)  # (B, C, HW)
        l = torch.as_tensor(l, dtype=dtype, device=a.device)
        # F is 1-homogeneous, F(a) = m·F(a/m) for any constant m > 0, so m may be detached: the gradient is exact.
        m = a.amax(dim=2, keepdim=True).detach()  # (B, C, 1)
        r = a / torch.where(m > 0, m, 1.0)  # in [0, 1]; max r = 1 unless the channel is all zero
        # where d r^(l-1)/dr = (l-1)·r^(l-2) is singular (see above) the base is detached: same value, gradient 0
        singular = r < torch.where(l < 2, torch.finfo(dtype).eps, 0.0)  # (r >= 0: never for l >= 2)
        num = r.pow(l).sum(dim=2)  # Σ r^l        (eq. 6 numerator / m^l)
        den = torch.where(singular, r.detach(), r).pow(l - 1).sum(dim=2)  # Σ r^(l-1)  (eq. 6 denominator / m^(l-1))
        # den >= 1 (the max contributes 1^(l-1)) unless the channel is all zero: then den = num = 0 and F = 0·0/1 = 0
        return m.squeeze(2) * num / torch.where(den > 0, den, 1.0)  # eq. 6


class Pool(nn.Module):
    """Base of the global poolings: ``forward((B, C, H, W)) -> (B, C)``."""

    def no_weight_decay(self) -> Set[str]:
        """Parameter names (relative to this module) excluded from weight decay."""
        return set()

    def lr_multipliers(self) -> Dict[str, float]:
        """Parameter names (relative to this module) -> multiplier of ``solver.lr`` (scheduled with it)."""
        return {}

    def stats(self) -> Dict[str, float]:
        """Values to log, e.g. ``{"l": 3.2}`` for P-pooling."""
        return {}


@POOLING.register("gap")
class GAP(Pool):
    """Global average pooling: ``mean_{h,w} x``. ``(B, C, H, W) -> (B, C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x)
        return x.mean(dim=(2, 3))


@POOLING.register("gmp")
class GMP(Pool):
    """Global max pooling: ``max_{h,w} x``. ``(B, C, H, W) -> (B, C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x)
        return x.amax(dim=(2, 3))


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))  # log(exp(y) - 1), stable for large y


class _ExponentPool(Pool):
    """A pooling with one learnable scalar exponent, ``init`` at the start, trained at ``lr_mult`` x ``solver.lr``
    (``model.ppool_lr_mult``; docs/methods.md §1.5). Subclasses define the parameter (``param_name``) and
    :attr:`exponent`."""

    symbol = "p"
    param_name = "raw"

    def __init__(self, init: float = 3.0, eps: float = 1e-6, lr_mult: float = 1.0):
        super().__init__()
        if not lr_mult > 0:
            raise ValueError(f"{type(self).__name__}: lr_mult must be > 0, got {lr_mult!r}")
        self.eps, self.lr_mult = eps, float(lr_mult)

    @property
    def exponent(self) -> torch.Tensor:
        """The current exponent (0-dim tensor, differentiable)."""
        raise NotImplementedError

    def lr_multipliers(self) -> Dict[str, float]:
        return {self.param_name: self.lr_mult} if self.lr_mult != 1.0 else {}

    def stats(self) -> Dict[str, float]:
        return {self.symbol: float(self.exponent.detach())}

    def extra_repr(self) -> str:
        return f"{self.symbol}={float(self.exponent.detach()):.4g}, eps={self.eps}, lr_mult={self.lr_mult:g}"


@POOLING.register("gem", exponent=True)
class GeM(_ExponentPool):
    """Generalised mean as AGW's ``GeneralizedMeanPoolingP`` (ReID-Survey @38f5912, ``modeling/layer/gem_pool.py``):
    ``(mean_{h,w} clamp(x, eps)^p)^(1/p)`` with ONE free scalar parameter ``p`` (init 3), weight-decayed like every
    other parameter (AGW's optimiser puts every parameter in one decayed group; docs/methods.md §8.2). Float32,
    autocast disabled. ``(B, C, H, W) -> (B, C)``.

    ``p`` is not bounded (as in AGW's code): it must stay > 0; Adam moves it by at most about ``solver.lr`` per step
    (summed over AGW's Market-1501 recipe ~2.7, docs/methods.md §1.5). Evaluated as ``m · (mean (x/m)^p)^(1/p)``
    with ``m`` the channel's maximum, the same value (GeM is homogeneous of degree 1, so the gradient through ``m``
    cancels) without overflow: ``x^p`` itself is inf in float32 for x = 10, p = 40.
    """

    param_name = "p"

    def __init__(self, init: float = 3.0, eps: float = 1e-6, lr_mult: float = 1.0):
        super().__init__(init, eps, lr_mult)
        if not init > 0:
            raise ValueError(f"GeM: init must be > 0, got {init!r}")
        self.p = nn.Parameter(torch.tensor(float(init)))

    @property
    def exponent(self) -> torch.Tensor:
        return self.p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            p = self.p.float()
            x = x.float().clamp(min=self.eps)
            m = x.amax(dim=(2, 3), keepdim=True)  # (B, C, 1, 1), >= eps > 0
            return (x / m).pow(p).mean(dim=(2, 3)).pow(1.0 / p) * m.flatten(1)


@POOLING.register("ppool", exponent=True)
class PPool(_ExponentPool):
    """ES-Net P-pooling (eq. 6-7): Lehmer mean of order ``l = 1 + softplus(raw)``, ONE scalar for all channels
    (the paper writes a single l). ``l = 1`` is GAP, ``l -> inf`` is GMP. Default init 3 (docs/methods.md §7 #7; the
    P-pooling code's near-max start corresponds to init 31). ``(B, C, H, W) -> (B, C)`` float32.

    Softplus rather than clamping: a clamped exponent that crosses the floor gets zero gradient and stays stuck
    (docs/methods.md §7 #7 allows either). ``raw`` is excluded from weight decay, which would otherwise pull l towards
    GAP. Exact on zeros (:func:`lehmer_pool`): the ``eps`` constructor argument, shared with GeM, is not used.
    """

    symbol = "l"
    floor = 1.0

    def __init__(self, init: float = 3.0, eps: float = 1e-6, lr_mult: float = 1.0):
        super().__init__(init, eps, lr_mult)
        if not init > self.floor:
            raise ValueError(f"PPool: init must be > {self.floor}, got {init!r}")
        self.raw = nn.Parameter(torch.tensor(_inverse_softplus(init - self.floor)))

    @property
    def exponent(self) -> torch.Tensor:
        return self.floor + F.softplus(self.raw)

    def no_weight_decay(self) -> Set[str]:
        return {"raw"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lehmer_pool(x, self.exponent)


def build_pooling(name: str, init: float = 3.0, lr_mult: float = 1.0) -> Pool:
    """Pooling ``name`` (``POOLING.names()``); ``init`` is the initial exponent of a learnable-exponent pooling
    (gem / ppool) and ``lr_mult`` its learning-rate multiplier; both are ignored by the others. Config values are
    checked when the config is loaded."""
    cls = POOLING.get(name)
    return cls(init=init, lr_mult=lr_mult) if POOLING.meta(name).get("exponent") else cls()
