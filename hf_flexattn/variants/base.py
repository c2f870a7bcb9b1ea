"""What every attention variant shares: its options type, the per-forward masks, and the hooks a variant implements.

A variant is an attention pattern (``longformer``, ``swin``, …) bound to one model: :class:`Variant` subclasses
declare their :class:`VariantOptions` (a frozen dataclass: every option's type, default and help in one place) and
implement the hooks below. The patched modules call :meth:`Variant.attend`; the patched base model's forward
creates one :class:`ForwardMasks` per forward, which builds each distinct layer mask once, lazily, on the device
that asks for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .. import checks, kernels, ops
from ..masks import BatchMask, Mask, padded_length


def head_split(x: Tensor, head_dim: int) -> Tensor:
    """(B, N, H·D) → (B, H, N, D)."""
    return x.view(*x.shape[:-1], -1, head_dim).transpose(1, 2)


def head_merge(x: Tensor) -> Tensor:
    """(B, H, N, D) → (B, N, H·D)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def option(default: Any, help: str) -> Any:
    """A variant option: its default and the help text that ``supported()``, the docs and ``--help`` show."""
    return field(default=default, metadata={"help": help})


ATTENTION_DROPOUT = ("standard", "off")


@dataclass(frozen=True, kw_only=True)
class VariantOptions:
    """Options of a variant. Subclasses add theirs; values are checked and normalised on construction."""

    variant: ClassVar[str] = ""

    attention_dropout: str = option(
        "standard",
        "attention-probability dropout during training: 'standard' applies the model's own rate as HF does, on "
        "every device (on CUDA such steps run the dense SDPA path on the materialised mask: FlexAttention has no "
        "dropout; every score is computed); 'off' applies none, on every device",
    )

    backend: str = option(
        "auto",
        "attention kernel: 'auto' (hf_flexattn's choice per call), 'flex' (FlexAttention wherever it computes the "
        "call), 'natten' (NATTEN's kernels: neighborhood without a bias, NATTEN installed), 'flash' (FlexAttention's "
        "FlashAttention-4 backend: CUDA, flash-attn-4 installed); see docs/gpu.md",
    )

    def __post_init__(self) -> None:
        checks.one_of("attention_dropout", self.attention_dropout, ATTENTION_DROPOUT, self.where)
        checks.one_of("backend", self.backend, kernels.BACKENDS, self.where)

    @property
    def where(self) -> str:
        return f"patch(variant={self.variant!r})"

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen dataclass in __post_init__

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> VariantOptions:
        """Build from user keyword arguments, naming any unknown one."""
        known = {f.name for f in cls.fields()}
        unknown = sorted(set(options) - known)
        if unknown:
            common = [f.name for f in dataclasses.fields(VariantOptions)]
            own = [f.name for f in cls.fields() if f.name not in common]
            raise ValueError(
                f"patch(variant={cls.variant!r}): unknown option {unknown[0]!r}; options of {cls.variant!r}: "
                f"{', '.join(own) or 'none'} (and {', '.join(common)}, common to all)"
            )
        return cls(**options)

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        """The variant's own options first, then the ones every variant has."""
        common = {f.name for f in dataclasses.fields(VariantOptions)}
        own = [f for f in dataclasses.fields(cls) if f.name not in common]
        return own + [f for f in dataclasses.fields(cls) if f.name in common]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (tuples as lists), as saved in ``config.hf_flexattn``; ``backend`` only where it is not
        the default (a choice of kernel, not of the function computed)."""
        values = {f.name: _jsonable(getattr(self, f.name)) for f in self.fields()}
        if values["backend"] == "auto":
            del values["backend"]
        return values

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """Each option's name, default and help (for ``supported()`` and the docs)."""
        return [
            {"name": f.name, "default": _jsonable(f.default), "help": f.metadata.get("help", "")} for f in cls.fields()
        ]


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (list, tuple)) else value


# how a family's attention modules see their tokens (Capabilities.tokens)
TOKEN_GEOMETRIES = {
    "sequence": "a 1D token sequence",
    "grid": "prefix tokens then a patch grid",
    "feature_map": "each block's own stage feature map",
}


@dataclass(frozen=True)
class Capabilities:
    """What a family's attention modules offer the variants; ``patch`` matches it with the variant's
    :class:`Requirements` (each family declares its own: ``Family.capabilities``)."""

    tokens: str  # a key of TOKEN_GEOMETRIES
    # the family gives a block's window rule, bias table and scores (Family.window_and_shift, bias_table,
    # block_scores, check_window_size: Swin, Swin v2)
    windowed_blocks: bool = False
    # each module is NATTEN's neighborhood attention over its stage's map, with its own dilation and bias table (DiNAT)
    neighborhood_blocks: bool = False
    # the modules hold global projections of their own, which the model's global rows use (HF Longformer): a variant
    # that ignores them would not compute the model's function
    global_projections: bool = False
    # variants that add parameters to the modules (Linformer's E/F, Performer's features) are verified on the family:
    # trained, saved and reloaded
    added_parameters: bool = True


@dataclass(frozen=True)
class Requirements:
    """What a variant needs of a family (matched against the family's :class:`Capabilities`)."""

    tokens: tuple[str, ...]  # the token geometries it attends
    windowed_blocks: bool = False
    neighborhood_blocks: bool = False
    global_projections: bool = False  # it computes global rows with the modules' own global projections
    added_parameters: bool = False

    def unmet(self, offered: Capabilities) -> str:
        """Why a family offering ``offered`` cannot run the variant ("" when it can)."""
        if offered.tokens not in self.tokens:
            wanted = " or ".join(TOKEN_GEOMETRIES[t] for t in self.tokens)
            return f"it attends {wanted}; the family's modules attend {TOKEN_GEOMETRIES[offered.tokens]}"
        if self.windowed_blocks and not offered.windowed_blocks:
            return "it needs the family's window rule, bias table and scores of a Swin block"
        if self.neighborhood_blocks and not offered.neighborhood_blocks:
            return "it needs modules that are neighborhood attention with a bias table of their own (DiNAT's)"
        if offered.global_projections and not self.global_projections:
            return "the model's global rows use its own global projections, which this variant does not compute"
        if self.global_projections and not offered.global_projections:
            return "it computes global rows with the modules' own global projections, which these modules lack"
        if self.added_parameters and not offered.added_parameters:
            return "it adds parameters to the attention modules, which is not verified on this family"
        return ""


@dataclass
class ForwardInputs:
    """What a patched base model's forward is called with, reduced to what masks depend on."""

    batch: int
    seq_len: int
    device: torch.device
    key_is_real: Tensor | None = None  # (B, N) bool; None when the call has no attention_mask
    global_attention_mask: Tensor | None = None  # (B, N) bool, HF Longformer's per-batch globals
    grid: tuple[int, int] | None = None  # (rows, cols) of the patch grid, vision families
    num_prefix_tokens: int = 0  # CLS (and distillation, register) tokens before the grid

    @property
    def has_padding(self) -> bool:
        return self.key_is_real is not None

    @property
    def padded_len(self) -> int:
        """``seq_len`` rounded up to the block size: the length per-token tables are built at."""
        return padded_length(self.seq_len)

    def pad_tokens(self, flags: Tensor, value: Any = False) -> Tensor:
        """Per-token values (B, N) → (B, padded_len), the extra positions set to ``value``."""
        return nn.functional.pad(flags, (0, self.padded_len - self.seq_len), value=value)

    def to(self, device: torch.device) -> ForwardInputs:
        """The same inputs with their tensors on ``device`` (for layers placed on another device)."""
        # non-blocking only towards CUDA: a copy to the CPU may return before its data arrives
        move = lambda t: None if t is None else t.to(device, non_blocking=device.type == "cuda")
        return dataclasses.replace(
            self,
            device=device,
            key_is_real=move(self.key_is_real),
            global_attention_mask=move(self.global_attention_mask),
        )

    def shape_key(self) -> tuple:
        return (self.seq_len, self.grid, self.num_prefix_tokens)


class ForwardState:
    """A variant's per-forward state: what :meth:`Variant.prepare` builds once per forward and device and every layer
    reads (a variant subclasses it as a dataclass, as ``longformer``'s ``GlobalTokens``)."""


class ForwardMasks:
    """What one forward hands to every layer: the inputs, and each distinct layer mask built once per device.

    Built lazily: a layer asks for its mask on its own device (``for_layer``), so models split across devices
    (``device_map="auto"``) get masks where their layers are. Masks and plans that depend only on the shape are kept
    across forwards in the one plan cache (``ops.PLANS``). It is the ``plans`` the ops' plan functions take.
    """

    def __init__(self, variant: Variant, inputs: ForwardInputs, want_weights: bool = False):
        self.variant = variant
        self.inputs = inputs
        self.want_weights = want_weights
        self.attention_calls = 0  # layers that computed their attention with these masks (a patched model checks)
        self._inputs_on: dict[torch.device, ForwardInputs] = {inputs.device: inputs}
        self._prepared: dict[torch.device, ForwardState | None] = {}
        self._layer: dict[tuple, Any] = {}
        self._shared: dict[Hashable, Any] = {}

    def inputs_on(self, device: torch.device) -> ForwardInputs:
        if device not in self._inputs_on:
            self._inputs_on[device] = self.inputs.to(device)
        return self._inputs_on[device]

    def prepared(self, device: torch.device) -> ForwardState | None:
        """The variant's per-forward state (global flags, ...) on ``device``; None for a variant without any."""
        if device not in self._prepared:
            self._prepared[device] = self.variant.prepare(self.inputs_on(device))
        return self._prepared[device]

    def shared(self, key: Hashable, build: Callable[[], Any], *, per_batch_size: bool = True) -> Any:
        """Something the layers of this forward share (a layer mask, a tile plan): built once per forward, and
        reused across forwards (in ``ops.PLANS``) when it depends on the input's shape only (no padding, no
        per-batch globals); ``per_batch_size=False``: nor on the batch size."""
        if self.variant.input_dependent(self.inputs):
            if key not in self._shared:
                self._shared[key] = build()
            return self._shared[key]
        inputs = self.inputs
        batch = inputs.batch if per_batch_size else None
        return self.variant.cached((key, inputs.shape_key(), batch), build)

    def for_layer(self, layer_idx: int, device: torch.device) -> Any:
        """What layer ``layer_idx``'s attention runs with (a :class:`BatchMask` unless the variant says otherwise)."""
        key = (self.variant.layer_key(layer_idx), device)
        if key not in self._layer:
            build = lambda: self.variant.masks_for_layer(self, layer_idx, device)
            self._layer[key] = self.shared(("layer", *key), build, per_batch_size=False)
        return self._layer[key]


@dataclass
class LayerCall:
    """One layer's attention call, what :meth:`Variant.attend` receives: from a patched module
    (:meth:`of_module`), or from transformers' attention interface (``attn_implementation="hf_flexattn_<name>"``),
    which has no module. (B, H, N, D) q/k/v."""

    q: Tensor
    k: Tensor
    v: Tensor
    masks: ForwardMasks
    layer_idx: int
    scale: float | None
    dropout_p: float
    bias: Any = None  # the model's own bias (a ModelBias: a score_mod and its parameters) for variants that apply it
    module: nn.Module | None = None  # the patched attention module: variants with parameters of their own read them
    hidden_states: Tensor | None = None  # the module's input (Longformer's global projections)

    @classmethod
    def of_module(
        cls, variant: Variant, module: nn.Module, hidden_states, q: Tensor, k: Tensor, v: Tensor, masks, bias=None
    ) -> LayerCall:
        """The call of a patched module: its layer index, scale and dropout rate now."""
        return cls(
            q, k, v, masks, module.hfx_layer_idx, module.scaling, variant.dropout_p(module), bias, module, hidden_states
        )


class Variant:
    """An attention pattern bound to one model.

    **What a new variant implements** (as PEFT's ``BaseTuner`` names the few methods a tuner overrides):

    * the class attributes ``name``, ``requires`` (what it needs of a family: :class:`Requirements`, matched with
      each family's :class:`Capabilities`) and ``Options`` (its :class:`VariantOptions` dataclass);
    * and either :meth:`layer_mask` (a masked pattern: the layer's :class:`~hf_flexattn.masks.Mask`; the generic
      kernels, padding, caching and ``output_attentions`` then come for free: ``full``, ``longformer``,
      ``neighborhood``, ``swin``) or :meth:`attend` and :meth:`attention_probabilities` on a :class:`LayerCall`
      (attention computed another way: ``linformer``, ``performer``, whose :meth:`layer_mask` only says which keys
      contribute, for plots).

    **Optional hooks**, each with a default that is right for most variants:

    * :meth:`configure`: checks and settings that need the model's config (raise ``ValueError`` at patch time)
    * :meth:`check_inputs`: checks that need the input's geometry (raise at forward time)
    * :meth:`prepare`: per-forward state shared by all layers (a :class:`ForwardState` dataclass, on the device asked
      for)
    * :meth:`layer_key`: which layers share a mask (all, by default)
    * :meth:`masks_for_layer`: what a layer's attention receives (default: :meth:`layer_mask` bound to the batch)
    * :meth:`input_dependent`: whether masks depend on more than the shape (then they are built per forward)
    * :meth:`attach` / :meth:`detach`: parameters the variant adds to a patched module, and their removal
    * :meth:`attend`: one layer's attention from its :class:`LayerCall` (the one entry point, for patched modules and
      transformers' attention interface alike): override to add a structured path (its plan from ``ops``)
    * :meth:`extra_repr`: the resolved settings of one layer, for ``print(model)``

    Variants for hierarchical families (Swin), whose blocks attend their own feature map, subclass
    :class:`FeatureMapVariant`, which adds the block hooks.
    """

    name: ClassVar[str]
    requires: ClassVar[Requirements]
    Options: ClassVar[type[VariantOptions]] = VariantOptions
    # usable as transformers' attn_implementation="hf_flexattn_<name>" (no parameters of its own, one mask per layer
    # index); an instance that adds parameters (``adds_parameters``) is still refused there
    native: ClassVar[bool] = True
    adds_parameters: bool = False
    # model(..., global_attention_mask=...) is meaningful (HF Longformer's per-batch globals)
    accepts_global_attention_mask: ClassVar[bool] = False
    # attend() takes ``bias=``: the model's own bias as a score_mod (BEiT), added to the variant's score matrix
    applies_model_bias: ClassVar[bool] = True
    # its output is its attention probabilities (``output_attentions``) times the values, the probabilities being over
    # the keys themselves: then a patched module returns them in the autograd graph (not Linformer's, over projected
    # slots, nor Performer's, implied by its features, nor Longformer's global rows from projections of their own)
    output_is_weights_times_values: bool = True
    # the ``backend`` values it runs (kernels.BACKENDS; checked at patch time by ops.check_backend)
    kernel_backends: ClassVar[tuple[str, ...]] = ("auto", "flex", "flash")

    def __init__(self, family, options: VariantOptions, config, num_layers: int):
        self.family = family
        self.options = options
        self.num_layers = num_layers
        self._cache_owner = object()  # this variant's entries in ops.PLANS (a copy or an unpickled one gets its own)
        self._latest: dict[Hashable, tuple[Hashable, Any]] = {}
        self.configure(config)

    # --- hooks ---------------------------------------------------------------------------------------------------

    def configure(self, config) -> None:
        """Checks and resolved settings that need the model's config; raise ``ValueError`` naming the option."""

    def check_inputs(self, inputs: ForwardInputs) -> None:
        """Checks that need the input's geometry (sizes only: no tensor values, no host sync)."""

    def prepare(self, inputs: ForwardInputs) -> ForwardState | None:
        """Per-forward state every layer reads (built on ``inputs.device``): a :class:`ForwardState` dataclass."""
        return None

    def layer_key(self, layer_idx: int) -> Hashable:
        """Layers with the same key share one mask (all layers, unless a layer's pattern differs)."""
        return None

    def layer_mask(self, inputs: ForwardInputs, prepared: ForwardState | None, layer_idx: int) -> Mask:
        """The pattern of layer ``layer_idx`` (padding is added by :class:`BatchMask`). Core: implement this, or
        :meth:`attend` and :meth:`attention_probabilities`."""
        raise NotImplementedError(f"{type(self).__name__} implements neither layer_mask nor attend")

    def masks_for_layer(self, masks: ForwardMasks, layer_idx: int, device: torch.device) -> Any:
        """What layer ``layer_idx``'s :meth:`attend` receives: by default its mask bound to the batch."""
        return self.batch_mask(
            masks, self.layer_mask(masks.inputs_on(device), masks.prepared(device), layer_idx), device
        )

    def input_dependent(self, inputs: ForwardInputs) -> bool:
        """Whether masks depend on more than the shape (padding, per-batch globals): then they are not cached."""
        return inputs.has_padding

    def attach(self, module: nn.Module, layer_idx: int) -> None:
        """Add the variant's own parameters to an attention module (none by default)."""

    def detach(self, module: nn.Module) -> None:
        """Remove what :meth:`attach` added."""

    def attend(self, call: LayerCall) -> Tensor:
        """(B, H, N, D) attention of one layer, the one entry point (a patched module's and transformers' attention
        interface's): by default the generic kernels with the layer's mask and the model's bias as a ``score_mod``.
        A variant with a structured CPU path asks ``ops`` for its plan first; one computed another way (Linformer,
        Performer) overrides this and :meth:`attention_probabilities`."""
        mask = call.masks.for_layer(call.layer_idx, call.q.device)
        bias = call.bias
        score_mod, params = (None, ()) if bias is None else (bias.score_mod, bias.parameters)
        return kernels.attend(
            call.q,
            call.k,
            call.v,
            mask,
            score_mod=score_mod,
            scale=call.scale,
            dropout_p=call.dropout_p,
            score_mod_params=params,
            backend=self.options.backend,
        )

    def attention_probabilities(self, call: LayerCall) -> Tensor:
        """(B, H, N, N) attention probabilities of one layer, computed densely (``output_attentions=True``)."""
        mask = call.masks.for_layer(call.layer_idx, call.q.device)
        score_mod = None if call.bias is None else call.bias.score_mod
        return kernels.attention_probabilities(call.q, call.k, mask, score_mod=score_mod, scale=call.scale)

    def extra_repr(self, layer_idx: int | None = None) -> str:
        """``print(model)`` of layer ``layer_idx``: the variant and its resolved options."""
        values = ", ".join(f"{k}={v!r}" for k, v in self.options.to_dict().items())
        return f"variant={self.name}" + (f", {values}" if values else "")

    # --- shared machinery ----------------------------------------------------------------------------------------

    def dropout_p(self, module: nn.Module) -> float:
        """The attention-probability dropout of ``module`` now (0 in eval, or with ``attention_dropout='off'``)."""
        if not module.training or self.options.attention_dropout == "off":
            return 0.0
        return self.family.dropout_p(module)

    def batch_mask(self, masks: ForwardMasks, mask: Mask | None, device: torch.device) -> BatchMask | None:
        """``mask`` bound to this forward's batch: its lengths, padding and ``device``."""
        if mask is None:
            return None
        inputs = masks.inputs_on(device)
        per_sample = self.input_dependent(inputs)
        return BatchMask(
            mask, inputs.seq_len, batch=inputs.batch if per_sample else 1, key_is_real=inputs.key_is_real, device=device
        )

    def cached(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """Something that depends only on shapes (and the device): built once per key, kept in the one plan cache
        (``ops.PLANS``; the least recently used entries go first; inference-mode tensors apart; nothing cached inside
        ``torch.compile``: ``ops.caching_allowed``)."""
        return ops.PLANS.get_or_build((self._cache_owner, key), build)

    def latest(self, slot: Hashable, version: Hashable, build: Callable[[], Any]) -> Any:
        """One value per ``slot`` (a fused weight, a bias from a table: one per layer), rebuilt when ``version``
        changes (parameters updated in place bump their ``_version``) or the inference mode does (as in
        :meth:`cached`)."""
        if not ops.caching_allowed():
            return build()
        version = (version, torch.is_inference_mode_enabled())
        cached = self._latest.get(slot)
        if cached is None or cached[0] != version:
            cached = (version, build())
            self._latest[slot] = cached
        return cached[1]

    def config_dict(self) -> dict[str, Any]:
        return {"variant": self.name, "options": self.options.to_dict()}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_latest"] = {}  # rebuilt after unpickling (and a copy's from its own parameters)
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


class FeatureMapVariant(Variant):
    """A variant for hierarchical families (Swin, Swin v2): each block attends its own stage's feature map, so the
    patched module is the block and masks are per stage geometry. A subclass implements :meth:`attend_map` (or
    overrides :meth:`attend_block` for a block algorithm of its own); :meth:`map_shape` and
    :meth:`map_probabilities` are optional."""

    def map_shape(self, layer: nn.Module, height: int, width: int) -> tuple[int, int]:
        """Hierarchical families: the (padded) feature-map size a block attends over."""
        return height, width

    def attend_block(
        self, layer: nn.Module, x: Tensor, dims: tuple[int, int], masks: ForwardMasks
    ) -> tuple[Tensor, Tensor | None]:
        """Hierarchical families: one block's attention on its normalised map ``x`` (B, rows, cols, C), padded to
        :meth:`map_shape` (``dims`` is the map before padding): its output projection and dropout applied, as
        (B, rows, cols, C), and the attention probabilities when ``output_attentions`` asked for them.

        By default: HF's q/k/v projections on the whole map, :meth:`attend_map`, HF's output projection."""
        batch, rows, cols, channels = x.shape
        attention = layer.attention
        tokens = x.reshape(batch, rows * cols, channels)
        q, k, v = (
            head_split(p(tokens), attention.head_dim) for p in (attention.q_proj, attention.k_proj, attention.v_proj)
        )
        out = self.attend_map(layer, q, k, v, dims, (rows, cols), masks)
        out = layer.dropout(attention.o_proj(head_merge(out))).view(batch, rows, cols, channels)
        weights = self.map_probabilities(layer, q, k, dims, (rows, cols)) if masks.want_weights else None
        return out, weights

    def map_probabilities(self, layer: nn.Module, q: Tensor, k: Tensor, dims, grid) -> Tensor | None:
        """Hierarchical families: the attention probabilities of one block over its map (None: not available)."""
        return None

    def attend_map(
        self,
        layer: nn.Module,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        dims: tuple[int, int],
        grid: tuple[int, int],
        masks: ForwardMasks,
    ) -> Tensor:
        """One block's attention over its feature map (``dims``, padded to ``grid``)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither attend_map nor attend_block")
