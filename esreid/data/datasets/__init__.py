"""Dataset loaders, one module per dataset, each registering itself in ``esreid.data.base.DATASETS`` (which imports
them on its first lookup)."""
