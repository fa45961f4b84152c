"""The report renders, contains each section and opens with no network; and curate, export and
report on a real small run from the fake teacher."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from conftest import read_rows
from glan import api
from glan.costs.prices import cost_by_stage
from glan.curation import CurateConfig, curate
from glan.llm.types import ChatRequest, ChatResponse
from glan.publish.export import export
from glan.publish.report import report
from glan.run.store import Store
from test_curation import BENCHMARK, english, good_pair, make_run, pair, write_benchmark

SECTIONS = ("taxonomy", "mix", "lengths", "concepts", "curation", "cost", "disciplines")


def crafted_run(directory: Path) -> Path:
    """12 good pairs in two disciplines, a syllabus each (10 key concepts, 4 of them used), a
    duplicate, a refusal and a benchmark leak; calls for three stages."""
    rng = random.Random(4)
    rows = []
    for i in range(12):
        discipline, field = ("Chemistry", "Natural Science") if i % 2 else ("Algebra", "Math")
        kind = "challenging" if i % 3 == 0 else "basic"
        concepts = [f"{discipline} concept {i // 2 % 4}"]  # 4 of each syllabus's 10 are used
        rows.append(
            good_pair(
                f"r{i:02d}",
                rng,
                discipline=discipline,
                field=field,
                subject=f"{discipline} 101",
                question_type=kind,
                key_concepts=concepts,
            )
        )
    rows.append(dict(rows[0], id="r99-dup"))
    rows.append(pair("r98-refusal", english(rng, 20, 25), "I'm sorry, I cannot answer that."))
    leak = "Tell me: " + " ".join(BENCHMARK[7]["question"].split()[:15])
    rows.append(pair("r97-leak", leak, english(rng, 30, 40)))
    syllabi = [
        {
            "field": field,
            "sub_field": None,
            "discipline": discipline,
            "subject": f"{discipline} 101",
            "level": "Undergraduate",
            "sessions": [
                {"title": f"S{s}", "key_concepts": [f"{discipline} concept {c}" for c in s_range]}
                for s, s_range in enumerate((range(0, 5), range(5, 10)))
            ],
        }
        for discipline, field in (("Algebra", "Math"), ("Chemistry", "Natural Science"))
    ]
    run = make_run(directory, rows, syllabi)
    store = Store.open(run)
    for n, (stage, model, tokens_in, tokens_out) in enumerate(
        [
            ("syllabus", "gpt-4o", 12_000, 30_000),
            ("question", "gpt-4o", 50_000, 20_000),
            ("answer", "gpt-4o-mini", 40_000, 90_000),
        ]
    ):
        request = ChatRequest(model=model, messages=({"role": "user", "content": f"call {n}"},))
        response = ChatResponse(
            text="x",
            prompt_tokens=tokens_in,
            completion_tokens=tokens_out,
            model=model,
            cached_tokens=tokens_in // 2 if stage == "question" else 0,
        )
        store.save_call(request, response, node_id=f"n{n}", stage=stage)
    store.commit()
    store.close()
    return run


def assert_offline(page: str) -> None:
    """Nothing is fetched when the page opens: no external script, style, font or image."""
    assert not re.search(r"<script[^>]+src=", page)
    assert "<link" not in page and "@import" not in page and "<img" not in page
    assert not re.search(r"url\(\s*['\"]?https?:", page)
    assert "Plotly.newPlot" in page and "plotly.js v" in page.lower()  # the library is inline


def test_report_contains_every_section_and_opens_offline(tmp_path):
    run = crafted_run(tmp_path / "run")
    curate(run, CurateConfig(benchmarks=[str(write_benchmark(tmp_path / "bench.jsonl"))]))

    path = report(run)
    assert path == run / "report.html"
    page = path.read_text(encoding="utf-8")
    assert_offline(page)
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    # one plotly figure per plot: treemap, disciplines, mix, two lengths, concepts, reasons, tokens
    assert page.count("Plotly.newPlot") == 8
    assert '"type":"treemap"' in page
    # the numbers
    assert '<div class="value">12</div><div class="label">pairs kept' in page
    assert "8 of 20 (40.0%)" in page
    assert page.count('<td class="num">40.0%</td>') == 2  # per discipline, in the table
    for reason in ("decontaminated", "refusal", "exact_duplicate"):
        assert f"<code>{reason}</code>" in page
    assert "bench.jsonl item 7" in page  # which benchmark item the leak matched
    assert "duplicate of r00" in page
    # tokens and cost per stage
    for stage, tokens in (("syllabus", "12,000"), ("question", "50,000"), ("answer", "90,000")):
        assert re.search(rf"<td>{stage}</td>.*?{tokens}", page)
    # the share of prompt tokens read from the provider's cache: 25,000 of the questions' 50,000
    assert re.search(r"<td>question</td>.*?<td class=\"num\">50%</td>", page)
    assert "25% of this run's prompt tokens were cached" in page  # of 102,000 in all
    store = Store.open(run)
    spent = cost_by_stage(store)
    store.close()
    assert f"{spent['answer']:,.2f}" in page and f"${sum(spent.values()):,.2f}" in page


def test_report_of_an_uncurated_run_says_so(tmp_path):
    run = crafted_run(tmp_path / "run")
    page = report(run, tmp_path / "elsewhere" / "r.html").read_text()
    assert "This run has not been curated" in page
    assert '<div class="value">15</div>' in page  # every pair counts
    assert_offline(page)


def test_report_of_an_empty_run_renders(tmp_path):
    Store.open(tmp_path).close()
    page = report(tmp_path).read_text()
    assert "No pairs yet." in page and "Plotly.newPlot" not in page


def test_cli_report(tmp_path, cli):
    run = crafted_run(tmp_path / "run")
    result = cli("report", str(run), "--out", str(tmp_path / "page.html"))
    assert result.returncode == 0, result.stderr
    assert f"wrote {tmp_path / 'page.html'}" in result.stdout
    assert (tmp_path / "page.html").stat().st_size > 1_000_000  # plotly.js is inside
    result = cli("report", str(tmp_path / "nothing"))
    assert result.returncode == 1
    assert "is not a glan run directory" in result.stderr


def test_curate_export_report_on_a_generated_run(tmp_path, teacher, make_config):
    run = tmp_path / "run"
    api.generate(make_config(), run, progress="none")
    generated = read_rows(run)
    assert len(generated) == 12
    question = generated[0]["messages"][0]["content"]
    benchmark = tmp_path / "leaked.jsonl"
    benchmark.write_text(json.dumps({"question": question}) + "\n", encoding="utf-8")

    result = curate(run, CurateConfig(benchmarks=[str(benchmark)]))
    assert result.rows_in == 12
    assert result.counts == {"decontaminated": 1}  # the fake teacher's text is otherwise clean

    parquet = export(run, to="parquet", test_per_discipline=1)
    assert parquet.splits == {"train": 9, "test": 2}
    table = pq.read_table(parquet.out / "train.parquet")
    assert generated[0]["id"] not in table.column("id").to_pylist()
    assert set(table.column("discipline").to_pylist()) == {"Mathematics", "Chemistry"}
    hf = export(run, to="hf", format="sharegpt")
    loaded = datasets.load_from_disk(str(hf.out))
    assert loaded["train"].num_rows == 11
    assert loaded["train"][0]["conversations"][0]["from"] == "human"

    page = report(run).read_text(encoding="utf-8")
    assert_offline(page)
    assert '<div class="value">11</div><div class="label">pairs kept' in page
    assert "leaked.jsonl item 0" in page
    for stage in ("subjects", "syllabus", "question", "answer"):
        assert f"<td>{stage}</td>" in page
