"""One sweep driver (tracker/sweep/driver.py): ``tracker run FILE``, ``tracker.run(path)`` and ``tracker run FILE
--workers 2`` parse the experiment file once in this process and plan once, then hand the plan to their
executor. A ``--workers`` child is a ``tracker run`` of the same file in its own process and parses it there
(counted here: the parent's parses only)."""

from __future__ import annotations

import pytest

import tracker
from tracker.experiment import parse as spec

ONE_RUN = """\
name: once
model: tiny
prompt: "a {{ animal }}"
axes:
  animal: [cat, dog]
seeds: [0]
steps: 1
batch_size: 1
"""


@pytest.fixture
def parses(monkeypatch):
    """Every parse of an experiment's text in this process (parse_file, the API and the report all call it)."""
    seen: list[str] = []
    real = spec.parse

    def counting(text, path="<experiment>", *args, **kwargs):
        seen.append(path)
        return real(text, path, *args, **kwargs)

    monkeypatch.setattr(spec, "parse", counting)
    return seen


def test_the_counter_sees_a_parse(parses, write_yaml):
    spec.parse_file(write_yaml(ONE_RUN))
    assert len(parses) == 1


def test_a_dry_run_parses_the_file_once(cli, write_yaml, parses):
    path = write_yaml(ONE_RUN)
    res = cli("run", path, "--dry-run")
    assert res.code == 0, res.err
    assert "2 of 2 runs would be generated" in res.out
    assert parses == [str(path)]


@pytest.mark.slow
def test_tracker_run_parses_the_file_once(cli, write_yaml, parses):
    path = write_yaml(ONE_RUN)
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.err
    assert parses == [str(path)]
    assert res.out.startswith("once: 2 done, 0 skipped (already done), 0 failed of 2 planned")


@pytest.mark.slow
def test_the_api_run_parses_the_file_once(write_yaml, parses, tmp_path):
    path = write_yaml(ONE_RUN)
    result = tracker.run(path, home=tmp_path / "home", mlflow=False, progress=False)
    assert result.done == 2
    assert parses == [str(path)]


@pytest.mark.slow
def test_a_pool_parses_the_file_once_in_the_parent(cli, write_yaml, parses):
    path = write_yaml(ONE_RUN)
    res = cli("run", path, "--workers", "2", "--no-mlflow", "-q")
    assert res.code == 0, res.err
    assert "2 done, 0 failed, 0 not done of 2 planned by 2 workers" in res.out
    assert parses == [str(path)]
