"""Reviewing a drafted taxonomy: in a terminal, through piped input, in an editor; alone or as a
team; the majority decides; ``validate`` says what is wrong with a file, node by node."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest

from conftest import API_KEY, cli_env, run_cli
from glan.taxonomy import Taxonomy
from glan.taxonomy.edit import edit_file, node_at
from glan.taxonomy.review import merge_votes, vote
from inprocess import run_glan

DRAFT = """\
name: draft
fields:
  - name: Science
    review: {state: unreviewed}
    children:
      - name: Physics
        review: {state: unreviewed}
        children:
          - name: Mechanics
            review: {state: unreviewed}
          - name: Optics
            review: {state: unreviewed}
      - name: Astrology
        review: {state: unreviewed}
        children:
          - name: Horoscopes
            review: {state: unreviewed}
  - name: Skills
    review: {state: unreviewed}
    children:
      - name: Coding
        review: {state: unreviewed}
      - name: Writing
        review: {state: unreviewed}
"""


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """In this module, ``glan`` runs in-process (fast); ``run_cli`` where a process matters."""
    return run_glan


@pytest.fixture
def draft(tmp_path: Path) -> Path:
    path = tmp_path / "draft.yaml"
    path.write_text(DRAFT, encoding="utf-8")
    return path


def votes_of(path: Path, *names: str) -> dict[str, str]:
    node = node_at(Taxonomy.load(path), names)
    assert node is not None, names
    return dict(node.review.votes) if node.review is not None else {}


def state_of(path: Path, *names: str) -> str:
    node = node_at(Taxonomy.load(path), names)
    assert node is not None, names
    return node.state


def review(path: Path, reviewer: str, keys: str) -> subprocess.CompletedProcess[str]:
    """A review session fed from a pipe: one key per line, then the end of input."""
    return run_glan(
        *("taxonomy", "review", str(path), "--reviewer", reviewer),
        input="".join(f"{key}\n" for key in keys),
    )


def paths(taxonomy: Taxonomy) -> list[str]:
    return [d.path_str for d in taxonomy.disciplines()]


# ------------------------------------------------------------------------------- interactive


def test_terminal_review_session(draft: Path) -> None:
    env = {**cli_env(), "TERM": "dumb", "COLUMNS": "200"}
    args = ["-m", "glan", "taxonomy", "review", str(draft), "--reviewer", "alice"]
    prompt = "[k/d/r/a/s/q/?] "
    session = pexpect.spawn(sys.executable, args, env=env, encoding="utf-8", timeout=15)
    try:
        session.expect_exact("Reviewing 9 nodes")
        session.expect_exact("[1/9] Science  (field, 3 disciplines below)")
        session.expect_exact(prompt)
        session.sendline("?")
        session.expect_exact("with everything under it")  # the help
        session.expect_exact(prompt)
        session.sendline("k")
        session.expect_exact("[2/9] Science > Physics")
        session.expect_exact(prompt)
        session.sendline("r")
        session.expect_exact("new name for 'Physics'")
        session.sendline("Classical physics")
        session.expect_exact("renamed to 'Science > Classical physics' (and kept)")
        session.expect_exact("[3/9] Science > Classical physics > Mechanics  (discipline)")
        session.expect_exact(prompt)
        session.sendline("k")
        session.expect_exact("[4/9] Science > Classical physics > Optics")
        session.expect_exact(prompt)
        session.sendline("s")
        session.expect_exact("[5/9] Science > Astrology")
        session.expect_exact(prompt)
        session.sendline("d")
        # Horoscopes, under the node just dropped, is not asked
        session.expect_exact("[7/9] Skills")
        session.expect_exact(prompt)
        session.sendline("a")
        session.expect_exact("name of the new node under 'Skills'")
        session.sendline("Public speaking")
        session.expect_exact("description (optional): ")
        session.sendline("Talking to an audience")
        session.expect_exact("added 'Skills > Public speaking'")
        session.expect_exact("[7/9] Skills  (field, 3 disciplines below)")
        session.expect_exact(prompt)
        session.sendline("k")
        session.expect_exact("[8/9] Skills > Coding")
        session.expect_exact(prompt)
        session.sendline("q")
        session.expect_exact("alice: 4 keep, 1 drop, 1 skipped, 1 renamed, 1 added")
        session.expect(pexpect.EOF)
    finally:
        session.close()
    assert session.exitstatus == 0

    assert votes_of(draft, "Science") == {"alice": "keep"}
    assert votes_of(draft, "Science", "Classical physics") == {"alice": "keep"}
    assert votes_of(draft, "Science", "Classical physics", "Mechanics") == {"alice": "keep"}
    assert votes_of(draft, "Science", "Classical physics", "Optics") == {}
    assert votes_of(draft, "Science", "Astrology") == {"alice": "drop"}
    assert votes_of(draft, "Science", "Astrology", "Horoscopes") == {}
    added = node_at(Taxonomy.load(draft), ("Skills", "Public speaking"))
    assert added is not None and added.review is None  # a person's node: kept
    assert added.description == "Talking to an audience"
    # votes are not decisions: every node waits for merge
    assert state_of(draft, "Science", "Astrology") == "unreviewed"

    # Run again: it goes on where alice stopped (skipped, unvoted; not under her drop).
    again = review(draft, "alice", "kkk")
    assert again.returncode == 0, again.stderr
    shown = [line for line in again.stdout.splitlines() if re.match(r"\[\d+/\d+\]", line)]
    assert [line.split("  (")[0] for line in shown] == [
        "[1/3] Science > Classical physics > Optics",
        "[2/3] Skills > Coding",
        "[3/3] Skills > Writing",
    ]
    done = review(draft, "alice", "")
    assert "Nothing to review" in done.stdout


def test_piped_review_saves_every_decision_when_input_ends(draft: Path) -> None:
    result = review(draft, "bob", "kd")  # Science keep, Physics drop, then end of input
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert votes_of(draft, "Science") == {"bob": "keep"}
    assert votes_of(draft, "Science", "Physics") == {"bob": "drop"}
    assert "bob: 1 keep, 1 drop" in result.stdout
    assert "glan taxonomy merge" in result.stdout


def test_review_errors_are_clear(draft: Path, tmp_path: Path) -> None:
    cli = run_cli  # a real process: no traceback reaches the user
    result = cli("taxonomy", "review", str(tmp_path / "missing.yaml"), "--reviewer", "a")
    assert result.returncode == 1 and "taxonomy file not found" in result.stderr
    result = cli("taxonomy", "review", str(draft), "--reviewer", "  ")
    assert result.returncode == 1 and "--reviewer" in result.stderr
    result = cli("taxonomy", "review", str(draft), "--reviewer", "a", "--under", "Nope")
    assert result.returncode == 1 and "no node named 'Nope'" in result.stderr
    assert "Traceback" not in result.stderr


def test_review_under_one_branch(draft: Path) -> None:
    result = run_glan(
        *("taxonomy", "review", str(draft), "--reviewer", "dan", "--under", "Skills"),
        input="k\nk\nk\n",
    )
    assert result.returncode == 0, result.stderr
    assert votes_of(draft, "Skills", "Writing") == {"dan": "keep"}
    assert votes_of(draft, "Science") == {}


# ------------------------------------------------------------------------------------ merge


def test_three_reviewers_the_majority_decides(draft: Path, tmp_path: Path, cli) -> None:
    # Alice votes in the file itself; Bob and Carol each in a copy of it.
    bob_copy, carol_copy = tmp_path / "bob.yaml", tmp_path / "carol.yaml"
    bob_copy.write_text(DRAFT)
    carol_copy.write_text(DRAFT)
    # order: Science, Physics, Mechanics, Optics, Astrology, Horoscopes, Skills, Coding, Writing
    assert review(draft, "alice", "kkkkdkkd").returncode == 0  # Horoscopes: not asked
    assert review(bob_copy, "bob", "kkkkkkkkd").returncode == 0
    assert review(carol_copy, "carol", "kddkdk").returncode == 0  # under Physics: not asked

    refused = cli("generate", "--out", str(tmp_path / "run"), "--taxonomy", str(draft))
    assert refused.returncode == 1 and "not reviewed yet" in refused.stderr

    result = cli(
        *("taxonomy", "merge", str(draft)),
        *("--from", str(bob_copy), "--from", str(carol_copy)),
    )
    assert result.returncode == 0, result.stderr
    assert "votes of alice, bob, carol" in result.stdout
    taxonomy = Taxonomy.load(draft)
    assert votes_of(draft, "Science", "Physics") == {
        "alice": "keep",
        "bob": "keep",
        "carol": "drop",
    }
    assert state_of(draft, "Science", "Physics") == "kept"  # 2 to 1
    # Carol dropped Physics, so her drop counts for Mechanics too: still 2 to 1
    assert state_of(draft, "Science", "Physics", "Mechanics") == "kept"
    assert state_of(draft, "Science", "Astrology") == "dropped"  # 2 to 1
    # Bob kept Horoscopes, but Alice and Carol dropped Astrology above it
    assert state_of(draft, "Science", "Astrology", "Horoscopes") == "dropped"
    assert state_of(draft, "Skills", "Coding") == "kept"  # 2 to 1
    assert state_of(draft, "Skills", "Writing") == "dropped"  # 2 to 1
    assert taxonomy.unreviewed() == []
    assert paths(taxonomy) == [
        "Science > Physics > Mechanics",
        "Science > Physics > Optics",
        "Skills > Coding",
    ]
    ok = cli("taxonomy", "validate", str(draft))
    assert ok.returncode == 0 and "ok" in ok.stdout


def test_ties_keep_and_too_few_votes_wait() -> None:
    taxonomy = Taxonomy.from_yaml(DRAFT)
    vote(taxonomy, ("Skills",), "alice", "keep")
    vote(taxonomy, ("Skills",), "bob", "drop")
    vote(taxonomy, ("Science",), "alice", "drop")
    result = merge_votes(taxonomy, min_votes=2)
    assert node_at(taxonomy, ("Skills",)).state == "kept"  # type: ignore[union-attr]
    assert result.ties == [("Skills",)]
    # Science has one vote of the two needed; its subtree inherits Alice's drop, also one vote
    assert node_at(taxonomy, ("Science",)).state == "unreviewed"  # type: ignore[union-attr]
    assert ("Science",) in result.waiting
    result = merge_votes(taxonomy, min_votes=1)
    assert node_at(taxonomy, ("Science",)).state == "dropped"  # type: ignore[union-attr]
    # Bob's drop of Skills is his vote below it too, and nobody else voted there
    assert node_at(taxonomy, ("Skills", "Coding")).state == "dropped"  # type: ignore[union-attr]
    assert result.waiting == []

    untouched = Taxonomy.from_yaml(DRAFT)
    vote(untouched, ("Skills",), "alice", "keep")
    result = merge_votes(untouched)
    assert result.kept == [("Skills",)]
    assert ("Skills", "Coding") in result.waiting and ("Science",) in result.waiting
    assert len(result.waiting) == 8


def test_an_own_vote_below_beats_an_inherited_drop() -> None:
    taxonomy = Taxonomy.from_yaml(DRAFT)
    vote(taxonomy, ("Science", "Physics"), "alice", "drop")
    vote(taxonomy, ("Science", "Physics", "Optics"), "alice", "keep")
    merge_votes(taxonomy)
    assert node_at(taxonomy, ("Science", "Physics", "Mechanics")).state == "dropped"  # type: ignore[union-attr]
    assert node_at(taxonomy, ("Science", "Physics", "Optics")).state == "kept"  # type: ignore[union-attr]
    # still out: its parent is dropped
    assert "Science > Physics > Optics" not in paths(taxonomy)


def test_votes_written_in_an_editor_then_merged(draft: Path, cli) -> None:
    text = draft.read_text()
    text = text.replace(
        "  - name: Science\n    review: {state: unreviewed}",
        "  - name: Science\n    review: {state: unreviewed, votes: {ann: keep, ben: keep}}",
    )
    text = text.replace(
        "  - name: Skills\n    review: {state: unreviewed}",
        "  - name: Skills\n    review:\n      votes:\n        ann: keep\n        ben: drop\n"
        "        cy: drop",
    )
    # a node decided by hand, with no votes: merge leaves it alone
    text = text.replace(
        "      - name: Astrology\n        review: {state: unreviewed}",
        "      - name: Astrology\n        review: {state: dropped}",
    )
    draft.write_text(text)

    check = cli("taxonomy", "validate", str(draft))
    assert check.returncode == 1
    assert "Science: unreviewed; its votes (ann: keep, ben: keep) are not applied yet" in (
        check.stdout
    )

    result = cli("taxonomy", "merge", str(draft))
    assert result.returncode == 0, result.stderr
    assert state_of(draft, "Science") == "kept"
    assert state_of(draft, "Skills") == "dropped"
    assert state_of(draft, "Science", "Astrology") == "dropped"
    assert "still unreviewed" in result.stdout  # Physics and below: nobody voted
    # the file is still written for people: one line per review
    assert "review: {state: kept, votes: {ann: keep, ben: keep}}" in draft.read_text()

    # a later hand edit that contradicts the votes is caught
    draft.write_text(
        draft.read_text().replace("{state: dropped, votes: {ann", "{state: kept, votes: {ann")
    )
    check = cli("taxonomy", "validate", str(draft), "--allow-unreviewed")
    assert check.returncode == 0
    assert (
        "warning: Skills: state is kept but the votes (ann: keep, ben: drop, cy: drop) say"
        " dropped: run glan taxonomy merge" in check.stdout
    )


def test_dry_run_merge_writes_nothing(draft: Path, cli) -> None:
    edit_file(draft, lambda t: vote(t, ("Skills",), "al", "drop"))
    before = draft.read_text()
    result = cli("taxonomy", "merge", str(draft), "--dry-run")
    # Skills, and Coding and Writing under it: Al's drop counts for them too
    assert result.returncode == 0 and "would change 3 nodes" in result.stdout
    assert draft.read_text() == before


def test_two_reviewers_at_once_lose_no_vote(draft: Path) -> None:
    nodes = [
        ("Science",),
        ("Science", "Physics"),
        ("Science", "Physics", "Mechanics"),
        ("Science", "Physics", "Optics"),
        ("Skills",),
        ("Skills", "Coding"),
        ("Skills", "Writing"),
    ]

    def reviewer(name: str) -> None:
        for path in nodes:
            edit_file(draft, lambda t, p=path: vote(t, p, name, "keep"))

    threads = [threading.Thread(target=reviewer, args=(n,)) for n in ("ann", "ben", "cy")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for path in nodes:
        assert votes_of(draft, *path) == {"ann": "keep", "ben": "keep", "cy": "keep"}
    assert not any(
        p.name.startswith(".draft.yaml.") and p.suffix != ".lock" for p in draft.parent.iterdir()
    )


def test_generate_refuses_an_unreviewed_taxonomy(draft: Path, tmp_path: Path, teacher, cli) -> None:
    run = tmp_path / "run"
    common = (
        *("--base-url", teacher.base_url, "--api-key", API_KEY, "--taxonomy", str(draft)),
        *("--subject-queries", "1", "--max-subjects-per-discipline", "1"),
        *("--questions-per-syllabus", "1", "--progress", "none"),
    )
    refused = cli("generate", "--out", str(run), *common)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "9 nodes are not reviewed yet (Science; Science > Physics;" in refused.stderr
    assert "glan taxonomy review" in refused.stderr and "--allow-unreviewed" in refused.stderr
    assert teacher.request_count == 0

    allowed = cli("generate", "--out", str(run), *common, "--allow-unreviewed")
    assert allowed.returncode == 0, allowed.stderr
    assert "5 rows" in allowed.stdout  # Mechanics, Optics, Horoscopes, Coding, Writing

    config = tmp_path / "config.yaml"
    config.write_text("allow_unreviewed: true\n")
    again = cli("generate", "--out", str(run), *common, "--config", str(config))
    assert again.returncode == 0, again.stderr


# ------------------------------------------------------------------------- add/remove/rename


def test_add_remove_rename_on_the_command_line(draft: Path, cli) -> None:
    result = cli(
        "taxonomy",
        "add",
        str(draft),
        "Rhetoric",
        "--under",
        "Skills",
        "--description",
        "Arguing well",
    )
    assert result.returncode == 0, result.stderr
    node = node_at(Taxonomy.load(draft), ("Skills", "Rhetoric"))
    assert node is not None and node.review is None and node.description == "Arguing well"

    result = cli("taxonomy", "add", str(draft), "Lasers", "--under", "Science > Physics > Optics")
    assert result.returncode == 1 and "is a discipline" in result.stderr
    assert "--make-sub-field" in result.stderr
    result = cli(
        *("taxonomy", "add", str(draft), "Lasers", "--under", "Optics"),
        *("--make-sub-field", "--unreviewed"),
    )
    assert result.returncode == 0, result.stderr
    assert state_of(draft, "Science", "Physics", "Optics", "Lasers") == "unreviewed"

    result = cli("taxonomy", "add", str(draft), "Languages")
    assert result.returncode == 0 and Taxonomy.load(draft).fields[-1].name == "Languages"

    result = cli("taxonomy", "rename", str(draft), "Coding", "Programming")
    assert result.returncode == 0 and "Skills > Programming" in result.stdout

    result = cli("taxonomy", "remove", str(draft), "Skills > Writing")
    assert result.returncode == 0 and "(1 discipline)" in result.stdout
    assert node_at(Taxonomy.load(draft), ("Skills", "Writing")) is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("add", "Coding", "--under", "Skills"), "'Skills' already has a node named 'Coding'"),
        (("add", "A > B"), "must not contain '>'"),
        (("add", "  "), "must not be empty"),
        (
            ("add", "X", "--under", "Physcs"),
            "no node named 'Physcs' in the taxonomy (did you mean: 'Science > Physics'?)",
        ),
        (("remove", "Astrology > Horoscopes"), "the only node under 'Science > Astrology'"),
        (("remove", "Nothing"), "no node named 'Nothing'"),
        (("rename", "Coding", "Writing"), "already has a node named 'Writing'"),
    ],
)
def test_editing_errors_are_one_clear_line(draft: Path, cli, args, expected) -> None:
    before = draft.read_text()
    result = cli("taxonomy", args[0], str(draft), *args[1:])
    assert result.returncode == 1, result.stdout
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert draft.read_text() == before


def test_ambiguous_names_need_a_path(tmp_path: Path, cli) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "fields:\n- name: A\n  children: [{name: Law}, {name: X}]\n"
        "- name: B\n  children: [{name: Law}, {name: Y}]\n"
    )
    result = cli("taxonomy", "remove", str(path), "Law")
    assert result.returncode == 1
    assert "'Law' is ambiguous, it names 'A > Law'; 'B > Law': give the full path" in result.stderr
    assert cli("taxonomy", "remove", str(path), "b > law").returncode == 0


# --------------------------------------------------------------------------------- validate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fields:\n  - name: A\n   children: []\n", "not valid YAML at line 3"),
        (
            "fields:\n  - name: A\n    childern: [{name: B}]\n",
            "A: unknown key 'childern' (did you mean 'children'?",
        ),
        (
            "fields:\n  - name: A\n    children: []\n",
            "A: has no children (a discipline must omit 'children')",
        ),
        (
            "fields:\n  - name: A\n    children: [{name: B}, {name: b}]\n",
            "A: two children named 'B' and 'b' (sibling names must differ)",
        ),
        (
            "fields:\n  - name: A\n    children:\n      - name: B\n"
            "        review: {state: maybe}\n",
            "A > B: review state 'maybe' is not allowed",
        ),
        (
            "fields:\n  - name: A\n    children:\n      - name: B\n"
            "        review: {votes: {al: yes}}\n",
            "A > B: vote True of reviewer 'al' is not allowed (allowed: keep, drop)",
        ),
        ("fields:\n  - name: A\n    review: {state: dropped}\n", "every discipline is dropped"),
        ("fields: []\n", "'fields' is empty"),
    ],
)
def test_validate_bad_files(tmp_path: Path, cli, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = cli("taxonomy", "validate", str(path))
    assert result.returncode == 1
    assert expected in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_validate_reports_unreviewed_nodes_and_doubtful_shapes(tmp_path: Path, cli) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "fields:\n"
        "  - name: Science\n"
        "    children:\n"
        "      - name: Algebra\n"
        "      - name: Occult\n"
        "        children:\n"
        "          - name: Tarot\n"
        "            review: {state: dropped}\n"
        "          - name: Runes\n"
        "            review: {state: dropped}\n"
        "  - name: Maths\n"
        "    children:\n"
        "      - name: algebra\n"
        "      - name: Topology\n"
        "        review: {state: unreviewed}\n"
    )
    result = cli("taxonomy", "validate", str(path))
    assert result.returncode == 1
    assert "error: Maths > Topology: unreviewed (nobody has voted on it)" in result.stdout
    assert (
        "warning: Science > Occult: every node below it is dropped, so this branch has no"
        " disciplines" in result.stdout
    )
    assert "'Algebra' is a discipline in 2 places (Science > Algebra; Maths > algebra)" in (
        result.stdout
    )
    assert "1 error, 2 warnings" in result.stderr

    allowed = cli("taxonomy", "validate", str(path), "--allow-unreviewed")
    assert allowed.returncode == 0
    assert "warning: Maths > Topology: unreviewed" in allowed.stdout
    assert "ok (3 warnings)" in allowed.stdout


def test_validate_names_the_first_unreviewed_nodes_then_counts(tmp_path: Path, cli) -> None:
    path = tmp_path / "t.yaml"
    leaves = "".join(
        f"      - name: D{i}\n        review: {{state: unreviewed}}\n" for i in range(25)
    )
    path.write_text(f"fields:\n  - name: F\n    children:\n{leaves}")
    result = cli("taxonomy", "validate", str(path))
    assert result.returncode == 1
    assert result.stdout.count("unreviewed (nobody has voted on it)") == 10
    assert "and 15 more unreviewed nodes" in result.stdout
    assert "25 errors" in result.stderr


def test_show_prints_the_tree_with_counts_and_state(draft: Path, cli) -> None:
    edit_file(draft, lambda t: vote(t, ("Science", "Astrology"), "al", "drop"))
    edit_file(draft, lambda t: merge_votes(t))
    result = cli("taxonomy", "show", str(draft), "--votes")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "2 fields · 1 sub-field · 4 disciplines" in lines[0]
    assert (
        "7 unreviewed" in lines[0] and "2 dropped" in lines[0]
    )  # Astrology, Horoscopes and "reviewers: al" in lines[0]
    assert any("Physics (2) unreviewed" in line for line in lines)
    assert any("Astrology dropped al: drop" in line for line in lines)

    bundled = cli("taxonomy", "show", "--depth", "1")
    assert bundled.returncode == 0
    assert "8 fields · 20 sub-fields · 126 disciplines" in bundled.stdout
    assert "Humanities (20)" in bundled.stdout and "Historical studies" not in bundled.stdout


def test_init_writes_the_bundled_taxonomy(tmp_path: Path, cli) -> None:
    path = tmp_path / "mine.yaml"
    assert cli("taxonomy", "init", str(path)).returncode == 0
    assert len(Taxonomy.load(path).disciplines()) == 126
    assert path.read_text().startswith("# The default GLAN taxonomy")
    assert cli("taxonomy", "init", str(path)).returncode == 1
    # rewriting keeps the comment block at the top
    assert (
        cli(
            "taxonomy", "add", str(path), "Korean civil law", "--under", "Social Science"
        ).returncode
        == 0
    )
    assert path.read_text().startswith("# The default GLAN taxonomy")
    assert len(Taxonomy.load(path).disciplines()) == 127
    assert os.access(path, os.R_OK)
