"""Loading the YAML model file (``SCORESTREAM_MODEL``) into the core's :class:`Model`."""

from __future__ import annotations

from pathlib import Path

import yaml

from scorestream import Model, ModelError

DEFAULT_MODEL = Path(__file__).parent / "models" / "default.yaml"


def load_model(path: Path | str | None = None) -> Model:
    """Parse and validate a model file; raises :class:`ModelError` naming the bad field."""
    source = Path(path) if path else DEFAULT_MODEL
    try:
        raw = yaml.safe_load(source.read_text())
    except OSError as exc:
        raise ModelError(f"cannot read model file {source}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ModelError(f"model file {source} is not valid YAML: {exc}") from exc
    return Model.from_dict(raw)
