"""Performer's math: FAVOR+ linear attention with positive orthogonal random features (Choromanski et al.), plain
PyTorch (no score matrix, so nothing for FlexAttention to do). The ``performer`` variant (variants/performer.py) holds
one :class:`PerformerAttention` per layer; ``ops.performer_attention`` checks its arguments and calls
:func:`favor_attention`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import checks


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


@torch.library.custom_op("hf_flexattn::performer_step", mutates_args=("features", "calls"))
def performer_step(features: Tensor, calls: Tensor, redraw_interval: int) -> None:
    """Count a training forward in ``calls`` (a 0-dim int64 tensor on the host) and redraw ``features`` in place from
    torch's global generator every ``redraw_interval`` of them (never when 0).

    A custom op, opaque to ``torch.compile``: a Python counter read inside a compiled model is guarded on, so each
    training step would recompile it (dynamo's limit then runs it eagerly); a counter on the device would need a host
    read, or a redraw every step, to decide. This op runs at every call, compiled or not, reading the host counter
    (no device sync) and drawing only when due, as the eager code did."""
    done = int(calls)
    if redraw_interval and done and done % redraw_interval == 0:
        features.copy_(orthogonal_random_features(*features.shape, device=features.device, dtype=features.dtype))
    calls.add_(1)


@performer_step.register_fake
def _performer_step_fake(features: Tensor, calls: Tensor, redraw_interval: int) -> None:
    return None


class PerformerAttention(nn.Module):
    """FAVOR+ attention with its random features as a persistent buffer.

    ``forward(q, k, v, padding_mask=None)`` on ``(B, H, N, D)`` tensors; ``redraw()`` draws new features from
    torch's global generator (so ``torch.manual_seed`` makes runs reproducible); ``step()`` counts a training forward
    and redraws on schedule (:func:`performer_step`).
    """

    def __init__(self, head_dim: int, num_features: int = 256, redraw_interval: int = 1000):
        super().__init__()
        checks.positive_int("num_features", num_features, "performer")
        self.head_dim, self.num_features, self.redraw_interval = head_dim, num_features, redraw_interval
        self.register_buffer("features", orthogonal_random_features(num_features, head_dim))
        # on the host whatever the module's device (a plain attribute, not a buffer: ``.to`` leaves it), so that
        # reading it syncs nothing; not saved, as before
        self.calls = torch.zeros((), dtype=torch.int64)

    @property
    def training_calls(self) -> int:
        """Training forwards counted so far."""
        return int(self.calls)

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
        performer_step(self.features, self.calls, self.redraw_interval)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return favor_attention(q, k, v, self.features, padding_mask)
