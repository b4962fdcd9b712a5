# SPDX-License-Identifier: Apache-2.0
"""The method of the paper, and nothing else: what a reader of arXiv 2503.18753 opens first.

- `transforms`: the transformation family g_θ (rotation, translation, scale, colour, blur, ...) and the
  interpolation θ_k = (k / (K + 1)) θ between two views (METHOD.md §2);
- `augmentation`, `collate`: DINOv2's data seams rendering v1, v2 and the intermediate targets u_k;
- `head`: the split of each token's features into z_inv (DINOv2's losses) and z_equi (reconstruction);
- `decoder`: the K decoders D_k(z_equi(v1), z_equi(v2)) -> u_k (one linear + four conv layers each);
- `ssl_meta_arch`: `EqCohSSLMetaArch`, DINOv2's `SSLMetaArch` plus λ Σ_k ||D_k - u_k||²;
- `config`: the `eqcoh:` namespace, merged strictly, with every value range checked;
- `diagnostics`: is D_k's output u_k or a θ-blind guess (MSE next to copy v2 / pooled v2, path position), logged
  during training every `eqcoh.diagnostics_every` iterations.

May import: this package, DINOv2, torch and other third-party libraries. Nothing else of `dinov2_eqcoh`:
the DINOv2 seams (run-folder checks, pretrained weights) join the method in `dinov2_eqcoh.meta_arch`.
`tests/test_layout.py` fails when an import breaks this rule or closes a circle.
"""
