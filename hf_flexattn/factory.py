"""The one place a variant is made: ``patch``, ``from_pretrained`` and the ``attn_implementation`` path all call
:func:`make_variant`, so every way in validates the same options the same way."""

from __future__ import annotations

from typing import Any

from . import ops
from .families import FAMILIES, Family, family_for
from .variants import VARIANTS, NativeAttention, Variant, VariantOptions


def make_variant(
    config,
    variant: str | VariantOptions,
    options: dict[str, Any] | None = None,
    *,
    family: Family | None = None,
    num_layers: int | None = None,
    where: str = "patch",
) -> Variant:
    """A ``variant`` (a name, or an options object such as ``LongformerOptions(window=256)``) bound to a model's
    ``config``; raises ``ValueError`` naming the variant, option or model type that is not allowed."""
    options = dict(options or {})
    if isinstance(variant, VariantOptions):
        if options:
            raise ValueError(f"{where}: give options either in {type(variant).__name__} or as keywords, not both")
        variant, options = variant.variant, variant.to_dict()
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(f"{where}: variant={variant!r} is unknown; variants: {', '.join(VARIANTS)}")
    family = family or family_for(config)
    variant_cls = family.variant_class(variant)
    unsupported = family.unsupported(variant)
    if unsupported:
        raise ValueError(
            f"{where}: variant={variant!r} does not support the {family.name} family "
            f"(model_type={config.model_type!r}): {unsupported}; variants for {family.name}: "
            f"{', '.join(family.variants())}"
        )
    resolved = variant_cls.Options.from_kwargs(options)
    instance = variant_cls(
        family, resolved, config, num_layers if num_layers is not None else family.num_layers(config)
    )
    family.check_variant(instance, config)
    ops.check_backend(instance)
    return instance


def supported() -> list[dict[str, Any]]:
    """One row per variant: the families and model types it patches, and its options with defaults and help."""
    rows = []
    for name, cls in VARIANTS.items():
        # a family may give a name its own meaning (Swin's `full`): list every family that has the name
        families = [f.name for f in FAMILIES.values() if name in f.variants()]
        rows.append(
            {
                "variant": name,
                "families": families,
                "model_types": sorted(t for f in families for t in FAMILIES[f].model_types),
                "native": issubclass(cls, NativeAttention),
                # the native attn_implementation serves these families (they route attention through transformers)
                "native_families": [
                    f
                    for f in families
                    if issubclass(cls, NativeAttention)
                    and not FAMILIES[f].native_refusal
                    and not FAMILIES[f].hierarchical
                ],
                "options": {o["name"]: o["default"] for o in cls.Options.describe()},
                "help": {o["name"]: o["help"] for o in cls.Options.describe()},
            }
        )
    return rows
