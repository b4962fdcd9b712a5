# SPDX-License-Identifier: Apache-2.0
"""Old module names of 0.1 (one flat package) kept as deprecated aliases of where the code lives since 0.2.

`dinov2_eqcoh/<old>.py` holds two lines: `from dinov2_eqcoh._moved import alias` and `alias(__name__, "<new>")`.
Imported, the old name becomes the new module itself (`sys.modules`), so `from dinov2_eqcoh.study import main`,
config strings such as `train.data_transform: dinov2_eqcoh.data.augmentation:build_data_transform` in the
config.yaml of an older run folder, and `python -m dinov2_eqcoh.demo ...` keep working; each use warns once with
the new name (FutureWarning, shown by default).
"""

from __future__ import annotations

import importlib
import runpy
import sys
import warnings

MOVED = {  # old name -> new name
    "dinov2_eqcoh.bench": "dinov2_eqcoh.experiments.bench",
    "dinov2_eqcoh.checkpoints": "dinov2_eqcoh.weights.checkpoints",
    "dinov2_eqcoh.config": "dinov2_eqcoh.method.config",
    "dinov2_eqcoh.decoder": "dinov2_eqcoh.method.decoder",
    "dinov2_eqcoh.demo": "dinov2_eqcoh.experiments.demo",
    "dinov2_eqcoh.export": "dinov2_eqcoh.weights.export",
    "dinov2_eqcoh.gpucheck": "dinov2_eqcoh.experiments.gpucheck",
    "dinov2_eqcoh.interop": "dinov2_eqcoh.weights.interop",
    "dinov2_eqcoh.run_folder": "dinov2_eqcoh.run.folder",
    "dinov2_eqcoh.study": "dinov2_eqcoh.experiments.study",
    "dinov2_eqcoh.transforms": "dinov2_eqcoh.method.transforms",
    "dinov2_eqcoh.data.augmentation": "dinov2_eqcoh.method.augmentation",
    "dinov2_eqcoh.data.collate": "dinov2_eqcoh.method.collate",
}


def alias(name: str, new: str) -> None:
    """Make module `name` an alias of `new`; run as `python -m <old>`, run `new` as the program instead.

    Args:
        name: The old module's `__name__` (`"__main__"` under `python -m`).
        new: The module that replaces it.
    """
    if name == "__main__":
        old = next((o for o, n in MOVED.items() if n == new), new)
        warnings.warn(f"'python -m {old}' is deprecated: use 'python -m {new}'", FutureWarning, stacklevel=2)
        runpy.run_module(new, run_name="__main__", alter_sys=True)
        return
    warnings.warn(f"module {name} is deprecated: it moved to {new}", FutureWarning, stacklevel=3)
    sys.modules[name] = importlib.import_module(new)
