"""The method's collate: DINOv2's `collate_data_and_cast`, called unchanged, plus the per-sample eqcoh tensors.

DINOv2's collate drops every key of the augmentation dict it does not know (DINOV2_INTEGRATION.md §2), so the
targets u_k and θ are stacked here, after DINOv2's own function has produced the crops and the iBOT masks (it is the
only consumer of the `random` stream, so the masks are DINOv2's under the same seed).

`build_collate_fn(cfg, dtype)` is the `train.collate_fn` seam: DINOv2's own partial when the plugin's data pipeline
is off (`eqcoh.loss_weight: 0`, `eqcoh.apply_to_view: false`), else the same partial around `collate_eqcoh`.
"""

from __future__ import annotations

import functools

import torch
from dinov2.data.collate import collate_data_and_cast

from dinov2_eqcoh.data.augmentation import eqcoh_pipeline_active


def _stack_key(samples_list, key, dim=0):
    """Stack sample[0][key] over the batch along `dim`; None when no sample has it; an error when only some have it."""
    present = [key in s[0] for s in samples_list]
    if not any(present):
        return None
    if not all(present):
        raise ValueError(f"collate_eqcoh: {sum(present)} of {len(present)} samples carry {key!r}; all or none must")
    return torch.stack([s[0][key] for s in samples_list], dim=dim)


def collate_eqcoh(samples_list, mask_ratio_tuple, mask_probability, dtype, n_tokens=None, mask_generator=None):
    """DINOv2's `collate_data_and_cast` plus the eqcoh keys.

    Args:
        samples_list: B samples `(augmentation dict, target)` from `DataAugmentationEqCoh`.
        mask_ratio_tuple, mask_probability, dtype, n_tokens, mask_generator: as `collate_data_and_cast`.

    Returns:
        `collate_data_and_cast`'s dict (collated_global_crops (2B, 3, G, G) with v1 first then v2, ...) plus
        `eqcoh_targets` (K, B, 3, G, G) cast to `dtype` (when the samples carry targets) and
        `eqcoh_theta` (B, P) float32 (when they carry θ).
    """
    collated = collate_data_and_cast(
        samples_list,
        mask_ratio_tuple=mask_ratio_tuple,
        mask_probability=mask_probability,
        dtype=dtype,
        n_tokens=n_tokens,
        mask_generator=mask_generator,
    )
    targets = _stack_key(samples_list, "eqcoh_targets", dim=1)  # (K, B, 3, G, G): u_k batches, one copy
    if targets is not None:
        collated["eqcoh_targets"] = targets.to(dtype)
    theta = _stack_key(samples_list, "eqcoh_theta")  # (B, P)
    if theta is not None:
        collated["eqcoh_theta"] = theta.to(torch.float32)
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
