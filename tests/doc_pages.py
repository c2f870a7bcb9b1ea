"""What the tests of the README and the docs/ pages share: the pages, their sections and code blocks, their tables,
their relative links and the anchors GitHub gives their headings."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
HEADING = re.compile(r"^(#{1,6}) +(.+?)[ \t]*$", re.M)


def pages() -> list[Path]:
    """The README, the other top-level Markdown files and every docs/ page."""
    return sorted(ROOT.glob("*.md")) + sorted(DOCS.glob("*.md"))


def section(page: Path, heading: str) -> str:
    """The text under ``heading`` (its exact title, any level) up to the next heading of the same or a higher level;
    ``KeyError`` if the page has no such heading."""
    text = page.read_text()
    prose = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m[0]), text)  # a '#' comment in a code block is no heading
    headings = list(HEADING.finditer(prose))
    for i, match in enumerate(headings):
        if match[2] == heading:
            level = len(match[1])
            end = next((h.start() for h in headings[i + 1 :] if len(h[1]) <= level), len(text))
            return text[match.end() : end]
    raise KeyError(f"{page.name} has no heading {heading!r}")


def python_blocks(page: Path, heading: str | None = None) -> list[str]:
    """The ```python blocks of ``heading``'s section (of the whole page when ``heading`` is None)."""
    text = page.read_text() if heading is None else section(page, heading)
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def headings_with_python(page: Path) -> dict[str | None, int]:
    """Each heading whose own text (before any subheading) holds ```python blocks, and how many."""
    text = page.read_text()
    prose = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m[0]), text)
    headings = list(HEADING.finditer(prose))
    bounds = [(0, None)] + [(m.end(), m[2]) for m in headings]
    ends = [m.start() for m in headings] + [len(text)]
    found = {}
    for (begin, title), end in zip(bounds, ends):
        count = len(re.findall(r"^```python\n", text[begin:end], re.M))
        if count:
            found[title] = count
    return found


def table(text: str, first_column: str) -> tuple[list[str], list[list[str]]]:
    """The Markdown table in ``text`` whose header's first cell is ``first_column``: its header and rows, as cells."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_column:
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            return cells, rows
    raise KeyError(f"no table with first column {first_column!r}")


def code_names(cell: str) -> list[str]:
    """The `backticked` words of a table cell."""
    return re.findall(r"`([^`]+)`", cell)


def github_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation (backticks, colons, arrows, ...) removed, spaces as
    hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of ``page`` (a repeated title gets -1, -2, ... as on GitHub)."""
    prose = FENCE.sub("", page.read_text())
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(prose):
        anchor = github_anchor(match[2])
        if anchor in seen:
            seen[anchor] += 1
            anchor = f"{anchor}-{seen[anchor]}"
        else:
            seen[anchor] = 0
        found.add(anchor)
    return found


def relative_links(page: Path) -> list[str]:
    """The targets of the page's links and images that are not web addresses (code blocks and inline code left
    out)."""
    prose = re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text()))
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]
