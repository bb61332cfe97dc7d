"""Models: the contract (base.py), backbones, pooling, heads, and one file per method, chosen by ``model.name``.

Every registered model is a :class:`~esreid.models.base.ReIDModel` (see base.py and docs/architecture.md)::

    model = build_model(cfg.model, num_classes, cfg.test)
    model.train(); losses = model(images, pids)   # dict[str, Tensor] of scalar loss terms, summed by the trainer
    model.eval();  feats = model(images)          # list[Tensor], one (B, D_i) retrieval feature per branch
"""

from esreid.registry import Registry

MODELS = Registry("model", locations=(__name__,))  # every module of esreid.models, on first lookup


def build_model(cfg, num_classes: int, test=None, retrieval=None, log=None):
    """Build the model registered as ``cfg.name`` (a model config) for ``num_classes`` training identities.

    ``retrieval`` replaces the method's retrieval rule (an imported checkpoint's peer rule); ``test`` (a
    :class:`~esreid.config.TestConfig`) may override it: its ``flip``, ``normalize`` and ``metric`` replace the rule's
    where they are not ``None``. ``cfg.pretrained`` naming another toolkit's checkpoint (``fastreid:PATH``, ...,
    :mod:`esreid.models.importers`) initialises the model from it; ``log`` receives the line saying what was loaded.
    """
    from esreid.models.backbones import checkpoint_reader

    cls = MODELS.get(cfg.name)
    rule = retrieval or cls.default_retrieval
    if test is not None:
        rule = rule.replace(flip=test.flip, normalize=test.normalize, metric=test.metric)
    model = cls(cfg, num_classes, rule)  # the backbone reads cfg.pretrained (a peer's too: its backbone part)
    reader = checkpoint_reader(cfg.pretrained)
    if reader is not None:
        report = reader.initialise_heads(model, cfg.pretrained)
        if log is not None:
            log(report)
    return model
