"""``plot_mask``: a variant's attention pattern as a PNG (token level when small, BlockMask blocks when large)."""

from __future__ import annotations

from pathlib import Path

import torch

from .masks import BLOCK_SIZE, Mask, block_mask_to_dense_blocks, build_block_mask, generate_full, generate_global, generate_sliding_window
from .variants.neighborhood import generate_natten_1d, generate_natten_2d
from .variants.swin import generate_shifted_windows

VARIANTS = ("full", "longformer", "neighborhood", "swin", "linformer", "performer")


def variant_mask(variant: str, seq_len: int, grid: tuple[int, int] | None = None, num_global: int = 0, **options) -> Mask | None:
    """The token mask a variant uses (``None`` for linformer/performer, which attend every key)."""
    if variant == "full":
        return generate_full()
    if variant == "longformer":
        is_global = torch.zeros(1, seq_len, dtype=torch.bool)
        is_global[0, list(options.get("global_tokens", [0]))] = True
        return generate_sliding_window(options.get("window", 64) // 2) | generate_global(is_global)
    if variant == "neighborhood":
        k, d = options.get("kernel_size", 7), options.get("dilation", 1)
        if grid is None:
            return generate_natten_1d(torch.tensor(seq_len), k, d)
        pair = lambda x: (x, x) if isinstance(x, int) else tuple(x)  # noqa: E731
        return generate_natten_2d(grid, pair(k), pair(d), num_global)
    if variant == "swin":
        if grid is None:
            raise ValueError("plot_mask(variant='swin') needs grid=(rows, cols)")
        window = options.get("window_size", 4)
        return generate_shifted_windows(grid, window, options.get("shift", 0), num_global)
    if variant in ("linformer", "performer"):
        return None
    raise ValueError(f"plot_mask: variant={variant!r} is unknown; variants: {', '.join(VARIANTS)}")


def plot_mask(variant: str, path, *, seq_len: int | None = None, grid: tuple[int, int] | None = None,
              num_global: int = 0, token_level_max: int = 512, **options) -> Path:
    """Draw ``variant``'s attention pattern to ``path`` (PNG) and return the path.

    Up to ``token_level_max`` tokens every query/key pair is drawn; beyond, the BlockMask's blocks
    (empty / partial / full) with the fraction of blocks the kernel visits.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if grid is not None:
        seq_len = num_global + grid[0] * grid[1]
    if not seq_len or seq_len < 1:
        raise ValueError(f"plot_mask: give seq_len (text) or grid=(rows, cols) (images); got seq_len={seq_len!r}")
    mask = variant_mask(variant, seq_len, grid, num_global, **options)
    settings = ", ".join(f"{k}={v}" for k, v in options.items())
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if mask is None:
        slots = options.get("proj_len", 64) if variant == "linformer" else seq_len
        ax.imshow(torch.ones(seq_len, slots), cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        what = f"every query → {slots} projected slots" if variant == "linformer" else "linear attention: no score matrix"
        ax.set_title(f"{variant} ({settings})\n{what}", fontsize=9)
        ax.set_xlabel("projected slot" if variant == "linformer" else "key")
    elif seq_len <= token_level_max:
        dense = mask.dense(1, 1, seq_len, seq_len)[0, 0]
        ax.imshow(dense.float(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{variant} ({settings}), N={seq_len}\n{dense.float().mean():.1%} of pairs attend", fontsize=9)
        ax.set_xlabel("key")
    else:
        block_mask = build_block_mask(mask, 1, 1, seq_len, seq_len, "cpu", BLOCK_SIZE)
        partial, full = block_mask_to_dense_blocks(block_mask)
        image = (partial.float() + 2 * full.float())[0, 0]
        ax.imshow(image, cmap="Blues", vmin=0, vmax=2, interpolation="nearest")
        visited = (image > 0).float().mean()
        ax.set_title(f"{variant} ({settings}), N={seq_len}\nblocks of {BLOCK_SIZE}: {visited:.1%} visited "
                     f"(dark: full, light: partial)", fontsize=9)
        ax.set_xlabel("key block")
    ax.set_ylabel("query" if mask is None or seq_len <= token_level_max else "query block")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
