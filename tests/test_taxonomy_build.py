"""``glan taxonomy build``: the teacher drafts the tree breadth first, over real HTTP to the fake
teacher, into a store that makes a stopped build resumable."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import API_KEY, cli_env
from glan.ids import canonical_json
from glan.llm.types import unpack_request
from glan.taxonomy import Taxonomy
from glan.taxonomy.build import BuildConfig, Draft, build, clean, merge_level, prune
from glan.testing.fake_teacher import FakeTeacher


def small(teacher: FakeTeacher, **overrides: object) -> BuildConfig:
    values: dict[str, object] = {
        "base_url": teacher.base_url,
        "api_key": API_KEY,
        "model": "teacher-big",
        "max_fields": 3,
        "max_children": 2,
        "retry_backoff": 0.01,
        "timeout": 5,
    }
    values.update(overrides)
    return BuildConfig.make(**values)


def build_args(out: Path, base_url: str, *extra: str) -> list[str]:
    return [
        "taxonomy",
        "build",
        "--out",
        str(out),
        "--base-url",
        base_url,
        "--api-key",
        API_KEY,
        "--max-fields",
        "3",
        "--max-children",
        "3",
        *extra,
    ]


def test_build_asks_level_by_level_and_every_node_starts_unreviewed(tmp_path, teacher):
    out = tmp_path / "draft.yaml"
    result = build(small(teacher), out)

    taxonomy = Taxonomy.load(out)
    assert result.failed == [] and result.merged == []
    assert result.levels == [3, 6, 12]
    assert len(taxonomy.fields) == 3
    assert all(len(field.children or []) == 2 for field in taxonomy.fields)
    assert len(taxonomy.disciplines()) == 12
    assert all(len(d.path) == 3 for d in taxonomy.disciplines())
    nodes = list(taxonomy.walk())
    assert len(nodes) == 3 + 6 + 12
    assert all(
        node.review is not None and node.review.state == "unreviewed" for _, node, _ in nodes
    )
    assert all(node.description for _, node, _ in nodes)
    assert len(taxonomy.unreviewed()) == 21

    # one call for the fields, one per field, one per sub-field; all structured
    bodies = teacher.requests
    assert len(bodies) == result.sent == 1 + 3 + 6
    assert all(b["response_format"]["type"] == "json_schema" for b in bodies)
    prompts = [b["messages"][0]["content"] for b in bodies]
    assert "fields of human knowledge and capabilities" in prompts[0]
    assert "programming" in prompts[0]  # skills have a place, not only academic knowledge
    assert "at most 3 fields" in prompts[0]
    fields = [f.name for f in taxonomy.fields]
    for field in fields:
        asked = [p for p in prompts[1:4] if f'dividing "{field}"' in p]
        assert len(asked) == 1 and "sub-fields" in asked[0]
        # the other fields are named, so the teacher can keep the branches apart
        assert all(other in asked[0] for other in fields if other != field)
    assert all("List the disciplines" in p for p in prompts[4:])
    # breadth first: every sub-field call comes after every field call
    assert all(f'dividing "{f.name}"' not in p for f in taxonomy.fields for p in prompts[4:])


def test_a_second_build_sends_nothing_and_writes_the_same_file(tmp_path, teacher):
    first = tmp_path / "a.yaml"
    build(small(teacher), first)
    sent = teacher.request_count
    again = build(small(teacher), tmp_path / "b.yaml", work_dir=tmp_path / "a.yaml.glan-build")
    assert teacher.request_count == sent
    assert again.sent == 0 and again.reused == 1 + 3 + 6
    assert (tmp_path / "b.yaml").read_text() == first.read_text()


def test_depth_two_and_a_language(tmp_path, teacher):
    out = tmp_path / "ko.yaml"
    build(small(teacher, depth=2, language="ko"), out)
    taxonomy = Taxonomy.load(out)
    assert all(len(d.path) == 2 for d in taxonomy.disciplines())
    prompts = [b["messages"][0]["content"] for b in teacher.requests]
    assert len(prompts) == 1 + 3
    assert all("Write the names and descriptions in Korean." in p for p in prompts)
    assert all("List the disciplines" in p for p in prompts[1:])
    assert "in Korean" in (taxonomy.description or "")


def test_repeated_names_across_branches_are_merged_first_one_kept():
    root = Draft(path=(), description=None)
    seen: dict[str, tuple[str, ...]] = {}
    merged: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    fields = merge_level(
        [root],
        [
            [
                {"name": "Science", "description": "d"},
                {"name": "1. Arts", "description": "d"},
                {"name": "science", "description": "again"},
                {"name": "  ", "description": "nameless"},
                {"name": "Skills", "description": "d"},
            ]
        ],
        cap=10,
        seen=seen,
        merged=merged,
    )
    assert [f.path for f in fields] == [("Science",), ("Arts",), ("Skills",)]
    assert fields[0].neighbours == ["Arts", "Skills"]
    children = merge_level(
        fields,
        [
            [{"name": "Music", "description": "d"}, {"name": "Physics", "description": "d"}],
            [{"name": "Music!", "description": "d"}, {"name": "Painting", "description": "d"}],
            [{"name": "Writing", "description": "d"}, {"name": "Coding", "description": "d"}],
        ],
        cap=1,  # only the first child of each is kept
        seen=seen,
        merged=merged,
    )
    assert [c.path for c in children] == [("Science", "Music"), ("Skills", "Writing")]
    assert merged == [
        (("science",), ("Science",)),
        (("Arts", "Music!"), ("Science", "Music")),
    ]
    # Arts lost its only child to the merge: it is left out rather than left empty
    for child in children:
        child.children = None
    assert prune(root) == [("Arts",)]
    assert [f.path for f in root.children or []] == [("Science",), ("Skills",)]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1. Mathematics", "Mathematics"),
        ("- Law", "Law"),
        ("3D printing", "3D printing"),
        ("Arts > Crafts", "Arts / Crafts"),
        ("  Marine\n biology ", "Marine biology"),
    ],
)
def test_drafted_names_are_cleaned(raw, expected):
    assert clean(raw) == expected


def test_failed_calls_leave_no_file_and_a_rerun_asks_only_them(tmp_path, teacher):
    out = tmp_path / "draft.yaml"
    teacher.always_fail("main sub-fields of", "500")
    result = build(small(teacher, max_retries=0), out)
    assert len(result.failed) == 3 and result.taxonomy is None
    assert not out.exists()

    teacher.reset()
    result = build(small(teacher), out)
    assert result.failed == [] and out.exists()
    # the fields were not asked again: 3 sub-field calls and 6 discipline calls
    assert teacher.request_count == 3 + 6
    assert result.reused == 1


def test_cli_build_resumes_after_kill_without_asking_twice(tmp_path, teacher):
    out = tmp_path / "killed.yaml"
    store = tmp_path / "killed.yaml.glan-build" / "glan.db"
    teacher.latency = 0.2
    args = [sys.executable, "-m", "glan", *build_args(out, teacher.base_url, "--concurrency", "2")]
    process = subprocess.Popen(
        args, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if store.exists():
            with sqlite3.connect(store) as db:
                try:
                    if db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] >= 3:
                        break
                except sqlite3.OperationalError:
                    pass
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists(), "the kill should land mid-build"
    with sqlite3.connect(store) as db:
        stored = {
            canonical_json(unpack_request(b)["body"])
            for (b,) in db.execute("SELECT request FROM calls")
        }
    assert 3 <= len(stored) < 1 + 3 + 9

    teacher.reset()
    teacher.latency = 0.0
    result = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [b for b in teacher.requests if canonical_json(b) in stored] == []
    assert teacher.request_count == 1 + 3 + 9 - len(stored)
    assert "wrote" in result.stdout and "unreviewed" in result.stdout
    assert "glan taxonomy review" in result.stdout

    # the same as a build that was never stopped
    fresh = tmp_path / "fresh.yaml"
    rerun = subprocess.run(
        [sys.executable, "-m", "glan", *build_args(fresh, teacher.base_url)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert fresh.read_text() == out.read_text()


def test_cli_build_errors_are_one_clear_line(tmp_path, teacher, cli):
    existing = tmp_path / "mine.yaml"
    existing.write_text("fields: [{name: Law}]\n")
    result = cli(*build_args(existing, teacher.base_url))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "exists" in result.stderr and "--force" in result.stderr
    assert existing.read_text() == "fields: [{name: Law}]\n"
    assert teacher.request_count == 0

    result = cli("taxonomy", "build", "--out", str(tmp_path / "x.yaml"))
    assert result.returncode == 1 and "OPENAI_API_KEY" in result.stderr

    result = cli(*build_args(tmp_path / "x.yaml", teacher.base_url, "--depth", "9"))
    assert result.returncode == 1 and "depth" in result.stderr
    assert "Traceback" not in result.stderr

    result = cli(*build_args(tmp_path / "x.yaml", "http://127.0.0.1:9/v1"))
    assert result.returncode == 1 and "cannot reach the teacher" in result.stderr
