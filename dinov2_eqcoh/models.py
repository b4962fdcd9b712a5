"""Small ViT factories for CPU runs, selected by `student.arch: dinov2_eqcoh.models:<name>`.

They build DINOv2's own `DinoVisionTransformer` (same blocks, same state-dict keys as the released models), only
narrower and shallower, so tests and the demo exercise DINOv2's real code paths in seconds on a CPU.
"""

from functools import partial

from dinov2.layers import MemEffAttention
from dinov2.layers import NestedTensorBlock as Block
from dinov2.models.vision_transformer import DinoVisionTransformer


def _vit(embed_dim, depth, num_heads, patch_size=16, num_register_tokens=0, **kwargs):
    return DinoVisionTransformer(
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4,
        block_fn=partial(Block, attn_class=MemEffAttention),
        num_register_tokens=num_register_tokens,
        **kwargs,
    )


def vit_tiny(**kwargs):
    """ViT-Ti (DeiT-Tiny widths): 192-d, 12 blocks, 3 heads, 5.5 M parameters."""
    return _vit(192, 12, 3, **kwargs)


def vit_mini(**kwargs):
    """128-d, 6 blocks, 4 heads (1.2 M parameters): the demo's backbone on a 2-core CPU."""
    return _vit(128, 6, 4, **kwargs)


def vit_test(**kwargs):
    """64-d, 2 blocks, 2 heads: for unit tests only."""
    return _vit(64, 2, 2, **kwargs)
