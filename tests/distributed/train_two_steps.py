"""Run by tests/test_distributed.py under `accelerate launch`: two SGD steps of a patched tiny BERT MLM, each process
on its own half of a fixed batch; every process writes its final weights, the world size and its rank."""

import sys

import torch
from accelerate import Accelerator
from transformers import BertConfig, BertForMaskedLM

import hf_flexattn as hfx

out = sys.argv[1]
accelerator = Accelerator(cpu=True)
torch.manual_seed(0)
config = BertConfig(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
model = hfx.patch(BertForMaskedLM(config), "longformer", window=8, global_tokens=[0])
optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
model, optimiser = accelerator.prepare(model, optimiser)
g = torch.Generator().manual_seed(1)
ids = torch.randint(5, 120, (4, 24), generator=g)
mask = (torch.arange(24) < torch.tensor([[24], [12], [20], [16]])).long()  # 36 labelled tokens a half
labels = ids.masked_fill(mask == 0, -100)
rank, world = accelerator.process_index, accelerator.num_processes
share = slice(rank * 4 // world, (rank + 1) * 4 // world)  # this process's samples
for _ in range(2):
    loss = model(input_ids=ids[share], attention_mask=mask[share], labels=labels[share]).loss
    accelerator.backward(loss)
    optimiser.step()
    optimiser.zero_grad()
weights = {k: v.detach().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()}
torch.save({"weights": weights, "world": world, "rank": rank}, f"{out}/rank{rank}.pt")
