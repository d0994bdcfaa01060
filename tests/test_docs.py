"""The docs' relative links: every one in README.md and docs/*.md must name a file that exists.

The long explanations live in docs/, one page per topic, and pages move and get renamed; a link that
points nowhere is found here rather than by a reader. Links go to pages, not to headings (`page.md#part`):
a heading is reworded without a thought for who links to it, and GitHub would then just open the page
top, silently. Links inside code (fenced blocks, `spans`) are text, not links, and are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
# [text](target "title") and ![alt](target); reference definitions `[name]: target`.
INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|//)", re.I)  # http:, https:, mailto:, ...


def relative_links(page: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text()))
    targets = INLINE.findall(text) + REFERENCE.findall(text)
    return [t for t in targets if not EXTERNAL.match(t)]


def test_the_pages_are_found():
    names = {p.name for p in PAGES}
    assert {"README.md", "tasks.md", "testing.md"} <= names, names  # pages every generated project has


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_existing_files(page):
    broken = []
    for target in relative_links(page):
        if "#" in target:
            broken.append(f"{target} (link to the page, not a heading)")
        elif not (page.parent / target).exists():
            broken.append(f"{target} (no such file)")
    assert not broken, f"{page.relative_to(REPO)}: " + ", ".join(broken)


def test_the_link_finder_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        'See [a](a.md), ![pic](img/b.png "title") and [c](https://example.com/c.md).\n'
        "`[not](code.md)` and\n```bash\n[not](fenced.md)\n```\n[ref]: docs/d.md\n"
    )
    assert relative_links(page) == ["a.md", "img/b.png", "docs/d.md"]
