"""Named encoder architectures and `build_encoder`, the package's public constructor."""
from __future__ import annotations

from typing import Dict, List

from .swin import GreenSwinTransformer

SWIN_ARCHS: Dict[str, dict] = {
    "swin_tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "swin_small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "swin_base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "swin_large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}
_BUILDERS = {name: GreenSwinTransformer for name in SWIN_ARCHS}
_DEFAULTS = dict(SWIN_ARCHS)


def register_encoder(name: str, builder, defaults: dict) -> None:
    """Adds an architecture (used by other encoder families, e.g. Twins)."""
    _BUILDERS[name], _DEFAULTS[name] = builder, dict(defaults)


def list_encoders() -> List[str]:
    return sorted(_BUILDERS)


def build_encoder(arch: str, **overrides):
    """Encoder `arch` (see list_encoders()) with keyword overrides such as img_size, window_size,
    drop_path_rate, embed_dim, depths, num_heads."""
    if arch not in _BUILDERS:
        raise ValueError(f"unknown encoder '{arch}'; choose one of {', '.join(list_encoders())}")
    return _BUILDERS[arch](**{**_DEFAULTS[arch], **overrides})


# Twins-SVT: registered here so `build_encoder("twins_svt_base")` works like the Swin names.
from .twins import TWINS_ARCHS, GreenTwinsSVT  # noqa: E402  (after register_encoder exists)

for _name, _defaults in TWINS_ARCHS.items():
    register_encoder(_name, GreenTwinsSVT, _defaults)
