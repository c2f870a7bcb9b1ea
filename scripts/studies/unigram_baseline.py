"""The floor under every masked-LM perplexity in the cards: a unigram table (train-split token counts, add-one
smoothed) scoring the SAME masked positions as the models.

It uses the positions ``recipes.masked_lm_token_nll`` masks (same documents, length, mask probability and seed), so its
perplexity sits in the same table as the models'. It ignores all context: a masked LM worse than it has not learned to
use its context at all, and differences between such models say little about context.

    python -m scripts.studies.unigram_baseline                                  # the perplexity study's positions
    python -m scripts.studies.unigram_baseline --max-length 2048 --eval-docs 6  # finetune.py's default demo
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from scripts import recipes
from scripts.recipes.cli import positive_int
from scripts.recipes.data import DATA


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="tokenizer (default: the offline MiniLM)")
    parser.add_argument("--dataset", default=str(DATA), help="(default: %(default)s)")
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=2042,
        help="[CLS] + scored tokens + [SEP] (default: %(default)s, as study_perplexity: 4 windows of 510 + 2)",
    )
    parser.add_argument("--eval-docs", type=positive_int, default=18, help="held-out documents (default: all 18)")
    parser.add_argument(
        "--edge", type=positive_int, default=510, help="bucket edge: document positions inside the first window"
    )
    parser.add_argument("--seed", type=int, default=0, help="the masking seed (default: %(default)s)")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    if args.model is None:
        args.model = recipes.default_text_model()
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def ids(split):
        return [
            tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"]
            for t in recipes.load_documents(args.dataset, split)
        ]

    held_out = ids("test")[: args.eval_docs]
    tokens = recipes.unigram_token_nll(ids("train"), held_out, tokenizer, args.max_length, seed=args.seed)
    sums = recipes.bucket_sums(tokens, len(held_out), [args.edge])

    def ppl(s):
        count = float(s[..., 1].sum())
        return math.exp(float(s[..., 0].sum()) / count) if count else None  # no masked token in this bucket

    result = {
        "all": ppl(sums),
        f"positions < {args.edge}": ppl(sums[0]),
        f"positions >= {args.edge}": ppl(sums[1]),
        "masked_tokens": [int(sums[0][:, 1].sum()), int(sums[1][:, 1].sum())],
        "settings": vars(args),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
