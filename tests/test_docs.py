"""The README reads in minutes, its numbers come from the reports, its links resolve."""
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from selective_update import docs
from selective_update.__main__ import main as cli
from selective_update.settings import ROOT
from selective_update.study import grid

README = ROOT / "README.md"


def test_readme_is_short_and_starts_with_the_question_and_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert text.index("**The question.**") < text.index("## Two commands") < text.index(
        "## Quickstart") < text.index("## The promise table") < text.index(
        "## Apply it to your model") < text.index("## Where things are")
    assert "make study" in text and "make test" in text


def test_docs_pages_exist_and_every_local_link_resolves():
    pages = docs.documents()
    assert len([p for p in pages if p.parent.name == "docs"]) >= 2
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links to missing {target}"


def test_methods_table_is_the_registry_and_follows_a_new_record(monkeypatch, tmp_path):
    from selective_update.core import promises, strategies

    text = (ROOT / "docs/methods.md").read_text()
    assert docs.refresh(text, tmp_path)[0] == text, "run `python -m selective_update docs`"
    for name in strategies.STRATEGIES:
        assert f"| `{name}` |" in text
    extra = strategies.Strategy("extra", "a record added for the test", "tests", trains="all",
                                loss="masked", rule=promises.exact_everywhere)
    monkeypatch.setattr(strategies, "STRATEGIES", {**strategies.STRATEGIES, "extra": extra})
    new, refreshed, _ = docs.refresh(text, tmp_path)
    assert refreshed == ["strategies"] and "| `extra` | every variable | mask" in new
    assert "Exact on every input, under any optimizer" in new.split("| `extra` |")[1]


def test_every_generated_block_names_a_known_block_and_source():
    for page in docs.documents():
        for match in docs.MARKER.finditer(page.read_text()):
            block = docs.BLOCKS.get(match.group("name"))
            assert block is not None and block.source == match.group("source"), match.group(0)


def test_numbers_in_tables_sit_inside_generated_blocks():
    """A table row with a measured number outside the markers would be typed by hand."""
    for page in docs.documents():
        outside = docs.MARKER.sub("", page.read_text())
        for line in outside.splitlines():
            if line.startswith("|") and not line.startswith("|---"):
                assert not re.search(r"\d\.\d+e-\d+|\b\d\.\d{2,}\b", line), (page.name, line)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """A tiny study's results.csv (two strategies, toy, one optimizer) in a reports folder."""
    folder = tmp_path_factory.mktemp("reports")
    frames = []
    for strategy in ("split_head", "masked_last_layer"):
        cfg = grid.check_params(strategy=strategy, dataset="toy", optimizers=["momentum"],
                                weight_decays=[0.0], warm_start_steps=[2], lr=0.1, steps=2,
                                seeds=[0])
        frames.append(grid.run_grid(cfg).rows)
    pd.concat(frames).to_csv(folder / "results.csv", index=False)
    return folder


def test_refresh_writes_the_promise_table_from_results_csv(reports):
    text = ("intro\n<!-- generated: promise_table (from reports/results.csv) -->\nstale 0.123\n"
            "<!-- end generated: promise_table -->\nafter\n")
    new, refreshed, kept = docs.refresh(text, reports)
    assert refreshed == ["promise_table"] and kept == []
    assert "stale" not in new and new.startswith("intro\n") and new.endswith("after\n")
    assert "| `split_head` | exact | 0 / 0 |" in new
    assert "| `masked_last_layer` | none |" in new  # momentum after a warm start moves it
    assert docs.refresh(new, reports)[0] == new  # a second refresh changes nothing


def test_refresh_keeps_a_block_whose_report_is_missing_and_refuses_unknown_blocks(tmp_path):
    text = "<!-- generated: bench_table (from reports/bench.csv) -->\nold\n" \
           "<!-- end generated: bench_table -->\n"
    assert docs.refresh(text, tmp_path) == (text, [], ["bench_table"])
    with pytest.raises(ValueError, match="^generated block 'nope'"):
        docs.refresh(text.replace("bench_table", "nope"), tmp_path)


def test_docs_command_refreshes_then_check_passes(reports, tmp_path, monkeypatch, capsys):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    shutil.copy(README, root / "README.md")
    for page in (ROOT / "docs").glob("*.md"):
        shutil.copy(page, root / "docs" / page.name)
    monkeypatch.setattr(docs, "ROOT", root)
    monkeypatch.setattr(docs, "documents", lambda root=root: sorted(
        [root / "README.md", *(root / "docs").glob("*.md")]))
    before = (root / "README.md").read_text()
    assert cli(["docs", "--reports", str(reports), "--check"]) == 1
    assert (root / "README.md").read_text() == before  # --check changes nothing
    assert cli(["docs", "--reports", str(reports)]) == 0
    assert "| `split_head` | exact |" in (root / "README.md").read_text()
    assert cli(["docs", "--reports", str(reports), "--check"]) == 0
    assert "refreshed" in capsys.readouterr().out
    assert not any(Path(p).name.startswith(".") for p in (root / "docs").iterdir())
