"""Models: backbones, pooling, necks, and one file per method, chosen by ``model.name``.

Contract of every registered model (see docs/architecture.md):
    model = MODELS.get(cfg.name)(cfg, num_classes)
    model.train(); losses = model(images, pids)   # dict[str, Tensor] of scalar loss terms, summed by the trainer
    model.eval();  feats = model(images)          # list[Tensor], one (B, D_i) retrieval feature per branch
"""

from esreid.registry import Registry

MODELS = Registry("model")


def build_model(cfg, num_classes: int):
    """Build the model registered as ``cfg.name`` for ``num_classes`` training identities."""
    return MODELS.get(cfg.name)(cfg, num_classes)


def _register_all() -> None:
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and not mod.ispkg:
            importlib.import_module(f"{__name__}.{mod.name}")


_register_all()
