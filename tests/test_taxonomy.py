"""Taxonomy: the bundled default, loading and validation, selection, review state, round-trip."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from glan.ids import stable_id
from glan.taxonomy import Discipline, Taxonomy, TaxonomyError, TaxonomyNode

# The 123 discipline names that could be read back from the paper's appendix (arXiv 2402.13064).
PAPER_DISCIPLINES = [
    "Advertising",
    "Aerospace industry",
    "Agriculture",
    "American history",
    "American politics",
    "Anthropology",
    "Applied mathematics",
    "Archaeology",
    "Architecture and design",
    "Astronomy",
    "Automotive industry",
    "Biblical studies",
    "Biology",
    "Business",
    "Chemical Engineering",
    "Chemistry",
    "Civil Engineering",
    "Clinical laboratory sciences",
    "Clinical neuropsychology",
    "Clinical physiology",
    "Communication studies",
    "Computer science",
    "Cultural industry",
    "Dance",
    "Dentistry",
    "Dermatology",
    "Divinity",
    "Earth science",
    "Economics",
    "Education",
    "Education industry",
    "Electric power industry",
    "Electrical Engineering",
    "Emergency medicine",
    "Energy industry",
    "Environmental studies and forestry",
    "Epidemiology",
    "European history",
    "Fashion",
    "Film",
    "Film industry",
    "Fishing industry",
    "Floral",
    "Food industry",
    "Foreign policy",
    "Geography",
    "Geriatrics",
    "Gynaecology",
    "Healthcare industry",
    "Hematology",
    "History",
    "Holistic medicine",
    "Hospitality industry",
    "Housing",
    "Industrial robot industry",
    "Infectious disease",
    "Insurance industry",
    "Intensive care medicine",
    "Internal medicine",
    "Journalism",
    "Languages and literature",
    "Law",
    "Leisure industry",
    "Library and museum studies",
    "Linguistics",
    "Logic",
    "Materials Science and Engineering",
    "Mathematics",
    "Mechanical Engineering",
    "Medical toxicology",
    "Medicine",
    "Military sciences",
    "Mining",
    "Music",
    "Music industry",
    "Nursing",
    "Nutrition",
    "Obstetrics",
    "Ophthalmology",
    "Otolaryngology",
    "Pathology",
    "Pediatrics",
    "Performing arts",
    "Petroleum industry",
    "Pharmaceutical industry",
    "Pharmaceutical sciences",
    "Philosophy",
    "Physics",
    "Political science",
    "Prehistory",
    "Preventive medicine",
    "Psychiatry",
    "Psychology",
    "Public administration",
    "Public health",
    "Public policy",
    "Pulp and paper industry",
    "Radiology",
    "Real estate industry",
    "Religious Studies",
    "Retail industry",
    "Semiconductor industry",
    "Sexology",
    "Shipbuilding industry",
    "Social work",
    "Sociology",
    "Steel industry",
    "Surgery",
    "Systems science",
    "Telecommunications industry",
    "Television",
    "Textile industry",
    "Theatre",
    "Theology",
    "Tobacco industry",
    "Transport industry",
    "Transportation",
    "Urology",
    "Veterinary medicine",
    "Video game industry",
    "Visual arts",
    "Water industry",
    "Wood industry",
]

PAPER_COUNTS = {
    "Humanities": 20,
    "Social Science": 10,
    "Natural Science": 5,
    "Applied Science": 53,
    "Formal Science": 4,
    "Industry-Manufacturing": 16,
    "Industry-Services": 15,
    "Industry-Agriculture": 3,
}

SMALL = """\
name: small
fields:
  - name: Humanities
    description: People and culture.
    children:
      - name: History
        children:
          - name: American history
          - name: European history
            description: From antiquity to today.
      - name: Philosophy
  - name: Formal Science
    children:
      - name: Mathematics
      - name: Logic
  - name: Applied Science
    children:
      - name: Engineering
        children:
          - name: Computing
            children:
              - name: Computer science
      - name: Philosophy
"""


@pytest.fixture(scope="module")
def default() -> Taxonomy:
    return Taxonomy.load()


@pytest.fixture
def small() -> Taxonomy:
    return Taxonomy.from_yaml(SMALL)


def paths(disciplines: list[Discipline]) -> list[str]:
    return [d.path_str for d in disciplines]


def problem(text: str) -> str:
    """The message of the TaxonomyError that loading ``text`` raises."""
    with pytest.raises(TaxonomyError) as info:
        Taxonomy.from_yaml(text, source="tax.yaml")
    message = str(info.value)
    assert message.startswith("tax.yaml: ")
    return message


# ------------------------------------------------------------------------------ bundled default


def test_default_loads_with_126_disciplines(default: Taxonomy) -> None:
    assert default.name == "glan-default"
    assert len(default.disciplines()) == 126
    assert [f.name for f in default.fields] == list(PAPER_COUNTS)
    assert all(f.description for f in default.fields)
    assert default.unreviewed() == []


def test_default_counts_per_field(default: Taxonomy) -> None:
    assert Counter(d.field for d in default.disciplines()) == PAPER_COUNTS


def test_default_holds_every_paper_discipline(default: Taxonomy) -> None:
    assert len(PAPER_DISCIPLINES) == len(set(PAPER_DISCIPLINES)) == 123
    names = [d.name for d in default.disciplines()]
    assert len(names) == len(set(names)), "a discipline name repeats in the default"
    missing = sorted(set(PAPER_DISCIPLINES) - set(names))
    assert missing == []
    assert len(set(names) - set(PAPER_DISCIPLINES)) == 3  # the three added disciplines


def test_default_sub_fields_are_not_named_like_disciplines(default: Taxonomy) -> None:
    leaves = {d.name.casefold() for d in default.disciplines()}
    inner = [path for path, node, _ in default.walk() if not node.is_leaf]
    assert [p for p in inner if p[-1].casefold() in leaves] == []
    assert ("Applied Science", "Medicine and health", "Dentistry") in {
        d.path for d in default.disciplines()
    }


def test_default_ids_stable_and_distinct(default: Taxonomy) -> None:
    disciplines = default.disciplines()
    ids = [d.id for d in disciplines]
    assert len(set(ids)) == 126
    assert ids == [d.id for d in Taxonomy.load().disciplines()]
    first = disciplines[0]
    assert first.id == stable_id("discipline", *first.path)


def test_load_by_path(tmp_path: Path, default: Taxonomy) -> None:
    file = tmp_path / "mine.yaml"
    file.write_text(default.to_yaml(), encoding="utf-8")
    assert Taxonomy.load(file) == default
    assert Taxonomy.load(str(file)) == default


# -------------------------------------------------------------------------------- disciplines


def test_disciplines_in_file_order_with_fields(small: Taxonomy) -> None:
    disciplines = small.disciplines()
    assert paths(disciplines) == [
        "Humanities > History > American history",
        "Humanities > History > European history",
        "Humanities > Philosophy",
        "Formal Science > Mathematics",
        "Formal Science > Logic",
        "Applied Science > Engineering > Computing > Computer science",
        "Applied Science > Philosophy",
    ]
    american, european, philosophy = disciplines[:3]
    assert american == Discipline(
        field="Humanities",
        sub_field="History",
        name="American history",
        path=("Humanities", "History", "American history"),
        description=None,
    )
    assert european.description == "From antiquity to today."
    assert philosophy.sub_field is None
    assert disciplines[5].sub_field == "Engineering > Computing"
    assert disciplines[5].field == "Applied Science"


def test_same_name_in_two_places_has_two_ids(small: Taxonomy) -> None:
    both = [d for d in small.disciplines() if d.name == "Philosophy"]
    assert len(both) == 2 and both[0].id != both[1].id


def test_top_level_leaf_is_its_own_field() -> None:
    taxonomy = Taxonomy.from_yaml("fields:\n  - name: Cooking\n")
    [cooking] = taxonomy.disciplines()
    assert (cooking.field, cooking.sub_field, cooking.path) == ("Cooking", None, ("Cooking",))


def test_names_are_stripped_and_numbers_read_as_text() -> None:
    taxonomy = Taxonomy.from_yaml(
        "fields:\n  - name: ' Years '\n    children:\n      - name: 1984\n"
    )
    assert paths(taxonomy.disciplines()) == ["Years > 1984"]


# ------------------------------------------------------------------------------------- select


def test_select_none_is_all(small: Taxonomy) -> None:
    assert small.select(None) == small.disciplines()


@pytest.mark.parametrize("names", [[], [""], ["", "  "], "  "])
def test_an_empty_selection_is_an_error_not_everything(small: Taxonomy, names) -> None:
    """Issue 10: ``--disciplines "$EMPTY"`` once selected the whole taxonomy (56,380 pairs)."""
    with pytest.raises(TaxonomyError, match="selection of disciplines is empty"):
        small.select(names)


def test_blank_names_beside_real_ones_are_ignored(small: Taxonomy) -> None:
    assert paths(small.select(["Logic", " ", ""])) == ["Formal Science > Logic"]


def test_select_by_leaf_name(small: Taxonomy) -> None:
    assert paths(small.select(["Logic"])) == ["Formal Science > Logic"]


def test_select_by_full_path(small: Taxonomy) -> None:
    assert paths(small.select(["Humanities > Philosophy"])) == ["Humanities > Philosophy"]
    assert paths(small.select(["humanities>history >american history"])) == [
        "Humanities > History > American history"
    ]


def test_select_by_inner_node(small: Taxonomy) -> None:
    assert paths(small.select(["Humanities"])) == [
        "Humanities > History > American history",
        "Humanities > History > European history",
        "Humanities > Philosophy",
    ]
    assert paths(small.select(["Computing"])) == [
        "Applied Science > Engineering > Computing > Computer science"
    ]
    assert paths(small.select(["Applied Science > Engineering"])) == [
        "Applied Science > Engineering > Computing > Computer science"
    ]


def test_select_case_and_whitespace_insensitive(small: Taxonomy) -> None:
    assert paths(small.select(["  MATHEMATICS ", "european   HISTORY"])) == [
        "Humanities > History > European history",
        "Formal Science > Mathematics",
    ]


def test_select_bare_name_in_two_places_selects_both(small: Taxonomy) -> None:
    assert paths(small.select(["philosophy"])) == [
        "Humanities > Philosophy",
        "Applied Science > Philosophy",
    ]


def test_select_dedups_and_keeps_file_order(small: Taxonomy) -> None:
    selected = small.select(["Logic", "Formal Science", "American history", "Humanities > History"])
    assert paths(selected) == [
        "Humanities > History > American history",
        "Humanities > History > European history",
        "Formal Science > Mathematics",
        "Formal Science > Logic",
    ]


def test_select_a_single_string_is_one_name(small: Taxonomy) -> None:
    assert paths(small.select("Logic")) == ["Formal Science > Logic"]  # type: ignore[arg-type]


def test_select_unknown_suggests_close_matches(default: Taxonomy) -> None:
    with pytest.raises(TaxonomyError) as info:
        default.select(["Mathmatics"])
    message = str(info.value)
    assert message.startswith("unknown discipline 'Mathmatics' (did you mean: Mathematics")
    assert message.endswith("?)")


def test_select_lists_every_unknown_name(small: Taxonomy) -> None:
    with pytest.raises(TaxonomyError) as info:
        small.select(["Logic", "Astrology", "Humanities > Histry"])
    message = str(info.value)
    assert "unknown discipline 'Astrology'" in message
    assert "unknown discipline 'Humanities > Histry' (did you mean: Humanities > History" in message
    assert len(info.value.problems) == 2


def test_select_unknown_without_close_match(small: Taxonomy) -> None:
    with pytest.raises(TaxonomyError, match=r"^unknown discipline 'Zzzz'$"):
        small.select(["Zzzz"])


# ------------------------------------------------------------------------------ review state

REVIEWED = """\
fields:
  - name: Humanities
    children:
      - name: History
        review: {state: kept, votes: {alice: keep, bob: keep}}
        children:
          - name: American history
          - name: Folk history
            review: {state: unreviewed}
      - name: Astrology
        review:
          state: dropped
          votes: {alice: drop}
        children:
          - name: Horoscopes
          - name: Natal charts
            review: {state: unreviewed}
      - name: Folk dance
        review: {state: unreviewed, votes: {alice: keep}}
"""


def test_dropped_subtree_excluded() -> None:
    taxonomy = Taxonomy.from_yaml(REVIEWED)
    assert paths(taxonomy.disciplines()) == [
        "Humanities > History > American history",
        "Humanities > History > Folk history",
        "Humanities > Folk dance",
    ]
    with pytest.raises(TaxonomyError, match="'Horoscopes' has no disciplines left"):
        taxonomy.select(["Horoscopes"])
    with pytest.raises(TaxonomyError, match="'astrology' has no disciplines left"):
        taxonomy.select([" astrology "])


def test_unreviewed_lists_waiting_nodes_outside_dropped_subtrees() -> None:
    taxonomy = Taxonomy.from_yaml(REVIEWED)
    assert taxonomy.unreviewed() == [
        ("Humanities", "History", "Folk history"),
        ("Humanities", "Folk dance"),
    ]


def test_review_state_on_the_model() -> None:
    taxonomy = Taxonomy.from_yaml(REVIEWED)
    history = taxonomy.fields[0].children[0]  # type: ignore[index]
    assert history.state == "kept"
    assert history.review is not None and history.review.votes == {"alice": "keep", "bob": "keep"}
    assert taxonomy.fields[0].state == "kept"  # no review: human-written


# --------------------------------------------------------------------------------- round-trip


@pytest.mark.parametrize("text", [SMALL, REVIEWED])
def test_to_yaml_round_trips(text: str) -> None:
    taxonomy = Taxonomy.from_yaml(text)
    again = Taxonomy.from_yaml(taxonomy.to_yaml())
    assert again == taxonomy
    assert again.to_yaml() == taxonomy.to_yaml()
    assert again.disciplines() == taxonomy.disciplines()


def test_default_round_trips(default: Taxonomy) -> None:
    assert Taxonomy.from_yaml(default.to_yaml()) == default


def test_to_yaml_keeps_descriptions_and_review() -> None:
    text = Taxonomy.from_yaml(REVIEWED + "    description: The human side.\n").to_yaml()
    assert "description: The human side." in text
    assert "votes:" in text and "state: dropped" in text
    assert "children: []" not in text


def test_programmatic_construction_is_validated() -> None:
    with pytest.raises(ValueError, match="has no children"):
        Taxonomy(fields=[TaxonomyNode(name="Empty", children=[])])
    taxonomy = Taxonomy(
        fields=[TaxonomyNode(name="Science", children=[TaxonomyNode(name="Physics")])]
    )
    assert paths(taxonomy.disciplines()) == ["Science > Physics"]


# --------------------------------------------------------------------------------- validation


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(TaxonomyError, match=r"nope\.yaml: taxonomy file not found"):
        Taxonomy.load(missing)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(TaxonomyError, match="is a directory"):
        Taxonomy.load(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    file = tmp_path / "latin1.yaml"
    file.write_bytes("fields:\n  - name: Caf\xe9\n".encode("latin-1"))
    with pytest.raises(TaxonomyError, match=r"latin1\.yaml: cannot read taxonomy file: not UTF-8"):
        Taxonomy.load(file)


def test_not_yaml_reports_line() -> None:
    message = problem("fields:\n  - name: History\n    children: [a, b\n  - name: x\n")
    assert "not valid YAML at line 4" in message


def test_duplicate_yaml_key_reports_line() -> None:
    message = problem("fields:\n  - name: History\n    name: Geography\n")
    assert "not valid YAML at line 3" in message and "duplicate key 'name'" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty"),
        ("- name: History\n", "must be a mapping with a 'fields' list, not a list"),
        ("just text\n", "must be a mapping with a 'fields' list, not text 'just text'"),
        ("name: x\n", "no 'fields' list at the top level"),
        ("fields: History\n", "'fields' must be a list of nodes"),
        ("fields: []\n", "'fields' is empty"),
        ("feilds: []\nfields:\n  - name: A\n", "top level: unknown key 'feilds'"),
    ],
)
def test_top_level_problems(text: str, expected: str) -> None:
    assert expected in problem(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "fields:\n  - name: Humanities\n    children:\n      - description: no name\n",
            "Humanities > <child 1>: node without a 'name'",
        ),
        (
            "fields:\n  - name: Humanities\n    children:\n      - name: '   '\n",
            "Humanities > <child 1>: empty name",
        ),
        (
            "fields:\n  - name: Humanities\n    children:\n      - name: ''\n",
            "Humanities > <child 1>: empty name",
        ),
        (
            "fields:\n  - name: A\n    children:\n      - name: no\n",
            "A > <child 1>: 'name' must be text, not true/false",
        ),
        ("fields:\n  - children:\n      - name: X\n", "<field 1>: node without a 'name'"),
        (
            "fields:\n  - name: Humanities\n    children:\n      - History\n",
            "Humanities > <child 1>: a node must be a mapping with a 'name', not text 'History' "
            "(write '- name: History')",
        ),
        (
            "fields:\n  - name: Humanities\n    childern:\n      - name: History\n",
            "Humanities: unknown key 'childern' (did you mean 'children'?",
        ),
        (
            "fields:\n  - name: A\n    children:\n      - name: B\n"
            "        review: {state: maybe}\n",
            "A > B: review state 'maybe' is not allowed (allowed: unreviewed, kept, dropped)",
        ),
        (
            "fields:\n  - name: A\n    children:\n      - name: B\n"
            "        review: {state: kept, votes: {alice: yes please}}\n",
            "A > B: vote 'yes please' of reviewer 'alice' is not allowed (allowed: keep, drop)",
        ),
        (
            "fields:\n  - name: A\n    children:\n      - name: B\n        review: {stat: kept}\n",
            "A > B: review: unknown key 'stat'",
        ),
        (
            "fields:\n  - name: A\n    children:\n      - name: B\n        review: kept\n",
            "A > B: 'review' must be a mapping",
        ),
        (
            "fields:\n  - name: A\n    children:\n      - name: B\n        children: []\n"
            "      - name: C\n",
            "A > B: has no children",
        ),
        (
            "fields:\n  - name: A\n    children:\n      - name: B\n        children:\n"
            "      - name: C\n",
            "A > B: has no children",
        ),
        (
            "fields:\n  - name: A\n    children:\n      - name: B\n        children: {name: C}\n",
            "A > B: 'children' must be a list of nodes",
        ),
        (
            "fields:\n  - name: A\n    children:\n      - name: History\n      - name: history\n",
            "A: two children named 'History' and 'history'",
        ),
        ("fields:\n  - name: A\n  - name: A\n", "top level: two fields named 'A'"),
        (
            "fields:\n  - name: A\n    children:\n      - name: B > C\n",
            "A > B > C: a name must not contain '>'",
        ),
        (
            "fields:\n  - name: A\n    children:\n      - name: B\n        description: [x]\n",
            "A > B: 'description' must be text",
        ),
        (
            "fields:\n  - name: A\n    review: {state: dropped}\n    children:\n      - name: B\n",
            "no disciplines: every discipline is dropped",
        ),
    ],
)
def test_node_problems_name_the_node(text: str, expected: str) -> None:
    assert expected in problem(text)


def test_all_problems_are_listed() -> None:
    text = """\
fields:
  - name: Humanities
    children:
      - name: History
        children: []
      - name: Music
        colour: blue
      - name: music
      - name: Theatre
        review: {state: maybe, votes: {bob: perhaps}}
  - name: Science
    children:
      - name: ''
"""
    with pytest.raises(TaxonomyError) as info:
        Taxonomy.from_yaml(text, source="mine.yaml")
    message = str(info.value)
    assert message.startswith("mine.yaml: invalid taxonomy (6 problems):\n  - ")
    for expected in [
        "Humanities > History: has no children",
        "Humanities > Music: unknown key 'colour'",
        "Humanities: two children named 'Music' and 'music'",
        "Humanities > Theatre: review state 'maybe' is not allowed",
        "Humanities > Theatre: vote 'perhaps' of reviewer 'bob' is not allowed",
        "Science > <child 1>: empty name",
    ]:
        assert expected in message
    assert len(info.value.problems) == 6


def test_error_from_file_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("fields:\n  - name: A\n    children: []\n", encoding="utf-8")
    with pytest.raises(TaxonomyError) as info:
        Taxonomy.load(file)
    assert str(info.value) == f"{file}: invalid taxonomy: A: has no children " + (
        "(a discipline must omit 'children')"
    )
    assert info.value.source == str(file)


def test_taxonomy_error_is_a_value_error() -> None:
    assert issubclass(TaxonomyError, ValueError)
