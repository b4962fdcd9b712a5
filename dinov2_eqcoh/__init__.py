"""dinov2_eqcoh: equivariance-coherent DINOv2 (Wang et al., AAAI-26, arXiv 2503.18753) as a DINOv2 plugin.

Public names are imported lazily so that `import dinov2_eqcoh` stays cheap and does not import torch's
distributed stack before a launcher has set up its environment.
"""

__version__ = "0.2.0"

_LAZY = {
    "EqCohMetaArch": "dinov2_eqcoh.meta_arch",
    "build_data_transform": "dinov2_eqcoh.method.augmentation",
    "build_collate_fn": "dinov2_eqcoh.method.collate",
    "make_dataset": "dinov2_eqcoh.data.datasets",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dinov2_eqcoh' has no attribute {name!r}")
