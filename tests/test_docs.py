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


def test_anchors_follow_github():
    assert anchors("## Growing a member: expand.py\n# Starting from GPT-2 on GPUs") == {
        "growing-a-member-expandpy", "starting-from-gpt-2-on-gpus"}
    assert links("see [a](RESULTS.md#x), ![f](results/f.png) and [w](https://x.org/a)") == ["RESULTS.md#x", "results/f.png"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(doc):
    text = doc.read_text()
    for target in links(text):
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f"{doc.name}: link {target} names a missing file"
        if anchor:
            assert anchor in anchors(file.read_text()), f"{doc.name}: link {target} names a missing heading"


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
