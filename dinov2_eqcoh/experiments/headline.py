"""`make results-headline`: copy a study report's headline tables into docs/results.md, between markers.

docs/results.md opens with the headline of the regime study (`make study-regime`). This writes it from the report
instead of by hand: the tables that the study report puts under "Headline" (the model table and the paired
comparisons) and the decoders' diagnostics table ("| model | n | k | ..."), in that order, replace whatever lies
between

    <!-- study-regime headline: begin -->
    <!-- study-regime headline: end -->

Nothing outside the markers changes; a document without both markers, or a report without a headline, is refused
with the file and the missing text named, and the document is left as it was.

    python -m dinov2_eqcoh.experiments.headline [--study docs/study/regime/study.md] [--into docs/results.md] [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BEGIN = "<!-- study-regime headline: begin -->"
END = "<!-- study-regime headline: end -->"
HEADLINE_INTRO = "Headline ("
DIAGNOSTICS_HEADER = "| model | n | k |"


def _tables(lines: list[str], start: int) -> list[list[str]]:
    """The consecutive markdown tables from line `start` on (blank lines between them)."""
    tables, i = [], start
    while i < len(lines):
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines) or not lines[i].startswith("|"):
            break
        table = []
        while i < len(lines) and lines[i].startswith("|"):
            table.append(lines[i])
            i += 1
        tables.append(table)
    return tables


def headline_block(study_md: str, source: str = "study.md") -> str:
    """The headline block of a study report: its headline tables, then its diagnostics table if it has one.

    Raises ValueError naming `source` when the report has no headline (an older report, or not a study report)."""
    lines = study_md.splitlines()
    intro = next((i for i, line in enumerate(lines) if line.startswith(HEADLINE_INTRO)), None)
    if intro is None:
        raise ValueError(f"{source}: no line starting with {HEADLINE_INTRO!r}; is it a study report written by "
                         "dinov2_eqcoh.experiments.study (which writes a headline since the regime study)?")
    tables = _tables(lines, intro + 1)
    if not tables:
        raise ValueError(f"{source}: the headline paragraph is not followed by a table")
    diag = next((i for i, line in enumerate(lines) if line.startswith(DIAGNOSTICS_HEADER)), None)
    if diag is not None:
        tables += _tables(lines, diag)[:1]
    return "\n\n".join("\n".join(t) for t in tables)


def splice(document: str, block: str, source: str = "docs/results.md") -> str:
    """`document` with the text between the markers replaced by `block` (one line after BEGIN, one before END)."""
    for marker in (BEGIN, END):
        if document.count(marker) != 1:
            raise ValueError(f"{source}: needs exactly one line {marker!r}, found {document.count(marker)}")
    head, rest = document.split(BEGIN)
    if END not in rest:
        raise ValueError(f"{source}: {END!r} comes before {BEGIN!r}")
    tail = rest.split(END)[1]
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m dinov2_eqcoh.experiments.headline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=Path("docs/study/regime/study.md"),
                        help="the study report (default docs/study/regime/study.md)")
    parser.add_argument("--into", type=Path, default=Path("docs/results.md"),
                        help="the document holding the markers (default docs/results.md)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the document's block differs")
    args = parser.parse_args(argv)
    try:
        block = headline_block(args.study.read_text(), str(args.study))
        old = args.into.read_text()
        new = splice(old, block, str(args.into))
    except (OSError, ValueError) as exc:
        print(f"results-headline: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != old:
            print(f"results-headline: {args.into}'s headline differs from {args.study}; run make results-headline",
                  file=sys.stderr)
            return 1
        print(f"results-headline: {args.into} matches {args.study}")
        return 0
    if new != old:
        tmp = args.into.with_name(args.into.name + ".tmp")
        tmp.write_text(new)
        tmp.replace(args.into)
    print(f"results-headline: {args.into} {'updated' if new != old else 'already matches'} from {args.study}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
