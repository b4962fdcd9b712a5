"""The documents a user reads: every relative link resolves, every `dinov2_eqcoh...` name they cite exists, and no
document holds a path of the machine it was written on.

Each check first shows that it finds a planted fault, so it cannot pass by finding nothing.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
NAME = re.compile(r"\bdinov2_eqcoh(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|root|home/[A-Za-z0-9_.-]+)/[\w./-]+")
# the changelog names the modules that were removed, by design
NAMES_MAY_BE_GONE = {"CHANGELOG.md"}


def documents() -> list[Path]:
    """README, changelog, docs/ (every .md), and the README of each folder a user opens."""
    found = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]
    found += [p for p in (REPO / "slurm" / "README.md", REPO / "patches" / "README.md") if p.is_file()]
    return found


def broken_links(doc: Path, text: str) -> list[str]:
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a web address, a mail address, an anchor in the same page
        path = target.split("#", 1)[0]
        if path and not (doc.parent / path).exists():
            out.append(f"{doc.relative_to(REPO) if doc.is_relative_to(REPO) else doc}: {target}")
    return out


def missing_names(text: str) -> list[str]:
    """`dinov2_eqcoh.a.b.c` names that are neither a module nor an attribute of one."""
    out = []
    for name in sorted(set(NAME.findall(text))):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
                if obj is None:
                    break
            if obj is None:
                out.append(name)
            break
        else:
            out.append(name)
    return out


def test_checks_find_planted_faults(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("x")
    (tmp_path / "there.md").write_text("x")
    text = ("[ok](there.md) [ok](there.md#part) [web](https://example.org/x) [gone](gone.md) [gone2](sub/gone.md#a)\n"
            "`python -m dinov2_eqcoh.study` and `dinov2_eqcoh.experiments.study` and "
            "`dinov2_eqcoh.method.config.RENAMED_MODULES` and `dinov2_eqcoh.method.config.NOPE`; "
            "out/x, /work/main/out/study_default and /root/.cache/x")
    assert [b.split(": ")[1] for b in broken_links(doc, text)] == ["gone.md", "sub/gone.md#a"]
    assert missing_names(text) == ["dinov2_eqcoh.method.config.NOPE", "dinov2_eqcoh.study"]
    assert MACHINE_PATH.findall(text) == ["/work/main/out/study_default", "/root/.cache/x"]


def test_every_relative_link_resolves():
    docs = documents()
    assert len(docs) > 20  # it looked
    bad = [b for doc in docs for b in broken_links(doc, doc.read_text())]
    assert not bad, "links to nothing:\n" + "\n".join(bad)


def test_every_module_name_a_document_cites_exists():
    bad = [f"{doc.relative_to(REPO)}: {n}" for doc in documents() if doc.name not in NAMES_MAY_BE_GONE
           for n in missing_names(doc.read_text())]
    assert not bad, "names that do not exist:\n" + "\n".join(bad)


def test_no_document_holds_a_machine_path():
    files = documents() + sorted((REPO / "docs").rglob("*.json"))
    bad = [f"{p.relative_to(REPO)}: {m}" for p in files for m in MACHINE_PATH.findall(p.read_text())]
    assert not bad, "paths of the machine a document was written on:\n" + "\n".join(bad[:20])


ISSUE = re.compile(r"\b[Ii]ssue(?:\s+#?|#)\d+")  # a file name such as bench/issue20_*.json is a name, not a citation


def test_no_document_cites_an_issue_number():
    assert ISSUE.search("(issue 29, part 2)") and not ISSUE.search("bench/issue20_vits14_cpu.json")
    bad = [f"{d.relative_to(REPO)}: {m.group(0)}" for d in documents() for m in ISSUE.finditer(d.read_text())]
    assert not bad, "issue numbers a user cannot open:\n" + "\n".join(bad)
