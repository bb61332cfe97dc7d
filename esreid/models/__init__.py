"""Models: the contract (base.py), backbones, pooling, heads, and one file per method, chosen by ``model.name``.

Every registered model is a :class:`~esreid.models.base.ReIDModel` (see base.py and docs/architecture.md)::

    model = build_model(cfg.model, num_classes, cfg.test)
    model.train(); losses = model(images, pids)   # dict[str, Tensor] of scalar loss terms, summed by the trainer
    model.eval();  feats = model(images)          # list[Tensor], one (B, D_i) retrieval feature per branch
"""

from esreid.registry import Registry

MODELS = Registry("model", locations=(__name__,))  # every module of esreid.models, on first lookup


def build_model(cfg, num_classes: int, test=None):
    """Build the model registered as ``cfg.name`` (a model config) for ``num_classes`` training identities.

    ``test`` (a :class:`~esreid.config.TestConfig`) may override the method's retrieval rule: its ``flip``,
    ``normalize`` and ``metric`` replace the method's defaults where they are not ``None``.
    """
    cls = MODELS.get(cfg.name)
    rule = cls.default_retrieval
    if test is not None:
        rule = rule.replace(flip=test.flip, normalize=test.normalize, metric=test.metric)
    return cls(cfg, num_classes, rule)

