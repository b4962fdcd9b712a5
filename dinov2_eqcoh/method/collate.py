"""The method's collate: DINOv2's `collate_data_and_cast`, called unchanged, plus θ.

DINOv2's collate drops every key of the augmentation dict it does not know (DINOV2_INTEGRATION.md §2), so θ is
stacked here, after DINOv2's own function has produced the crops and the iBOT masks (it is the only consumer of the
`random` stream, so the masks are DINOv2's under the same seed). The second half of `collated_global_crops` is u:
v2 = g_θ(u) and the targets u_k are rendered on the training device by
`dinov2_eqcoh.method.augmentation.render_views`.

`build_collate_fn(cfg, dtype)` is the `train.collate_fn` seam: DINOv2's own partial when the plugin's data pipeline
is off (`eqcoh.loss_weight: 0`, `eqcoh.apply_to_view: false`), else the same partial around `collate_eqcoh`.
"""

from __future__ import annotations

import functools

import torch
from dinov2.data.collate import collate_data_and_cast

from dinov2_eqcoh.method.augmentation import eqcoh_pipeline_active


def collate_eqcoh(samples_list, mask_ratio_tuple, mask_probability, dtype, n_tokens=None, mask_generator=None):
    """DINOv2's `collate_data_and_cast` plus θ.

    Args:
        samples_list: B samples `(augmentation dict, target)` from `DataAugmentationEqCoh`.
        mask_ratio_tuple, mask_probability, dtype, n_tokens, mask_generator: as `collate_data_and_cast`.

    Returns:
        `collate_data_and_cast`'s dict (collated_global_crops (2B, 3, G, G) with v1 first, then u; ...) plus
        `eqcoh_theta` (B, P) float32.
    """
    missing = sum("eqcoh_theta" not in s[0] for s in samples_list)
    if missing:
        raise ValueError(f"collate_eqcoh: {missing} of {len(samples_list)} samples carry no 'eqcoh_theta'")
    collated = collate_data_and_cast(
        samples_list,
        mask_ratio_tuple=mask_ratio_tuple,
        mask_probability=mask_probability,
        dtype=dtype,
        n_tokens=n_tokens,
        mask_generator=mask_generator,
    )
    collated["eqcoh_theta"] = torch.stack([s[0]["eqcoh_theta"] for s in samples_list]).to(torch.float32)  # (B, P)
    return collated


def build_collate_fn(cfg, dtype):
    """The `train.collate_fn` seam: callable(list of (dict, target)) -> batch dict for DINOv2's training loop.

    Builds DINOv2's own partial (`dinov2.train.train.build_collate_fn`: masking generator, mask ratios, n_tokens)
    and, when the plugin's data pipeline is active, returns the same partial with `collate_eqcoh` as its function.
    """
    from dinov2.train.train import build_collate_fn as build_dinov2_collate_fn

    active = eqcoh_pipeline_active(cfg)
    dinov2_collate = build_dinov2_collate_fn(cfg, dtype)
    if not active:
        return dinov2_collate
    if dinov2_collate.func is not collate_data_and_cast:
        raise TypeError(
            f"build_collate_fn: expected DINOv2's partial around collate_data_and_cast, got {dinov2_collate.func!r}"
        )
    return functools.partial(collate_eqcoh, *dinov2_collate.args, **dinov2_collate.keywords)
