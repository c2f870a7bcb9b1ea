"""What every attention variant shares: its options type, the per-forward masks, and the Variant contract.

A variant is an attention pattern (``longformer``, ``swin``, …) bound to one model: :class:`Variant` subclasses
declare their :class:`VariantOptions` (a frozen dataclass: every option's type, default and help in one place),
implement the small core of :class:`Variant`, and inherit the opt-in mixins (``OPTIONAL_HOOKS``) for anything more.
The patched modules call :meth:`Variant.attend`; the patched base model's forward
creates one :class:`ForwardMasks` per forward, which builds each distinct layer mask once, lazily, on the device
that asks for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

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


def remove_submodule(module: nn.Module, name: str) -> None:
    """Remove ``module``'s submodule ``name`` if it has one (what :meth:`AddsParameters.attach` added)."""
    if isinstance(getattr(module, name, None), nn.Module):
        delattr(module, name)


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
    """A variant's per-forward state: what :meth:`HasForwardState.prepare` builds once per forward and device and every
    layer reads (a variant subclasses it as a dataclass, as ``longformer``'s ``GlobalTokens``)."""


# what one layer's attention runs with: its mask bound to the batch (None: no mask), or, for a variant that builds
# several per layer (OwnLayerMasks: Longformer's local and global rows), a NamedTuple of them
LayerMasks = BatchMask | tuple[BatchMask | None, ...] | None


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
        self._layer: dict[tuple, LayerMasks] = {}
        self._shared: dict[Hashable, Any] = {}

    @classmethod
    def checked(cls, variant: Variant, inputs: ForwardInputs, want_weights: bool = False) -> ForwardMasks:
        """A forward's masks, once the variant has checked the inputs (:class:`ChecksInputs`): how every way in (a
        patched model's forward, transformers' attention interface, ``plot_mask``) makes them."""
        if isinstance(variant, ChecksInputs):
            variant.check_inputs(inputs)
        return cls(variant, inputs, want_weights)

    def inputs_on(self, device: torch.device) -> ForwardInputs:
        if device not in self._inputs_on:
            self._inputs_on[device] = self.inputs.to(device)
        return self._inputs_on[device]

    def prepared(self, device: torch.device) -> ForwardState | None:
        """The variant's per-forward state (global flags, ...) on ``device``; None for a variant without any (one that
        is not a :class:`HasForwardState`)."""
        if device not in self._prepared:
            variant = self.variant
            state = variant.prepare(self.inputs_on(device)) if isinstance(variant, HasForwardState) else None
            self._prepared[device] = state
        return self._prepared[device]

    def shared(self, key: Hashable, build: Callable[[], Any], *, per_batch_size: bool = True) -> Any:
        """Something the layers of this forward share (a layer mask, a tile plan): built once per forward, and
        reused across forwards (in ``ops.PLANS``) when it depends on the input's shape only (no padding, no
        per-batch globals); ``per_batch_size=False``: nor on the batch size. The forward holds what it uses whether
        or not the cache keeps it (a plan over the cache's byte budget is built once per forward, not per layer)."""
        if key not in self._shared:
            inputs = self.inputs
            if self.variant.input_dependent(inputs):
                self._shared[key] = build()
            else:
                batch = inputs.batch if per_batch_size else None
                self._shared[key] = self.variant.cached((key, inputs.shape_key(), batch), build)
        return self._shared[key]

    def for_layer(self, layer_idx: int, device: torch.device) -> LayerMasks:
        """What layer ``layer_idx``'s attention runs with: its :meth:`Variant.layer_mask` bound to the batch, or what
        an :class:`OwnLayerMasks` variant builds. Layers of the same key (:class:`PerLayerMasks`) share it."""
        variant = self.variant
        key = (variant.layer_key(layer_idx) if isinstance(variant, PerLayerMasks) else None, device)
        if key not in self._layer:
            if isinstance(variant, OwnLayerMasks):
                build = lambda: variant.masks_for_layer(self, layer_idx, device)
            else:
                build = lambda: variant.batch_mask(
                    self, variant.layer_mask(self.inputs_on(device), self.prepared(device), layer_idx), device
                )
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


# --- opt-in capabilities: each a mixin a variant inherits before Variant (OPTIONAL_HOOKS: the methods each declares) --


class ChecksInputs:
    """A variant with checks that need the input's geometry (a forward's, at forward time)."""

    def check_inputs(self, inputs: ForwardInputs) -> None:
        """Raise ``ValueError`` for inputs the variant cannot attend (sizes only: no tensor values, no host sync)."""
        raise NotImplementedError


StateT = TypeVar("StateT", bound=ForwardState)


class HasForwardState(Generic[StateT]):
    """A variant with per-forward state every layer reads (Longformer's global flags): a :class:`ForwardState`
    dataclass, built once per forward and device (``ForwardMasks.prepared``)."""

    def prepare(self, inputs: ForwardInputs) -> StateT:
        """The forward's state, built on ``inputs.device``."""
        raise NotImplementedError


class PerLayerMasks:
    """A variant whose layers do not all share one mask (a per-layer window, a shift on odd layers)."""

    def layer_key(self, layer_idx: int) -> Hashable:
        """Layers with the same key share one mask."""
        raise NotImplementedError


LayerMasksT = TypeVar("LayerMasksT", bound=tuple)


class OwnLayerMasks(Generic[LayerMasksT]):
    """A variant that builds several masks per layer (Longformer's local and global rows) rather than its
    :meth:`Variant.layer_mask` bound to the batch: a NamedTuple of :class:`BatchMask` (its ``attend`` reads them)."""

    def masks_for_layer(self, masks: ForwardMasks, layer_idx: int, device: torch.device) -> LayerMasksT:
        """Layer ``layer_idx``'s masks on ``device`` (built once per forward and key, by ``ForwardMasks.for_layer``)."""
        raise NotImplementedError


class AddsParameters:
    """A variant that adds parameters (or buffers) of its own to the patched attention modules: it is refused by
    transformers' ``attn_implementation`` path, which has no module to keep them."""

    @property
    def adds_parameters(self) -> bool:
        """Whether this instance adds any (Longformer's only with ``global_projections``)."""
        return True

    def attach(self, module: nn.Module, layer_idx: int) -> None:
        """Add the variant's parameters to an attention module (``patch``)."""
        raise NotImplementedError

    def detach(self, module: nn.Module) -> None:
        """Remove what :meth:`attach` added (``unpatch``, or a patch that failed half way)."""
        raise NotImplementedError


class TakesGlobalAttentionMask:
    """A variant for which ``model(..., global_attention_mask=...)`` is meaningful (HF Longformer's per-batch
    globals); the patched model refuses the argument for the others."""


class NativeAttention:
    """A variant usable as transformers' ``attn_implementation="hf_flexattn_<name>"`` (no parameters of its own, one
    mask per layer index); an instance that adds parameters (:class:`AddsParameters`) is still refused there."""


class ProbabilitiesApart:
    """A variant whose output is not its attention probabilities (``output_attentions``) times the values over the
    keys themselves (Linformer's are over projected slots, Performer's implied by its features, Longformer's global
    rows come from projections of their own): a patched module then returns the probabilities outside the output's
    autograd graph, not as eager attention computes them."""

    @property
    def probabilities_apart(self) -> bool:
        """Whether this instance's are apart (Longformer's only with ``global_projections``)."""
        return True


class ScoreFree(ProbabilitiesApart):
    """A variant that forms no N×N score matrix (Linformer, Performer): the model's own bias (BEiT's, a ``score_mod``)
    has nothing to be added to, so it is not handed one (the family warns at patch time)."""


# each opt-in mixin and the hooks it declares; the patching code calls a hook only on an instance of its mixin
OPTIONAL_HOOKS: dict[type, tuple[str, ...]] = {
    ChecksInputs: ("check_inputs",),
    HasForwardState: ("prepare",),
    PerLayerMasks: ("layer_key",),
    OwnLayerMasks: ("masks_for_layer",),
    AddsParameters: ("adds_parameters", "attach", "detach"),
    TakesGlobalAttentionMask: (),
    NativeAttention: (),
    ProbabilitiesApart: ("probabilities_apart",),
    ScoreFree: (),
}


class Variant:
    """An attention pattern bound to one model: the core every variant implements.

    **The core** (as PEFT's ``BaseTuner`` names the few methods a tuner overrides):

    * the class attributes ``name``, ``requires`` (what it needs of a family: :class:`Requirements`, matched with
      each family's :class:`Capabilities`) and ``Options`` (its :class:`VariantOptions` dataclass);
    * :meth:`configure`: checks and settings that need the model's config (raise ``ValueError`` at patch time);
    * either :meth:`layer_mask` (a masked pattern: the layer's :class:`~hf_flexattn.masks.Mask`; the generic
      kernels, padding, caching and ``output_attentions`` then come for free: ``full``, ``longformer``,
      ``neighborhood``, ``swin``) or :meth:`attend` and :meth:`attention_probabilities` on a :class:`LayerCall`
      (attention computed another way: ``linformer``, ``performer``, whose :meth:`layer_mask` only says which keys
      contribute, for plots). :meth:`attend` is the one entry point, for patched modules and transformers' attention
      interface alike: override it to add a structured path (its plan from ``ops``);
    * :meth:`extra_repr`: the resolved settings of one layer, for ``print(model)``.

    **Everything else is opt-in**: a variant that needs more inherits the mixin that declares it (before
    :class:`Variant`), and the patching code asks ``isinstance`` rather than calling a default that does nothing:
    :class:`ChecksInputs`, :class:`HasForwardState`, :class:`PerLayerMasks`, :class:`OwnLayerMasks`,
    :class:`AddsParameters`, :class:`TakesGlobalAttentionMask`, :class:`NativeAttention`,
    :class:`ProbabilitiesApart` and :class:`ScoreFree`. A class that defines one of their hooks without inheriting
    its mixin is refused when it is defined. Variants for hierarchical families (Swin), whose blocks attend their own
    feature map, subclass :class:`FeatureMapVariant`.

    The rest (:meth:`dropout_p`, :meth:`batch_mask`, :meth:`input_dependent`, :meth:`cached`, :meth:`latest`,
    :meth:`config_dict`) is machinery the variants use, not hooks.
    """

    name: ClassVar[str]
    requires: ClassVar[Requirements]
    Options: ClassVar[type[VariantOptions]] = VariantOptions
    # the ``backend`` values it runs (kernels.BACKENDS; checked at patch time by ops.check_backend)
    kernel_backends: ClassVar[tuple[str, ...]] = ("auto", "flex", "flash")

    def __init__(self, family, options: VariantOptions, config, num_layers: int):
        self.family = family
        self.options = options
        self.num_layers = num_layers
        self._cache_owner = object()  # this variant's entries in ops.PLANS (a copy or an unpickled one gets its own)
        self._latest: dict[Hashable, tuple[Hashable, Any]] = {}
        self.configure(config)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for mixin, hooks in OPTIONAL_HOOKS.items():
            defined = [hook for hook in hooks if hook in vars(cls)]
            if defined and not issubclass(cls, mixin):
                raise TypeError(
                    f"{cls.__name__} defines {defined[0]!r}, a hook of {mixin.__name__}, without inheriting "
                    f"{mixin.__name__}: the patching code would never call it (add {mixin.__name__} to its bases)"
                )

    # --- the core ------------------------------------------------------------------------------------------------

    def configure(self, config) -> None:
        """Checks and resolved settings that need the model's config; raise ``ValueError`` naming the option."""

    def layer_mask(self, inputs: ForwardInputs, prepared: ForwardState | None, layer_idx: int) -> Mask:
        """The pattern of layer ``layer_idx`` (padding is added by :class:`BatchMask`); ``prepared`` is the forward's
        state (:class:`HasForwardState`; None without). Implement this, or :meth:`attend` and
        :meth:`attention_probabilities`."""
        raise NotImplementedError(f"{type(self).__name__} implements neither layer_mask nor attend")

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

    # --- machinery -----------------------------------------------------------------------------------------------

    def dropout_p(self, module: nn.Module) -> float:
        """The attention-probability dropout of ``module`` now (0 in eval, or with ``attention_dropout='off'``)."""
        if not module.training or self.options.attention_dropout == "off":
            return 0.0
        return self.family.dropout_p(module)

    def input_dependent(self, inputs: ForwardInputs) -> bool:
        """Whether masks depend on more than the shape (padding, per-batch globals): then they are not cached."""
        return inputs.has_padding or inputs.global_attention_mask is not None

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
        """One value per ``slot`` (a bias built from a table: one per layer), rebuilt when ``version``
        changes (parameters updated in place bump their version counter, :func:`compat.tensor_version`) or the
        inference mode does (as in :meth:`cached`)."""
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


def probabilities_in_graph(variant: Variant) -> bool:
    """Whether a patched module returns ``variant``'s probabilities in the output's autograd graph (see
    :class:`ProbabilitiesApart`)."""
    return not (isinstance(variant, ProbabilitiesApart) and variant.probabilities_apart)


def adds_parameters(variant: Variant) -> bool:
    """Whether ``variant`` adds parameters to the modules it patches (see :class:`AddsParameters`)."""
    return isinstance(variant, AddsParameters) and variant.adds_parameters


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
        masks: ForwardMasks | None,
    ) -> Tensor:
        """One block's attention over its feature map (``dims``, padded to ``grid``); ``masks``: the forward's, or None
        where the block's module is called without them (Swin v2's, DiNAT's: their masks are per stage geometry)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither attend_map nor attend_block")
