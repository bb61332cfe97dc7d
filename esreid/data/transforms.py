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
import warnings
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from esreid.config import DataConfig
from esreid.data.base import DatasetError, check_regular_file

try:
    import simplejpeg
except ImportError:  # pragma: no cover - optional speed-up
    simplejpeg = None


# --------------------------------------------------------------------------------------------------------------
# Per image: decode + resize
# --------------------------------------------------------------------------------------------------------------
# Largest image decoded, in pixels (read from the header before decoding): re-ID crops are far smaller (Market-1501
# 128x64 = 0.008 MP, VeRi-776 / VehicleID vehicles under 1 MP) and a 12 MP phone photo still passes as an
# `esreid explain --query`, while a 4096x4096 image (16.8 MP, 50 MB decoded per loader worker) or a decompression
# bomb of a few kB that claims gigapixels is refused with its name. Pillow's own bomb limit is far above this.
MAX_IMAGE_PIXELS = 16_000_000
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # Pillow's modes for 16-bit (and 32-bit int) grey levels


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as an 8-bit RGB image. Grey levels of 16-bit modes (``I;16``, ``I;16B``, ``I;16L``, ``I``: PNG / TIFF
    16-bit greyscale) are scaled from 0..65535 to 0..255 (v / 257, rounded; ``I`` clipped to that range):
    Pillow's own conversion clips them at 255, which turns almost every pixel white."""
    if img.mode in _SIXTEEN_BIT:
        grey = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.rint(np.clip(grey, 0, 65535) / 257).astype(np.uint8), "L")
    return img.convert("RGB")


def _check_pixels(path: str, size: Tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise DatasetError(f"{path}: a {width}x{height} image ({width * height / 1e6:.1f} megapixels) is larger than "
                           f"the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels esreid decodes (re-ID crops are well under "
                           "1): crop or downscale it, or remove it from the data")


def _decode_pillow(data: bytes, path: str) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
        _check_pixels(path, img.size)  # the header only: nothing is decoded yet
        img.load()  # raises on truncated / corrupt data (unless someone set ImageFile.LOAD_TRUNCATED_IMAGES)
    return to_rgb(img)


def read_image_bytes(path: str) -> bytes:
    """The bytes of the image file ``path``; a :class:`DatasetError` naming it when it is missing, unreadable or not a
    regular file (:func:`check_regular_file`)."""
    check_regular_file(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read image file: {e}") from None


def decode_image(path: str) -> Image.Image:
    """The image file ``path`` decoded to 8-bit RGB (:func:`to_rgb`).

    JPEGs are decoded with simplejpeg when it is installed (strict: a truncated file is an error); anything it
    cannot decode (PNG, CMYK JPEG, ...) goes to Pillow.

    Raises:
        DatasetError: the file is missing, not a regular file, larger than :data:`MAX_IMAGE_PIXELS`, truncated or
            not an image (the message names the path).
    """
    data = read_image_bytes(path)
    if simplejpeg is not None and simplejpeg.is_jpeg(data):
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            pass  # Pillow reports what is wrong with it
        else:
            _check_pixels(path, (width, height))
            try:
                return Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB"))
            except ValueError:
                pass  # let Pillow try (it reads some JPEG flavours libjpeg-turbo's RGB path rejects)
    try:
        return _decode_pillow(data, path)
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(f"{path}: corrupt or unsupported image ({type(e).__name__}: {e})") from None


def check_image_header(path: str) -> Tuple[int, int]:
    """``(width, height)`` of the image file ``path`` from its header, after Pillow's ``verify()`` (the structure of
    the file; PNG chunk checksums), without decoding its pixels: the cheap check of every test image before training
    (:func:`esreid.engine.preflight.check_test_data`). A truncated JPEG passes (only decoding finds it).

    Raises:
        DatasetError: as :func:`decode_image`, with the same messages.
    """
    check_regular_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_pixels(path, img.size)
                img.verify()
                return img.size
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(f"{path}: corrupt or unsupported image ({type(e).__name__}: {e})") from None


def decode_resize(path: str, height: int, width: int) -> torch.Tensor:
    """Read an image file (:func:`decode_image`) and resize it (bilinear, Pillow) to ``(height, width)``.

    Returns:
        uint8 tensor ``(3, height, width)``, RGB.

    Raises:
        DatasetError: as :func:`decode_image` (the message names the path).
    """
    return resize_rgb(decode_image(path), height, width)


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
    """``(x / 255 - mean) / std`` per channel, in that order (torchvision's ``ToTensor`` + ``Normalize``, which the
    re-ID toolkits use: an imported checkpoint sees the very inputs it saw there); constants cached per device."""

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
            self._cache[images.device] = (mean, std)
        mean, std = self._cache[images.device]
        return (images.float() / 255.0 - mean) / std


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

    Random erasing (Zhong et al., AAAI 2020, Alg. 1): target area ``S_e ~ U(0.02, 0.4) * H * W`` (``ERASE_AREA``,
    or ``random_erasing_area``), aspect
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
        self.erase_area = tuple(cfg.random_erasing_area)
        self.cutout_prob = cfg.cutout_prob
        self.cutout_size = cfg.cutout_size
        self.normalize = _Normalize(cfg.mean, cfg.std)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` on any device -> float32 ``(B, 3, H, W)`` on the same device."""
        return self.with_aligned(images, None)[0]

    def with_aligned(self, images: torch.Tensor,
                     aligned: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """:meth:`__call__` on ``images``, and the same flip and crop on ``aligned`` (B, H, W) bool, e.g. cue masks
        (padding adds False); the random draws are those of the images alone, so a run with masks trains exactly as
        one without. Returns (float32 (B, 3, H, W), bool (B, H, W) or None)."""
        _check_batch(images)
        if aligned is not None:
            images = torch.cat([images, aligned[:, None].to(images.dtype)], dim=1)  # (B, 4, H, W)
        if self.flip_prob > 0:
            images = self.flip(images)
        if self.pad > 0:
            images = self.pad_crop(images)
        if aligned is not None:
            images, aligned = images[:, :3], images[:, 3] > 0
        x = self.normalize(images)
        if self.erase_prob > 0:
            x = self.erase(x)
        if self.cutout_prob > 0:
            x = self.cutout(x)
        return x, aligned

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
        lo, hi = self.erase_area
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

