"""README.md, RESULTS.md and docs/*.md: every relative link and every repo file path they name exists."""
import re

import pytest

from conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md"))]
# a path token starting at a folder or file of the repo's top level and naming a file (it has a suffix)
SUFFIXES = (".py", ".md", ".sh", ".json", ".png", ".txt", ".ini")


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, re.M)}


def links(text: str) -> list[str]:
    """Targets of [text](target) and ![alt](target) that are not web addresses."""
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


def broken_links(doc) -> list[str]:
    """The links of doc whose file, or heading in it, does not exist."""
    broken = []
    for target in links(doc.read_text()):
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists() or (anchor and anchor not in anchors(file.read_text())):
            broken.append(target)
    return broken


def test_the_link_check_finds_what_is_broken(tmp_path):
    """On a made-up pair of pages: a missing file and a missing heading are reported, links to
    headings with punctuation (GitHub drops it), to images and to the web are not."""
    (tmp_path / "other.md").write_text("# Growing a member: expand.py\n## Starting from GPT-2 on GPUs\n")
    (tmp_path / "f.png").write_bytes(b"")
    doc = tmp_path / "doc.md"
    doc.write_text("# Top\n[a](other.md#growing-a-member-expandpy), [b](other.md#starting-from-gpt-2-on-gpus), "
                   "![f](f.png), [w](https://x.org/a), [t](#top), [gone](missing.md), "
                   "[no heading](other.md#growing-a-member), [no anchor here](#bottom)\n")
    assert broken_links(doc) == ["missing.md", "other.md#growing-a-member", "#bottom"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(doc):
    assert not broken_links(doc), f"{doc.name}: links to a missing file or heading: {broken_links(doc)}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_repo_paths_exist(doc):
    """Paths like `experiments/summarize.py` or results/twin_growth.json, in prose or commands, are
    relative to the repo's root; outputs (runs/, ckpt_*.pt) start elsewhere and are not checked."""
    top = {p.name for p in ROOT.iterdir() if p.name != "runs" and not p.name.startswith((".git", "out"))}  # not outputs
    named = {tok for tok in re.findall(r"[\w./-]+", doc.read_text())
             if tok.split("/")[0] in top and tok.endswith(SUFFIXES) and not tok.startswith(".")}
    assert named, f"{doc.name} names no file of the repo"
    missing = sorted(tok for tok in named if not (ROOT / tok).exists())
    assert not missing, f"{doc.name} names files that do not exist: {missing}"
