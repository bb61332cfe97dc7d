"""``engine.session.open_trained``: the one way a trained model is opened for use (eval, explain, visualize, export,
extract, FeatureExtractor): placed as the trainer places it, told its input normalisation, on ``cfg.device`` unless
overridden; ``place=False`` (export) leaves it as loaded."""

import pytest
import torch

from esreid.config import dump_yaml, to_dict
from esreid.engine.checkpoint import save_checkpoint
from esreid.engine.session import open_trained
from esreid.erasing.besm import erase_fill
from esreid.errors import ConfigError
from esreid.models import build_model

MEAN, STD = [0.3, 0.5, 0.7], [0.2, 0.25, 0.5]


@pytest.fixture
def saved(tiny_config, tmp_path):
    """An ES-Net checkpoint saved before the model was told the data's normalisation (ImageNet fill), and a config
    with channels_last on and its own data.mean / data.std, written as YAML."""
    cfg = tiny_config("esnet", extra=["solver.channels_last=true", f"data.mean={MEAN}", f"data.std={STD}",
                                      "model.erase_value=black"])
    model = build_model(cfg.model, 4, cfg.test).eval()
    save_checkpoint(str(tmp_path / "w.pth"), model=model, epoch=1, config=to_dict(cfg), num_classes=4)
    (tmp_path / "c.yaml").write_text(dump_yaml(cfg))
    return str(tmp_path / "c.yaml"), str(tmp_path / "w.pth")


def conv_weight(model):
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).weight


def test_the_model_is_placed_and_told_its_normalisation(saved):
    s = open_trained(*saved)
    assert s.device == torch.device("cpu") and not s.model.training
    assert conv_weight(s.model).is_contiguous(memory_format=torch.channels_last)  # solver.channels_last
    torch.testing.assert_close(s.model.erase_fill, erase_fill("black", MEAN, STD))  # set_input_normalization


def test_unplaced_for_export_and_the_device_override(saved):
    s = open_trained(*saved, place=False)
    assert conv_weight(s.model).is_contiguous() and not conv_weight(s.model).is_contiguous(
        memory_format=torch.channels_last)
    assert open_trained(*saved, device="cpu").device == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="key 'device': 'cuda' requested but CUDA is not available"):
            open_trained(*saved, device="cuda")
