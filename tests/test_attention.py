"""The ``attention`` setting (tracker/engine/attention.py): parsing, performance-only keys, one-line errors for a name
diffusers does not know or a backend this machine cannot run, and real runs of the tiny model on this CPU."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tracker.experiment import plan, parse as spec

from test_speed import BASE as SPEED_BASE

BASE = SPEED_BASE.replace("name: fast", "name: attn") + "device: cpu\n"


def _keys(text: str) -> list[str]:
    return [r.key for r in plan.expand(spec.parse(text, "attn.yaml")).runs]


def test_attention_values_normalize_and_default():
    parse = lambda extra: spec.parse(BASE + extra, "attn.yaml").settings.attention  # noqa: E731
    assert parse("") == "default"
    assert parse("attention: ' Native '\n") == "native"
    assert parse("attention: _native_math\n") == "_native_math"


def test_attention_is_performance_only_unless_on_an_axis():
    assert _keys(BASE + "attention: native\n") == _keys(BASE)
    on_axis = _keys(BASE + "attention: [native, _native_math]\n")
    assert len(set(on_axis)) == 2 and _keys(BASE)[0] not in on_axis


def test_a_malformed_value_is_one_line_at_parse_time(cli, write_yaml):
    res = cli("expand", write_yaml(BASE + "attention: 'fl ash'\n"))
    assert res.code == 2 and "attention" in res.err and "'fl ash'" in res.err
    assert len(res.err.strip().splitlines()) == 1


@pytest.mark.parametrize("value, message", [
    ("fast", "is not an attention backend of diffusers"),  # a name diffusers does not know
    ("flash", "does not go through diffusers' attention dispatcher"),  # the tiny UNet's processors call SDPA
    ("_native_cudnn", "does not run on device 'cpu'"),  # a torch kernel this CPU does not have
])
def test_a_backend_that_cannot_run_here_is_one_line_naming_file_field_and_value(cli, write_yaml, tmp_path, value,
                                                                                 message):
    path = write_yaml(BASE + f"attention: {value}\n")
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 2 and message in res.err, res.err
    assert str(path.name) in res.err and "attention" in res.err and repr(value) in res.err
    assert "Traceback" not in res.err and len(res.err.strip().splitlines()) == 1
    db = tmp_path / "home" / "tracker.db"
    if db.exists():  # checked before anything is recorded
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from runs").fetchone() == (0,)
    assert not (tmp_path / "home" / "cache").exists()  # inductor's cache folder only for a sweep that compiles


def test_runs_record_the_backend_shown_in_efficiency_and_mlflow_params(cli, write_yaml, tmp_path):
    from tracker.mlflow.mapping import child_params
    from tracker.report.efficiency import efficiency
    from tracker.store.runstore import Store

    text = BASE + "attention: [default, native, _native_math]\n"
    res = cli("run", write_yaml(text), "--no-mlflow", "-q")
    assert res.code == 0 and "3 done" in res.out, (res.out, res.err)
    home = tmp_path / "home"
    with Store.open(f"sqlite:///{home / 'tracker.db'}", home=home) as store:
        records = store.runs("attn")
    assert sorted(r.attention for r in records) == ["_native_math", "default", "native"]
    assert {r.settings().attention for r in records} == {"default", "native", "_native_math"}
    rows = efficiency(records)
    assert {dict(row.config)["attention"] for row in rows} == {"default", "native", "_native_math"}
    assert any("attention _native_math" in row.label for row in rows)
    assert {child_params(r)["attention"] for r in records} == {"default", "native", "_native_math"}
    shown = json.loads(cli("show", records[0].key, "--json").out)
    assert shown["attention"] == records[0].attention
