"""The README's configuration table lists every setting, and nothing that is not one."""

from __future__ import annotations

import re
from pathlib import Path

from schemas.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"^\| `(SCORESTREAM_[A-Z_]+)` \|", README, flags=re.MULTILINE))
    expected = {f"SCORESTREAM_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected
