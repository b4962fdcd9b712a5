"""The training step reads nothing back from the device: no `.item()`, `.cpu()`, `.tolist()` or `float(tensor)`.

A host synchronisation in the step makes the host wait for the device every iteration. The check runs the code on
PyTorch's meta device, where a tensor has a shape but no data: any read of a value (`.item()`, `float(t)`,
`.tolist()`, `.cpu()`, `bool(t)`) raises there, so code that passes on meta tensors cannot synchronise on a GPU
either. The first test shows the check catches a read (the blur kernel size taken from the batch's σ).
"""

from __future__ import annotations

import pytest
import torch

from dinov2_eqcoh.experiments import bench
from dinov2_eqcoh.method.augmentation import render_views
from dinov2_eqcoh.method.transforms import TRANSFORMS, path_thetas, render


def tiny(transform: str, *opts: str):
    cfg = bench.build_bench_cfg("tiny", extra_opts=[f"eqcoh.transform={transform}", *opts])
    images = bench.render_images(cfg, int(cfg.train.batch_size_per_gpu), bench.PRESETS["tiny"].image_size)
    batch = bench.make_batches("eqcoh", cfg, images, 1, int(cfg.train.batch_size_per_gpu), seed=0)[0]
    return cfg, {k: v.to("meta") if torch.is_tensor(v) else v for k, v in batch.items()}


def test_meta_device_catches_a_read_back():
    u = torch.zeros(2, 3, 32, 32, device="meta")
    thetas = path_thetas(torch.ones(2, 1, device="meta"), 2)
    with pytest.raises((RuntimeError, NotImplementedError)):  # σ.max() read for the kernel size
        render(u, "blur", thetas)
    assert render(u, "blur", thetas, max_blur_sigma=2.0).shape == (2, 3, 3, 32, 32)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_rendering_reads_nothing_back(transform):
    cfg, batch = tiny(transform)
    v2, targets = render_views(batch, cfg, device="meta")
    B, G = cfg.train.batch_size_per_gpu, cfg.crops.global_crops_size
    assert v2.shape == (B, 3, G, G) and targets.shape == (cfg.eqcoh.n_intermediate, B, 3, G, G)


@pytest.mark.parametrize(
    "transform, opts",
    [("blur", ()), ("se2", ()), ("se2", ("eqcoh.extra_unmasked_pass=true",)), ("rotation", ("ibot.loss_weight=0",))],
)
def test_forward_backward_reads_nothing_back(transform, opts):
    """EqCohMetaArch.forward_backward (rendering, DINOv2's losses on z_inv, L_recon, the backward) on meta tensors."""
    from dinov2_eqcoh.meta_arch import EqCohMetaArch

    cfg, batch = tiny(transform, "eqcoh.diagnostics_every=1", *opts)  # the bench presets switch them off
    with torch.device("meta"):
        model = EqCohMetaArch(cfg)
    model.train()
    loss_dict = model.forward_backward(batch, teacher_temp=0.07)
    assert "eqcoh_recon_loss" in loss_dict and all(v.device.type == "meta" for v in loss_dict.values())
    assert model.student["eqcoh_head"].proj.weight.grad is not None
    # this step is diagnosed (eqcoh.diagnostics_every 1): the diagnostics too stay on the device
    assert "eqcoh_diag_k1_path" in model._eqcoh_diag and all(v.device.type == "meta" for v in model._eqcoh_diag.values())
