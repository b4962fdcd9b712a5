# SPDX-License-Identifier: Apache-2.0
"""EqCohSSLMetaArch: DINOv2's SSLMetaArch plus transformed-image reconstruction (Wang et al., AAAI-26).

The method alone: it imports only `dinov2_eqcoh.method` and DINOv2. DINOv2 trains its subclass
`dinov2_eqcoh.meta_arch:EqCohMetaArch`, which adds the seams (strict config build, run-folder check, pretrained
weights); tests and readers can build this class from a config directly.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from dinov2.fsdp import get_fsdp_modules, get_fsdp_wrapper
from dinov2.layers import DINOHead
from dinov2.models.vision_transformer import BlockChunk
from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.utils.utils import has_batchnorms
from omegaconf import DictConfig
from torch import nn

from dinov2_eqcoh.method.augmentation import eqcoh_pipeline_active, render_options, render_views
from dinov2_eqcoh.method.decoder import EqCohDecoders
from dinov2_eqcoh.method.diagnostics import step_diagnostics
from dinov2_eqcoh.method.head import EqCohHead

logger = logging.getLogger("dinov2.eqcoh")

# State-dict keys that checkpoints of earlier versions hold and this version no longer has: the teacher's EMA copy
# of the decoders, which nothing ever read (removed in 0.2). `EqCohSSLMetaArch.load_state_dict` drops them (with a
# log line), so old checkpoints resume and load strictly; the run-folder check skips them too.
RETIRED_STATE_PREFIXES = ("teacher.eqcoh_decoders.",)


def drop_retired_keys(state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(`state` without the keys of RETIRED_STATE_PREFIXES, the dropped keys)."""
    dropped = [k for k in state if k.startswith(RETIRED_STATE_PREFIXES)]
    return {k: v for k, v in state.items() if not k.startswith(RETIRED_STATE_PREFIXES)}, dropped


class EqCohSSLMetaArch(SSLMetaArch):
    """SSLMetaArch with an eqcoh head, K reconstruction decoders D_k and L = L_SSL + λ·L_recon [0].

    What differs from DINOv2's SSLMetaArch (all but the first and the last two only when λ = `eqcoh.loss_weight`
    > 0; with λ = 0 nothing is built or hooked, unless `eqcoh.keep_head_split`: then the eqcoh head and DINOv2's
    heads on z_inv are built and hooked as with λ > 0, and no decoders, z_equi or L_recon; the "head only"
    ablation, which separates the loss from the architecture):

    - `forward_backward` first renders v2 = g_θ(u) and, when λ > 0, the targets u_1..u_K for the whole batch on the
      model's device (`render_second_view`), whenever the plugin's data pipeline is on (λ > 0 or
      `eqcoh.apply_to_view`): the data-loader workers deliver u and θ only. λ = 0 with `apply_to_view` true is the
      "DINOv2 + g" baseline; λ = 0 with `apply_to_view` false is SSLMetaArch exactly.
    - `student/teacher["eqcoh_head"]`: `EqCohHead`, Linear(embed_dim -> d_patch) on the backbone output tokens
      that are read, split [z_inv (d_inv = d_patch - d_equi), z_equi (d_equi)]. Inside `forward_backward`, z_inv
      is computed only for what DINOv2's losses read (the CLS tokens, and the iBOT-masked patch tokens of the
      global crops) and z_equi only for the student's global patch tokens (L_recon); the teacher computes no z_equi.
    - `student/teacher["dino_head"]` (and `"ibot_head"` if separate) are rebuilt with in_dim = d_inv: DINOv2's
      losses (DINO, KoLeo, iBOT) see z_inv only.
    - `student["eqcoh_decoders"]`: `EqCohDecoders`, K independent decoders D_k. The teacher has no decoders (it
      never reconstructs): `update_teacher` and `prepare_for_distributed_training` pair student and teacher modules
      over the teacher's keys, where DINOv2's pair every student key. Checkpoints written before this change hold
      `teacher.eqcoh_decoders.*`; `load_state_dict` drops them (RETIRED_STATE_PREFIXES), so they resume.
    - Forward hooks on both backbones replace `x_norm_clstoken` / `x_norm_patchtokens` of the output dicts by
      z_inv (the student's local-crop dict keeps only `x_norm_clstoken`, see `_apply_eqcoh_head`); the student's
      hook adds `eqcoh_z_equi_patchtokens` and keeps the global crops' z_equi patch tokens (2B, N, d_equi) for the
      loss. So SSLMetaArch's own `forward_backward` runs unchanged on z_inv.
    - `backprop_loss` adds λ·L_recon, L_recon = (1/K)·Σ_k MSE(D_k([z_equi(v1); z_equi(v2)]), u_k), with v1 the
      first B global crops and v2 the last B, and u_k the rendered targets; `forward_backward` returns
      DINOv2's loss dict plus `eqcoh_recon_loss` (unweighted, detached).
    - `eqcoh.extra_unmasked_pass: true` takes z_equi from an extra student forward of the unmasked global crops
      instead of the iBOT-masked one.
    - The DINOv2 seams (config build, run-folder check, `student.pretrained_weights`) are not here: see
      `dinov2_eqcoh.meta_arch.EqCohMetaArch`.

    - [0]: Wang et al., AAAI-26, https://arxiv.org/abs/2503.18753

    Args:
        cfg: The full training config (DINOv2's keys plus `eqcoh.*`).
    """

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.cfg = cfg

        eq = cfg.eqcoh
        self.eqcoh_loss_weight = float(eq.loss_weight)
        self.do_eqcoh = self.eqcoh_loss_weight > 0
        # the head split [z_inv, z_equi] with DINOv2's heads on z_inv: always with λ > 0; with λ = 0 only when
        # `eqcoh.keep_head_split` (the "head only" ablation: EqCoh's architecture without L_recon)
        self.eqcoh_split = self.do_eqcoh or bool(eq.get("keep_head_split", False))
        self.eqcoh_render = eqcoh_pipeline_active(cfg)  # the batches carry u and θ: render v2 (and u_k) here
        logger.info("OPTIONS -- EQCOH")
        if not self.eqcoh_split:
            what = f"DINOv2 on v2 = g_θ(u), g = {eq.transform}" if self.eqcoh_render else "vanilla DINOv2"
            logger.info(f"OPTIONS -- EQCOH -- loss_weight 0: {what}, nothing added")
            return
        if not self.do_eqcoh:
            logger.info(f"OPTIONS -- EQCOH -- loss_weight 0 with keep_head_split: the eqcoh head's split "
                        f"(d_patch {eq.d_patch}, d_equi {eq.d_equi}) without decoders or L_recon")
        for key in ("loss_weight", "n_intermediate", "d_patch", "d_equi", "transform", "apply_to_view"):
            logger.info(f"OPTIONS -- EQCOH -- {key}: {eq[key]}")
        logger.info(f"OPTIONS -- EQCOH -- decoder.dim: {eq.decoder.dim}")
        logger.info(f"OPTIONS -- EQCOH -- extra_unmasked_pass: {eq.extra_unmasked_pass}")
        logger.info(f"OPTIONS -- EQCOH -- diagnostics_every: {eq.diagnostics_every}")
        self.eqcoh_extra_unmasked_pass = bool(eq.extra_unmasked_pass)
        self.eqcoh_diagnostics_every = int(eq.diagnostics_every)
        self._eqcoh_calls = 0  # forward_backward calls so far (the diagnostics' clock)
        self._eqcoh_diag: dict[str, torch.Tensor] = {}  # the latest diagnostics, on the device
        d_inv = eq.d_patch - eq.d_equi

        # DINOv2's heads now read z_inv (d_inv channels) instead of the backbone's embed_dim channels
        for key, head_cfg in (("dino_head", cfg.dino), ("ibot_head", cfg.ibot)):
            if key in self.student:
                for model_dict in (self.student, self.teacher):
                    model_dict[key] = DINOHead(
                        in_dim=d_inv,
                        out_dim=head_cfg.head_n_prototypes,
                        hidden_dim=head_cfg.head_hidden_dim,
                        bottleneck_dim=head_cfg.head_bottleneck_dim,
                        nlayers=head_cfg.head_nlayers,
                    )
        for model_dict in (self.student, self.teacher):
            model_dict["eqcoh_head"] = EqCohHead(self.embed_dim, eq.d_patch, eq.d_equi)
        if self.do_eqcoh:
            self.student["eqcoh_decoders"] = EqCohDecoders(  # D_1..D_K: the student's only (the teacher never decodes)
                n_intermediate=eq.n_intermediate,
                d_in=2 * eq.d_equi,
                dim=eq.decoder.dim,
                patch_size=cfg.student.patch_size,
                img_size=cfg.crops.global_crops_size,
            )
        for p in self.teacher.parameters():
            p.requires_grad = False

        # The hooks sit on the backbones themselves: FSDP calls the module it wraps, so they fire under FSDP too.
        self.student.backbone.register_forward_hook(self._student_backbone_hook)
        self.teacher.backbone.register_forward_hook(self._teacher_backbone_hook)
        self._eqcoh_images: dict[str, Any] | None = None  # the (rendered) batch of the running forward_backward
        self._eqcoh_mask_indices: torch.Tensor | None = None  # (M,) its iBOT-masked patches, flat over (2B, N)
        self._eqcoh_targets: torch.Tensor | None = None  # (K, B, 3, G, G) u_k of that batch
        self._eqcoh_z_equi: torch.Tensor | None = None  # (2B, N, d_equi) of the last student global forward
        self._eqcoh_recon_loss: torch.Tensor | None = None
        self._eqcoh_u_theta: tuple[torch.Tensor, torch.Tensor] | None = None  # u, θ of a diagnosed batch
        self._eqcoh_recon: torch.Tensor | None = None  # (K, B, 3, G, G) the step's reconstructions, detached

    # ------------------------------------------------------------------------------------------ student/teacher pairs

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """nn.Module's load, after dropping the keys of RETIRED_STATE_PREFIXES (checkpoints of earlier versions)."""
        state, dropped = drop_retired_keys(dict(state_dict))
        if dropped:
            logger.info(f"checkpoint of an earlier version: ignored {len(dropped)} retired tensors "
                        f"({', '.join(sorted({p for p in RETIRED_STATE_PREFIXES if any(k.startswith(p) for k in dropped)}))}*)")
        return super().load_state_dict(state, strict=strict, assign=assign)

    def update_teacher(self, m: float) -> None:
        """EMA θ_t <- m·θ_t + (1 - m)·θ_s over the modules the teacher has (DINOv2's loops over the student's keys,
        which include the decoders); the same flat-parameter pairing as DINOv2's, with or without FSDP."""
        student_params, teacher_params = [], []
        with torch.no_grad():
            for k in self.teacher.keys():
                student_fsdp, teacher_fsdp = get_fsdp_modules(self.student[k]), get_fsdp_modules(self.teacher[k])
                if not student_fsdp:  # not wrapped (single process without FSDP): plain parameters
                    student_params += list(self.student[k].parameters())
                    teacher_params += list(self.teacher[k].parameters())
                for ms, mt in zip(student_fsdp, teacher_fsdp):
                    student_params += ms.params
                    teacher_params += mt.params
            torch._foreach_mul_(teacher_params, m)
            torch._foreach_add_(teacher_params, student_params, alpha=1 - m)

    def prepare_for_distributed_training(self) -> None:
        """DINOv2's FSDP wrapping, for the student's modules and the teacher's (which has no decoders)."""
        logger.info("DISTRIBUTED FSDP -- preparing model for distributed training")
        if has_batchnorms(self.student):
            raise NotImplementedError
        for k in list(self.student.keys()):
            if k in self.teacher:  # synchronises the teacher with the student, as DINOv2 does
                self.teacher[k].load_state_dict(self.student[k].state_dict())
            student_model_cfg = self.cfg.compute_precision.student[k]
            self.student[k] = get_fsdp_wrapper(student_model_cfg, modules_to_wrap={BlockChunk})(self.student[k])
            if k in self.teacher:
                teacher_model_cfg = self.cfg.compute_precision.teacher[k]
                self.teacher[k] = get_fsdp_wrapper(teacher_model_cfg, modules_to_wrap={BlockChunk})(self.teacher[k])

    # ------------------------------------------------------------------------------------------ backbone hooks

    def _apply_eqcoh_head(self, model_dict: nn.ModuleDict, output: Any, with_z_equi: bool) -> Any:
        """Map a backbone's training output (dict, or list of dicts for multi-crop) to z_inv, projecting only the
        tokens that are read.

        - A single dict (the teacher's global crops, the student's extra unmasked pass), or the first dict of a
          multi-crop list (the student's global crops): `x_norm_clstoken` (B, d_inv) and `x_norm_patchtokens`
          (B, N, d_inv) become z_inv; with `with_z_equi`, `eqcoh_z_equi_patchtokens` (B, N, d_equi) is added.
        - The other dicts of a multi-crop list (the student's local crops, of which DINOv2's `forward_backward` reads
          only `x_norm_clstoken`): only the CLS token is projected. `x_norm_clstoken` (B, d_inv) becomes z_inv and
          the key `x_norm_patchtokens` is DROPPED, so that reading the (unprojected, embed_dim-wide) local patch
          tokens fails with a KeyError instead of silently using the wrong features. No z_equi key either.

        `with_z_equi=False` (the teacher, which never uses z_equi) computes only the z_inv rows of the head.
        Anything else (e.g. the CLS-token tensor of an `is_training=False` call) is returned unchanged.

        Inside `forward_backward` (the flat indices of the batch's iBOT-masked patches are known), the first dict's
        patch tokens get z_inv only at those M positions, the only ones DINOv2's `forward_backward` reads
        (`index_select(x_norm_patchtokens.flatten(0, 1), mask_indices_list)`, teacher and student alike): its
        `x_norm_patchtokens` is (B, N, d_inv) with zeros at every other position (no iBOT: zeros everywhere), and
        z_equi is projected for the patch tokens only. This saves (B·N - M)·D·d_inv multiply-adds per pass and its
        backward; the values DINOv2 reads are the same as with the full projection.
        """
        mask_indices = self._eqcoh_mask_indices
        if mask_indices is not None and isinstance(output, (dict, list)):
            return self._apply_eqcoh_head_read_only(model_dict, output, with_z_equi, mask_indices)
        dicts = output if isinstance(output, list) else [output]
        if not all(isinstance(d, dict) and "x_norm_clstoken" in d for d in dicts):
            return output
        # one call of the (token-wise) head on the tokens that are read, then split back:
        # (B, 1 + N, D) for the first dict (CLS and patches), (B, 1, D) for the local crops (CLS only)
        tokens = [d["x_norm_clstoken"].unsqueeze(1) for d in dicts]
        tokens[0] = torch.cat([tokens[0], dicts[0]["x_norm_patchtokens"]], dim=1)
        sizes = [t.shape[0] * t.shape[1] for t in tokens]
        # looked up at call time: prepare_for_distributed_training replaces the module by its FSDP wrapper
        head = model_dict["eqcoh_head"]
        z_inv, z_equi = head(torch.cat([t.flatten(0, 1) for t in tokens]), with_z_equi=with_z_equi)  # (T, d_*)
        z_inv = [zi.view(*t.shape[:2], -1) for zi, t in zip(z_inv.split(sizes), tokens)]  # (B_i, T_i, d_inv)

        first = {**dicts[0], "x_norm_clstoken": z_inv[0][:, 0], "x_norm_patchtokens": z_inv[0][:, 1:]}
        if with_z_equi:  # (B, N, d_equi) of the first dict
            first["eqcoh_z_equi_patchtokens"] = z_equi[: sizes[0]].view(*tokens[0].shape[:2], -1)[:, 1:]
        local_dicts = [
            {**{k: v for k, v in d.items() if k != "x_norm_patchtokens"}, "x_norm_clstoken": zi[:, 0]}
            for d, zi in zip(dicts[1:], z_inv[1:])
        ]
        return [first, *local_dicts] if isinstance(output, list) else first

    def _apply_eqcoh_head_read_only(
        self, model_dict: nn.ModuleDict, output: Any, with_z_equi: bool, mask_indices: torch.Tensor
    ) -> Any:
        """`_apply_eqcoh_head` for a forward inside `forward_backward`: z_inv of the tokens DINOv2 reads only."""
        dicts = output if isinstance(output, list) else [output]
        if not all(isinstance(d, dict) and "x_norm_clstoken" in d for d in dicts):
            return output
        patches = dicts[0]["x_norm_patchtokens"]  # (B, N, D)
        B, N, _ = patches.shape
        flat = patches.flatten(0, 1)  # (B·N, D)
        masked = flat.index_select(0, mask_indices)  # (M, D); M from the index's shape, no host sync
        cls = [d["x_norm_clstoken"] for d in dicts]  # (B_i, D) each
        rows = [cls[0], masked, *cls[1:]]
        sizes = [r.shape[0] for r in rows]
        head = model_dict["eqcoh_head"]  # looked up at call time: FSDP replaces the module by its wrapper
        z_inv, z_equi = head(torch.cat(rows), with_z_equi=with_z_equi, x_equi=flat if with_z_equi else None)
        z_cls, z_masked, *z_local = z_inv.split(sizes)
        z_patches = z_masked.new_zeros(B * N, z_masked.shape[-1]).index_copy(0, mask_indices, z_masked)
        first = {**dicts[0], "x_norm_clstoken": z_cls, "x_norm_patchtokens": z_patches.view(B, N, -1)}
        if with_z_equi:
            first["eqcoh_z_equi_patchtokens"] = z_equi.view(B, N, -1)  # (B, N, d_equi)
        local_dicts = [
            {**{k: v for k, v in d.items() if k != "x_norm_patchtokens"}, "x_norm_clstoken": zl}
            for d, zl in zip(dicts[1:], z_local)
        ]
        return [first, *local_dicts] if isinstance(output, list) else first

    def _student_backbone_hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        output = self._apply_eqcoh_head(self.student, output, with_z_equi=self.do_eqcoh)  # λ = 0: z_inv only
        first = output[0] if isinstance(output, list) else output  # the multi-crop forward lists global crops first
        if isinstance(first, dict) and self.do_eqcoh:
            # keep the very tensor that is in the output: under FSDP the backbone registers its pre-backward hook
            # (which re-gathers its parameters) on the output tensors, so gradients must enter through them
            self._eqcoh_z_equi = first["eqcoh_z_equi_patchtokens"]
        return output

    def _teacher_backbone_hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        return self._apply_eqcoh_head(self.teacher, output, with_z_equi=False)  # z_inv only

    # ------------------------------------------------------------------------------------------ losses

    def reconstruction_loss(self, z_equi: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """L_recon = (1/K)·Σ_k MSE(D_k([z_equi(v1); z_equi(v2)]), u_k).

        Args:
            z_equi: (2B, N, d_equi) student patch tokens of the global crops, v1 first, v2 last.
            targets: (K, B, 3, G, G) u_k in the normalised pixel space of the crops.

        Returns:
            Scalar pixel MSE, averaged over k, samples, channels and pixels. The reconstructions stay (detached) in
            `_eqcoh_recon` for the step's diagnostics.
        """
        recon = self.decode(z_equi)
        self._eqcoh_recon = recon.detach()
        return self._recon_mse(recon, targets)

    def decode(self, z_equi: torch.Tensor) -> torch.Tensor:
        """D_k([z_equi(v1); z_equi(v2)]) for every k: (2B, N, d_equi), v1 first -> (K, B, 3, G, G)."""
        z_v1, z_v2 = z_equi.chunk(2)  # (B, N, d_equi) each
        return self.student["eqcoh_decoders"](torch.cat([z_v1, z_v2], dim=-1))

    @staticmethod
    def _recon_mse(recon: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(recon.device, non_blocking=True).float()
        if targets.shape != recon.shape:
            raise ValueError(
                f"the targets u_k have shape {tuple(targets.shape)}, expected (K, B, 3, G, G) = {tuple(recon.shape)} "
                f"(eqcoh.n_intermediate, batch, crops.global_crops_size)"
            )
        return F.mse_loss(recon.float(), targets)

    @torch.no_grad()
    def render_second_view(self, images: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor | None]:
        """Render v2 = g_θ(u) into the batch, and the targets u_k, on the model's device (one batched call).

        Args:
            images: the plugin's collated batch: `collated_global_crops` (2B, 3, G, G) = [v1; u], `eqcoh_theta`
                (B, P).

        Returns:
            A new batch dict whose `collated_global_crops` is [v1; v2] (2B, 3, G, G) on the model's device, in the
            crops' dtype (the caller's batch is not modified); and the targets (K, B, 3, G, G) float32, or None
            when λ = 0. See `dinov2_eqcoh.method.augmentation.render_views`.
        """
        device = self.student.backbone.cls_token.device  # where SSLMetaArch.forward_backward puts the crops
        v2, targets = render_views(images, self.cfg, device)
        crops = images["collated_global_crops"]
        v1 = crops[: crops.shape[0] // 2].to(device, non_blocking=True)
        return {**images, "collated_global_crops": torch.cat([v1, v2])}, targets

    def forward_backward(self, images: dict[str, Any], teacher_temp: float) -> dict[str, torch.Tensor]:
        """Render v2 (and u_k), then DINOv2's forward_backward on z_inv, with λ·L_recon added before the backward.

        Args:
            images: DINOv2's collated batch; from the plugin's collate (λ > 0 or `apply_to_view`) with u as the
                second global crop and `eqcoh_theta` (B, P).
            teacher_temp: Teacher softmax temperature.

        Returns:
            DINOv2's loss dict, plus `eqcoh_recon_loss` when λ > 0.
        """
        targets = None
        diagnose = False
        if self.do_eqcoh:
            diagnose = self.eqcoh_diagnostics_every > 0 and self._eqcoh_calls % self.eqcoh_diagnostics_every == 0
            self._eqcoh_calls += 1
            if diagnose:
                crops = images["collated_global_crops"]
                self._eqcoh_u_theta = (crops[crops.shape[0] // 2 :], images["eqcoh_theta"])
        if self.eqcoh_render:
            images, targets = self.render_second_view(images)
        if not self.eqcoh_split:
            return super().forward_backward(images, teacher_temp)
        self._eqcoh_images, self._eqcoh_targets = images, targets
        device = self.student.backbone.cls_token.device
        if self.do_ibot:  # the patches DINOv2's iBOT loss reads (teacher and student); without iBOT none are read
            self._eqcoh_mask_indices = images["mask_indices_list"].to(device, non_blocking=True)
        else:
            self._eqcoh_mask_indices = torch.zeros(0, dtype=torch.long, device=device)
        try:
            loss_dict = super().forward_backward(images, teacher_temp)
            if self.do_eqcoh:
                loss_dict["eqcoh_recon_loss"] = self._eqcoh_recon_loss
        finally:  # drop the references to the batch and the graph
            self._eqcoh_images = self._eqcoh_targets = self._eqcoh_z_equi = self._eqcoh_recon_loss = None
            self._eqcoh_mask_indices = self._eqcoh_u_theta = self._eqcoh_recon = None
        return loss_dict

    def backprop_loss(self, loss: torch.Tensor) -> None:
        """Add λ·L_recon to DINOv2's loss, then DINOv2's (scaler-aware) backward."""
        if self.do_eqcoh and self._eqcoh_images is not None:
            if self.eqcoh_extra_unmasked_pass:  # the hook stores z_equi of this unmasked forward
                global_crops = self._eqcoh_images["collated_global_crops"]
                self.student.backbone(global_crops.to(self._eqcoh_z_equi.device), is_training=True)
            recon_loss = self.reconstruction_loss(self._eqcoh_z_equi, self._eqcoh_targets)
            self._eqcoh_recon_loss = recon_loss.detach()
            if self._eqcoh_u_theta is not None:
                self._diagnose(self._eqcoh_recon, self._eqcoh_z_equi, self._eqcoh_targets)
            loss = loss + self.eqcoh_loss_weight * recon_loss
        super().backprop_loss(loss)

    # ------------------------------------------------------------------------------------------ diagnostics

    @torch.no_grad()
    def _diagnose(self, recon: torch.Tensor, z_equi: torch.Tensor, targets: torch.Tensor) -> None:
        """The decoders' diagnostics on this batch (`dinov2_eqcoh.method.diagnostics.step_diagnostics`), kept on
        the device for `log_metrics`, from the step's own reconstructions `recon`; the decoders run once more,
        without gradients, on z_equi(v1) rolled by one across the batch."""
        z_v1, z_v2 = z_equi.detach().chunk(2)
        shuffled = self.decode(torch.cat([z_v1.roll(1, dims=0), z_v2])) if z_v1.shape[0] > 1 else None
        u, theta = self._eqcoh_u_theta
        crops = self._eqcoh_images["collated_global_crops"]
        eq = self.cfg.eqcoh
        name = str(eq.transform)
        self._eqcoh_diag = step_diagnostics(
            recon, shuffled, targets.to(recon.device), crops[crops.shape[0] // 2 :].to(recon.device),
            u.to(recon.device), theta.to(recon.device), name,
            grid=int(self.cfg.crops.global_crops_size) // int(self.cfg.student.patch_size),
            **render_options(self.cfg),
        )

    def log_metrics(self) -> dict[str, float]:
        """The latest diagnostics as numbers, for DINOv2's metric logger (patches/0010: called at every iteration
        after the losses, so the one device-to-host copy here is in the logging, not in `forward_backward`)."""
        diag = getattr(self, "_eqcoh_diag", None)  # λ = 0 builds no decoders and has none
        if not diag:
            return {}
        values = torch.stack([v.float() for v in diag.values()]).tolist()
        return dict(zip(diag, values))
