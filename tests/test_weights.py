"""ImageNet weights offline: `torchvision:NAME` and URLs through the torch hub cache (no network when cached, one
download otherwise, checked against the hash in its name), one clear error naming the three fixes when neither works,
local paths checked before the dataset scan, `esreid weights fetch`. The network is never used: urlopen is replaced."""

from __future__ import annotations

import glob
import hashlib
import io
import os
import urllib.error

import pytest
import torch

import esreid.models.backbones.weights as weights
from esreid.cli import main
from esreid.config import load_config
from esreid.errors import ConfigError
from esreid.models.backbones import BACKBONES, build_backbone, imagenet_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty torch hub cache (TORCH_HOME) and a fake network: ``net.files`` maps URL -> bytes served,
    ``net.requests`` lists the URLs asked for; any other URL fails as offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    net = type("Net", (), {})()
    net.files, net.requests = {}, []

    def urlopen(url, timeout=None):
        net.requests.append(url)
        if url not in net.files:
            raise urllib.error.URLError(OSError(-2, "Name or service not known"))
        return io.BytesIO(net.files[url])

    monkeypatch.setattr(weights.urllib.request, "urlopen", urlopen)
    net.dir = str(tmp_path / "torch" / "hub" / "checkpoints")
    return net


def tiny_weights() -> tuple:
    """A resnet_tiny ImageNet-style state dict and its torch.save bytes."""
    torch.manual_seed(3)
    state = BACKBONES.get("resnet_tiny")().state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    return state, buf.getvalue()


def test_shipped_configs_name_torchvision_weights_of_their_backbone():
    paths = [p for p in glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml"))
             if os.path.basename(os.path.dirname(p)) not in ("_base_", "sweeps")]  # (sweeps/: sweep specs)
    assert paths
    for path in paths:
        model = load_config(path).model
        imagenet = imagenet_of(model.backbone)  # resnet50_nl (AGW) loads resnet50's weights
        assert model.pretrained == f"torchvision:{imagenet}", path
        assert weights.url_of(model.pretrained) == weights.TORCHVISION[imagenet]
        assert weights.problem_before_training(model.pretrained, model.backbone, imagenet) is None


def test_a_cached_file_is_read_without_the_network(cache):
    os.makedirs(cache.dir)
    cached = os.path.join(cache.dir, "resnet50-0676ba61.pth")
    open(cached, "wb").close()
    assert weights.resolve("torchvision:resnet50") == cached
    assert weights.resolve(weights.TORCHVISION["resnet50"]) == cached  # the URL itself: the same cache file
    assert cache.requests == []


def test_a_download_lands_in_the_cache_once(cache):
    state, data = tiny_weights()
    url = f"https://example.org/models/tiny-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    cache.files[url] = data
    old = os.umask(0o022)
    try:
        model = build_backbone("resnet_tiny", pretrained=url)
    finally:
        os.umask(old)
    assert torch.equal(model.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    saved = os.path.join(cache.dir, os.path.basename(url))
    assert os.stat(saved).st_mode & 0o777 == 0o644  # readable like any other file, not a private temp file
    assert os.listdir(cache.dir) == [os.path.basename(url)]  # no temporary file left
    build_backbone("resnet_tiny", pretrained=url)
    assert cache.requests == [url]  # downloaded once


def test_a_download_that_does_not_match_its_hash_is_not_kept(cache):
    _, data = tiny_weights()
    url = "https://example.org/models/tiny-deadbeef.pth"
    cache.files[url] = data
    with pytest.raises(weights.PretrainedError, match="does not match the hash"):
        weights.resolve(url)
    assert not os.path.exists(cache.dir) or os.listdir(cache.dir) == []


def test_offline_training_stops_with_one_line_naming_the_three_fixes(cache, tmp_path, people, capsys):
    data = people.write(tmp_path / "data", train_ids=2, test_ids=2, images=2)
    argv = ["train", "--config", os.path.join(ROOT, "configs", "market1501", "aib.yaml"), "data.name=custom",
            f"data.root={data}", "data.height=32", "data.width=16", "data.ids_per_batch=2", "data.instances=2",
            "data.workers=0", "model.backbone=resnet18", "model.pretrained=torchvision:resnet18", "device=cpu",
            f"output_dir={tmp_path / 'out'}"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("esreid: error")]
    assert len(err) == 1 and "Traceback" not in err[0] and "During handling" not in err[0]
    message = err[0]
    cached = os.path.join(cache.dir, "resnet18-f37072fd.pth")
    for part in ("Name or service not known", weights.TORCHVISION["resnet18"], "local copy",  # fix 1
                 "esreid weights fetch torchvision:resnet18", cached, "TORCH_HOME",  # fix 2
                 "model.pretrained=''"):  # fix 3
        assert part in message, part
    assert cache.requests == [weights.TORCHVISION["resnet18"]]


@pytest.mark.parametrize("pretrained, expected", [
    ("/nowhere/resnet50.pth", "weights file not found: /nowhere/resnet50.pth"),
    ("torchvision:resnet50", "torchvision:resnet50 are the weights of resnet50, but model.backbone is resnet_tiny"),
])
def test_weights_that_cannot_fit_stop_before_the_dataset_scan(tiny_config, monkeypatch, pretrained, expected):
    from esreid.engine import trainer

    def scan(*args, **kwargs):
        raise AssertionError("the dataset was scanned before the weights were checked")

    monkeypatch.setattr(trainer, "build_dataset", scan)
    with pytest.raises(ConfigError, match="model.pretrained") as e:
        trainer.Trainer(tiny_config(extra=[f"model.pretrained={pretrained}"]), progress=False, log=lambda s: None)
    assert expected in str(e.value)


def test_an_unknown_torchvision_name_is_a_config_error():
    with pytest.raises(ConfigError, match=r"command line: key 'model.pretrained': unknown weights "
                                          r"'torchvision:resnet5'.*torchvision:resnet50"):
        load_config(None, ["model.pretrained=torchvision:resnet5"])


def test_weights_fetch(cache, capsys):
    _, data = tiny_weights()
    url = "https://example.org/models/tiny.pth"
    cache.files[url] = data
    assert main(["weights", "fetch", url]) == 0
    assert "saved " + os.path.join(cache.dir, "tiny.pth") in capsys.readouterr().out
    assert main(["weights", "fetch", url]) == 0
    assert "already cached" in capsys.readouterr().out and cache.requests == [url]
    assert main(["weights", "fetch"]) == 2  # the default: what the shipped configs use (offline here)
    assert cache.requests[-1] == weights.TORCHVISION["resnet50"]
    assert main(["weights", "fetch", "/some/file.pth"]) == 2
    assert "expected torchvision:NAME" in capsys.readouterr().err
