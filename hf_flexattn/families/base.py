"""What a model family tells the patcher: where its attention modules are and what its tokens look like.

A family's patched modules are subclasses of HF's own classes, made at run time (``Flex`` + the HF name) from the
family's mixin. They pickle, deep-copy and ``torch.save`` by naming their family and HF class, so a fresh process
rebuilds the same subclass.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .. import compat
from ..variants import VARIANTS, ForwardInputs, ForwardMasks, Variant
from ..variants.base import (
    Capabilities,
    LayerCall,
    ScoreFree,
    TakesGlobalAttentionMask,
    head_merge,
    head_split,
    probabilities_in_graph,
)
from .tokens import PatchGridTokens, TextTokens, key_padding_from_attention_mask

# transformers' attention-implementation name of a patched model (registered in hf_integration): its mask function
# returns None (the base model builds the masks) and its attention function hands q/k/v to the patched module
PATCHED_IMPLEMENTATION = "hf_flexattn"

# The family tables, filled by families/__init__.py where they are written (one instance per family; one row per
# model type). They live here so that a family can find itself by name (unpickling) and its model types without
# importing the package that lists every family.
FAMILIES: dict[str, Family] = {}
MODEL_TYPE_TO_FAMILY: dict[str, Family] = {}


class Family:
    """A group of HF model types whose attention modules share one design.

    A family names its attention modules (:meth:`attention_modules`, the one method every family implements) and its
    token geometry (``tokens``); everything else has a default. Which model types use it is written in one table,
    ``MODEL_TYPE_TO_FAMILY`` (families/__init__.py). Which variants apply follows from its :attr:`capabilities` and
    what each variant requires (``Variant.requires``); ``variant_overrides`` gives a variant name the family's own
    strategy where the model's attention needs one (Swin's blocks, ModernBERT's ``full``).
    """

    name: ClassVar[str]
    # how the family's tokens are laid out (a text sequence, a patch grid after prefix tokens)
    tokens: ClassVar[TextTokens | PatchGridTokens]
    # mixin that turns an HF attention class into its hf_flexattn subclass
    attention_mixin: ClassVar[type]
    # blocks attend their own stage's feature map (Swin): masks are per stage geometry, not per forward
    hierarchical: ClassVar[bool] = False
    # family-specific meaning of a variant name (Swin's `full` is its own window attention)
    variant_overrides: ClassVar[dict[str, type[Variant]]] = {}
    # capabilities beyond the token geometry, matched with what a variant requires (variants/base.py: Capabilities)
    windowed_blocks: ClassVar[bool] = False
    neighborhood_blocks: ClassVar[bool] = False
    global_projections: ClassVar[bool] = False
    added_parameters: ClassVar[bool] = True
    # what check_attention_module requires of the patched module (or of ``checked_part`` of it)
    required_attributes: ClassVar[tuple[str, ...]] = ()
    expected_design: ClassVar[str] = ""
    # why transformers' ``attn_implementation="hf_flexattn_*"`` cannot serve this family ("" if it can)
    native_refusal: ClassVar[str] = ""
    # mixins of the modules other than the attention modules that the family swaps (see ``helper_modules``)
    helper_mixins: ClassVar[dict[str, type]] = {}
    # attention computed in transformers' attention function (families/interface.py), which counts its calls
    attention_through_interface: ClassVar[bool] = False
    # a mixin between the patched base model and HF's class, for a base model whose own forward cannot hand the masks
    # to its layers (HF Longformer pads to its window and drops keyword arguments)
    base_model_mixin: ClassVar[type | None] = None

    def __init__(self):
        self._subclasses: dict[type, type] = {}

    def __reduce__(self):
        return (family_named, (self.name,))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @property
    def model_types(self) -> tuple[str, ...]:
        """The ``config.model_type`` values patched by this family (from ``MODEL_TYPE_TO_FAMILY``)."""
        return tuple(t for t, f in MODEL_TYPE_TO_FAMILY.items() if f is self)

    @property
    def spatial_dims(self) -> int:
        """1: a token sequence (text); 2: a patch grid (images)."""
        return 2 if isinstance(self.tokens, PatchGridTokens) else 1

    @property
    def capabilities(self) -> Capabilities:
        """What the family's modules offer the variants: their token geometry and the capabilities declared above."""
        if self.hierarchical:
            tokens = "feature_map"
        else:
            tokens = "grid" if isinstance(self.tokens, PatchGridTokens) else "sequence"
        return Capabilities(
            tokens,
            windowed_blocks=self.windowed_blocks,
            neighborhood_blocks=self.neighborhood_blocks,
            global_projections=self.global_projections,
            added_parameters=self.added_parameters,
        )

    # --- where things are ----------------------------------------------------------------------------------------

    def base_model(self, model: nn.Module) -> nn.Module:
        return getattr(model, "base_model", model)

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def num_layers(self, config) -> int:
        return config.num_hidden_layers

    def layer_count(self, base: nn.Module, modules: list[nn.Module]) -> int:
        """How many attention layers a forward computes (per-layer options have one entry each): one per patched
        module, unless modules are shared by several layers (ALBERT)."""
        return len(modules)

    def helper_modules(self, base: nn.Module) -> list[nn.Module]:
        """Modules besides the attention modules whose class the family swaps (to its ``helper_mixins`` subclass) while
        patched: a loop that must pass the layer index (ALBERT), a bias module whose dense output is replaced by a
        ``score_mod`` (BEiT). ``unpatch`` gives them their class back."""
        return []

    def qkv_projections(self, module: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
        """The attention module's query/key/value projections (copied by Longformer's global projections)."""
        return module.query, module.key, module.value

    def block_index(self, base: nn.Module, layer_idx: int) -> int:
        """Index of layer ``layer_idx`` within its stage (stages only exist in hierarchical models)."""
        return layer_idx

    def variant_class(self, name: str) -> type[Variant]:
        return self.variant_overrides.get(name, VARIANTS[name])

    def unsupported(self, name: str) -> str:
        """Why variant ``name`` cannot patch this family ("" when it can): what it requires that the family's
        capabilities lack."""
        return self.variant_class(name).requires.unmet(self.capabilities)

    def variants(self) -> list[str]:
        return [n for n in VARIANTS if not self.unsupported(n)]

    # --- checks --------------------------------------------------------------------------------------------------

    def checked_part(self, module: nn.Module) -> tuple[Any, str]:
        """The object that must carry ``required_attributes``, and its name for messages."""
        return module, type(module).__name__

    def check_attention_module(self, module: nn.Module, layer_idx: int) -> None:
        """Raise ``ValueError`` if ``module`` is not the HF design this family patches."""
        part, name = self.checked_part(module)
        missing = [n for n in self.required_attributes if not hasattr(part, n)]
        if missing:
            raise ValueError(
                f"layer {layer_idx}: {name} lacks {missing}; the {self.name} family expects {self.expected_design}"
            )

    def check_model(self, model: nn.Module) -> None:
        """Raise ``ValueError`` for configurations the family cannot patch (by default: decoders)."""
        if getattr(model.config, "is_decoder", False):
            raise ValueError(
                "hf_flexattn patches bidirectional encoders; this model has config.is_decoder=True "
                "(causal self-attention and cross-attention are not supported)"
            )

    def check_variant(self, variant: Variant, config) -> None:
        """Raise ``ValueError`` (or warn once) for a variant whose meaning on this family needs saying."""

    # --- token geometry (the family's ``tokens``) -----------------------------------------------------------------

    def forward_inputs(self, base: nn.Module, arguments: dict[str, Any]) -> ForwardInputs:
        """What the base model's forward was called with, reduced to what masks depend on."""
        return self.tokens.forward_inputs(base, arguments)

    def native_inputs(self, config, batch: int, seq_len: int, key_is_real: Tensor | None, device) -> ForwardInputs:
        """The same, for transformers' ``attn_implementation`` path, which knows only lengths and the padding."""
        return self.tokens.native_inputs(config, batch, seq_len, key_is_real, device)

    def max_tokens(self, config) -> int:
        return self.tokens.max_tokens(config)

    def config_grid(self, config) -> tuple[int, int]:
        return self.tokens.config_grid(config)

    def dropout_p(self, module: nn.Module) -> float:
        """The attention-probability dropout rate HF's module applies in training."""
        raise NotImplementedError

    def head_dim(self, module: nn.Module) -> int:
        """The per-head width of a patched attention module."""
        return module.head_dim

    # --- windowed blocks (families with ``windowed_blocks``: what a block's attention is beyond its tokens) ---------

    def check_window_size(self, window: int, config, where: str) -> None:
        """Raise ``ValueError`` for a window the family's blocks cannot score."""
        raise NotImplementedError(f"the {self.name} family has no windowed blocks")

    def window_and_shift(self, layer: nn.Module, dims: tuple[int, int], window: int, shift: int) -> tuple[int, int]:
        """The window and shift block ``layer`` uses on a map of ``dims`` under the model's rule."""
        raise NotImplementedError(f"the {self.name} family has no windowed blocks")

    def bias_table(self, layer: nn.Module) -> tuple[Tensor, int] | None:
        """The block's fixed relative position table and the window it was built for (None: computed per forward)."""
        raise NotImplementedError(f"the {self.name} family has no windowed blocks")

    def block_scores(self, layer: nn.Module, q: Tensor, k: Tensor, reach: int):
        """The block's scores (a ``variants.swin.BlockScores``) for q/k attending offsets up to ``reach``."""
        raise NotImplementedError(f"the {self.name} family has no windowed blocks")

    # --- patched classes -----------------------------------------------------------------------------------------

    def patched_class(self, hf_class: type) -> type:
        """The hf_flexattn subclass of ``hf_class`` (made once per class and cached): the base model's keeps HF's
        class name (it is the same model, whose forward first builds masks: ``save_pretrained`` records the name);
        helper and attention modules are named ``Flex`` + the HF name."""
        hf_class = getattr(hf_class, "hfx_original_class", hf_class)  # ``type(patched_model)(config)``, patched
        if hf_class not in self._subclasses:
            from transformers import PreTrainedModel

            is_base = issubclass(hf_class, PreTrainedModel)
            mixin = PatchedBaseModel if is_base else self.helper_mixins.get(hf_class.__name__, self.attention_mixin)
            name = hf_class.__name__ if is_base else "Flex" + hf_class.__name__
            extra = (self.base_model_mixin,) if is_base and self.base_model_mixin is not None else ()
            cls = type(
                name,
                (mixin, *extra, hf_class),
                {
                    "__module__": mixin.__module__,
                    "__doc__": mixin.__doc__ if not is_base else hf_class.__doc__,
                    "hfx_family": self.name,
                    "hfx_original_class": hf_class,
                    **({"hfx_forward_parameters": ForwardParameters.of(hf_class.forward)} if is_base else {}),
                },
            )
            cls.__qualname__ = name
            if is_base:
                _register_recorded_outputs(cls, hf_class)
                cls.forward = _forward_with_signature_of(hf_class)
            self._subclasses[hf_class] = cls
        return self._subclasses[hf_class]

    @staticmethod
    def bind_arguments(base: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The base model's forward arguments by name, however they were passed (by position in HF's order, by
        keyword, or mixed), bound against HF's own forward's parameters (read once per class, so that binding is
        plain tuple and dict work that every torch.compile in the declared range traces); its ``**kwargs`` are
        flattened in. Everything after this reads arguments by name only."""
        parameters: ForwardParameters = type(base).hfx_forward_parameters
        name = type(base).__name__
        if len(args) > len(parameters.positional):
            if parameters.var_positional is not None:
                raise TypeError(
                    f"{name}.forward takes *{parameters.var_positional}; hf_flexattn passes arguments by name"
                )
            raise TypeError(
                f"{name}.forward takes at most {len(parameters.positional)} positional arguments, {len(args)} given"
            )
        arguments = dict(zip(parameters.positional, args))
        for key, value in kwargs.items():
            if key in arguments:
                raise TypeError(f"{name}.forward got multiple values for argument {key!r}")
            if key not in parameters.named and not parameters.var_keyword:
                raise TypeError(f"{name}.forward got an unexpected keyword argument {key!r}")
            arguments[key] = value
        return arguments


@dataclass(frozen=True)
class ForwardParameters:
    """What binding needs of an HF forward's signature: the names that may come by position (in order), every
    name it takes, and its ``*args``/``**kwargs``."""

    positional: tuple[str, ...]
    named: frozenset[str]
    var_positional: str | None
    var_keyword: bool

    @classmethod
    def of(cls, forward) -> ForwardParameters:
        kinds = inspect.Parameter
        parameters = list(inspect.signature(forward).parameters.values())[1:]  # after ``self``
        by_position = (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        return cls(
            positional=tuple(p.name for p in parameters if p.kind in by_position),
            named=frozenset(p.name for p in parameters if p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)),
            var_positional=next((p.name for p in parameters if p.kind is kinds.VAR_POSITIONAL), None),
            var_keyword=any(p.kind is kinds.VAR_KEYWORD for p in parameters),
        )


def _register_recorded_outputs(cls: type, hf_class: type) -> None:
    """transformers looks up what a model records for ``output_hidden_states``/``output_attentions`` by the model's
    class name (``str(type(model))``, for executorch); a patched base model records what its HF class records."""
    compat.register_recorded_outputs(cls, hf_class)


def _forward_with_signature_of(hf_class: type):
    """``PatchedBaseModel.forward`` showing ``hf_class.forward``'s signature, as the model did before patching:
    libraries read it to choose which inputs to pass (torch.export's ``dynamic_shapes`` by argument name,
    sentence-transformers, ``Trainer``'s unused columns)."""

    @functools.wraps(PatchedBaseModel.forward)
    def forward(self, *args, **kwargs):
        return PatchedBaseModel.forward(self, *args, **kwargs)

    forward.__signature__ = inspect.signature(hf_class.forward)
    forward.__doc__ = hf_class.forward.__doc__
    return forward


def family_named(name: str) -> Family:
    return FAMILIES[name]


def rebuild_patched_module(family: str, hf_class: type) -> nn.Module:
    """Unpickling: an empty instance of the patched subclass (its state is restored by pickle)."""
    cls = family_named(family).patched_class(hf_class)
    return cls.__new__(cls)


class PatchedHelper:
    """A family's swapped helper module (see ``Family.helper_modules``): it pickles as patched modules do."""

    hfx_family: ClassVar[str]
    hfx_original_class: ClassVar[type]
    hfx_forward_parameters: ClassVar[ForwardParameters]

    def __reduce_ex__(self, protocol):
        return (rebuild_patched_module, (self.hfx_family, self.hfx_original_class), self.__getstate__())


class PatchedBaseModel(PatchedHelper):
    """A patched model's base model: its forward builds the batch's masks once, from its own arguments, and hands
    them to every layer; then HF's forward runs as written. ``hfx_variant`` is set on the instance by ``patch``."""

    hfx_variant: Variant

    def forward(self, *args, **kwargs):
        # under torch.compile and torch.export (strict or not) nothing is read from or kept in the caches
        # (ops.caching_allowed): the trace builds its own masks and plans, and an eager run's caches stay as they were
        return self._hfx_forward(args, kwargs)

    def _hfx_forward(self, args: tuple, kwargs: dict):
        # every argument by name from here on: HF's forward is called with keywords only, so a positional argument is
        # neither read as absent nor passed twice
        kwargs = self.hfx_forward_kwargs(self.hfx_variant.family.bind_arguments(self, args, kwargs))
        output = super().forward(**kwargs)
        masks = kwargs["hfx_masks"]
        if self.hfx_variant.family.attention_through_interface and masks.attention_calls == 0:
            if not torch.compiler.is_compiling():
                raise RuntimeError(
                    f"{type(self).__name__}: no patched attention module reached transformers' attention function "
                    f"in this forward, so the model computed its own attention, not variant="
                    f"{self.hfx_variant.name!r}; this model's attention modules do not route through "
                    "ALL_ATTENTION_FUNCTIONS (please report it with your transformers version)"
                )
        return output

    @classmethod
    def is_custom_code(cls) -> bool:
        """Whether transformers treats the model as code of its own: as it treats the HF class. transformers applies
        its checkpoint conversion mapping (the hub's key names <-> its modules' names: ViT's
        ``encoder.layer.0.attention.attention.key`` <-> ``layers.0.attention.k_proj``) in ``save_pretrained`` and
        ``from_pretrained`` only to classes it ships, judged by ``__module__`` (``PreTrainedModel.is_custom_code``,
        checked on transformers 5.25); a patched base model is HF's class with the masks built first, so it saves and
        loads HF's layout."""
        return cls.hfx_original_class.is_custom_code()

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        # copied or unpickled: the configs came back plain (PatchedConfig.__reduce_ex__); they are this model's again
        configs = {id(m.config): m.config for m in self.modules() if hasattr(m, "config")}
        for config in configs.values():
            if compat.config_attn_implementation(config) == PATCHED_IMPLEMENTATION:
                config.__class__ = patched_config_class(getattr(type(config), "hfx_original_class", type(config)))

    def hfx_forward_kwargs(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The forward's ``arguments`` (by name) without ``global_attention_mask`` (read here: HF's base models other
        than Longformer do not take it), with ``hfx_masks``."""
        variant = self.hfx_variant
        if compat.attn_implementation(self.config) != PATCHED_IMPLEMENTATION:
            raise ValueError(
                f"this model is patched by hf_flexattn (variant={variant.name!r}), so "
                f"attn_implementation={compat.attn_implementation(self.config)!r} cannot take effect on its attention "
                "modules: call hf_flexattn.unpatch(model) first. For attention weights, pass output_attentions=True: "
                "hf_flexattn returns the variant's own"
            )
        kwargs = dict(arguments)
        global_mask = kwargs.pop("global_attention_mask", None)
        if global_mask is not None and not isinstance(variant, TakesGlobalAttentionMask):
            raise ValueError(
                f"global_attention_mask is only used by variant='longformer'; this model is patched with "
                f"variant={variant.name!r}"
            )
        inputs = variant.family.forward_inputs(self, kwargs)
        inputs.global_attention_mask = None if global_mask is None else global_mask.to(inputs.device).bool()
        output_attentions = kwargs.get("output_attentions")
        if output_attentions is None:  # HF's rule: an argument left out (or None) is the config's
            output_attentions = getattr(self.config, "output_attentions", False)
        kwargs["hfx_masks"] = ForwardMasks.checked(variant, inputs, bool(output_attentions))
        return kwargs


class PatchedConfig:
    """A patched model's config (its class swapped while patched, as the modules' are). ``output_attentions = True``
    is accepted: transformers allows it only for ``"eager"``, the one implementation of its own that returns weights;
    a patched model returns its variant's own, per call or by this setting. ``set_attn_implementation`` to another
    implementation is refused at the call, not at the next forward."""

    hfx_original_class: ClassVar[type]

    @property
    def output_attentions(self) -> bool:
        return compat.output_attentions_stored(self)

    @output_attentions.setter
    def output_attentions(self, value: bool) -> None:
        if compat.attn_implementation(self) == PATCHED_IMPLEMENTATION:
            compat.set_output_attentions_unchecked(self, value)
        else:
            self.hfx_original_class.output_attentions.fset(self, value)

    def __setattr__(self, key: str, value) -> None:
        patched = compat.config_attn_implementation(self) == PATCHED_IMPLEMENTATION
        if patched and key == compat.CONFIG_ATTN_IMPLEMENTATION_ATTRIBUTE and value != PATCHED_IMPLEMENTATION:
            # what set_attn_implementation("sdpa") sets: on a patched model, say so at the call, not at the next forward
            raise ValueError(
                f"attn_implementation={value!r}: this model is patched by hf_flexattn, so another attention "
                "implementation cannot take effect on its attention modules; call hf_flexattn.unpatch(model) first "
                "(it gives back the model's own implementation), then set_attn_implementation"
            )
        if patched and key == compat.CONFIG_ATTN_IMPLEMENTATION_PROPERTY and value != PATCHED_IMPLEMENTATION:
            # ``config._attn_implementation = ...`` (as ``Model._from_config(config, attn_implementation=...)`` does):
            # the config goes to a new model; it is a plain config from now on (its old model, if still patched,
            # refuses its next forward)
            original = self.hfx_original_class
            self.__class__ = original
            original.__setattr__(self, key, value)
            return
        super().__setattr__(key, value)

    def validate_output_attentions(self) -> None:
        if compat.attn_implementation(self) != PATCHED_IMPLEMENTATION:
            super().validate_output_attentions()

    def __reduce_ex__(self, protocol):
        # a copy of the config alone is a plain config (a new model made from it is not patched); a copied or
        # unpickled patched model gives its own config this class again (PatchedBaseModel.__setstate__)
        return (_new_config, (self.hfx_original_class,), self.__getstate__())


def _new_config(config_class: type):
    """Unpickling or copying a config: an empty instance of ``config_class`` (its state is restored by pickle)."""
    return config_class.__new__(config_class)


_patched_configs: dict[type, type] = {}


def patched_config_class(config_class: type) -> type:
    """The :class:`PatchedConfig` subclass of ``config_class`` (same name, made once per class)."""
    if config_class not in _patched_configs:
        cls = type(
            config_class.__name__,
            (PatchedConfig, config_class),
            {
                "__module__": PatchedConfig.__module__,
                "__doc__": config_class.__doc__,
                "hfx_original_class": config_class,
            },
        )
        cls.__qualname__ = config_class.__name__
        _patched_configs[config_class] = cls
    return _patched_configs[config_class]


class PatchedModule(PatchedHelper):
    """What every family's patched module shares (mixed in before the HF class)."""

    hfx_family: ClassVar[str]
    hfx_original_class: ClassVar[type]
    hfx_variant: Variant
    hfx_layer_idx: int

    def hfx_forward_masks(self, kwargs: dict) -> ForwardMasks:
        forward = kwargs.get("hfx_masks")
        if forward is None:
            raise RuntimeError(
                f"{type(self).__name__} was called without the masks that hf_flexattn builds in the base model's "
                "forward; call the patched model (or its base model), not a layer on its own"
            )
        return forward

    def hfx_attention(self, hidden_states: Tensor, q: Tensor, k: Tensor, v: Tensor, masks: ForwardMasks, bias=None):
        """The variant's (B, H, N, D) output and, when ``output_attentions`` asked for them, its probabilities.

        ``bias``: the model's own bias as a score_mod (BEiT's relative position bias), for the variants that compute
        a score matrix; a :class:`ScoreFree` one has none to add it to (the family warns at patch time).
        """
        variant = self.hfx_variant
        call = LayerCall.of_module(
            variant, self, hidden_states, q, k, v, masks, None if isinstance(variant, ScoreFree) else bias
        )
        if not masks.want_weights:
            return variant.attend(call), None
        weights = variant.attention_probabilities(call)
        recording = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        if recording and probabilities_in_graph(variant):
            # as eager attention computes it, so that the returned weights are in the autograd graph: their gradient
            # (gradient-based attribution) is the output's, and a loss on them reaches q and k once
            dropout_p = call.dropout_p
            return torch.nn.functional.dropout(weights, p=dropout_p, training=dropout_p > 0) @ v, weights
        return variant.attend(call), weights

    def extra_repr(self) -> str:
        return self.hfx_variant.extra_repr(self.hfx_layer_idx)


__all__ = [
    "PATCHED_IMPLEMENTATION",
    "Family",
    "PatchedBaseModel",
    "PatchedConfig",
    "PatchedModule",
    "head_merge",
    "head_split",
    "key_padding_from_attention_mask",
]
