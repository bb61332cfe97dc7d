"""Write the peer-equality fixtures of ``tests/test_importers.py`` by running each peer's OWN model code.

For every layout of :mod:`esreid.models.importers` this script builds the peer's model with the peer's code, fills it
by the seeded rule of ``seeded.py``, computes the features the peer's test code ranks on the fixed batch (its eval
forward, then its own normalisation), and writes ``<layout>.json``: the peer commit, the key list with shapes (in the
peer's order, which the seed rule follows), the save format, and the features (float32, base64). The CI test
regenerates the weights from the key list, writes the checkpoint in the peer's save format, loads it through esreid
and compares. Nothing of the peers is installed or vendored: their source trees are put on ``sys.path`` only while
this script runs.

Peer sources (snapshots of the commits below; any checkout of them works)::

    fast-reid             JDAI-CV/fast-reid               c9bc3ceb2f7a6438b62fb515ea3df6d1e999e95d
    torchreid             KaiyangZhou/deep-person-reid    f8cd150fdf77e8d9e1ed143b7f308c2c609ded50
    reid-strong-baseline  michuanhaohao/reid-strong-baseline  3da7e6f03164a92e696cb6da059b1cd771b0346d
    AGW                   mangye16/ReID-Survey            38f59126cfa36c99a28377384dc23a5712dd0411

Run (with esreid's environment: torch 2.13.0 as pinned in constraints.txt; the peers need nothing else)::

    python tests/data/peers/make_fixtures.py --fast-reid PATH --torchreid PATH --bot PATH --agw PATH

Shims (documented, unrelated to the models): fast-reid's package ``__init__`` files import every model, its
checkpointer and its yacs config; the script registers empty packages for ``fastreid``, ``fastreid.modeling``,
``.backbones``, ``.heads`` and ``.meta_arch`` (their modules are then imported from the real files), a
``fastreid.config`` whose ``configurable`` leaves ``__init__`` as written (the script passes the keyword arguments
``from_config`` would), and ``fastreid.utils.checkpoint`` / ``fastreid.utils.events`` with the two message helpers
and ``get_event_storage`` (used only when pretrained weights load or a loss is logged). torchreid's ``models/resnet.py``
is loaded from its file alone (its package ``__init__`` imports every model and gdown).
"""

from __future__ import annotations

import argparse
import base64
import importlib
import importlib.util
import json
import os
import sys
import types
from typing import Any, Callable, Dict

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from seeded import batch, normalised, seeded_state  # noqa: E402

COMMITS = {
    "fast-reid": ("JDAI-CV/fast-reid", "c9bc3ceb2f7a6438b62fb515ea3df6d1e999e95d"),
    "torchreid": ("KaiyangZhou/deep-person-reid", "f8cd150fdf77e8d9e1ed143b7f308c2c609ded50"),
    "bot": ("michuanhaohao/reid-strong-baseline", "3da7e6f03164a92e696cb6da059b1cd771b0346d"),
    "agw": ("mangye16/ReID-Survey", "38f59126cfa36c99a28377384dc23a5712dd0411"),
}
NUM_CLASSES = 7  # identities of the fixtures' classifiers


def _package(name: str, path: str = None, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    if path is not None:
        mod.__path__ = [path]
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def _forget(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def fastreid(root: str) -> types.SimpleNamespace:
    """fast-reid's ResNet backbone builder, EmbeddingHead and Baseline meta-architecture, from its own files."""
    pkg = os.path.join(root, "fastreid")
    _package("fastreid", pkg)
    _package("fastreid.config", configurable=lambda init: init)
    _package("fastreid.utils", os.path.join(pkg, "utils"))
    _package("fastreid.utils.checkpoint", get_missing_parameters_message=str, get_unexpected_parameters_message=str)
    _package("fastreid.utils.events", get_event_storage=None)
    _package("fastreid.modeling", os.path.join(pkg, "modeling"))
    for sub in ("backbones", "heads", "meta_arch"):
        _package(f"fastreid.modeling.{sub}", os.path.join(pkg, "modeling", sub))
    resnet = importlib.import_module("fastreid.modeling.backbones.resnet")
    sys.modules["fastreid.modeling.backbones"].build_backbone = None  # what meta_arch.baseline imports by name
    head = importlib.import_module("fastreid.modeling.heads.embedding_head")
    sys.modules["fastreid.modeling.heads"].build_heads = None
    baseline = importlib.import_module("fastreid.modeling.meta_arch.baseline")
    return types.SimpleNamespace(resnet=resnet, head=head, baseline=baseline)


def _cfg(**backbone: Any) -> Any:
    """The part of fast-reid's config ``build_resnet_backbone`` reads (configs/Base-bagtricks.yml values)."""
    fields = dict(PRETRAIN=False, PRETRAIN_PATH="", LAST_STRIDE=1, NORM="BN", WITH_IBN=False, WITH_SE=False,
                  WITH_NL=False, DEPTH="50x")
    fields.update(backbone)
    return types.SimpleNamespace(MODEL=types.SimpleNamespace(BACKBONE=types.SimpleNamespace(**fields)))


def fastreid_model(fr: types.SimpleNamespace, with_nl: bool, pool: str) -> torch.nn.Module:
    backbone = fr.resnet.build_resnet_backbone(_cfg(WITH_NL=with_nl))
    heads = fr.head.EmbeddingHead(feat_dim=2048, embedding_dim=0, num_classes=NUM_CLASSES, neck_feat="before",
                                  pool_type=pool, cls_type="Linear", scale=1, margin=0.0, with_bnneck=True,
                                  norm_type="BN")
    return fr.baseline.Baseline(backbone=backbone, heads=heads, pixel_mean=[0.485 * 255, 0.456 * 255, 0.406 * 255],
                                pixel_std=[0.229 * 255, 0.224 * 255, 0.225 * 255], loss_kwargs={})


def fastreid_features(model: torch.nn.Module) -> torch.Tensor:
    # fast-reid feeds 0..255 images (the model normalises with pixel_mean/std); TEST.METRIC cosine: F.normalize
    return F.normalize(model(batch().float()), dim=1)


def on_path(root: str, package: str) -> types.ModuleType:
    """``package`` of a peer checked out at ``root`` (both reid-strong-baseline and AGW call theirs ``modeling``)."""
    _forget(package)
    sys.path.insert(0, root)
    try:
        return importlib.import_module(package)
    finally:
        sys.path.remove(root)


def torchreid_resnet(root: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("torchreid_resnet", os.path.join(root, "torchreid", "models",
                                                                                   "resnet.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _post_bn_l2(model: torch.nn.Module) -> torch.Tensor:
    # ToTensor + Normalize, eval forward (the post-BN feature), TEST.FEAT_NORM: F.normalize
    return F.normalize(model(normalised(batch())), dim=1)


def peers(roots: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
    """layout -> (peer, how the model is built, its save format, model builder, features of the peer's test)."""
    out: Dict[str, Dict[str, Any]] = {}
    if roots.get("fast-reid"):
        fr = fastreid(roots["fast-reid"])
        out["fastreid-bot"] = dict(peer="fast-reid", save="fastreid", features=fastreid_features,
                                   build=lambda: fastreid_model(fr, False, "GlobalAvgPool"),
                                   code="Baseline(build_resnet_backbone(Base-bagtricks: 50x, last stride 1), "
                                        "EmbeddingHead(GlobalAvgPool, BNNeck, Linear))")
        out["fastreid-agw"] = dict(peer="fast-reid", save="fastreid", features=fastreid_features,
                                   build=lambda: fastreid_model(fr, True, "GeneralizedMeanPooling"),
                                   code="Baseline(build_resnet_backbone(Base-AGW: 50x, WITH_NL), "
                                        "EmbeddingHead(GeneralizedMeanPooling, BNNeck, Linear))")
    if roots.get("torchreid"):
        tr = torchreid_resnet(roots["torchreid"])
        raw = lambda model: model(normalised(batch()))  # noqa: E731  (normalize_feature False)
        out["torchreid-resnet50"] = dict(peer="torchreid", save="torchreid", features=raw,
                                         build=lambda: tr.resnet50(NUM_CLASSES, loss="softmax", pretrained=False),
                                         code="torchreid.models.resnet.resnet50(num_classes, pretrained=False)")
        out["torchreid-fc512"] = dict(peer="torchreid", save="torchreid-dataparallel", features=raw,
                                      build=lambda: tr.resnet50_fc512(NUM_CLASSES, loss="softmax", pretrained=False),
                                      code="torchreid.models.resnet.resnet50_fc512(num_classes, pretrained=False)")
    if roots.get("bot"):
        def bot() -> torch.nn.Module:
            return on_path(roots["bot"], "modeling").Baseline(NUM_CLASSES, 1, "", "bnneck", "after", "resnet50",
                                                              "self")
        out["bot"] = dict(peer="bot", save="state_dict", features=_post_bn_l2, build=bot,
                          code="modeling.Baseline(num_classes, last_stride=1, neck='bnneck', neck_feat='after', "
                               "model_name='resnet50')")
    if roots.get("agw"):
        def agw() -> torch.nn.Module:
            return on_path(roots["agw"], "modeling").Baseline(NUM_CLASSES, 1, "", "resnet50_nl", "on", "self")
        out["agw"] = dict(peer="agw", save="state_dict", features=_post_bn_l2, build=agw,
                          code="modeling.Baseline(num_classes, last_stride=1, model_name='resnet50_nl', "
                               "gem_pool='on')")
    return out


def write(layout: str, spec: Dict[str, Any], out_dir: str) -> float:
    torch.manual_seed(0)
    model = spec["build"]()
    keys = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    model.load_state_dict(seeded_state(keys), strict=True)
    model.eval()
    with torch.no_grad():
        features = spec["features"](model).float().contiguous()
    repo, commit = COMMITS[spec["peer"]]
    record = dict(layout=layout, peer=spec["peer"], repository=repo, commit=commit, code=spec["code"],
                  save_format=spec["save"], num_classes=NUM_CLASSES, keys=keys, feature_shape=list(features.shape),
                  features_float32_b64=base64.b64encode(features.numpy().tobytes()).decode())
    with open(os.path.join(out_dir, f"{layout}.json"), "w") as f:
        json.dump(record, f, indent=0)
        f.write("\n")
    return float(features.abs().max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in COMMITS:
        p.add_argument(f"--{name}", metavar="PATH", help=f"a checkout of {COMMITS[name][0]} at {COMMITS[name][1]}")
    p.add_argument("--out", default=HERE, help="folder of the fixtures (default: this script's)")
    args = p.parse_args(argv)
    roots = {name: getattr(args, name.replace("-", "_")) for name in COMMITS}
    builders: Dict[str, Callable] = peers(roots)
    for layout, spec in builders.items():
        print(f"{layout}: max |feature| {write(layout, spec, args.out):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
