# SPDX-License-Identifier: Apache-2.0
"""Evaluations of frozen backbones: the paper's synthetic equivariance tasks (R² of an MLP probe that regresses θ
from the features of I and g_θ(I)), invariance (k-NN and linear-probe top-1), and dense probes (homography MCE,
DAVIS label propagation J&F, linear segmentation mIoU).

    python -m dinov2_eqcoh.eval.equivariance --weights <ckpt> --output-dir <dir>
    python -m dinov2_eqcoh.eval.invariance --weights <ckpt> --output-dir <dir>
    python -m dinov2_eqcoh.eval.homography --weights <ckpt> --output-dir <dir>
    python -m dinov2_eqcoh.eval.propagation --weights <ckpt> --output-dir <dir>
    python -m dinov2_eqcoh.eval.segmentation --weights <ckpt> --output-dir <dir>
    python -m dinov2_eqcoh.eval.reconstruction --run-dir <run>      (the decoders of an EqCoh run, not a backbone)

Functions for programmatic use: `dinov2_eqcoh.eval.equivariance.evaluate_equivariance`,
`dinov2_eqcoh.eval.invariance.evaluate_invariance`, `dinov2_eqcoh.eval.dense.dense_probes` (all three dense probes
on the built-in data), `dinov2_eqcoh.eval.features.load_backbone`.

May import: `dinov2_eqcoh.method`, `dinov2_eqcoh.data`, `dinov2_eqcoh.weights`, DINOv2 and third-party
libraries; never run management or experiments (checked by `tests/test_layout.py`).
"""
