"""No surprise bills (issue 10, item 5): an empty selection is an error, a spending cap stops a
run cleanly before it would pass it, and a run of the whole taxonomy asks first."""

from __future__ import annotations

import pytest

from conftest import API_KEY
from inprocess import run_glan


@pytest.mark.parametrize("command", ["generate", "estimate"])
@pytest.mark.parametrize("value", ["", "   ", " , ,"])
def test_an_empty_disciplines_option_is_an_error(tmp_path, teacher, command, value):
    """``--disciplines "$UNSET"`` once selected all 126 disciplines (56,380 pairs, $25)."""
    args = [command, "--out", str(tmp_path / "run"), "--disciplines", value]
    if command == "generate":
        args += ["--base-url", teacher.base_url, "--api-key", API_KEY]
    result = run_glan(*args)
    assert result.returncode == 1
    assert "--disciplines is" in result.stderr and "leave the option out" in result.stderr
    assert teacher.request_count == 0
    assert not (tmp_path / "run").exists()


def test_an_empty_disciplines_list_in_a_config_file_is_an_error(tmp_path, teacher):
    config = tmp_path / "run.yaml"
    config.write_text("disciplines: []\n", encoding="utf-8")
    result = run_glan("estimate", "--config", str(config))
    assert result.returncode == 1
    assert "selection of disciplines is empty" in result.stderr
