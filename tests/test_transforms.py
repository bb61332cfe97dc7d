"""decode_resize and the batched augmentations against their definitions."""

import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import esreid.data.transforms as T
from esreid.config import DataConfig
from esreid.data.base import DatasetError
from esreid.data.transforms import TestTransform, TrainAugment, check_image_header, decode_resize, to_rgb

H, W = 16, 8


def cfg(**kw):
    base = dict(height=H, width=W, flip_prob=0.0, pad=0, random_erasing=0.0, mean=[0.5] * 3, std=[0.25] * 3)
    base.update(kw)
    return DataConfig(**base)


def batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, H, W), generator=g, dtype=torch.uint8)


def normalised(x, mean=0.5, std=0.25):
    return (x.double() / 255 - mean) / std


# --- decode_resize ------------------------------------------------------------------------------------------
def test_decode_resize_matches_pillow_bilinear(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (30, 14, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    out = decode_resize(str(path), 20, 10)
    assert out.dtype == torch.uint8 and out.shape == (3, 20, 10)
    ref = np.array(Image.fromarray(arr).resize((10, 20), Image.BILINEAR))
    assert torch.equal(out, torch.from_numpy(ref).permute(2, 0, 1))
    same = decode_resize(str(path), 30, 14)  # no resize when the size already matches
    assert torch.equal(same, torch.from_numpy(arr).permute(2, 0, 1))


def test_decode_jpeg_and_grayscale(tmp_path):
    path = tmp_path / "red.jpg"
    Image.new("RGB", (8, 16), (200, 30, 60)).save(path, quality=95)
    out = decode_resize(str(path), 16, 8).int()
    assert (out - torch.tensor([200, 30, 60]).view(3, 1, 1)).abs().max() <= 3
    gray = tmp_path / "g.jpg"
    Image.new("L", (8, 16), 77).save(gray, quality=95)
    out = decode_resize(str(gray), 16, 8)
    assert out.shape == (3, 16, 8) and torch.equal(out[0], out[1]) and abs(int(out[0, 0, 0]) - 77) <= 2


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "missing"])
def test_decode_bad_file_names_path(tmp_path, kind):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(good)
    path = tmp_path / f"{kind}.jpg"
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(b"not an image" * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    with pytest.raises(DatasetError, match=str(path)):
        decode_resize(str(path), 16, 8)


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) when a call blocks for 5 s: today's decoder waits forever on a FIFO."""
    def alarm(signum, frame):
        raise TimeoutError("blocked for 5 s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_sixteen_bit_grey_png_is_scaled_not_white(tmp_path):
    """Hand-made 16-bit levels -> v / 257 rounded; Pillow's own convert("RGB") clips them at 255 (white)."""
    levels = np.array([0, 257, 257 * 100, 1000, 40000, 65535], np.uint16)  # -> 0, 1, 100, 4, 156, 255
    grey = np.resize(levels, (16, 8)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode.startswith("I")
    out = decode_resize(str(path), 16, 8)
    want = torch.from_numpy(np.rint(grey / 257).astype(np.uint8))
    assert all(torch.equal(out[c], want) for c in range(3))
    for mode, raw in (("I;16B", grey.astype(">u2").tobytes()), ("I;16", grey.astype("<u2").tobytes()),
                      ("I", grey.astype(np.int32).tobytes())):
        img = to_rgb(Image.frombytes(mode, (8, 16), raw))
        assert np.array_equal(np.asarray(img)[..., 1], want.numpy()), mode


def test_oversized_image_is_refused_from_its_header(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("L", (4096, 4096)).save(path)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1) or (_ for _ in ()).throw(AssertionError))
    message = (f"{path}: a 4096x4096 image (16.8 megapixels) is larger than the 16 megapixels esreid decodes (re-ID "
               "crops are well under 1): crop or downscale it, or remove it from the data")
    for read in (lambda: decode_resize(str(path), 16, 8), lambda: check_image_header(str(path))):
        with pytest.raises(DatasetError) as e:
            read()
        assert str(e.value) == message and not decoded


def test_pillow_bomb_warning_is_an_error_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (15, 10)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 150 pixels: above Pillow's warning limit, below its error
    for read in (lambda: decode_resize(str(path), 16, 8), lambda: check_image_header(str(path))):
        with pytest.raises(DatasetError, match=rf"{path}: corrupt or unsupported image \(DecompressionBombWarning"):
            read()


def test_a_fifo_named_jpg_is_refused_not_read(tmp_path, no_hang):
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    for read in (lambda: decode_resize(str(path), 16, 8), lambda: check_image_header(str(path))):
        with pytest.raises(DatasetError, match=rf"^{path}: not a regular file \(a FIFO / named pipe\): an image must "
                                               "be a plain file; replace or remove it$"):
            read()


def test_header_check_finds_garbage_without_decoding(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 16), (1, 2, 3)).save(good)
    assert check_image_header(str(good)) == (8, 16)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(DatasetError, match=rf"^{bad}: corrupt or unsupported image \(\w+: "):
        check_image_header(str(bad))
    assert T.MAX_IMAGE_PIXELS >= 1024 * 1024  # far above re-ID crops (a vehicle image is under 1 MP)


# --- normalisation ------------------------------------------------------------------------------------------
def test_test_transform_is_the_normalisation_formula():
    x = batch()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = TestTransform(DataConfig(mean=mean, std=std))(x)
    ref = (x.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64
    ).view(1, 3, 1, 1)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_rejects_non_uint8_or_bad_shape():
    with pytest.raises(ValueError, match="uint8"):
        TestTransform(cfg())(batch().float())
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        TrainAugment(cfg())(batch()[:, :1])
    with pytest.raises(ValueError, match="data.flip_prob"):
        TrainAugment(cfg(flip_prob=1.5))


# --- flip ---------------------------------------------------------------------------------------------------
def test_flip_prob_one_and_zero():
    x = batch()
    assert torch.allclose(TrainAugment(cfg(flip_prob=1.0))(x).double(), normalised(torch.flip(x, [-1])), atol=1e-5)
    assert torch.allclose(TrainAugment(cfg(flip_prob=0.0))(x).double(), normalised(x), atol=1e-5)


def test_flip_half_flips_whole_images_about_half_the_time():
    x = batch(400)
    out = TrainAugment(cfg(flip_prob=0.5), seed=3)(x).double()
    same = (out - normalised(x)).abs().amax(dim=(1, 2, 3)) < 1e-5
    flipped = (out - normalised(x.flip(-1))).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((same ^ flipped).all())  # each image is exactly one of the two
    assert 160 < int(flipped.sum()) < 240  # Binomial(400, 0.5): 4 sigma = 40


# --- pad + crop ---------------------------------------------------------------------------------------------
def test_pad_crop_is_a_window_of_the_zero_padded_image():
    p = 2
    x = batch(200)
    out = TrainAugment(cfg(pad=p), seed=1)(x).double()
    padded = normalised(torch.nn.functional.pad(x, (p, p, p, p)))  # zero pixels, then normalised
    offsets = set()
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.allclose(out[i], padded[i, :, dy : dy + H, dx : dx + W], atol=1e-5)
        ]
        assert hits, f"image {i} is not a crop of its padded version"
        offsets.update(hits)
    assert len(offsets) == (2 * p + 1) ** 2  # every offset is reachable


# --- random erasing -----------------------------------------------------------------------------------------
def erased_box(diff_mask):
    rows = torch.nonzero(diff_mask.any(dim=1)).flatten()
    cols = torch.nonzero(diff_mask.any(dim=0)).flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def test_random_erasing_rectangles_within_bounds():
    hh, ww = 32, 16
    x = torch.randint(0, 256, (300, 3, hh, ww), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = TrainAugment(cfg(random_erasing=1.0), seed=2)(x).double()
    ref = normalised(x)  # mean 0.5: no pixel normalises to exactly 0
    areas = []
    for i in range(len(x)):
        changed = (out[i] - ref[i]).abs().amax(dim=0) > 1e-6
        assert changed.any()
        top, left, h, w = erased_box(changed)
        box = torch.zeros_like(changed)
        box[top : top + h, left : left + w] = True
        assert torch.equal(changed, box), "the erased region is not one rectangle"
        assert torch.all(out[i][:, box] == 0)  # filled with 0 on the normalised tensor
        assert h < hh and w < ww
        # h = round(sqrt(S r)), w = round(sqrt(S / r)) with S in [0.02, 0.4] HW and r in [0.3, 1/0.3]:
        # rounding moves each side by <= 0.5, hence the slack below
        s_lo, s_hi = 0.02 * hh * ww, 0.4 * hh * ww
        assert (h - 0.5) * (w - 0.5) <= s_hi and (h + 0.5) * (w + 0.5) >= s_lo
        assert 0.3 * (w - 0.5) <= h + 0.5 and h - 0.5 <= (w + 0.5) / 0.3
        areas.append(h * w)
    assert max(areas) > 0.2 * hh * ww and min(areas) < 0.06 * hh * ww  # the range is actually explored


def test_random_erasing_probability_and_reproducibility():
    x = batch(400)
    out = TrainAugment(cfg(random_erasing=0.5), seed=4)(x).double()
    erased = ((out - normalised(x)).abs().amax(dim=(1, 2, 3)) > 1e-6).sum()
    assert 160 < int(erased) < 240
    full = cfg(flip_prob=0.5, pad=1, random_erasing=0.5)
    a, b = TrainAugment(full, seed=9), TrainAugment(full, seed=9)
    assert torch.equal(a(x), b(x)) and torch.equal(a(x), b(x))
    assert not torch.equal(a(x), TrainAugment(full, seed=10)(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_result_on_cuda():
    x = batch(64)
    full = cfg(flip_prob=0.5, pad=2, random_erasing=0.5)
    cpu = TrainAugment(full, seed=5)(x)
    gpu = TrainAugment(full, seed=5)(x.cuda())
    assert gpu.device.type == "cuda"
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-6)
