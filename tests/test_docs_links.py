"""Every relative link in the README and docs resolves: the file exists and, for a `#section` of a Markdown file,
a heading of that name (GitHub's anchors) is in it; and every repository path the README and docs/ quote in
backticks exists (files get moved between sessions; the page naming them should move with them)."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP = ("bench", "docs", "kernels", "results", "students", "tests")
EXAMPLES = {"students/mixers/my_mixer.py"}  # the README's new student, a file the reader creates


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


def quoted_paths_missing(text: str) -> list[str]:
    """The repository paths quoted in `text` (in backticks, under a top-level folder) that do not exist."""
    quoted = re.findall(r"`((?:%s)/[^`\s]*)`" % "|".join(TOP), text)
    paths = {q.split(":")[0].rstrip(".,;") for q in quoted if not any(c in q for c in "*<>{}")}
    return sorted(p for p in paths - EXAMPLES if not (REPO / p).exists())


def test_paths_quoted_in_readme_and_docs_exist():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    problems = {str(page.relative_to(REPO)): found for page in pages if (found := quoted_paths_missing(page.read_text()))}
    assert not problems, problems
    assert quoted_paths_missing("see `results/speed/no_such_probe.py` and `docs/results.md`") == \
        ["results/speed/no_such_probe.py"]
