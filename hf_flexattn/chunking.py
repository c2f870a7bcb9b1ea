"""``late_chunking``: one vector per chunk of a document, each computed with the whole document in view.

Late chunking (Günther et al., 2024, "Late Chunking: Contextual Chunk Embeddings Using Long-Context Embedding
Models") runs the encoder ONCE over a long document and pools its token states per chunk, instead of encoding each
chunk on its own: a chunk's vector then carries what the rest of the document says. A patched model (e.g.
``longformer`` with extended positions) reads documents far past the checkpoint's 512 tokens, so the whole document
fits in that one pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

POOLING_MODES = ("mean", "max")


def _is_sentence_transformer(model) -> bool:
    # sentence-transformers stays optional: recognise its model by class name instead of importing it
    return any(cls.__name__ == "SentenceTransformer" for cls in type(model).__mro__)


def _sentence_transformer_parts(model):
    """(HF encoder, pooling mode, normalises?, max_seq_length) of a ``SentenceTransformer``."""
    modules = list(model)
    encoder = getattr(modules[0], "auto_model", None)
    if encoder is None:
        raise ValueError(
            f"late_chunking: model's first module {type(modules[0]).__name__} has no `auto_model` (a Hugging Face "
            "encoder); expected a SentenceTransformer whose first module is a Transformer"
        )
    pooling = next((m.pooling_mode for m in modules if hasattr(m, "pooling_mode")), "mean")
    normalises = any(type(m).__name__ == "Normalize" for m in modules)
    return encoder, pooling, normalises, getattr(model, "max_seq_length", None)


def _check_spans(spans, document: int, length: int, argument: str) -> list[tuple[int, int]]:
    """Sorted, non-empty, non-overlapping (start, end) spans inside ``[0, length)``, else a ValueError."""
    spans = [(int(start), int(end)) for start, end in spans]
    for start, end in spans:
        if end <= start:
            raise ValueError(f"late_chunking: {argument}[{document}] has an empty span ({start}, {end}); end > start")
        if start < 0 or end > length:
            raise ValueError(
                f"late_chunking: {argument}[{document}] span ({start}, {end}) is outside document {document}, "
                f"which has {length} {'tokens' if argument == 'chunk_spans' else 'characters'} (read)"
            )
    ordered = sorted(spans)
    for (s0, e0), (s1, e1) in itertools.pairwise(ordered):
        if s1 < e0:
            raise ValueError(f"late_chunking: {argument}[{document}] spans ({s0}, {e0}) and ({s1}, {e1}) overlap")
    return spans


def _char_to_token_spans(char_spans, offsets: list[tuple[int, int]], document: int) -> list[tuple[int, int]]:
    """Token spans covering each character span: the tokens whose characters overlap it."""
    out = []
    for start, end in char_spans:
        inside = [t for t, (a, b) in enumerate(offsets) if a < end and b > start]
        if not inside:
            raise ValueError(
                f"late_chunking: char_spans[{document}] span ({start}, {end}) covers no token of the text read "
                f"(document {document}'s read tokens end at character {offsets[-1][1] if offsets else 0})"
            )
        out.append((inside[0], inside[-1] + 1))
    return out


@torch.no_grad()
def late_chunking(
    model,
    documents: Sequence[str],
    *,
    chunk_size: int | None = None,
    chunk_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
    char_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
    tokenizer=None,
    max_length: int | None = None,
    batch_size: int = 4,
    pooling: str | None = None,
    normalize: bool | None = None,
) -> list[torch.Tensor]:
    """Late-chunked embeddings: one ``(chunks, hidden)`` tensor per document.

    Each document is tokenized and read in ONE forward pass (batched over documents with padding, at most
    ``max_length`` tokens including the special ones); then the token states of each chunk are pooled. Give the
    chunks exactly one way:

    - ``chunk_size``: consecutive chunks of that many tokens (the last may be shorter) covering the tokens read;
    - ``chunk_spans``: per document, ``(start, end)`` token spans (end exclusive), counted over the document's
      own tokens (0 = its first token, special tokens not counted);
    - ``char_spans``: per document, ``(start, end)`` character spans, mapped to the tokens that overlap them
      through the tokenizer's offset mapping (a fast tokenizer is needed).

    ``model`` is a ``sentence_transformers.SentenceTransformer`` (its own tokenizer, ``max_seq_length``, pooling
    mode and, where it ends in ``Normalize``, L2 normalisation are used) or a Hugging Face encoder returning
    ``last_hidden_state`` (mean pooling, no normalisation by default; pass ``tokenizer``). ``pooling`` ('mean' or
    'max') and ``normalize`` override those defaults. The encoder is called as ``encoder(input_ids=...,
    attention_mask=...)`` (through ``__call__``, so forward hooks, such as a patched model's, run).
    """
    if isinstance(documents, str):
        raise ValueError("late_chunking: documents is one string; pass a list of documents, e.g. [text]")
    given = [
        name
        for name, v in (("chunk_size", chunk_size), ("chunk_spans", chunk_spans), ("char_spans", char_spans))
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(
            f"late_chunking: give exactly one of chunk_size, chunk_spans, char_spans (got {', '.join(given) or 'none'})"
        )
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"late_chunking: chunk_size={chunk_size!r}; expected an int > 0 (tokens per chunk)")
    spans_given = chunk_spans if chunk_spans is not None else char_spans
    if spans_given is not None and len(spans_given) != len(documents):
        raise ValueError(
            f"late_chunking: {given[0]} has {len(spans_given)} entries for {len(documents)} documents; one list "
            "of spans per document"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"late_chunking: batch_size={batch_size!r}; expected an int > 0")

    if _is_sentence_transformer(model):
        encoder, own_pooling, own_normalize, own_length = _sentence_transformer_parts(model)
        tokenizer = model.tokenizer if tokenizer is None else tokenizer
    else:
        encoder, own_pooling, own_normalize, own_length = model, "mean", False, None
        if tokenizer is None:
            raise ValueError("late_chunking: tokenizer=None; a plain Hugging Face encoder needs its tokenizer")
    pooling = own_pooling if pooling is None else pooling
    if pooling not in POOLING_MODES:
        raise ValueError(
            f"late_chunking: pooling={pooling!r}; a chunk is pooled with one of {POOLING_MODES} (a model whose own "
            "pooling is 'cls' or 'lasttoken' pools one token of the whole sequence: pass pooling='mean')"
        )
    normalize = own_normalize if normalize is None else normalize
    max_length = max_length or own_length or tokenizer.model_max_length
    if max_length is not None and max_length <= 2:
        raise ValueError(f"late_chunking: max_length={max_length!r}; expected an int > 2")

    device = next(encoder.parameters()).device
    encoder_was_training = encoder.training
    encoder.eval()
    out: list[torch.Tensor] = []
    try:
        for first in range(0, len(documents), batch_size):
            texts = list(documents[first : first + batch_size])
            encoded = tokenizer(
                texts,
                truncation=True,
                max_length=max_length,
                padding=True,
                return_offsets_mapping=char_spans is not None,
                return_special_tokens_mask=True,
                return_tensors="pt",
            )
            states = encoder(
                input_ids=encoded["input_ids"].to(device), attention_mask=encoded["attention_mask"].to(device)
            ).last_hidden_state
            for row in range(len(texts)):
                document = first + row
                # the document's own tokens: positions that are real (not padding) and not special ([CLS], [SEP])
                content = (
                    (encoded["special_tokens_mask"][row] == 0) & (encoded["attention_mask"][row] == 1)
                ).nonzero()[:, 0]
                tokens = states[row, content.to(device)].float()
                if chunk_size is not None:
                    spans = [(s, min(s + chunk_size, len(content))) for s in range(0, len(content), chunk_size)]
                elif chunk_spans is not None:
                    spans = _check_spans(chunk_spans[document], document, len(content), "chunk_spans")
                else:
                    offsets = [tuple(o) for o in encoded["offset_mapping"][row, content].tolist()]
                    chars = _check_spans(char_spans[document], document, len(texts[row]), "char_spans")
                    spans = _char_to_token_spans(chars, offsets, document)
                if not spans:
                    out.append(tokens.new_zeros(0, tokens.shape[-1]))
                    continue
                pieces = [tokens[start:end] for start, end in spans]
                if pooling == "mean":
                    vectors = torch.stack([p.mean(0) for p in pieces])
                else:
                    vectors = torch.stack([p.max(0).values for p in pieces])
                if normalize:
                    vectors = torch.nn.functional.normalize(vectors, dim=-1)
                out.append(vectors.cpu())
    finally:
        encoder.train(encoder_was_training)
    return out
