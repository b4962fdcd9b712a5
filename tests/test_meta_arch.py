"""EqCohMetaArch and the reconstruction decoders on a CPU: shapes, gradient routing, the loss, the λ = 0 baseline.

Models are the tiny EqCoh config (2-block 64-d ViT, 32 px crops) as plain modules (no FSDP); batches come from
the built-in dataset through the plugin's real augmentation and collate (or DINOv2's own, for the baseline).
"""

import random

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, dinov2_batch

TINY = "configs/tiny/eqcoh_cpu.yaml"


def eqcoh_cfg(*opts):
    from dinov2_eqcoh.method.config import load_config

    return load_config(REPO / TINY, opts)


def eqcoh_batch(cfg, seed=0):
    """A real EqCoh batch: built-in dataset -> the plugin's augmentation (with u_k targets) -> the plugin's collate."""
    from dinov2_eqcoh.data.datasets import make_dataset
    from dinov2_eqcoh.method.augmentation import build_data_transform
    from dinov2_eqcoh.method.collate import build_collate_fn

    random.seed(seed)
    torch.manual_seed(seed)
    ds = make_dataset(dataset_str=cfg.train.dataset_path, transform=build_data_transform(cfg), target_transform=None)
    return build_collate_fn(cfg, torch.float32)([ds[i] for i in range(cfg.train.batch_size_per_gpu)])


def rendered(cfg, batch):
    """[v1; v2] (2B, 3, G, G) and the targets u_k (K, B, 3, G, G) of a batch, as forward_backward renders them."""
    from dinov2_eqcoh.method.augmentation import render_views

    v2, targets = render_views(batch, cfg)
    crops = batch["collated_global_crops"]
    return torch.cat([crops[: crops.shape[0] // 2], v2]), targets


def build(cfg, seed=0):
    from dinov2_eqcoh.meta_arch import EqCohMetaArch

    torch.manual_seed(seed)
    model = EqCohMetaArch(cfg)
    model.train()
    return model


# ---------------------------------------------------------------------------------------------- decoders


@pytest.mark.parametrize("n_intermediate", [1, 2, 3])
@pytest.mark.parametrize("patch_size,img_size", [(16, 32), (16, 64), (14, 28), (14, 56), (8, 32)])
def test_decoders_output_one_crop_sized_image_per_k(n_intermediate, patch_size, img_size):
    from dinov2_eqcoh.method.decoder import EqCohDecoders

    d_equi, batch = 8, 3
    decoders = EqCohDecoders(n_intermediate, 2 * d_equi, dim=16, patch_size=patch_size, img_size=img_size)
    n_tokens = (img_size // patch_size) ** 2
    out = decoders(torch.randn(batch, n_tokens, 2 * d_equi))
    assert out.shape == (n_intermediate, batch, 3, img_size, img_size)
    assert torch.isfinite(out).all()
    assert len(decoders) == n_intermediate
    # K independent decoders: different initial weights, different outputs
    if n_intermediate > 1:
        assert not torch.equal(out[0], out[1])


def test_decoder_architecture_and_bad_sizes():
    from dinov2.utils.utils import has_batchnorms

    from dinov2_eqcoh.method.decoder import ReconstructionDecoder

    dec = ReconstructionDecoder(d_in=32, dim=64, patch_size=16, img_size=64)
    convs = [m for m in dec.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in dec.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 and len(convs) == 4  # "one linear layer followed by four convolutional layers"
    assert [c.out_channels for c in convs] == [32, 16, 8, 3]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert not has_batchnorms(dec)
    assert isinstance(list(dec.convs)[-1], torch.nn.Conv2d), "the last conv must have no activation"
    with pytest.raises(ValueError, match="divisible by 8"):
        ReconstructionDecoder(d_in=32, dim=12, patch_size=16, img_size=64)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        ReconstructionDecoder(d_in=32, dim=16, patch_size=16, img_size=60)
    with pytest.raises(ValueError, match="patch tokens"):
        dec(torch.randn(2, 15, 32))


def _conv_sizes(decoder, z):
    """Side of the input and of the output of each conv of `decoder` on z, and the decoder's output."""
    sizes = []
    hooks = [m.register_forward_hook(lambda m, args, out: sizes.append((args[0].shape[-1], out.shape[-1])))
             for m in decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    out = decoder(z)
    for h in hooks:
        h.remove()
    return sizes, out


@pytest.mark.parametrize("patch_size,img_size", [(14, 224), (14, 56), (16, 64), (8, 32)])
def test_decoder_convs_run_at_g_over_8_up_to_g_with_no_final_resize(patch_size, img_size):
    """The grid goes straight to G/8, then ×2 three times: the last conv already outputs the crop size G."""
    from dinov2_eqcoh.method.decoder import ReconstructionDecoder

    dec = ReconstructionDecoder(d_in=8, dim=16, patch_size=patch_size, img_size=img_size)
    sizes, out = _conv_sizes(dec, torch.randn(2, (img_size // patch_size) ** 2, 8))
    G = img_size
    assert sizes == [(G // 8, G // 8), (G // 4, G // 4), (G // 2, G // 2), (G, G)]
    assert out.shape == (2, 3, G, G)


def test_decoder_resizes_at_the_end_only_when_g_is_not_a_multiple_of_8():
    from dinov2_eqcoh.method.decoder import ReconstructionDecoder

    dec = ReconstructionDecoder(d_in=8, dim=16, patch_size=14, img_size=28)  # 2x2 grid, G/8 = 3.5
    sizes, out = _conv_sizes(dec, torch.randn(2, 4, 8))
    assert [s for _, s in sizes] == [4, 8, 16, 32]  # ⌈G/8⌉ = 4, then ×2 three times
    assert out.shape == (2, 3, 28, 28)


def test_patch_16_decoder_is_four_x2_stages():
    """For p = 16 the first upsampling (G/16 -> G/8) is the paper's ×2: the same output as four ×2 stages."""
    from dinov2_eqcoh.method.decoder import ReconstructionDecoder

    dec = ReconstructionDecoder(d_in=8, dim=16, patch_size=16, img_size=64)
    z = torch.randn(2, 16, 8)
    x = dec.embed(z).transpose(1, 2).reshape(2, 16, 4, 4)
    convs = [m for m in dec.convs if isinstance(m, torch.nn.Conv2d)]
    for i, conv in enumerate(convs):
        x = conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = F.gelu(x) if i < 3 else x
    assert torch.equal(dec(z), x)


# ---------------------------------------------------------------------------------------------- meta-arch


@pytest.mark.parametrize("n_intermediate", [1, 2, 3])
@pytest.mark.parametrize("patch_size,global_size,local_size", [(16, 32, 16), (14, 28, 14)])
def test_forward_backward_shapes_for_k_and_patch_size(n_intermediate, patch_size, global_size, local_size):
    cfg = eqcoh_cfg(
        f"eqcoh.n_intermediate={n_intermediate}",
        f"student.patch_size={patch_size}",
        f"crops.global_crops_size={global_size}",
        f"crops.local_crops_size={local_size}",
    )
    model = build(cfg)
    batch = eqcoh_batch(cfg)
    assert rendered(cfg, batch)[1].shape == (n_intermediate, 4, 3, global_size, global_size)
    seen = {}
    decoders = model.student["eqcoh_decoders"]
    decoders.register_forward_hook(lambda m, args, out: seen.update(inp=args[0], out=out))
    loss_dict = model.forward_backward(batch, teacher_temp=0.07)

    n_tokens = (global_size // patch_size) ** 2
    assert seen["inp"].shape == (4, n_tokens, 2 * cfg.eqcoh.d_equi)  # [z_equi(v1); z_equi(v2)] per token
    assert seen["out"].shape == (n_intermediate, 4, 3, global_size, global_size)  # decoder output = crop size
    assert set(loss_dict) == {"dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss",
                              "eqcoh_recon_loss"}
    assert all(torch.isfinite(v) for v in loss_dict.values()), loss_dict
    assert not loss_dict["eqcoh_recon_loss"].requires_grad
    no_grad = [n for n, p in model.student.named_parameters() if p.grad is None]
    assert not no_grad, f"student parameters without gradient: {no_grad}"


def test_modules_heads_and_student_teacher_parity():
    from dinov2.utils.utils import has_batchnorms

    cfg = eqcoh_cfg()
    model = build(cfg)
    d_inv = cfg.eqcoh.d_patch - cfg.eqcoh.d_equi
    assert list(model.student.keys()) == ["backbone", "dino_head", "eqcoh_head", "eqcoh_decoders"]
    assert list(model.teacher.keys()) == ["backbone", "dino_head", "eqcoh_head"]  # the teacher never decodes
    assert model.student["dino_head"].mlp[0].in_features == d_inv  # DINOv2's head reads z_inv
    assert model.student["eqcoh_head"].proj.in_features == model.embed_dim
    assert model.student["eqcoh_head"].proj.out_features == cfg.eqcoh.d_patch
    assert len(model.student["eqcoh_decoders"]) == cfg.eqcoh.n_intermediate
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert not has_batchnorms(model.student)
    new_names = [n for n, _ in model.student.named_parameters() if n.startswith("eqcoh")]
    assert new_names and not [n for n in new_names if "last_layer" in n or "blocks" in n]
    # every student/teacher module has the FSDP settings DINOv2's prepare_for_distributed_training reads
    for key in model.student.keys():
        assert "mixed_precision" in cfg.compute_precision.student[key]
    for key in model.teacher.keys():
        assert "mixed_precision" in cfg.compute_precision.teacher[key]


def test_separate_ibot_head_reads_z_inv_too():
    cfg = eqcoh_cfg("ibot.separate_head=true")
    model = build(cfg)
    d_inv = cfg.eqcoh.d_patch - cfg.eqcoh.d_equi
    assert model.student["ibot_head"].mlp[0].in_features == d_inv
    assert model.teacher["ibot_head"].mlp[0].in_features == d_inv
    loss_dict = model.forward_backward(eqcoh_batch(cfg), teacher_temp=0.07)
    assert torch.isfinite(loss_dict["ibot_loss"]) and torch.isfinite(loss_dict["eqcoh_recon_loss"])


def test_eqcoh_head_projects_only_the_tokens_that_are_read():
    """In forward_backward: z_inv of the CLS tokens and the M iBOT-masked patches only (student: global CLS, masked
    patches, local CLS; teacher: global CLS, masked patches), z_equi of the student's 2B·N global patches only."""
    cfg = eqcoh_cfg()
    model = build(cfg)
    batch = eqcoh_batch(cfg)
    calls = {"student": [], "teacher": []}
    for side in calls:
        model_dict = getattr(model, side)
        model_dict["eqcoh_head"].register_forward_hook(
            lambda m, args, kwargs, out, _side=side: calls[_side].append(
                (args[0].shape[0], out[0].shape[-1], out[1], kwargs.get("x_equi"))
            ),
            with_kwargs=True,
        )
    model.forward_backward(batch, teacher_temp=0.07)

    B, n_local = cfg.train.batch_size_per_gpu, cfg.crops.local_crops_number
    n_patches = (cfg.crops.global_crops_size // cfg.student.patch_size) ** 2
    d_inv = cfg.eqcoh.d_patch - cfg.eqcoh.d_equi
    M = batch["mask_indices_list"].shape[0]
    assert 0 < M < 2 * B * n_patches
    (student_tokens, student_width, student_z_equi, x_equi), = calls["student"]
    assert student_tokens == 2 * B + M + n_local * B  # not 2B·(1 + N) + n_local·B·(1 + N_local)
    assert student_width == d_inv and student_z_equi.shape == (2 * B * n_patches, cfg.eqcoh.d_equi)
    assert x_equi.shape[0] == 2 * B * n_patches
    (teacher_tokens, teacher_width, teacher_z_equi, _), = calls["teacher"]
    assert teacher_tokens == 2 * B + M and teacher_width == d_inv and teacher_z_equi is None


def test_read_only_projection_gives_dinov2_the_values_of_the_full_one():
    """What DINOv2's forward_backward reads (CLS tokens, masked patch tokens) and z_equi are those of the full head."""
    cfg = eqcoh_cfg("student.drop_path_rate=0")
    model = build(cfg)  # no drop path: the two forwards see the same network
    batch = eqcoh_batch(cfg)
    crops, local, masks = batch["collated_global_crops"], batch["collated_local_crops"], batch["collated_masks"]
    idx = batch["mask_indices_list"]
    outs = {}
    with torch.no_grad():
        for name, indices in (("full", None), ("read", idx)):
            model._eqcoh_mask_indices = indices
            student = model.student.backbone([crops, local], masks=[masks, None], is_training=True)
            teacher = model.teacher.backbone(crops, is_training=True)
            outs[name] = (student, teacher)
    model._eqcoh_mask_indices = None
    (s_full, t_full), (s_read, t_read) = outs["full"], outs["read"]
    for full, read in ((s_full[0], s_read[0]), (t_full, t_read)):
        torch.testing.assert_close(read["x_norm_clstoken"], full["x_norm_clstoken"])
        torch.testing.assert_close(read["x_norm_patchtokens"].flatten(0, 1)[idx],
                                   full["x_norm_patchtokens"].flatten(0, 1)[idx])
        unread = torch.ones(read["x_norm_patchtokens"].shape[:2], dtype=torch.bool).flatten()
        unread[idx] = False
        assert (read["x_norm_patchtokens"].flatten(0, 1)[unread] == 0).all()  # never computed
    torch.testing.assert_close(s_read[0]["eqcoh_z_equi_patchtokens"], s_full[0]["eqcoh_z_equi_patchtokens"])
    torch.testing.assert_close(s_read[1]["x_norm_clstoken"], s_full[1]["x_norm_clstoken"])


def test_local_crops_keep_only_their_cls_token_and_the_teacher_has_no_z_equi():
    cfg = eqcoh_cfg()
    model = build(cfg)
    batch = eqcoh_batch(cfg)
    d_inv, d_equi = cfg.eqcoh.d_patch - cfg.eqcoh.d_equi, cfg.eqcoh.d_equi
    crops = batch["collated_global_crops"]
    with torch.no_grad():
        global_out, local_out = model.student.backbone([crops, batch["collated_local_crops"]],
                                                       masks=[batch["collated_masks"], None], is_training=True)
        teacher_out = model.teacher.backbone(crops, is_training=True)
    assert global_out["x_norm_patchtokens"].shape[-1] == d_inv
    assert global_out["eqcoh_z_equi_patchtokens"].shape[-1] == d_equi
    # the local crops' patch tokens were not projected: the key is gone rather than left embed_dim-wide
    assert local_out["x_norm_clstoken"].shape == (cfg.crops.local_crops_number * 4, d_inv)
    assert "x_norm_patchtokens" not in local_out and "eqcoh_z_equi_patchtokens" not in local_out
    # the teacher gets z_inv only, and it is the z_inv rows of the full projection
    assert "eqcoh_z_equi_patchtokens" not in teacher_out
    assert teacher_out["x_norm_patchtokens"].shape[-1] == d_inv
    head = model.teacher["eqcoh_head"]
    x = torch.randn(10, model.embed_dim)
    z_inv, z_equi = head(x, with_z_equi=False)
    assert z_equi is None
    torch.testing.assert_close(z_inv, head(x)[0])


def test_recon_loss_alone_reaches_backbone_head_and_decoders_but_not_dino_head():
    cfg = eqcoh_cfg("student.drop_path_rate=0")
    model = build(cfg)
    batch = eqcoh_batch(cfg)
    crops, targets = rendered(cfg, batch)
    # the student's multi-crop forward, exactly as SSLMetaArch calls it; the hook keeps z_equi of the global crops
    model.student.backbone([crops, batch["collated_local_crops"]], masks=[batch["collated_masks"], None],
                           is_training=True)
    z_equi = model._eqcoh_z_equi
    assert z_equi.shape == (crops.shape[0], (32 // 8) ** 2, cfg.eqcoh.d_equi)
    model.reconstruction_loss(z_equi, targets).backward()

    def has_grad(module):
        return [p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()]

    assert all(has_grad(model.student["eqcoh_decoders"]))
    assert any(has_grad(model.student.backbone))
    assert model.student.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in model.student["dino_head"].parameters())
    assert not any(p.grad is not None for p in model.teacher.parameters())
    # only the z_equi rows of the eqcoh head are trained by L_recon; the z_inv rows get nothing
    d_inv = cfg.eqcoh.d_patch - cfg.eqcoh.d_equi
    w_grad = model.student["eqcoh_head"].proj.weight.grad
    assert w_grad[:d_inv].abs().sum() == 0 and w_grad[d_inv:].abs().sum() > 0


def test_recon_loss_is_mean_over_k_of_pixel_mse_between_d_k_of_v1_v2_and_u_k():
    cfg = eqcoh_cfg("eqcoh.n_intermediate=3")
    model = build(cfg)
    batch = eqcoh_batch(cfg)
    z_equi = torch.randn(8, 16, cfg.eqcoh.d_equi)  # (2B, N, d_equi): v1 = first 4, v2 = last 4
    targets = rendered(cfg, batch)[1]  # (K, B, 3, G, G)
    loss = model.reconstruction_loss(z_equi, targets)
    z = torch.cat([z_equi[:4], z_equi[4:]], dim=-1)
    expected = sum(F.mse_loss(d_k(z), u_k) for d_k, u_k in zip(model.student["eqcoh_decoders"], targets)) / 3
    assert torch.allclose(loss, expected, rtol=1e-6, atol=0)
    swapped = torch.cat([z_equi[4:], z_equi[:4]])  # v1 and v2 exchanged: a different input for D_k
    assert not torch.allclose(model.reconstruction_loss(swapped, targets), loss)
    with pytest.raises(ValueError, match="targets u_k have shape"):
        model.reconstruction_loss(z_equi, targets[:2])


def test_recon_loss_is_zero_when_each_d_k_returns_u_k():
    cfg = eqcoh_cfg()
    model = build(cfg)
    batch = eqcoh_batch(cfg)
    targets = rendered(cfg, batch)[1]
    decoders = list(model.student["eqcoh_decoders"])

    # Deliberate stand-in: each D_k's forward is replaced by one that returns its own target u_k (plus a zero that
    # keeps the graph connected), so L_recon must be exactly 0; any mix-up of k, targets or averaging breaks it.
    def perfect(k):
        return lambda z: targets[k] + 0.0 * z.sum()

    for k, dec in enumerate(decoders):
        dec.forward = perfect(k)
    loss_dict = model.forward_backward(batch, teacher_temp=0.07)
    assert loss_dict["eqcoh_recon_loss"].item() == 0.0

    # the same stand-in with D_1 and D_2 exchanged is not a perfect reconstruction
    for k, dec in enumerate(decoders):
        dec.forward = perfect(len(decoders) - 1 - k)
    loss_dict = model.forward_backward(batch, teacher_temp=0.07)
    assert loss_dict["eqcoh_recon_loss"].item() > 0.0


def test_loss_weight_zero_is_vanilla_ssl_meta_arch():
    """λ = 0 (and apply_to_view false): same parameters, same loss dict, same gradients as DINOv2's SSLMetaArch."""
    from dinov2.train.ssl_meta_arch import SSLMetaArch

    cfg = eqcoh_cfg("eqcoh.loss_weight=0", "eqcoh.apply_to_view=false")
    batch = dinov2_batch(cfg)  # DINOv2's own augmentation and collate: what the plugin's builders return here
    models = []
    for cls in (SSLMetaArch, None):
        torch.manual_seed(0)
        model = SSLMetaArch(cfg) if cls else build(cfg)
        model.train()
        torch.manual_seed(1)  # drop path
        loss_dict = model.forward_backward(batch, teacher_temp=0.07)
        models.append((model, loss_dict))
    (vanilla, vanilla_losses), (eqcoh, eqcoh_losses) = models

    assert type(eqcoh).__name__ == "EqCohMetaArch"
    assert list(eqcoh_losses) == list(vanilla_losses)
    for key, value in vanilla_losses.items():
        assert torch.equal(eqcoh_losses[key], value), key
    assert list(eqcoh.state_dict()) == list(vanilla.state_dict())
    assert not eqcoh.student.backbone._forward_hooks
    vanilla_params = dict(vanilla.student.named_parameters())
    for name, p in eqcoh.student.named_parameters():
        q = vanilla_params[name]
        assert torch.equal(p, q), name
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), name


def test_update_teacher_ema_covers_the_new_modules_without_fsdp():
    cfg = eqcoh_cfg()
    model = build(cfg)
    model.forward_backward(eqcoh_batch(cfg), teacher_temp=0.07)
    torch.optim.AdamW(model.student.parameters(), lr=1e-2).step()
    before = {n: p.clone() for n, p in model.teacher.named_parameters()}
    model.update_teacher(0.9)
    student = dict(model.student.named_parameters())
    for name, p in model.teacher.named_parameters():
        if name.startswith("eqcoh"):
            assert torch.allclose(p, 0.9 * before[name] + 0.1 * student[name], atol=1e-6), name
            assert not torch.equal(p, before[name]), name


def test_params_groups_include_the_new_modules_with_plain_lr_and_wd():
    cfg = eqcoh_cfg()
    model = build(cfg)
    groups = model.get_params_groups()
    group_of = {id(p): g for g in groups for p in g["params"]}
    for prefix in ("eqcoh_head", "eqcoh_decoders"):
        for name, p in model.student[prefix].named_parameters():
            g = group_of[id(p)]
            assert g["lr_multiplier"] == 1.0 and not g["is_last_layer"], name
            assert g["wd_multiplier"] == (0.0 if name.endswith(".bias") else 1.0), name
    assert len(group_of) == sum(1 for _ in model.student.parameters())


def test_extra_unmasked_pass_takes_z_equi_from_the_unmasked_global_crops():
    cfg = eqcoh_cfg("eqcoh.extra_unmasked_pass=true", "student.drop_path_rate=0", "ibot.mask_sample_probability=1.0")
    model = build(cfg)
    batch = eqcoh_batch(cfg)
    assert batch["collated_masks"].any()
    used = {}
    original = model.reconstruction_loss
    model.reconstruction_loss = lambda z, t: (used.update(z=z.detach().clone()), original(z, t))[1]  # spy only
    model.forward_backward(batch, teacher_temp=0.07)
    crops = rendered(cfg, batch)[0]  # [v1; v2]
    with torch.no_grad():
        unmasked = model.student.backbone(crops, is_training=True)
        masked = model.student.backbone(crops, masks=batch["collated_masks"], is_training=True)
    assert torch.allclose(used["z"], unmasked["eqcoh_z_equi_patchtokens"], atol=1e-6)
    assert not torch.allclose(used["z"], masked["eqcoh_z_equi_patchtokens"], atol=1e-4)


@pytest.mark.parametrize("fill_free", [False, True])
def test_forward_backward_renders_v2_and_the_targets_from_u_and_theta(fill_free, monkeypatch):
    """The batch carries u and θ; the model sees v2 = g_θ(u) and learns to reconstruct u_k = g_{θ_k}(u); with
    eqcoh.fill_free, all of them (and the diagnostics' path) at the fill-free zoom."""
    from dinov2_eqcoh.method import ssl_meta_arch
    from dinov2_eqcoh.method import transforms as T

    cfg = eqcoh_cfg("eqcoh.n_intermediate=3", f"eqcoh.fill_free={str(fill_free).lower()}", "eqcoh.diagnostics_every=1")
    zoom = T.fill_free_zoom("se2", cfg.eqcoh.ranges, cfg.crops.global_crops_size) if fill_free else 1.0
    diagnosed = {}
    real = ssl_meta_arch.step_diagnostics
    monkeypatch.setattr(ssl_meta_arch, "step_diagnostics", lambda *a, **kw: (diagnosed.update(kw), real(*a, **kw))[1])
    model = build(cfg)
    batch = eqcoh_batch(cfg)
    crops_before = batch["collated_global_crops"].clone()
    seen = {}
    model.teacher.backbone.register_forward_pre_hook(lambda m, args: seen.update(crops=args[0].clone()))
    original = model.reconstruction_loss
    model.reconstruction_loss = lambda z, t: (seen.update(targets=t.clone()), original(z, t))[1]  # spy only
    model.forward_backward(batch, teacher_temp=0.07)

    v1, u = crops_before.chunk(2)
    states = T.render(u, "se2", T.path_thetas(batch["eqcoh_theta"], 3), zoom=zoom)  # (B, K+1, 3, G, G)
    torch.testing.assert_close(seen["crops"], torch.cat([v1, states[:, -1]]))
    assert not torch.allclose(seen["crops"][4:], u)
    torch.testing.assert_close(seen["targets"], states[:, :3].transpose(0, 1))
    assert seen["targets"].dtype == torch.float32
    assert torch.equal(batch["collated_global_crops"], crops_before)  # the caller's batch still holds u
    assert diagnosed["zoom"] == zoom


def test_view_only_baseline_renders_v2_and_adds_nothing():
    """λ = 0 with apply_to_view: "DINOv2 + g" — DINOv2's modules and losses, on v2 = g_θ(u) rendered by the model."""
    from dinov2_eqcoh.method import transforms as T

    cfg = eqcoh_cfg("eqcoh.loss_weight=0", "eqcoh.apply_to_view=true", "eqcoh.transform=rotation")
    model = build(cfg)
    assert list(model.student.keys()) == ["backbone", "dino_head"] and not model.student.backbone._forward_hooks
    batch = eqcoh_batch(cfg)
    seen = {}
    model.teacher.backbone.register_forward_pre_hook(lambda m, args: seen.update(crops=args[0].clone()))
    loss_dict = model.forward_backward(batch, teacher_temp=0.07)
    assert set(loss_dict) == {"dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss"}
    v1, u = batch["collated_global_crops"].chunk(2)
    torch.testing.assert_close(seen["crops"], torch.cat([v1, T.render(u, "rotation", batch["eqcoh_theta"])]))
    assert not torch.allclose(seen["crops"][4:], u)
    with pytest.raises(KeyError, match="eqcoh_theta"):
        model.forward_backward(dinov2_batch(cfg), teacher_temp=0.07)


def test_missing_theta_is_a_clear_error():
    cfg = eqcoh_cfg()
    model = build(cfg)
    with pytest.raises(KeyError, match="eqcoh_theta"):
        model.forward_backward(dinov2_batch(cfg), teacher_temp=0.07)


def test_pretrained_weights_go_through_the_plugin_loader(tmp_path):
    """A released-style raw backbone state dict seeds the student (DINOv2's own loader would want {"model": ...})."""
    pytest.importorskip("dinov2_eqcoh.weights.checkpoints", reason="dinov2_eqcoh/checkpoints.py (eval engineer) not there")
    cfg = eqcoh_cfg()
    source = build(cfg, seed=123)
    path = tmp_path / "backbone.pth"
    torch.save(source.student.backbone.state_dict(), path)
    model = build(eqcoh_cfg(f"student.pretrained_weights={path}"))
    for name, p in model.student.backbone.state_dict().items():
        assert torch.equal(p, source.student.backbone.state_dict()[name]), name
    assert model.cfg.student.pretrained_weights == str(path)


def test_keep_head_split_at_zero_weight_is_eqcoh_without_the_reconstruction():
    """λ = 0 with keep_head_split (the "head only" ablation): the eqcoh head and DINOv2's heads on z_inv exactly as
    with λ = 1 (same initialisation, same DINOv2 losses on the same batch), and no decoders, no L_recon, no z_equi
    gradient; without keep_head_split, λ = 0 builds none of it."""
    cfg_full = eqcoh_cfg("student.drop_path_rate=0")
    cfg_head = eqcoh_cfg("student.drop_path_rate=0", "eqcoh.loss_weight=0", "eqcoh.keep_head_split=true")
    batch = eqcoh_batch(cfg_full)  # λ = 0 with apply_to_view: the same pipeline, u and θ, no targets needed
    full, head = build(cfg_full), build(cfg_head)
    d_inv = cfg_full.eqcoh.d_patch - cfg_full.eqcoh.d_equi

    assert "eqcoh_decoders" not in head.student and "eqcoh_decoders" in full.student
    assert set(head.state_dict()) == {k for k in full.state_dict() if "eqcoh_decoders" not in k}
    for key in ("dino_head", "eqcoh_head"):
        for name, p in head.student[key].state_dict().items():
            assert torch.equal(p, full.student[key].state_dict()[name]), f"{key}.{name}"
    assert head.student.dino_head.mlp[0].in_features == d_inv

    torch.manual_seed(3)
    head_losses = head.forward_backward(batch, teacher_temp=0.07)
    torch.manual_seed(3)
    full_losses = full.forward_backward(batch, teacher_temp=0.07)
    assert "eqcoh_recon_loss" not in head_losses and "eqcoh_recon_loss" in full_losses
    for key, value in head_losses.items():
        assert torch.allclose(value, full_losses[key], atol=1e-6), key
    # z_equi rows of the head get no gradient without L_recon; the z_inv rows do
    w = head.student.eqcoh_head.proj.weight  # (d_patch, embed_dim): rows [z_inv; z_equi]
    assert w.grad is not None and w.grad[:d_inv].abs().sum() > 0 and w.grad[d_inv:].abs().sum() == 0

    plain = build(eqcoh_cfg("eqcoh.loss_weight=0"))
    assert "eqcoh_head" not in plain.student and not plain.student.backbone._forward_hooks


def test_keep_head_split_must_be_a_boolean():
    from dinov2_eqcoh.method.config import ConfigError

    with pytest.raises(ConfigError, match="eqcoh.keep_head_split"):
        eqcoh_cfg("eqcoh.loss_weight=0", "eqcoh.keep_head_split=2")


@pytest.mark.parametrize("fill_free", [False, True])
def test_diagnosed_step_trains_exactly_as_an_undiagnosed_one(fill_free):
    """The decoders' diagnostics (eqcoh.diagnostics_every) are measurements: a diagnosed step gives the same losses and
    gradients as an undiagnosed one, and leaves the global RNG streams (drop-path, DINOv2's crops) where the
    undiagnosed step leaves them, so that switching them on or off does not change a run."""
    results = []
    for every in (0, 1):
        cfg = eqcoh_cfg(f"eqcoh.diagnostics_every={every}", f"eqcoh.fill_free={str(fill_free).lower()}",
                        "student.drop_path_rate=0.2")
        model = build(cfg)
        batch = eqcoh_batch(cfg)
        torch.manual_seed(123)
        random.seed(123)
        losses = model.forward_backward(batch, teacher_temp=0.07)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((losses, grads, torch.get_rng_state(), random.getstate(), model))
    (l0, g0, rng0, py0, plain), (l1, g1, rng1, py1, diagnosed) = results
    for (n, a), b in zip(plain.state_dict().items(), diagnosed.state_dict().values()):  # buffers too (no BN update)
        assert torch.equal(a, b), f"{n} changed by the diagnostics"
    assert plain._eqcoh_diag == {} and diagnosed._eqcoh_diag, "the second step was not diagnosed"
    assert set(l0) <= set(l1)
    for k in l0:
        torch.testing.assert_close(l1[k], l0[k], rtol=0, atol=0, msg=f"loss {k} changed by the diagnostics")
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=0, atol=0, msg=f"gradient of {n} changed by the diagnostics")
    assert torch.equal(rng0, rng1), "the diagnostics drew from the global torch RNG"
    assert py0 == py1
