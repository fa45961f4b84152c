"""Growing a taxonomy under a run directory: only new nodes cost anything (paper: "nodes expand
independently, so only new nodes are generated"). Proven with the fake teacher's request count
and with the store: every call made after the change belongs to the new discipline."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import read_rows
from glan import api
from glan.run.store import Store
from glan.taxonomy import Taxonomy
from inprocess import run_glan

TAXONOMY = """\
fields:
  - name: Formal Science
    children:
      - name: Mathematics
      - name: Logic
  - name: Natural Science
    children:
      - name: Chemistry
"""
# per discipline: 2 subject queries x 2 turns + 2 syllabi x 2 turns + 2 x 3 questions + 6 answers
CALLS_PER_DISCIPLINE = 4 + 4 + 6 + 6
ROWS_PER_DISCIPLINE = 6


@pytest.fixture
def taxonomy_file(tmp_path: Path) -> Path:
    path = tmp_path / "taxonomy.yaml"
    path.write_text(TAXONOMY, encoding="utf-8")
    return path


def calls(run: Path) -> dict[str, str]:
    """Every stored call: request key -> the discipline (root) it was made for."""
    store = Store.open(run)
    try:
        return dict(
            store.db.execute(
                "SELECT c.key, n.root FROM calls c JOIN nodes n ON n.id = c.node_id"
            ).fetchall()
        )
    finally:
        store.close()


def discipline_id(path: Path, *names: str) -> str:
    return next(d.id for d in Taxonomy.load(path).disciplines() if d.path == names)


def test_adding_a_discipline_asks_only_for_it(tmp_path, teacher, make_config, taxonomy_file):
    run = tmp_path / "run"
    config = make_config(taxonomy=taxonomy_file, disciplines=None)
    api.generate(config, run, progress="none")
    assert teacher.request_count == 3 * CALLS_PER_DISCIPLINE
    before_rows = read_rows(run)
    before_calls = calls(run)
    assert len(before_rows) == 3 * ROWS_PER_DISCIPLINE

    added = run_glan(
        *("taxonomy", "add", str(taxonomy_file), "Set theory", "--under", "Formal Science"),
    )
    assert added.returncode == 0, added.stderr
    shown = run_glan("taxonomy", "show", str(taxonomy_file), "--run", str(run))
    assert "Set theory new" in shown.stdout
    assert f"Mathematics {ROWS_PER_DISCIPLINE} rows" in shown.stdout

    teacher.reset()
    result = api.generate(config, run, progress="none")
    assert result.complete
    # exactly one discipline's worth of requests, and not one for an unchanged node
    assert teacher.request_count == CALLS_PER_DISCIPLINE
    new_calls = {key: root for key, root in calls(run).items() if key not in before_calls}
    assert len(new_calls) == CALLS_PER_DISCIPLINE
    set_theory = discipline_id(taxonomy_file, "Formal Science", "Set theory")
    assert set(new_calls.values()) == {set_theory}
    asked = [b["messages"][-1]["content"] for b in teacher.requests]
    for old in ("Mathematics", "Logic", "Chemistry"):
        assert not any(f'"{old}"' in text or f"in {old}" in text for text in asked)

    rows = read_rows(run)
    assert len(rows) == 4 * ROWS_PER_DISCIPLINE
    assert rows[: len(before_rows)] == before_rows  # the old rows, untouched, first
    assert {r["meta"]["discipline"] for r in rows[len(before_rows) :]} == {"Set theory"}
    shown = run_glan("taxonomy", "show", str(taxonomy_file), "--run", str(run))
    assert " new" not in shown.stdout


def test_removing_sends_nothing_and_status_names_the_rows_left(
    tmp_path, teacher, make_config, taxonomy_file
):
    run = tmp_path / "run"
    config = make_config(taxonomy=taxonomy_file, disciplines=None)
    api.generate(config, run, progress="none")

    assert run_glan("taxonomy", "remove", str(taxonomy_file), "Logic").returncode == 0
    teacher.reset()
    result = api.generate(config, run, progress="none")
    assert teacher.request_count == 0
    assert result.removed == {"Formal Science > Logic": ROWS_PER_DISCIPLINE}
    status = run_glan("status", str(run))
    assert status.returncode == 0
    assert "come from 1 discipline no longer in the taxonomy" in status.stdout
    assert f"Formal Science > Logic: {ROWS_PER_DISCIPLINE} rows" in status.stdout
    # its rows stay in the dataset file (the note says so); nothing is deleted
    assert len(read_rows(run)) == 3 * ROWS_PER_DISCIPLINE

    # Put it back where it was: its stored work is found again, for free.
    back = run_glan("taxonomy", "add", str(taxonomy_file), "Logic", "--under", "Formal Science")
    assert back.returncode == 0
    result = api.generate(config, run, progress="none")
    assert teacher.request_count == 0
    assert result.removed == {}
    assert len(read_rows(run)) == 3 * ROWS_PER_DISCIPLINE

    # Renaming is a new path, so a new id: generated afresh, and the old rows are reported.
    renamed = run_glan("taxonomy", "rename", str(taxonomy_file), "Chemistry", "General chemistry")
    assert renamed.returncode == 0
    result = api.generate(config, run, progress="none")
    assert teacher.request_count == CALLS_PER_DISCIPLINE
    assert result.removed == {"Natural Science > Chemistry": ROWS_PER_DISCIPLINE}


def test_dropping_in_review_works_like_removing(tmp_path, teacher, make_config, taxonomy_file):
    run = tmp_path / "run"
    config = make_config(taxonomy=taxonomy_file, disciplines=None)
    api.generate(config, run, progress="none")
    taxonomy_file.write_text(
        TAXONOMY.replace(
            "      - name: Logic\n", "      - name: Logic\n        review: {state: dropped}\n"
        )
    )
    teacher.reset()
    result = api.generate(config, run, progress="none")
    assert teacher.request_count == 0
    assert result.removed == {"Formal Science > Logic": ROWS_PER_DISCIPLINE}
