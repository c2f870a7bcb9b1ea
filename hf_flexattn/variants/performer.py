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

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .. import checks
from ..masks import Mask, generate_full
from ..warnings import warn_once
from .base import ForwardInputs, ForwardMasks, Variant, VariantOptions, option


def orthogonal_random_features(
    num_features: int, dim: int, generator: torch.Generator | None = None, device=None, dtype=torch.float32
) -> Tensor:
    """(num_features, dim) rows: blocks of orthogonal directions, each row rescaled to a chi(dim) norm.

    Each row is then distributed as a standard Gaussian vector (a uniform direction times a chi norm), which makes
    the FAVOR+ estimate unbiased; orthogonality within a block lowers its variance.
    """
    gaussian = torch.randn(-(-num_features // dim), dim, dim, generator=generator, device=device, dtype=torch.float32)
    q, r = torch.linalg.qr(gaussian)  # one orthogonal block per dim features
    # QR's Q is uniformly (Haar) distributed only once R's diagonal is made positive; without this the directions are
    # skewed and the kernel estimate biased (measured: 4x the bias of Gaussian features)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
    directions = q.transpose(-1, -2).reshape(-1, dim)[:num_features]
    norms = torch.randn(num_features, dim, generator=generator, device=device, dtype=torch.float32).norm(dim=-1)
    return (directions * norms[:, None]).to(dtype)


def favor_features(x: Tensor, features: Tensor, *, is_query: bool, padding_mask: Tensor | None = None) -> Tensor:
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


class PerformerAttention(nn.Module):
    """FAVOR+ attention with its random features as a persistent buffer.

    ``forward(q, k, v, padding_mask=None)`` on ``(B, H, N, D)`` tensors; ``redraw()`` draws new features from
    torch's global generator (so ``torch.manual_seed`` makes runs reproducible).
    """

    def __init__(self, head_dim: int, num_features: int = 256, redraw_interval: int = 1000):
        super().__init__()
        checks.positive_int("num_features", num_features, "performer")
        self.head_dim, self.num_features, self.redraw_interval = head_dim, num_features, redraw_interval
        self.register_buffer("features", orthogonal_random_features(num_features, head_dim))
        self.training_calls = 0

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, num_features={self.num_features}, redraw_interval={self.redraw_interval}"

    @torch.no_grad()
    def redraw(self) -> None:
        self.features.copy_(
            orthogonal_random_features(
                self.num_features, self.head_dim, device=self.features.device, dtype=self.features.dtype
            )
        )

    def step(self) -> None:
        """Count a training forward; redraw every ``redraw_interval`` of them (never when 0)."""
        if self.redraw_interval and self.training_calls and self.training_calls % self.redraw_interval == 0:
            self.redraw()
        self.training_calls += 1

    def forward(self, q: Tensor, k: Tensor, v: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return favor_attention(q, k, v, self.features, padding_mask)


@dataclass(frozen=True, kw_only=True)
class PerformerOptions(VariantOptions):
    variant: ClassVar[str] = "performer"

    num_features: int = option(256, "number of random features m")
    redraw_interval: int = option(1000, "redraw the features every this many training forwards (0: never)")

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.positive_int("num_features", self.num_features, self.where)
        checks.non_negative_int("redraw_interval", self.redraw_interval, self.where)


class PerformerVariant(Variant):
    name = "performer"
    families = ("bert", "vit", "distilbert", "albert", "dinov2", "beit", "general_text", "general_vision")
    Options = PerformerOptions
    adds_parameters = True  # the features are a saved buffer
    native = False
    applies_model_bias = False  # no N×N score matrix to add a bias to

    def configure(self, config) -> None:
        rate = getattr(config, "attention_probs_dropout_prob", 0.0) or 0.0
        if rate > 0 and self.options.attention_dropout == "standard":
            warn_once(
                "performer-dropout",
                f"hf_flexattn: performer has no attention matrix, so the model's attention dropout ({rate}) cannot "
                "be applied; pass attention_dropout='off' to say so and silence this warning",
            )

    def attach(self, module: nn.Module, layer_idx: int) -> None:
        features = PerformerAttention(
            self.family.head_dim(module), self.options.num_features, self.options.redraw_interval
        )
        module.add_module("performer", features.to(next(module.parameters()).device))

    def detach(self, module: nn.Module) -> None:
        module._modules.pop("performer", None)

    def layer_mask(self, inputs: ForwardInputs, prepared: dict, layer_idx: int) -> Mask:
        """Every real key contributes (through the random features); what ``plot_mask`` draws."""
        return generate_full()

    def attend(
        self, module, hidden_states: Tensor, q: Tensor, k: Tensor, v: Tensor, masks: ForwardMasks, bias=None
    ) -> Tensor:
        if module.training:
            module.performer.step()
        return module.performer(q, k, v, masks.inputs_on(q.device).key_is_real)

    def attention_probabilities(self, module, hidden_states, q, k, v, masks: ForwardMasks, bias=None) -> Tensor:
        """(B, H, N, N): the attention matrix FAVOR+ implies, φ(q)·φ(k)ᵀ normalised per row."""
        real = masks.inputs_on(q.device).key_is_real
        features = module.performer.features
        phi_q = favor_features(q, features, is_query=True)
        phi_k = favor_features(k, features, is_query=False, padding_mask=real)
        weights = phi_q @ phi_k.transpose(-1, -2)
        return weights / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
