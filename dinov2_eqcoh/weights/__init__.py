# SPDX-License-Identifier: Apache-2.0
"""Weights I/O: reading any checkpoint a user may hold, and writing the formats others load.

- `files`: the one `torch.load` of the package (safe globals, chunked-block keys);
- `run_config`: a checkpoint's iteration, its sharding and the run config it was trained with;
- `checkpoints`: backbones from run folders, released DINOv2 files, HF transformers or timm weights (strict keys,
  position-embedding interpolation); `load_pretrained_backbone` for `student.pretrained_weights`;
- `consolidate`: `python -m dinov2_eqcoh.weights.consolidate <run>`, one whole checkpoint from a multi-process run's
  per-rank FSDP shards;
- `interop`: key maps between DINOv2, timm and HF transformers layouts;
- `export`: `python -m dinov2_eqcoh.weights.export` to the DINOv2 hub, timm or HF transformers format.

May import: `dinov2_eqcoh.method`, `dinov2_eqcoh.data`, DINOv2 and third-party libraries; never run management,
evaluations or experiments (checked by `tests/test_layout.py`).
"""
