"""Backbones: torchvision state-dict layout, strict loading (file / URL via hub cache), last stride, init."""

import os

import pytest
import torch

from esreid.models.backbones import BACKBONES, CheckpointError, build_backbone, load_pretrained

KEYS_FILE = os.path.join(os.path.dirname(__file__), "data", "torchvision_resnet50_keys.txt")


def _reference_keys():
    out = []
    with open(KEYS_FILE) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                key, shape = line.split(" ", 1)
                out.append((key, tuple(int(s) for s in shape.strip("()\n ").split(",") if s.strip())))
    return out


def _meta(name, **kw):
    with torch.device("meta"):
        return BACKBONES.get(name)(**kw)


def test_resnet50_state_dict_matches_torchvision_listing():
    ref = _reference_keys()
    assert len(ref) == 320
    ours = [(k, tuple(v.shape)) for k, v in _meta("resnet50").state_dict().items()]
    assert ours == ref
    # torchvision documents 25,557,032 parameters for resnet50 (ImageNet head included)
    assert sum(p.numel() for p in _meta("resnet50").parameters()) == 25_557_032


@pytest.mark.parametrize(
    "name,last_stride,hw,out",
    [("resnet50", 1, (384, 128), (2048, 24, 8)), ("resnet50", 2, (384, 128), (2048, 12, 4)),
     ("resnet18", 1, (256, 128), (512, 16, 8)), ("resnet101", 1, (256, 256), (2048, 16, 16))],
)
def test_last_stride_output_shape(name, last_stride, hw, out):
    m = _meta(name, last_stride=last_stride)
    assert m.out_channels == out[0]
    assert tuple(m(torch.empty(2, 3, *hw, device="meta")).shape) == (2, *out)
    assert m.layer4[0].downsample[0].stride == (last_stride, last_stride)


def test_tiny_backbones_run_and_expose_stages():
    for name, ch in (("resnet_tiny", 128), ("resnet_tiny_bottleneck", 256)):
        m = build_backbone(name)
        assert m.fc is None and not any(k.startswith("fc.") for k in m.state_dict())
        for attr in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            assert hasattr(m, attr)
        assert m(torch.rand(2, 3, 64, 32)).shape == (2, ch, 4, 2)
        assert m.out_channels == ch


def test_kaiming_init_like_torchvision():
    torch.manual_seed(0)
    m = BACKBONES.get("resnet_tiny")()
    w = m.layer3[0].conv2.weight  # (64, 64, 3, 3): fan_out = 64*9
    assert abs(w.std().item() - (2.0 / (64 * 9)) ** 0.5) < 0.1 * (2.0 / (64 * 9)) ** 0.5
    assert torch.all(m.layer3[0].bn2.weight == 1) and torch.all(m.layer3[0].bn2.bias == 0)


def _trained_tiny():
    torch.manual_seed(0)
    src = BACKBONES.get("resnet_tiny")()
    src.train()
    src(torch.rand(4, 3, 64, 32))  # move BN running stats away from their init
    return src


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model_module"])
def test_state_dict_round_trip(tmp_path, wrap):
    src = _trained_tiny()
    sd = src.state_dict()
    obj = {"bare": sd, "state_dict": {"state_dict": sd, "epoch": 3},
           "model_module": {"model": {"module." + k: v for k, v in sd.items()}}}[wrap]
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    dst = build_backbone("resnet_tiny", pretrained=str(path))
    src.eval()
    dst.eval()
    x = torch.rand(2, 3, 64, 32)
    assert torch.equal(src(x), dst(x))
    assert dst.bn1.num_batches_tracked.item() == 1


def test_url_loads_from_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    src = _trained_tiny()
    os.makedirs(tmp_path / "hub" / "checkpoints")
    torch.save(src.state_dict(), tmp_path / "hub" / "checkpoints" / "tiny-0000.pth")
    dst = build_backbone("resnet_tiny", pretrained="https://example.invalid/weights/tiny-0000.pth")
    assert torch.equal(dst.layer2[0].conv1.weight, src.layer2[0].conv1.weight)


def test_mismatched_checkpoint_names_keys_and_file(tmp_path):
    sd = _trained_tiny().state_dict()
    del sd["layer3.0.bn1.running_var"]
    sd["layer2.0.conv1.weight"] = torch.zeros(1, 1, 3, 3)
    sd["head.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        build_backbone("resnet_tiny", pretrained=str(path))
    msg = str(e.value)
    for part in (str(path), "missing keys: layer3.0.bn1.running_var", "unexpected keys: head.weight",
                 "layer2.0.conv1.weight (checkpoint (1, 1, 3, 3), model (32, 16, 3, 3))"):
        assert part in msg


def test_fc_must_be_present_for_imagenet_checkpoint(tmp_path):
    sd = {k: v for k, v in _trained_tiny().state_dict().items() if not k.startswith("fc.")}
    torch.save(sd, tmp_path / "nofc.pth")
    with pytest.raises(CheckpointError, match="missing keys: fc.weight, fc.bias"):
        load_pretrained(BACKBONES.get("resnet_tiny")(), str(tmp_path / "nofc.pth"))


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nope.pth"):
        build_backbone("resnet_tiny", pretrained=str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: not a readable weights file"):
        build_backbone("resnet_tiny", pretrained=str(tmp_path / "junk.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="list.pth: expected a state dict"):
        build_backbone("resnet_tiny", pretrained=str(tmp_path / "list.pth"))
    with pytest.raises(KeyError, match="resnet_tiny"):
        build_backbone("resnet51")
    with pytest.raises(ValueError, match="last_stride"):
        build_backbone("resnet_tiny", last_stride=3)
