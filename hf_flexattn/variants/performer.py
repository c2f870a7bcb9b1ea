"""``performer``: FAVOR+ linear attention with positive orthogonal random features (Choromanski et al.).

``softmax(q·k/√d)`` is approximated by ``φ(q)·φ(k)`` with ``φ(x) = exp(ω·x' − ‖x'‖²/2) / √m``, ``x' = x·d^-1/4``,
``ω`` the ``m = num_features`` rows of stacked random orthogonal blocks (rows rescaled to Gaussian norms), and a
stabilising max subtracted inside the exponential (per query row; one constant over all keys, so it cancels).
Output: ``φ(Q) (φ(K)ᵀ V) / (φ(Q) φ(K)ᵀ 1)``, linear in N. Padded keys are zeroed out of numerator and normaliser.

FlexAttention computes softmax attention over a (masked) score matrix; linear attention never forms one, so
this variant is plain PyTorch. Features are a persistent buffer (saved and reloaded with the checkpoint),
redrawn every ``redraw_interval`` training forwards (0: never) and fixed in eval.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..kernels import warn_once
from .base import LayerMasks, Option, Variant


def orthogonal_random_features(num_features: int, dim: int, generator: torch.Generator | None = None,
                               device=None, dtype=torch.float32) -> Tensor:
    """(num_features, dim) rows: blocks of orthogonal directions, each row rescaled to a chi(dim) norm."""
    blocks = []
    for _ in range(-(-num_features // dim)):
        gaussian = torch.randn(dim, dim, generator=generator, device=device, dtype=torch.float32)
        q, _ = torch.linalg.qr(gaussian)
        blocks.append(q.T)
    directions = torch.cat(blocks)[:num_features]
    norms = torch.randn(num_features, dim, generator=generator, device=device, dtype=torch.float32).norm(dim=-1)
    return (directions * norms[:, None]).to(dtype)


def favor_features(x: Tensor, features: Tensor, is_query: bool, padding_mask: Tensor | None = None) -> Tensor:
    """Positive random features φ(x) of (B, H, N, D) inputs → (B, H, N, m); padded keys give zero features."""
    dim = x.shape[-1]
    x = x * dim**-0.25
    projection = x @ features.T.to(x.dtype)
    sq_norm = (x * x).sum(-1, keepdim=True) / 2
    if is_query:  # per row: cancels between numerator and normaliser of that row
        stabiliser = projection.amax(-1, keepdim=True)
        masked = projection
    else:  # one constant for all (real) keys of a head: cancels too, and padding cannot move it
        real = None if padding_mask is None else padding_mask[:, None, :, None].bool()
        masked = projection if real is None else projection.masked_fill(~real, float("-inf"))  # exp → exactly 0
        stabiliser = masked.amax(dim=(-1, -2), keepdim=True)
        stabiliser = torch.where(torch.isfinite(stabiliser), stabiliser, torch.zeros_like(stabiliser))
    return torch.exp(masked - sq_norm - stabiliser.detach()) / features.shape[0] ** 0.5


def favor_attention(q: Tensor, k: Tensor, v: Tensor, features: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """FAVOR+ attention of (B, H, N, D) tensors; ``padding_mask`` (B, N) True for real keys."""
    phi_q = favor_features(q, features, is_query=True)
    phi_k = favor_features(k, features, is_query=False, padding_mask=padding_mask)
    context = phi_k.transpose(-1, -2) @ v  # (B, H, m, D)
    normaliser = phi_q @ phi_k.sum(-2, keepdim=True).transpose(-1, -2)  # (B, H, N, 1)
    return (phi_q @ context) / normaliser.clamp_min(torch.finfo(normaliser.dtype).tiny)


class PerformerFeatures(nn.Module):
    """FAVOR+ attention with its random features as a persistent buffer.

    ``forward(q, k, v, padding_mask=None)`` on ``(B, H, N, D)`` tensors; ``redraw()`` draws new features from
    torch's global generator (so ``torch.manual_seed`` makes runs reproducible).
    """

    def __init__(self, head_dim: int, num_features: int = 256, redraw_interval: int = 1000):
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"performer: num_features={num_features!r}; expected a positive int")
        self.head_dim, self.num_features, self.redraw_interval = head_dim, num_features, redraw_interval
        self.register_buffer("features", orthogonal_random_features(num_features, head_dim))
        self.training_calls = 0

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, num_features={self.num_features}, redraw_interval={self.redraw_interval}"

    @torch.no_grad()
    def redraw(self) -> None:
        self.features.copy_(orthogonal_random_features(self.num_features, self.head_dim, device=self.features.device,
                                                       dtype=self.features.dtype))

    def step(self) -> None:
        """Count a training forward; redraw every ``redraw_interval`` of them (never when 0)."""
        if self.redraw_interval and self.training_calls and self.training_calls % self.redraw_interval == 0:
            self.redraw()
        self.training_calls += 1

    def forward(self, q: Tensor, k: Tensor, v: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return favor_attention(q, k, v, self.features, padding_mask)


class PerformerVariant(Variant):
    name = "performer"
    families = ("bert", "vit")
    options = {
        "num_features": Option(256, "number of random features m"),
        "redraw_interval": Option(1000, "redraw the features every this many training forwards (0: never)"),
    }

    def validate(self) -> None:
        m, r = self.settings["num_features"], self.settings["redraw_interval"]
        if isinstance(m, bool) or not isinstance(m, int) or m <= 0:
            raise ValueError(f"patch(variant='performer'): num_features={m!r}; expected a positive int")
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ValueError(f"patch(variant='performer'): redraw_interval={r!r}; expected an int ≥ 0 (0: never)")

    def layer_mask(self, masks: LayerMasks, layer_idx: int):
        return None  # linear attention: no score matrix, no mask

    def attach(self, module: nn.Module, layer_idx: int) -> None:
        head_dim = getattr(module, "attention_head_size", None) or module.head_dim
        features = PerformerFeatures(head_dim, self.settings["num_features"], self.settings["redraw_interval"])
        module.add_module("performer", features.to(next(module.parameters()).device))

    def detach(self, module: nn.Module) -> None:
        module._modules.pop("performer", None)

    def attend(self, module, hidden_states: Tensor, q: Tensor, k: Tensor, v: Tensor, masks: LayerMasks) -> Tensor:
        if module.training:
            module.performer.step()
            if self.family.dropout_p(module) > 0:
                warn_once("performer-dropout", "hf_flexattn: performer has no attention matrix; attention-probability "
                          "dropout is not applied")
        return module.performer(q, k, v, masks.inputs.key_is_real)
