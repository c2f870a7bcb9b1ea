"""Draw one attention-pattern picture per variant (the pictures in docs/ops.md).

python scripts/plot_masks.py --out model_cards/figures
"""

import argparse

from hf_flexattn import plot_mask

PICTURES = [
    ("longformer", dict(seq_len=256, window=32, global_tokens=[0, 100])),
    ("longformer_blocks", dict(variant="longformer", seq_len=8192, window=512, global_tokens=[0])),
    ("neighborhood_1d", dict(variant="neighborhood", seq_len=128, kernel_size=15, dilation=2)),
    ("neighborhood_2d", dict(variant="neighborhood", grid=(12, 12), num_global=1, kernel_size=5)),
    ("swin", dict(grid=(12, 12), window_size=4, shift=2, layer=1)),  # odd layers are the shifted ones
    ("full", dict(seq_len=128)),
    ("linformer", dict(seq_len=128, proj_len=32)),
    ("performer", dict(seq_len=128, num_features=64)),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="model_cards/figures", help="folder for the PNGs")
    args = parser.parse_args()
    for name, kwargs in PICTURES:
        kwargs = dict(kwargs)
        variant = kwargs.pop("variant", name)
        print(plot_mask(variant, f"{args.out}/mask_{name}.png", **kwargs))


if __name__ == "__main__":
    main()
