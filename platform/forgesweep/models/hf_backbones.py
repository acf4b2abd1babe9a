"""Hugging Face backbones built offline: from a hub name, a local directory, or a config.

Every architecture with a transformers backbone builds it through :func:`load_hf_backbone`, so
the rule "nothing is downloaded at import or construction time unless a pretrained source is
named" lives in one place. With ``pretrained: false`` the backbone is built from its config with
random weights (tests, timing runs); with a source, weights load with ``from_pretrained`` from a
local directory or, where the machine can reach it, the hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from forgesweep.errors import ConfigError


def load_hf_backbone(model_cls: Any, config_cls: Any, *, source: Optional[str], pretrained: bool,
                     config: Mapping[str, Any], what: str) -> Any:
    """Build a transformers model.

    Args:
        model_cls: e.g. ``transformers.CLIPVisionModel``.
        config_cls: its config class, e.g. ``transformers.CLIPVisionConfig``.
        source: hub name or local directory of pretrained weights (used when ``pretrained``).
        pretrained: load ``source``'s weights; otherwise build from ``config`` with random weights.
        config: config fields for the random-weight build (ignored when ``pretrained``).
        what: the config field naming the source, for error messages (e.g. ``model.clip``).

    Raises:
        ConfigError: ``pretrained`` without a source, or a source that cannot be loaded
            (missing directory, no network, wrong model type), naming ``what``.
    """
    if not pretrained:
        return model_cls(config_cls(**dict(config)))
    if not source:
        raise ConfigError(f"{what}: pretrained is true but no source (hub name or local directory) is given")
    looks_local = source.startswith(("/", ".", "~")) or Path(source).expanduser().exists()
    if looks_local and not Path(source).expanduser().is_dir():
        raise ConfigError(f"{what}: local backbone directory {source!r} does not exist")
    try:
        return model_cls.from_pretrained(str(Path(source).expanduser()) if looks_local else source)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{what}: cannot load pretrained backbone {source!r}: {first}") from None
