"""Loading the YAML model file (``SCORESTREAM_MODEL``) into the core's :class:`Model`.

A model file may start from another with ``extends: <file>`` (a path relative to the file, or
the name of a bundled model such as ``default`` or ``b2c``): its top-level sections replace the
base's whole (``lifecycle`` replaces ``lifecycle``; an absent section is inherited).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from scorestream import Model, ModelError

MODELS = Path(__file__).parent / "models"
DEFAULT_MODEL = MODELS / "default.yaml"
MAX_EXTENDS = 8


def _read(source: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(source.read_text())
    except OSError as exc:
        raise ModelError(f"cannot read model file {source}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ModelError(f"model file {source} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelError(f"model file {source}: expected a mapping at the top level")
    return raw


def read_model_source(path: Path | str | None = None) -> dict[str, Any]:
    """The model file as one mapping, ``extends`` resolved."""
    source = Path(path) if path else DEFAULT_MODEL
    raw = _read(source)
    seen = [source.resolve()]
    while "extends" in raw:
        base_name = raw.pop("extends")
        if not isinstance(base_name, str) or not base_name:
            raise ModelError(f"model file {source}: 'extends' names a model file")
        bundled = MODELS / f"{base_name}.yaml"
        base_path = bundled if bundled.exists() and "/" not in base_name else source.parent / base_name
        if base_path.resolve() in seen or len(seen) > MAX_EXTENDS:
            raise ModelError(f"model file {source}: 'extends' loops through {base_path}")
        seen.append(base_path.resolve())
        base = _read(base_path)
        raw = {**base, **raw} if "extends" not in base else {**base, **raw, "extends": base["extends"]}
        source = base_path
    return raw


def load_model(path: Path | str | None = None) -> Model:
    """Parse and validate a model file; raises :class:`ModelError` naming the bad field."""
    return Model.from_dict(read_model_source(path))
