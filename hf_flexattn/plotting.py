"""``plot_mask``: a variant's attention pattern as a PNG (token level when small, BlockMask blocks when large).

The pattern is the variant's own: the variant is made by the same factory as ``patch`` (same options, defaults and
checks) for a one-layer model of the right geometry, and its layer mask is drawn.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .factory import make_variant
from .families import FAMILIES
from .masks import BLOCK_SIZE, BatchMask, block_mask_to_dense_blocks
from .variants import ForwardInputs, ForwardMasks


def variant_pattern(
    variant: str,
    seq_len: int | None = None,
    grid: tuple[int, int] | None = None,
    num_global: int = 0,
    layer: int = 0,
    **options,
) -> tuple[BatchMask | None, str]:
    """Layer ``layer``'s pattern of ``variant`` on a text of ``seq_len`` tokens, or on a ``grid`` of patches after
    ``num_global`` global tokens: the bound mask (None where every key is attended) and the resolved settings."""
    from transformers import BertConfig, ViTConfig

    if grid is not None:
        config = ViTConfig(
            image_size=list(grid),
            patch_size=1,
            num_hidden_layers=layer + 1,
            hidden_size=8,
            num_attention_heads=1,
            intermediate_size=8,
        )
        family = FAMILIES["vit"]
        inputs = ForwardInputs(
            1, num_global + grid[0] * grid[1], torch.device("cpu"), grid=tuple(grid), num_prefix_tokens=num_global
        )
    else:
        config = BertConfig(
            max_position_embeddings=max(seq_len, 512),
            num_hidden_layers=layer + 1,
            hidden_size=8,
            num_attention_heads=1,
            intermediate_size=8,
        )
        family = FAMILIES["bert"]
        inputs = ForwardInputs(1, seq_len, torch.device("cpu"))
    instance = make_variant(config, variant, options, family=family, where="plot_mask")
    mask = ForwardMasks.checked(instance, inputs).for_layer(layer, inputs.device)
    if isinstance(mask, tuple):  # Longformer's (local rows, global rows): the local rows include the globals
        mask = mask[0]
    return mask, instance.extra_repr(layer).removeprefix(f"variant={variant}, ")


def plot_mask(
    variant: str,
    path,
    *,
    seq_len: int | None = None,
    grid: tuple[int, int] | None = None,
    num_global: int = 0,
    layer: int = 0,
    token_level_max: int = 512,
    **options,
) -> Path:
    """Draw ``variant``'s attention pattern (with ``options``, defaults as in ``patch``) to ``path`` (PNG).

    Up to ``token_level_max`` tokens every query/key pair is drawn; beyond, the BlockMask's blocks (empty / partial
    / full) with the fraction of blocks the kernel visits. ``layer`` picks the layer where patterns differ by layer
    (``swin`` on ViT shifts odd layers).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if grid is not None:
        seq_len = num_global + grid[0] * grid[1]
    if not seq_len or seq_len < 1:
        raise ValueError(f"plot_mask: give seq_len (text) or grid=(rows, cols) (images); got seq_len={seq_len!r}")
    mask, settings = variant_pattern(variant, seq_len if grid is None else None, grid, num_global, layer, **options)
    settings = settings.replace("attention_dropout='standard'", "").strip(", ")
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if mask is None:
        slots = options.get("proj_len", 256) if variant == "linformer" else seq_len
        slots = min(slots, seq_len)
        ax.imshow(torch.ones(seq_len, slots), cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        what = (
            f"every query → {slots} projected slots" if variant == "linformer" else "linear attention: no score matrix"
        )
        ax.set_title(f"{variant} ({settings})\n{what}", fontsize=9)
        ax.set_xlabel("projected slot" if variant == "linformer" else "key")
    elif seq_len <= token_level_max:
        dense = mask.dense()[0, 0]
        ax.imshow(dense.float(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{variant} ({settings}), N={seq_len}\n{dense.float().mean():.1%} of pairs attend", fontsize=9)
        ax.set_xlabel("key")
    else:
        partial, full = block_mask_to_dense_blocks(mask.block_mask())
        image = (partial.float() + 2 * full.float())[0, 0]
        ax.imshow(image, cmap="Blues", vmin=0, vmax=2, interpolation="nearest")
        visited = (image > 0).float().mean()
        ax.set_title(
            f"{variant} ({settings}), N={seq_len}\nblocks of {BLOCK_SIZE}: {visited:.1%} visited "
            f"(dark: full, light: partial)",
            fontsize=9,
        )
        ax.set_xlabel("key block")
    ax.set_ylabel("query" if mask is None or seq_len <= token_level_max else "query block")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
