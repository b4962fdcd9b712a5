"""`make results-headline`: docs/results.md's headline block is the regime study's report, copied by code, not by
hand."""

from pathlib import Path

import pytest

from dinov2_eqcoh.experiments import headline

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "docs/study/regime/study.md"


def test_results_block_matches_the_committed_study_report():
    # Fails when study.md is regenerated and docs/results.md is not (or the block is edited by hand).
    assert headline.main(["--study", str(STUDY), "--into", str(REPO / "docs/results.md"), "--check"]) == 0


def test_update_replaces_only_the_block(tmp_path, capsys):
    study = STUDY.read_text()
    changed = study.replace("| eqcoh | 3 | ", "| eqcoh | 3 | 9.999 ± 9.999 | ", 1)
    assert changed != study
    (tmp_path / "study.md").write_text(changed)
    readme = "# title\n\nbefore\n\n" + headline.BEGIN + "\nold table\n" + headline.END + "\n\nafter\n"
    (tmp_path / "README.md").write_text(readme)
    args = ["--study", str(tmp_path / "study.md"), "--into", str(tmp_path / "README.md")]
    assert headline.main(args + ["--check"]) == 1
    assert headline.main(args) == 0
    new = (tmp_path / "README.md").read_text()
    assert new.startswith("# title\n\nbefore\n\n" + headline.BEGIN + "\n| model | n | R²(rot)")
    assert new.endswith(headline.END + "\n\nafter\n")
    assert "old table" not in new and "9.999 ± 9.999" in new
    block = new.split(headline.BEGIN)[1].split(headline.END)[0]
    # the headline's model table, its paired table and the diagnostics table, nothing from the full tables
    assert block.count("| model | n |") == 2 and block.count("| a − b |") == 1
    assert "R²(color)" not in block and "| eqcoh | 3 | 1 | " in block
    assert headline.main(args + ["--check"]) == 0


def test_readme_without_markers_is_refused_and_left_as_it_was(tmp_path, capsys):
    (tmp_path / "README.md").write_text("no markers here\n" + headline.BEGIN + "\n")
    rc = headline.main(["--study", str(STUDY), "--into", str(tmp_path / "README.md")])
    assert rc == 2
    assert "README.md" in capsys.readouterr().err
    assert (tmp_path / "README.md").read_text() == "no markers here\n" + headline.BEGIN + "\n"


def test_report_without_headline_is_named():
    with pytest.raises(ValueError, match="old.md: no line starting with 'Headline \\('"):
        headline.headline_block("# a report\n\n| model | n |\n|---|---|\n", "old.md")
