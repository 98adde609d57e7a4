"""Every relative link in the README and docs resolves: the file exists and, for a `#section` of a Markdown file,
a heading of that name (GitHub's anchors) is in it."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(markdown: Path) -> list[str]:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", markdown.read_text()):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        destination = (markdown.parent / path) if path else markdown
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in {
                _anchor(h) for h in re.findall(r"^#+\s+(.*)$", destination.read_text(), re.M)}:
            broken.append(f"{target}: no such heading")
    return broken


def test_readme_and_docs_links_resolve():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "results").glob("**/README.md"))]
    assert len(pages) > 5
    problems = {str(page.relative_to(REPO)): found for page in pages if (found := broken_links(page))}
    assert not problems, problems


def test_a_missing_file_or_heading_is_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Results\n## The study's claims\n")
    page = tmp_path / "page.md"
    page.write_text("[a](other.md#the-studys-claims) [b](other.md#gone) [c](missing.png) [d](https://x.org/y) "
                    "[e](#local)\n## Local\n")
    assert broken_links(page) == ["other.md#gone: no such heading", "missing.png: no such file"]
