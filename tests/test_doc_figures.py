"""Every measured figure in README.md and docs/*.md is the one its committed benchmark JSON gives.

The figures, the JSON each comes from and how it is computed are listed in benchmarks/figures.py
(``python benchmarks/figures.py --fix`` rewrites the documents after a benchmark is re-run). A
figure edited by hand, a stale one, or one whose JSON is missing fails here; figures no JSON backs
yet must carry the note benchmarks/figures.py's ``UNCHECKED`` names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import figures

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _id(fig: figures.Figure) -> str:
    return f"{fig.doc}:{fig.json}:{fig.text[:40]}"


@pytest.mark.parametrize("fig", figures.FIGURES, ids=_id)
def test_figure_matches_its_json(fig):
    assert figures.check([fig], unchecked=[]) == []


def test_figures_without_json_carry_their_note():
    assert figures.check([], unchecked=figures.UNCHECKED) == []


def test_every_figure_json_exists_and_says_where_it_came_from():
    """Each JSON a figure uses is committed with its provenance: commit, date, machine, versions, command."""
    for name in sorted({fig.json for fig in figures.FIGURES}):
        path = RESULTS / name
        assert path.is_file(), f"docs/results/{name} is missing: run its benchmark"
        data = json.loads(path.read_text())
        if data.get("benchmark") == "quality" and "meta" not in data:
            continue  # written before the quality benchmark recorded meta; its "environment" block stands in
        meta = data["meta"]
        assert len(meta["git_commit"]) == 40 and isinstance(meta["git_dirty"], bool), name
        assert meta["date_utc"].endswith("+00:00"), name
        assert meta["machine"]["cpu"] and meta["machine"]["cores"] >= 1 and meta["machine"]["ram_gib"] > 0, name
        assert meta["packages"]["torch"] and meta["python"], name
        assert meta["command"].startswith(("python benchmarks/", "python -m benchmarks.")), name


def test_every_committed_result_is_shown_somewhere():
    """A benchmark JSON under docs/results/ that no figure reads is either unused or a figure was dropped."""
    used = {fig.json for fig in figures.FIGURES}
    assert {p.name for p in RESULTS.glob("*.json")} <= used


def _copy_repo(tmp_path: Path, fig: figures.Figure) -> Path:
    (tmp_path / fig.doc).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / fig.doc, tmp_path / fig.doc)
    (tmp_path / "docs" / "results").mkdir(parents=True, exist_ok=True)
    shutil.copy(RESULTS / fig.json, tmp_path / "docs" / "results" / fig.json)
    return tmp_path


def test_a_hand_edited_figure_fails(tmp_path):
    """Change one number in a document: the check names it; restore it with --fix's code: it passes."""
    fig = next(f for f in figures.FIGURES if f.json == "quality.json" and f.doc == "README.md")
    root = _copy_repo(tmp_path, fig)
    doc = (root / fig.doc).read_text()
    match = fig.pattern().search(doc)
    name = fig.placeholders()[0]
    edited = doc[:match.start(name)] + "99.9" + doc[match.end(name):]
    (root / fig.doc).write_text(edited)
    problems = figures.check([fig], unchecked=[], root=root)
    assert len(problems) == 1 and "'99.9'" in problems[0]


def test_a_missing_json_fails(tmp_path):
    fig = figures.FIGURES[0]
    root = _copy_repo(tmp_path, fig)
    (root / "docs" / "results" / fig.json).unlink()
    assert "is missing" in figures.check([fig], unchecked=[], root=root)[0]


def test_a_removed_note_fails(tmp_path):
    doc, note = figures.UNCHECKED[0]
    (tmp_path / doc).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / doc).write_text((ROOT / doc).read_text().replace(note.split()[1], "Measured."))
    assert "note" in figures.check([], unchecked=[(doc, note)], root=tmp_path)[0]


def test_pattern_tolerates_rewrapping_but_not_other_text():
    fig = figures.Figure("x.md", "time ratio {t}, peak RSS ratio {r}.", "train_step.json", {})
    assert fig.pattern().search("time ratio\n1.009, peak   RSS ratio 0.985.").group("t", "r") == ("1.009", "0.985")
    assert fig.pattern().search("time ratio 1.009, peak memory ratio 0.985.") is None
