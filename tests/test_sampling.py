"""Question-spec sampling: the paper's two strategies, and determinism."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from glan.config import GenerateConfig
from glan.items import Item
from glan.stages.questions import sample_spec, sample_specs

concepts = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=8, unique=True)
sessions = st.lists(
    st.builds(lambda c: {"title": "t", "key_concepts": c}, concepts), min_size=1, max_size=12
)


@given(sessions, st.integers(0, 2**32), st.floats(0, 1))
def test_specs_follow_the_papers_two_strategies(syllabus, seed, ratio):
    spec = sample_spec(syllabus, random.Random(seed), ratio)
    chosen = spec["sessions"]
    picked = spec["key_concepts"]
    assert len(set(picked)) == len(picked)
    if spec["type"] == "basic":
        assert len(chosen) == 1
        assert 1 <= len(picked) <= 5
        assert set(picked) <= set(syllabus[chosen[0]]["key_concepts"])
    else:
        first, second = chosen
        assert first < second
        assert 2 <= len(picked) <= 5
        a, b = set(syllabus[first]["key_concepts"]), set(syllabus[second]["key_concepts"])
        assert set(picked) <= a | b
        assert set(picked) & a and set(picked) & b  # spans both sessions


def test_ratio_zero_and_one():
    syllabus = [{"title": str(i), "key_concepts": ["a", "b", "c"]} for i in range(5)]
    rng = random.Random(0)
    assert {sample_spec(syllabus, rng, 0.0)["type"] for _ in range(50)} == {"basic"}
    assert {sample_spec(syllabus, rng, 1.0)["type"] for _ in range(50)} == {"challenging"}
    # one session cannot make a challenging question
    assert sample_spec(syllabus[:1], rng, 1.0)["type"] == "basic"


def subject(result):
    return Item(
        id="s1",
        kind="subject",
        parent_id="d1",
        root="d1",
        seq=0,
        data={"subject": "X", "subtopics": []},
        status="done",
        result=result,
    )


def test_spec_i_does_not_depend_on_how_many_are_asked():
    syllabus = {
        "introduction": "",
        "sessions": [{"title": str(i), "key_concepts": list("abcdef")} for i in range(10)],
    }
    few = sample_specs(GenerateConfig(questions_per_syllabus=3, seed=1), subject(syllabus))
    many = sample_specs(GenerateConfig(questions_per_syllabus=9, seed=1), subject(syllabus))
    assert few == many[:3]
    other_seed = sample_specs(GenerateConfig(questions_per_syllabus=9, seed=2), subject(syllabus))
    assert [n.data for n in other_seed] != [n.data for n in many]
    assert len({n.id for n in many}) == 9
