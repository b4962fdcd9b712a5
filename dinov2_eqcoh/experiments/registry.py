# SPDX-License-Identifier: Apache-2.0
"""The models the experiments compare, as `key=value` overrides of one config, and the regime where the decoders
act: one list, so that the study, the curves, the demo's regime preset and the dense-headroom check train the
same things under the same names."""

from __future__ import annotations

MODELS = {
    "dinov2": ["eqcoh.loss_weight=0", "eqcoh.apply_to_view=false"],
    "dinov2_aug": ["eqcoh.loss_weight=0"],
    "eqcoh": ["eqcoh.n_intermediate=2"],
    "eqcoh_k1": ["eqcoh.n_intermediate=1"],
    "eqcoh_head_only": ["eqcoh.loss_weight=0", "eqcoh.keep_head_split=true"],
    # the same two models trained with fill-free geometry (no corner a rotation or shift uncovers)
    "dinov2_aug_fill_free": ["eqcoh.loss_weight=0", "eqcoh.fill_free=true"],
    "eqcoh_fill_free": ["eqcoh.n_intermediate=2", "eqcoh.fill_free=true"],
}
DEFAULT_MODELS = ("dinov2", "dinov2_aug", "eqcoh", "eqcoh_k1")
DESCRIPTIONS = {
    "dinov2": "vanilla DINOv2",
    "dinov2_aug": "DINOv2 + g on the second view, no reconstruction",
    "eqcoh": "DINOv2 + EqCoh (λ 1, K 2)",
    "eqcoh_k1": "DINOv2 + EqCoh (λ 1, K 1)",
    "eqcoh_head_only": "EqCoh's head split (z_inv to DINOv2's heads) with λ 0: the architecture without L_recon",
    "dinov2_aug_fill_free": "DINOv2 + g, g rendered fill-free (eqcoh.fill_free)",
    "eqcoh_fill_free": "DINOv2 + EqCoh (λ 1, K 2), g rendered fill-free (eqcoh.fill_free)",
}
# the regime chosen on these diagnostics (docs/mechanism_regime.md): the demo config plus these, 800 iterations
REGIME = ("eqcoh.decoder.dim=256", "eqcoh.extra_unmasked_pass=true")
