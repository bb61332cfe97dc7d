"""Image transforms without torchvision.

Two stages (docs/architecture.md, "Loaders"):

* per image, in the loader workers: :func:`decode_resize` turns a file into a uint8 ``(3, H, W)`` tensor;
* per batch, on the training device after the transfer: :class:`TrainAugment` (flip, pad-and-crop, float conversion,
  normalisation, random erasing, Cutout) and :class:`TestTransform` (float conversion + normalisation).

Randomness comes from a CPU ``torch.Generator`` owned by :class:`TrainAugment`: parameters (a few numbers per image)
are drawn on the CPU and the pixel work runs on the images' device, so results do not depend on the device.
"""

from __future__ import annotations

import io
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from esreid.config import DataConfig
from esreid.data.base import DatasetError

try:
    import simplejpeg
except ImportError:  # pragma: no cover - optional speed-up
    simplejpeg = None


# --------------------------------------------------------------------------------------------------------------
# Per image: decode + resize
# --------------------------------------------------------------------------------------------------------------
def _decode_pillow(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()  # raises on truncated / corrupt data (unless someone set ImageFile.LOAD_TRUNCATED_IMAGES)
    return img.convert("RGB")


def decode_resize(path: str, height: int, width: int) -> torch.Tensor:
    """Read an image file and resize it (bilinear, Pillow) to ``(height, width)``.

    JPEGs are decoded with simplejpeg when it is installed (strict: a truncated file is an error); anything it
    cannot decode (PNG, CMYK JPEG, ...) goes to Pillow.

    Returns:
        uint8 tensor ``(3, height, width)``, RGB.

    Raises:
        DatasetError: the file is missing, truncated or not an image (the message names the path).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read image file: {e}") from None
    img = None
    if simplejpeg is not None and simplejpeg.is_jpeg(data):
        try:
            img = Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB"))
        except ValueError:
            img = None  # let Pillow try (it reads some JPEG flavours libjpeg-turbo's RGB path rejects)
    if img is None:
        try:
            img = _decode_pillow(data)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DatasetError(f"{path}: corrupt or unsupported image ({type(e).__name__}: {e})") from None
    return resize_rgb(img, height, width)


def resize_rgb(img: Image.Image, height: int, width: int) -> torch.Tensor:
    """An RGB Pillow image resized (bilinear, Pillow) to ``(height, width)``: the one resize of every image a model
    sees (dataset files through :func:`decode_resize`, in-memory images through :mod:`esreid.inference`).

    Returns:
        uint8 tensor ``(3, height, width)``, RGB.
    """
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------------------------------------------
# Per batch, on the device
# --------------------------------------------------------------------------------------------------------------
def _check_batch(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected a uint8 batch of shape (B, 3, H, W), got dtype {images.dtype} and shape {tuple(images.shape)}"
        )


class _Normalize:
    """``(x / 255 - mean) / std`` per channel; constants cached per device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"data.mean / data.std: expected 3 values each (std > 0), got mean={mean}, std={std}")
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self._cache: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> float32 ``(B, 3, H, W)``."""
        if images.device not in self._cache:
            mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
            self._cache[images.device] = (1.0 / (255.0 * std), mean / std)
        scale, shift = self._cache[images.device]
        return images.float() * scale - shift


class TestTransform:
    """Evaluation transform: uint8 ``(B, 3, H, W)`` -> normalised float32 ``(B, 3, H, W)``."""

    __test__ = False  # not a pytest class

    def __init__(self, cfg: DataConfig):
        self.normalize = _Normalize(cfg.mean, cfg.std)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_batch(images)
        return self.normalize(images)


class TrainAugment:
    """Batched training augmentation (BoT order): flip -> pad + random crop -> normalise -> random erasing -> Cutout.

    Args:
        cfg: ``flip_prob`` (per-image horizontal flip), ``pad`` (zero-pad by ``pad`` pixels on each side, i.e. black
            before normalisation as in BoT's ``T.Pad``, then crop back to ``(H, W)`` at a uniform offset; 0 = off),
            ``mean``/``std``, ``random_erasing`` (probability of Zhong et al.'s random erasing; 0 = off),
            ``cutout_prob`` / ``cutout_size`` (Cutout; 0 = off).
        seed: seed of the CPU generator drawing all random parameters.

    Random erasing (Zhong et al., AAAI 2020, Alg. 1): target area ``S_e ~ U(0.02, 0.4) * H * W``, aspect
    ``r_e ~ U(0.3, 1/0.3)``, ``h = round(sqrt(S_e * r_e))``, ``w = round(sqrt(S_e / r_e))``; retried (up to
    ``ERASE_ATTEMPTS`` times) until ``h < H`` and ``w < W``, top-left corner uniform. The rectangle is filled with 0
    on the normalised tensor, i.e. with the dataset mean colour. Deviation: Zhong's and BoT's code write the raw
    ImageNet mean (0.4914, ...) into the *normalised* tensor, a quirk we do not copy; random-noise filling is not
    offered.

    Cutout (DeVries & Taylor 2017) as in BDB's person recipe (docs/methods.md §2.3: p=0.5, one 64x64 square): with
    probability ``cutout_prob`` per image, one whole ``cutout_size`` square, its top-left corner uniform over the
    positions that keep it inside the image (BDB code's ``Cutout``), is filled with 0 on the normalised tensor.
    Deviation from DeVries & Taylor's code, which centres the square on a uniform pixel and clips it at the borders
    (a smaller mean area: ~17 % less at 384x128): we follow BDB, whose results are the target. A square larger than
    the image is an error (BDB's code silently skips it). BDB never combines it with random erasing; if both are on,
    Cutout runs second. """

    ERASE_AREA = (0.02, 0.4)
    ERASE_ASPECT = (0.3, 1 / 0.3)
    ERASE_ATTEMPTS = 100

    def __init__(self, cfg: DataConfig, seed: int = 0):
        for key in ("flip_prob", "random_erasing", "cutout_prob"):
            value = getattr(cfg, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"data.{key}: expected a probability in [0, 1], got {value}")
        if cfg.pad < 0:
            raise ValueError(f"data.pad: expected a non-negative integer, got {cfg.pad}")
        if cfg.cutout_size <= 0:
            raise ValueError(f"data.cutout_size: expected a positive integer, got {cfg.cutout_size}")
        self.flip_prob = cfg.flip_prob
        self.pad = cfg.pad
        self.erase_prob = cfg.random_erasing
        self.cutout_prob = cfg.cutout_prob
        self.cutout_size = cfg.cutout_size
        self.normalize = _Normalize(cfg.mean, cfg.std)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` on any device -> float32 ``(B, 3, H, W)`` on the same device."""
        _check_batch(images)
        if self.flip_prob > 0:
            images = self.flip(images)
        if self.pad > 0:
            images = self.pad_crop(images)
        x = self.normalize(images)
        if self.erase_prob > 0:
            x = self.erase(x)
        if self.cutout_prob > 0:
            x = self.cutout(x)
        return x

    def flip(self, images: torch.Tensor) -> torch.Tensor:
        """Mirror each image left-right with probability ``flip_prob``. ``(B, C, H, W)`` -> same."""
        flip = torch.rand(images.shape[0], generator=self.generator) < self.flip_prob
        flip = flip.to(images.device).view(-1, 1, 1, 1)
        return torch.where(flip, images.flip(-1), images)

    def pad_crop(self, images: torch.Tensor) -> torch.Tensor:
        """Zero-pad by ``pad`` and crop ``(H, W)`` at a uniform offset in ``[0, 2*pad]``². ``(B, C, H, W)`` -> same."""
        b, c, h, w = images.shape
        p = self.pad
        padded = torch.nn.functional.pad(images, (p, p, p, p))
        offsets = torch.randint(0, 2 * p + 1, (b, 2), generator=self.generator).to(images.device)
        rows = (offsets[:, 0:1] + torch.arange(h, device=images.device)).view(b, 1, h, 1)
        cols = (offsets[:, 1:2] + torch.arange(w, device=images.device)).view(b, 1, 1, w)
        rows = rows.expand(b, c, h, w + 2 * p)
        picked_rows = padded.gather(2, rows)  # (B, C, H, W + 2p)
        return picked_rows.gather(3, cols.expand(b, c, h, w))

    def erase_boxes(self, batch: int, height: int, width: int) -> torch.Tensor:
        """Zhong et al.'s rectangles: int64 ``(B, 4)`` rows ``(top, left, h, w)``; ``h = w = 0`` = not erased."""
        n = self.ERASE_ATTEMPTS
        g = self.generator
        apply = torch.rand(batch, generator=g) < self.erase_prob
        lo, hi = self.ERASE_AREA
        area = (lo + (hi - lo) * torch.rand(batch, n, generator=g, dtype=torch.float64)) * (height * width)
        lo, hi = self.ERASE_ASPECT
        aspect = lo + (hi - lo) * torch.rand(batch, n, generator=g, dtype=torch.float64)
        h = torch.round(torch.sqrt(area * aspect)).long()
        w = torch.round(torch.sqrt(area / aspect)).long()
        fits = (h < height) & (w < width)
        first = torch.argmax(fits.int(), dim=1)  # first attempt that fits (0 if none; masked below)
        h = h.gather(1, first[:, None])[:, 0]
        w = w.gather(1, first[:, None])[:, 0]
        ok = apply & fits.any(dim=1)
        h, w = h * ok, w * ok
        u = torch.rand(batch, 2, generator=g, dtype=torch.float64)
        top = torch.floor(u[:, 0] * (height - h + 1)).long()  # uniform in [0, H - h]
        left = torch.floor(u[:, 1] * (width - w + 1)).long()
        return torch.stack([top, left, h, w], dim=1)

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        """Random erasing on a normalised float batch ``(B, C, H, W)`` (fills with 0)."""
        b, _, height, width = x.shape
        return self.fill_boxes(x, self.erase_boxes(b, height, width))

    def cutout_boxes(self, batch: int, height: int, width: int) -> torch.Tensor:
        """Cutout squares: int64 ``(B, 4)`` rows ``(top, left, size, size)`` inside the image; ``h = w = 0`` = none."""
        size = self.cutout_size
        if size > height or size > width:
            raise ValueError(f"data.cutout_size: the {size}x{size} Cutout square does not fit in {height}x{width} "
                             "images; expected a size <= both sides")
        g = self.generator
        apply = torch.rand(batch, generator=g) < self.cutout_prob
        top = torch.randint(0, height - size + 1, (batch,), generator=g)  # uniform in [0, H - size] (BDB's Cutout)
        left = torch.randint(0, width - size + 1, (batch,), generator=g)  # uniform in [0, W - size]
        side = size * apply.long()
        return torch.stack([top, left, side, side], dim=1)

    def cutout(self, x: torch.Tensor) -> torch.Tensor:
        """Cutout on a normalised float batch ``(B, C, H, W)`` (fills with 0)."""
        b, _, height, width = x.shape
        return self.fill_boxes(x, self.cutout_boxes(b, height, width))

    @staticmethod
    def fill_boxes(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Fill one ``(top, left, h, w)`` box per image (int64 ``(B, 4)``) of ``x (B, C, H, W)`` with 0."""
        b, _, height, width = x.shape
        boxes = boxes.to(x.device)
        top, left, h, w = (boxes[:, i].view(b, 1, 1) for i in range(4))
        rows = torch.arange(height, device=x.device).view(1, height, 1)
        cols = torch.arange(width, device=x.device).view(1, 1, width)
        inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)  # (B, H, W)
        return x.masked_fill(inside[:, None], 0.0)

