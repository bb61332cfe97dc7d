"""Checkpoints of other re-ID toolkits: the registry of their layouts (:data:`LAYOUTS`), recognising a file
(:func:`identify`), building the esreid model it becomes (:func:`build_imported`, ``--weights``) and initialising a
model from one (``model.pretrained``: :func:`backbone_state` for the backbone, :func:`initialise_heads` for the rest).

A file is named ``PEER:PATH`` (``fastreid:``, ``torchreid:``, ``bot:`` for reid-strong-baseline, ``agw:`` for AGW's
official code; PATH may be a URL, read through the torch hub cache) or by its path alone, when its keys tell the
layout. Each :class:`Layout` is a declaration: how the peer's keys are renamed to esreid's, which esreid model and
options it becomes (the backbones of :mod:`esreid.models.backbones.peers` reproduce each peer's stem and non-local
blocks), and the retrieval rule the peer's own test code applies (pre/post-BN feature, flip, L2 normalisation,
metric). ``tests/test_importers.py`` checks each layout against features that the peer's own code computed
(``tests/data/peers/make_fixtures.py``).

=====================  ===========================  ============================================  ===================
layout                 peer model                   esreid model                                  retrieval (peer's)
=====================  ===========================  ============================================  ===================
``fastreid-bot``       fast-reid bagtricks_R50      baseline, resnet50_fastreid, stride 1, GAP    post-BN, L2, cosine
``fastreid-agw``       fast-reid AGW_R50            agw, resnet50_nl_fastreid, GeM p = 3          post-BN, L2, cosine
``bot``                reid-strong-baseline R50     baseline, resnet50_bot, stride 1, GAP         post-BN, L2, cosine
``agw``                ReID-Survey AGW (official)   agw, resnet50_nl, GeM (its learned p)         post-BN, L2, cosine
``torchreid-resnet50`` torchreid resnet50           ide, resnet50, stride 2                       GAP, Euclidean
``torchreid-fc512``    torchreid resnet50_fc512     ide, resnet50, stride 1, reduction 512        fc512, Euclidean
=====================  ===========================  ============================================  ===================

The AGW layouts become ``agw`` with ``center_weight: 0``: the checkpoints hold no centres (AGW's centre loss is a
criterion outside its model); fine-tuning with the centre loss on starts the centres fresh. None of these flip at test
time (fast-reid ``TEST.FLIP.ENABLED: False``; the others have no flip). Architectures
esreid has no counterpart for (IBN-Net, SE-ResNet, ResNeSt, OSNet, non-ResNet backbones, other depths) are named by
:data:`MISSING` before any layout is tried.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from esreid.config.pretrained import PEERS, PREFIX, is_url, split_peer
from esreid.errors import CheckpointError
from esreid.models.backbones import CHECKPOINT_READERS, CheckpointReader, read_state_dict
from esreid.models.base import RetrievalRule


def gem_p(p: torch.Tensor) -> torch.Tensor:
    """A peer's GeM exponent ``p`` (any shape with one value, AGW's ``(1,)``) as esreid's scalar parameter ``p``."""
    if p.numel() != 1:
        raise CheckpointError(f"GeM exponent of shape {tuple(p.shape)}: expected one value")
    return p.reshape(())


@dataclass(frozen=True)
class Layout:
    """One peer's checkpoint layout (module docstring).

    name / peer / title: the layout's name, its prefix in :data:`PEERS`, what it is (shown in messages);
    model: esreid model config fields it becomes (``name`` selects the model, the rest its options);
    renames: ``(regex, template)`` pairs; a peer key becomes ``re.sub(regex, template, key)`` of the first regex
        that matches it at its start;
    retrieval: the peer's test-time rule (flip, L2 normalisation, metric);
    convert: esreid key -> function of the peer's tensor (a GeM exponent to esreid's parameter);
    constants: esreid keys the peer has no tensor for, with the tensor that reproduces the peer (fast-reid's fixed
        GeM p = 3);
    ignore: regexes of peer keys that take no part in the features (buffers some versions save);
    classifier: the esreid key whose rows count the identities;
    test: how the peer's own test code computes the ranked features.
    """

    name: str
    peer: str
    title: str
    model: Mapping[str, Any]
    renames: Tuple[Tuple[str, str], ...]
    retrieval: RetrievalRule
    classifier: str
    test: str
    convert: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    constants: Mapping[str, Callable[[], torch.Tensor]] = field(default_factory=dict)
    ignore: Tuple[str, ...] = ()

    def rename(self, key: str) -> Optional[str]:
        """The esreid key of peer key ``key``, or None when no rename applies."""
        for pattern, template in self.renames:
            if re.match(pattern, key):
                return re.sub(pattern, template, key, count=1)
        return None


def non_local_renames(peer_prefix: str, counts: Sequence[int] = (0, 2, 3, 0),
                      depths: Sequence[int] = (3, 4, 6, 3)) -> Tuple[Tuple[str, str], ...]:
    """AGW-style ``NL_<s>.<k>.`` (the k-th non-local block of stage s, after block ``depth - count + k``) ->
    esreid's ``backbone.layer<s>.non_local.<block index>.`` (:mod:`esreid.models.backbones.resnet_nl`)."""
    return tuple((rf"{re.escape(peer_prefix)}NL_{s + 1}\.{k}\.", f"backbone.layer{s + 1}.non_local.{d - n + k}.")
                 for s, (n, d) in enumerate(zip(counts, depths)) for k in range(n))


POST_BN_COSINE = RetrievalRule(flip=False, normalize=True, metric="cosine")
TRUNK = r"(conv1|bn1|layer[1-4])\."  # torchvision's trunk keys


def _fixed_gem3() -> torch.Tensor:
    return torch.tensor(3.0)


LAYOUTS: Dict[str, Layout] = {layout.name: layout for layout in (
    Layout(
        "fastreid-bot", "fastreid", "fast-reid BoT ResNet-50 (bagtricks_R50: Baseline + EmbeddingHead, BNNeck)",
        dict(name="baseline", backbone="resnet50_fastreid", last_stride=1, pooling="gap"),
        ((r"backbone\.", "backbone."), (r"heads\.bottleneck\.0\.", "head.bn."), (r"heads\.weight$",
                                                                                 "head.classifier.weight")),
        POST_BN_COSINE, "head.classifier.weight",
        "EmbeddingHead in eval mode returns the post-BN feature; TEST.FLIP.ENABLED False; TEST.METRIC cosine (L2)",
        ignore=(r"pixel_(mean|std)$",)),
    Layout(
        "fastreid-agw", "fastreid", "fast-reid AGW ResNet-50 (AGW_R50: non-local blocks, GeM p = 3, BNNeck)",
        dict(name="agw", backbone="resnet50_nl_fastreid", last_stride=1, pooling="gem", center_weight=0.0),
        non_local_renames("backbone.") + ((r"backbone\.", "backbone."), (r"heads\.bottleneck\.0\.", "head.bn."),
                                          (r"heads\.weight$", "head.classifier.weight")),
        POST_BN_COSINE, "head.classifier.weight",
        "EmbeddingHead in eval mode returns the post-BN feature; GeneralizedMeanPooling p = 3 (not learned); no flip; "
        "cosine (L2)",
        constants={"head.pool.p": _fixed_gem3}, ignore=(r"pixel_(mean|std)$",)),
    Layout(
        "bot", "bot", "reid-strong-baseline BoT ResNet-50 (Baseline, neck bnneck, last stride 1)",
        dict(name="baseline", backbone="resnet50_bot", last_stride=1, pooling="gap"),
        ((r"base\.", "backbone."), (r"bottleneck\.", "head.bn."), (r"classifier\.weight$", "head.classifier.weight")),
        POST_BN_COSINE, "head.classifier.weight",
        "TEST.NECK_FEAT after (the post-BN feature), TEST.FEAT_NORM yes (L2), no flip"),
    Layout(
        "agw", "agw", "AGW official ResNet-50 (ReID-Survey Baseline, resnet50_nl, GeM with learned p, BNNeck)",
        dict(name="agw", backbone="resnet50_nl", last_stride=1, pooling="gem", center_weight=0.0),
        non_local_renames("base.") + ((r"base\.", "backbone."), (r"global_pool\.p$", "head.pool.p"),
                                      (r"bottleneck\.", "head.bn."),
                                      (r"classifier\.weight$", "head.classifier.weight")),
        POST_BN_COSINE, "head.classifier.weight",
        "Baseline in eval mode returns the post-BN feature; TEST.FEAT_NORM on (L2), no flip",
        convert={"head.pool.p": gem_p}),
    Layout(
        "torchreid-resnet50", "torchreid", "torchreid resnet50 (GAP feature, last stride 2, no neck)",
        dict(name="ide", backbone="resnet50", last_stride=2, pooling="gap", reduction=0),
        ((TRUNK, r"backbone.\1."), (r"classifier\.", "head.classifier.")),
        RetrievalRule(flip=False, normalize=False, metric="euclidean"), "head.classifier.weight",
        "ResNet.forward in eval mode returns the GAP vector v; engine defaults normalize_feature False, "
        "dist_metric euclidean, no flip"),
    Layout(
        "torchreid-fc512", "torchreid", "torchreid resnet50_fc512 (Linear + BN + ReLU to 512, last stride 1)",
        dict(name="ide", backbone="resnet50", last_stride=1, pooling="gap", reduction=512),
        ((TRUNK, r"backbone.\1."), (r"fc\.", "head.reduction."), (r"classifier\.", "head.classifier.")),
        RetrievalRule(flip=False, normalize=False, metric="euclidean"), "head.classifier.weight",
        "ResNet.forward in eval mode returns fc(v) (512-d, after BN and ReLU); normalize_feature False, euclidean"),
)}

# Architectures the peers have and esreid has not: (regex on a key, what esreid lacks). Checked in order, first hit.
MISSING: Tuple[Tuple[str, str], ...] = (
    (r"(^|\.)IN\.(weight|bias)$", "IBN-Net (instance-batch normalisation: fast-reid WITH_IBN, resnet50_ibn_a/b)"),
    (r"(^|\.)(se|se_module)\.", "SE-ResNet / SE-ResNeXt (squeeze-and-excitation blocks)"),
    (r"(^|\.)(conv2\.fc1|rsoftmax|radix)", "ResNeSt (split-attention convolutions)"),
    (r"(^|\.)conv2\.\d+\.conv2[a-d]\.", "OSNet (omni-scale blocks)"),
    (r"(^|\.)conv1\.conv\.weight$", "a non-ResNet backbone built of conv blocks (OSNet, MobileNetV2, ...)"),
    (r"(^|\.)(patch_embed|cls_token|pos_embed)", "a vision-transformer backbone"),
    (r"^(backbone\.|base\.)?(features|stage\d|stem\.|trunk_output)\.?", "a non-ResNet backbone (MobileNet, "
                                                                          "ShuffleNet, RegNet, RepVGG, DenseNet, ...)"),
    (r"^b[123]\d*(_head|_pool)?\.", "MGN (the multiple-granularity network of fast-reid)"),
    (r"(^|\.)layer3\.([6-9]|\d\d)\.", "ResNet-101/152 re-ID layouts (only ResNet-50 checkpoints import)"),
)


def missing_architecture(keys: Sequence[str]) -> Optional[str]:
    """What esreid lacks to load a checkpoint with ``keys`` (an entry of :data:`MISSING` and the key that shows it)."""
    for pattern, what in MISSING:
        for key in keys:
            if re.search(pattern, key):
                return f"{what} (key {key})"
    return None


@dataclass
class Imported:
    """A recognised checkpoint: its layout, its state dict under esreid's keys, and the identities it was trained on."""

    layout: Layout
    state: Dict[str, torch.Tensor]
    num_classes: int
    source: str

    def model_config(self, base: Any = None) -> Any:
        """The esreid model config of the layout (``base``'s other fields kept when it is that model's config)."""
        from esreid.config import model_config_class

        cls = model_config_class(self.layout.model["name"])
        base = base if isinstance(base, cls) else cls()
        return dataclasses.replace(base, pretrained="", **self.layout.model)


def _convert(layout: Layout, state: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """``(esreid state, peer keys no rename applies to)``."""
    out: Dict[str, torch.Tensor] = {}
    unmatched: List[str] = []
    for key, value in state.items():
        if any(re.search(p, key) for p in layout.ignore):
            continue
        new = layout.rename(key)
        if new is None:
            unmatched.append(key)
            continue
        out[new] = layout.convert[new](value) if new in layout.convert else value
    for key, make in layout.constants.items():
        out[key] = make()
    return out, unmatched


@functools.lru_cache(maxsize=32)
def _expected(name: str, num_classes: int) -> Dict[str, torch.Size]:
    """Keys and shapes of the esreid model of layout ``name`` (built on the meta device: nothing is allocated)."""
    from esreid.models import build_model

    cfg = Imported(LAYOUTS[name], {}, num_classes, "").model_config()
    with torch.device("meta"):
        model = build_model(cfg, num_classes)
    return {k: v.shape for k, v in model.state_dict().items()}


def _problems(layout: Layout, state: Mapping[str, torch.Tensor]) -> Tuple[List[str], int, Dict[str, torch.Tensor]]:
    """``(problems as 'key (why)', keys that fit, converted state)`` of reading ``state`` with ``layout``."""
    try:
        converted, unmatched = _convert(layout, state)
    except CheckpointError as e:
        return [str(e)], 0, {}
    rows = converted.get(layout.classifier)
    expected = _expected(layout.name, int(rows.shape[0]) if rows is not None and rows.dim() else 1)
    problems = [f"{k} (no {layout.name} key)" for k in unmatched]
    problems += [f"{k} (not in {layout.name})" for k in converted if k not in expected]
    problems += [f"{k} (missing)" for k in expected if k not in converted]
    shapes = [f"{k} (shape {tuple(converted[k].shape)}, {layout.name} {tuple(s)})" for k, s in expected.items()
              if k in converted and converted[k].shape != s]
    fits = sum(1 for k, s in expected.items() if k in converted and converted[k].shape == s)
    return problems + shapes, fits, converted


def identify(spec: str, state: Optional[Mapping[str, torch.Tensor]] = None) -> Imported:
    """Recognise the checkpoint ``spec`` (``PEER:PATH`` or a path; ``state`` when already read); the last file read
    is remembered (by path, size and modification time), so the backbone and the heads read it once."""
    path = split_peer(spec)[1]
    if state is None and os.path.isfile(path):
        st = os.stat(path)
        return _identify_file(spec, st.st_size, st.st_mtime_ns)
    return _identify(spec, state)


@functools.lru_cache(maxsize=1)
def _identify_file(spec: str, size: int, mtime_ns: int) -> Imported:
    return _identify(spec, None)


def _identify(spec: str, state: Optional[Mapping[str, torch.Tensor]]) -> Imported:
    """:func:`identify` without the memory.

    Raises:
        CheckpointError: one line: the architecture esreid lacks (:data:`MISSING`), or the closest layout and the
            first keys that did not match; a file esreid cannot read safely (pickled objects) names the re-save fix.
    """
    peer, path = split_peer(spec)
    if state is None and not is_url(path) and not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    state = read_state_dict(path) if state is None else state
    lacking = missing_architecture(list(state))
    if lacking:
        raise CheckpointError(f"{spec}: this checkpoint needs {lacking}, which esreid does not have; esreid imports "
                              f"{', '.join(LAYOUTS)} (ResNet-50 BoT, AGW and plain ResNet-50 models)")
    candidates = [layout for layout in LAYOUTS.values() if peer is None or layout.peer == peer]
    scored = []
    for layout in candidates:
        problems, fits, converted = _problems(layout, state)
        if not problems:
            return Imported(layout, converted, int(converted[layout.classifier].shape[0]), spec)
        scored.append((fits / max(len(state), 1), layout, problems))
    score, closest, problems = max(scored, key=lambda s: s[0])
    shown = ", ".join(problems[:5]) + (f" ... (+{len(problems) - 5} more)" if len(problems) > 5 else "")
    raise CheckpointError(f"{spec}: its keys match no known {PEERS[peer] + ' ' if peer else ''}checkpoint layout; "
                          f"closest: {closest.name} ({closest.title}, {score:.0%} of the keys fit); first keys that "
                          f"did not match: {shown}")


def build_imported(imported: Imported, test: Any = None, base: Any = None):
    """The esreid model of ``imported`` with its weights, eval mode, CPU: the layout's model and options, the peer's
    retrieval rule (``test.flip / normalize / metric`` override it where set)."""
    from esreid.models import build_model

    model = build_model(imported.model_config(base), imported.num_classes, test, retrieval=imported.layout.retrieval)
    model.load_state_dict(imported.state, strict=True)
    return model.eval()


def is_peer_spec(spec: str) -> bool:
    """``spec`` (a ``model.pretrained`` value) names another toolkit's checkpoint: a peer prefix, or a local file that
    is not an ImageNet trunk (torchvision's ``conv1.weight`` at the top and no re-ID ``classifier``), which is what
    ``model.pretrained`` read before peers could be imported."""
    if split_peer(spec)[0]:
        return True
    if not spec or spec.startswith(PREFIX) or is_url(spec) or not os.path.isfile(spec):
        return False
    st = os.stat(spec)
    keys = _keys_of(spec, st.st_size, st.st_mtime_ns)
    return "conv1.weight" not in keys or any(k.startswith("classifier.") for k in keys)


@functools.lru_cache(maxsize=4)
def _keys_of(path: str, size: int, mtime_ns: int) -> Tuple[str, ...]:
    return tuple(read_state_dict(path))


def _trunk_mismatch(imported: Imported, model_cfg: Any) -> Optional[str]:
    """Why ``model_cfg`` cannot start from ``imported`` (another backbone or last stride), or None."""
    layout, want = imported.layout, imported.layout.model
    if model_cfg.backbone == want["backbone"] and model_cfg.last_stride == want["last_stride"]:
        return None
    return (f"{imported.source} is a {layout.title} (layout {layout.name}): set model.backbone={want['backbone']} "
            f"model.last_stride={want['last_stride']} to start from it (they are {model_cfg.backbone}, "
            f"{model_cfg.last_stride})")


def problem_before_training(spec: str, model_cfg: Any) -> Optional[str]:
    """What would stop ``model.pretrained: spec`` from initialising ``model_cfg``'s model, found before the data is
    scanned: an unreadable or unknown checkpoint, another backbone. None when nothing (or not a peer's local file)."""
    if is_url(split_peer(spec)[1]) or not is_peer_spec(spec):
        return None
    try:
        return _trunk_mismatch(identify(spec), model_cfg)
    except CheckpointError as e:
        return str(e)


def backbone_state(spec: str, backbone: str, last_stride: int) -> Dict[str, torch.Tensor]:
    """The backbone weights of the peer checkpoint ``spec`` under the trunk's own keys, for a ``backbone`` with
    ``last_stride`` (what :func:`esreid.models.backbones.build_backbone` loads for ``model.pretrained``).

    Raises:
        CheckpointError: an unknown layout, or another backbone / last stride than the layout's (the features would
            not be the peer's).
    """
    imported = identify(spec)
    problem = _trunk_mismatch(imported, SimpleNamespace(backbone=backbone, last_stride=last_stride))
    if problem:
        raise CheckpointError(problem)
    return {k[len("backbone."):]: v for k, v in imported.state.items() if k.startswith("backbone.")}


def initialise_heads(model: Any, spec: str) -> str:
    """After the backbone (:func:`backbone_state`): load the rest of the peer checkpoint ``spec`` into ``model`` when
    it is the layout's model, its classifier only when the identity counts agree. Returns the line that says what
    was loaded (fine-tuning, ``model.pretrained``)."""
    imported = identify(spec)
    layout = imported.layout
    own = model.state_dict()
    rest = {k: v for k, v in imported.state.items() if not k.startswith("backbone.")}
    head = f"model.pretrained {spec}: {layout.title} (layout {layout.name}): backbone loaded, "
    if model.cfg.name != layout.model["name"] or any(k not in own for k in rest):
        return head + f"heads fresh (model {model.cfg.name}, the file's is {layout.model['name']})"
    classifier = layout.classifier.rsplit(".", 1)[0] + "."
    fresh = rest[layout.classifier].shape != own[layout.classifier].shape
    own.update({k: v for k, v in rest.items() if not (fresh and k.startswith(classifier))})
    model.load_state_dict(own, strict=True)
    return head + "head loaded, " + (f"classifier fresh ({imported.num_classes} identities in the file, "
                                     f"{model.num_classes} here)" if fresh else "classifier loaded")


CHECKPOINT_READERS.register("peer")(CheckpointReader(is_peer_spec, backbone_state, initialise_heads))
