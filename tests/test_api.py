"""natfleet.api, the library face: the README's example runs, and the functions behave."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from natfleet import api
from natfleet.errors import UsageError
from natfleet.models import HostError, HostResult

REPO = Path(__file__).resolve().parent.parent


def test_the_readme_example_runs(monkeypatch):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(REPO)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    flows, snat, _max = lines[0].split()
    assert int(flows) > 0 and int(snat) > 0
    assert lines[1].startswith("tcp ") and " as " in lines[1]


def test_requests_are_checked_before_any_box_is_read():
    with pytest.raises(UsageError, match="unknown protocol"):
        api.list_request(proto="tpc")
    with pytest.raises(UsageError):
        api.list_request(nat=["masquerade"])
    assert api.summary_request(top=3, jobs=1) == {"mode": "summary", "top": 3, "jobs": 1}


def test_read_options_take_arguments_over_the_config(tmp_path):
    path = tmp_path / "natfleet.toml"
    path.write_text("[ssh]\ntimeout = 9\nparallel = 2\n[limits]\nlisting_mb = 3\n")
    config = api.load_config(str(path))
    options = api.read_options(config)
    assert (options.timeout, options.parallel, options.limits.for_mode("list")) == (9, 2, 3 << 20)
    options = api.read_options(config, timeout=4, parallel=5, max_answer_mb=7)
    assert (options.timeout, options.parallel, options.limits.for_mode("list")) == (4, 5, 7 << 20)


def test_read_fleet_keeps_a_bad_target_as_its_row(tmp_path):
    table = REPO / "tests/data/tables/lab-box.txt"
    targets, _ = api.resolve_targets(inputs=[str(table)])
    missing = api.Target(name="gone", kind="file", path=str(tmp_path / "gone"))
    results = api.read_fleet([*targets, missing], api.summary_request())
    assert isinstance(results[0], HostResult) and isinstance(results[1], HostError)
    assert results[1].kind == "input"
