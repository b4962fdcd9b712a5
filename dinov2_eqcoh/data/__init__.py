# SPDX-License-Identifier: Apache-2.0
"""Datasets: the `dataset_path` strings DINOv2 parses (ImageFolder roots, the built-in synthetic glyphs) and the
synthetic dense-task data (segmentation scenes, videos for label propagation, `synthetic_dense`), and the dense-task
datasets on disk (DAVIS-2017, ADE20K: `dense_folders`).

May import: `dinov2_eqcoh.method`, DINOv2 and third-party libraries (checked by `tests/test_layout.py`).
"""
