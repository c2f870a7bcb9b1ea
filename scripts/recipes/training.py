"""Masked-LM training pieces for ``transformers.Trainer``: a loss over the masked positions only, a collator that
cuts long sequences into windows, and fitting a new masked-LM head on a frozen encoder."""

from __future__ import annotations

import torch

from .data import chunk_document
from .models import mlm_head


class MaskedPositionsLM(torch.nn.Module):
    """A masked LM for ``Trainer`` whose loss runs the vocabulary projection at the labelled positions only.

    The loss is HF's (mean cross-entropy over tokens whose label is not -100); the head's 30k-way projection is
    skipped for the ~85% of tokens that carry no label.
    """

    def __init__(self, model):
        super().__init__()
        if mlm_head(model) is None:
            raise ValueError(f"MaskedPositionsLM: {type(model).__name__} has no `cls`/`lm_head` masked-LM head")
        self.model = model

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        where = labels != -100
        logits = mlm_head(self.model)(hidden[where]).float()
        return {"loss": torch.nn.functional.cross_entropy(logits, labels[where])}


class WindowCollator:
    """Cuts each [CLS] … [SEP] example into [CLS] … [SEP] windows of ``window`` tokens, then applies ``collator``:
    a 512-token model trained on exactly the text a long-context model reads in one sequence."""

    def __init__(self, collator, tokenizer, window: int):
        self.collator, self.tokenizer, self.window = collator, tokenizer, window

    def __call__(self, examples):
        rows = []
        for example in examples:
            body = list(example["input_ids"][1:-1])
            rows.extend({"input_ids": ids} for ids in chunk_document(body, self.tokenizer, self.window))
        return self.collator(rows)


def warm_mlm_head(
    model,
    sequences: list[list[int]],
    tokenizer,
    *,
    epochs: int,
    learning_rate: float,
    seed: int,
    batch_size: int = 256,
    encode_batch: int = 8,
    mask_probability: float = 0.15,
) -> dict:
    """Fit the masked-LM head of ``model`` on its frozen encoder.

    ``sequences`` ([CLS] … [SEP], at most the encoder's positions) are [MASK]ed at ``mask_probability`` (from
    ``seed``) and encoded ONCE under no_grad; the head's transform and output bias are then fitted to predict the
    masked tokens from those features for ``epochs`` passes (AdamW, linear decay). The decoder stays tied to the word
    embeddings and is not trained; the encoder is not touched. Returns the number of features and each epoch's loss.
    """
    from tqdm.auto import tqdm

    head, base = mlm_head(model), model.base_model
    if head is None:
        raise ValueError(f"warm_mlm_head: {type(model).__name__} has no masked-LM head")
    generator = torch.Generator().manual_seed(seed)
    features, targets = [], []
    model.eval()
    with torch.no_grad():
        for start in tqdm(range(0, len(sequences), encode_batch), desc="head warm-up: features"):
            batch = sequences[start : start + encode_batch]
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), tokenizer.pad_token_id)
            for row, seq in enumerate(batch):
                ids[row, : len(seq)] = torch.tensor(seq)
            real = ids != tokenizer.pad_token_id
            special = (ids == tokenizer.cls_token_id) | (ids == tokenizer.sep_token_id) | ~real
            chosen = (torch.rand(ids.shape, generator=generator) < mask_probability) & ~special
            hidden = base(input_ids=ids.masked_fill(chosen, tokenizer.mask_token_id), attention_mask=real.long())
            features.append(hidden.last_hidden_state[chosen])
            targets.append(ids[chosen])
    features, targets = torch.cat(features), torch.cat(targets)
    embeddings = model.get_input_embeddings().weight
    trainable = [p for p in head.parameters() if p is not embeddings]
    frozen = [p for p in model.parameters() if all(p is not q for q in trainable)]
    was = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    steps = epochs * -(-len(features) // batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    losses = []
    head.train()
    with tqdm(total=steps, desc="head warm-up: fit") as bar:
        for _ in range(epochs):
            order = torch.randperm(len(features), generator=generator)
            total = 0.0
            for start in range(0, len(features), batch_size):
                pick = order[start : start + batch_size]
                loss = torch.nn.functional.cross_entropy(head(features[pick]), targets[pick])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(pick)
                bar.update()
            losses.append(total / len(features))
    for p, flag in zip(frozen, was):
        p.requires_grad_(flag)
    model.eval()
    return {"features": len(features), "sequences": len(sequences), "loss_per_epoch": losses}
