"""docs/design.md keeps its table of contents true and has a section for every family.

The contents list every ``## `` section in order, each linked by GitHub's anchor for it;
§15 has a ``### <family>`` section for every family of the registry. Planted documents
show that a section missing from the contents, a stale anchor, a reordered list and a
family without a section are each caught.
"""

import pathlib
import re

from suite import cases as registry

DESIGN = pathlib.Path(__file__).resolve().parents[2] / "docs" / "design.md"
FAMILIES_HEADING = "## 15. The families, one by one"


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def sections(text: str) -> list[str]:
    """The ``## `` headings outside code blocks, in order, the contents' own excluded."""
    found, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("## ") and line != "## Contents":
            found.append(line[3:])
    return found


def contents(text: str) -> list[tuple[str, str]]:
    """(title, anchor) of each top-level entry of the ``## Contents`` list."""
    block = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- \[(.+?)\]\(#(.+?)\)", block, flags=re.MULTILINE)


def toc_problems(text: str) -> list[str]:
    listed = contents(text)
    expected = [(title, anchor(title)) for title in sections(text)]
    if listed == expected:
        return []
    return [f"contents {listed} != sections {expected}"]


def missing_families(text: str, families: list[str]) -> list[str]:
    part = text.split(FAMILIES_HEADING, 1)[1].split("\n## ", 1)[0] if (
        FAMILIES_HEADING in text) else ""
    have = set(re.findall(r"^### (\S+)\s*$", part, flags=re.MULTILINE))
    return [name for name in families if name not in have]


def test_the_contents_list_every_section_in_order():
    assert toc_problems(DESIGN.read_text()) == []


def test_every_family_has_a_section():
    families = [f.name for f in registry.families()]
    assert missing_families(DESIGN.read_text(), families) == []


PLANTED = """# title

## Contents

- [1. One](#1-one)
- [2. Two (contract)](#2-two-contract)
- [15. The families, one by one](#15-the-families-one-by-one)
  - [linear](#linear), [mlp](#mlp)

## 1. One

```
## not a heading: inside a code block
```

## 2. Two (contract)

## 15. The families, one by one

### linear

### mlp
"""


def test_the_checks_catch_planted_mistakes():
    assert toc_problems(PLANTED) == [] and missing_families(PLANTED, ["linear", "mlp"]) == []
    assert anchor("2. Two (contract)") == "2-two-contract"
    unlisted = PLANTED.replace("- [2. Two (contract)](#2-two-contract)\n", "")
    stale = PLANTED.replace("(#2-two-contract)", "(#2-two)")
    reordered = PLANTED.replace("- [1. One](#1-one)\n- [2. Two (contract)](#2-two-contract)",
                                "- [2. Two (contract)](#2-two-contract)\n- [1. One](#1-one)")
    for planted in (unlisted, stale, reordered):
        assert toc_problems(planted), planted
    assert missing_families(PLANTED, ["linear", "mlp", "lstm"]) == ["lstm"]
