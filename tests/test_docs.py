"""The docs stay true: the configuration table lists every setting, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schemas.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULTS = sorted((ROOT / "bench" / "results").glob("*.md"))  # their summaries link to each other and to docs/

# [text](target): the target up to the first space or closing parenthesis; images included
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6} (.+)$", flags=re.MULTILINE)


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"^\| `(SCORESTREAM_[A-Z_]+)` \|", CONFIGURATION, flags=re.MULTILINE))
    expected = {f"SCORESTREAM_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(h) for h in HEADING.findall(FENCE.sub("", page.read_text()))}


def broken_links(page: Path) -> list[str]:
    """Relative links of ``page`` whose file, or whose anchor in a Markdown file, does not exist."""
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists() or (fragment and resolved.suffix == ".md" and fragment not in anchors(resolved)):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES + RESULTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall(readme)}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_the_link_check_catches_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A heading, with `code`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading-with-code) [web](https://example.com/x) [self](#top)\n"
        "# Top\n"
        "[gone](missing.md) [gone too](missing.md#x) [bad anchor](there.md#nowhere)\n"
        "```\n[in a fence](ignored.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md", "missing.md#x", "there.md#nowhere"]


def test_the_readme_stays_one_screen() -> None:
    """Quickstart and a map: the manual lives in docs/ (the README was 62 KB before issue 15)."""
    assert len((ROOT / "README.md").read_bytes()) < 6 * 1024
