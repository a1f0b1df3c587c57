"""The Python API end to end on the real tiny pipeline: run, query, grid, report, reproduce; a pipeline
object the user built; readable results; and ``import tracker`` stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import tracker
from conftest import REPO
from tracker.errors import NotFoundError, SpecError, TrackerError

PROMPT = "portrait photo of {{ age }} warrior chief"
AGES = {"old": "a old", "young": "a <b>young</b>"}  # markup in a label must come out escaped


def small(**changes):
    fields = dict(name="small", model="tiny", axes={"age": AGES}, seeds=[0, 1], scheduler="DPMSolverMultistep",
                  steps=2, grid={"rows": "age", "cols": "seed"})
    fields.update(changes)
    return tracker.Experiment(PROMPT, **fields)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    home = tmp_path_factory.mktemp("api") / "home"
    result = tracker.run(small(), home=home, mlflow=False, progress=False)
    return home, result


def test_experiment_three_ways_are_one(tmp_path):
    yaml_file = tmp_path / "small.yaml"
    yaml_file.write_text(small().source)
    from_yaml = tracker.Experiment.from_yaml(yaml_file)
    from_dict = tracker.Experiment.from_dict(small().to_dict())
    keys = [r.key for r in small().plan().runs]
    assert len(keys) == 4 == len(small())
    assert [r.key for r in from_yaml.plan().runs] == keys == [r.key for r in from_dict.plan().runs]
    assert small().axes == {"age": ("old", "young"), "seed": ("0", "1")}
    assert [r.key for r in small().replace(steps=3).plan().runs] != keys
    assert repr(small()) == "<Experiment small: axes age (2), seed (2)>"


def test_bad_experiments_raise_one_line_errors():
    with pytest.raises(SpecError, match=r"<experiment small>: steps: must be a positive integer but is 0"):
        small(steps=0)
    with pytest.raises(SpecError, match="name: is required"):
        tracker.Experiment.from_dict({"prompt": "a cat"})
    with pytest.raises(SpecError, match="unknown field 'guidance'"):
        small(guidance=3)


def test_run_query_grid_report_reproduce(swept, tmp_path):
    home, result = swept
    assert (result.planned, result.done, result.failed, result.ok) == (4, 4, 0, True)
    assert [r.labels for r in result.runs] == [{"age": a, "seed": s} for a in ("old", "young") for s in ("0", "1")]
    run = result.runs[0]
    assert run.status == "done" and run.image_path.is_file() and run.image.size == (64, 64)
    assert run.recipe["key"] == run.key and run.recipe["scheduler"] == "DPMSolverMultistepScheduler"
    assert run.timings["seconds"] > 0 and run.timings["peak_memory_bytes"] > 0
    assert not run.made_with_user_pipeline

    ws = tracker.open(home)
    assert [e.name for e in ws.experiments()] == ["small"]
    young = ws.runs("small", where={"age": "young", "seed": 1})
    assert len(young) == 1 and young[0].prompt == "portrait photo of a <b>young</b> warrior chief"
    assert ws.run(young[0].key[:8]).key == young[0].key
    assert len(ws.runs("small", status="failed")) == 0
    with pytest.raises(TrackerError, match="has no label 'middle'"):
        ws.runs("small", where={"age": "middle"})
    with pytest.raises(NotFoundError, match="no experiment 'nope'"):
        ws.runs("nope")

    df = result.runs.to_pandas()
    assert list(df["key"]) == result.runs.keys and set(df["age"]) == {"old", "young"}
    assert (df["seconds"] > 0).all() and df["image"].notna().all()

    grid = ws.grid("small")
    from PIL import Image

    assert isinstance(grid, Image.Image) and grid.width > 2 * 64 and grid.height > 2 * 64
    page = grid._repr_html_()
    assert page.count('src="data:image/png;base64,') == 4 and "http" not in page
    assert "a &lt;b&gt;young&lt;/b&gt;" not in page and "<b>young" not in page  # labels, escaped
    assert 'alt="young · seed: 1"' in page and ">seed: 0<" in page

    index = ws.report("small", out=tmp_path / "report")
    assert index.is_file() and "warrior chief" in index.read_text()

    again = ws.reproduce(run.key)
    assert again.drift.identical, again.drift.describe()


def test_results_read_well(swept):
    home, result = swept
    run = result.runs[0]
    assert repr(run).startswith(f"<Run {run.key} done [age=old seed=0] DPMSolverMultistep 2 steps, 64x64, ")
    text = repr(result.runs)
    assert text.splitlines()[0] == "<RunList: 4 runs>" and "young" in text and run.key in text
    assert repr(result).startswith("<SweepResult small: 4 done, 0 skipped, 0 failed of 4 planned in ")
    html = result.runs._repr_html_()
    assert html.count("data:image/png;base64,") == 4 and "a &lt;b&gt;young&lt;/b&gt;" in html
    assert "<b>young" not in html
    assert repr(tracker.open(home)) == f"<tracker workspace {home.resolve()}>"


def test_import_tracker_stays_light():
    code = ("import sys, tracker\nassert tracker.__version__\n"
            "print([m for m in ('torch', 'diffusers', 'mlflow', 'sqlalchemy', 'pandas', 'PIL') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"
    assert "run" in dir(tracker) and callable(tracker.run) and tracker.Experiment.__module__ == "tracker.api"
    with pytest.raises(AttributeError):
        tracker.nothing_here


THREADS_SCRIPT = r"""
import contextlib, json, sys, threading
import accelerate, torch
import tracker

home, broken = sys.argv[1], sys.argv[2]
def globals_now():
    return (torch.nn.Module.register_parameter, torch.nn.Module.register_buffer, torch.empty,
            torch.nn.init.normal_, torch.get_default_dtype())
original = globals_now()

# The fault injected: make the two threads' model loads overlap for sure (where nothing serializes them), the
# second one finishing last, as a notebook's two threads do some of the time. diffusers enters accelerate's
# empty-weights context (which patches nn.Module.register_parameter) for each model it loads.
real, mine = accelerate.init_empty_weights, threading.local()
state = {"meet": threading.Barrier(2), "first_out": threading.Event(), "order": []}

@contextlib.contextmanager
def overlapping(*args, **kwargs):
    overlapped = first = False
    with real(*args, **kwargs):
        if not getattr(mine, "waited", False):  # each thread's first model only
            mine.waited = True
            state["order"].append(threading.get_ident())
            first = state["order"][0] == threading.get_ident()
            try:
                state["meet"].wait(timeout=2)  # both inside at once (never, where loads are serialized)
                overlapped = True
            except threading.BrokenBarrierError:
                pass
        yield
        if overlapped and not first:
            state["first_out"].wait(timeout=10)
    if overlapped and first:
        state["first_out"].set()

accelerate.init_empty_weights = overlapping

def exp(n, model="tiny"):
    return tracker.Experiment("a {{ a }} cat", name=f"t{n}", model=model, axes={"a": ["red", "blue"]}, seeds=[0],
                              steps=2, width=32, height=32)

def both(models, first_name):
    out, barrier = {}, threading.Barrier(len(models))
    mine.waited = True  # the main thread loads nothing here
    def go(n, model):
        barrier.wait()  # both load their model at once
        try:
            r = tracker.run(exp(first_name + n, model), home=home, mlflow=False, progress=False)
            out[n] = [r.done, r.failed]
        except Exception as e:
            out[n] = type(e).__name__ + ": " + str(e)[:300]
    threads = [threading.Thread(target=go, args=(n, m)) for n, m in enumerate(models)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return [out[n] for n in range(len(models))]

two = both(["tiny", "tiny"], 0)
state.update(meet=threading.Barrier(2), first_out=threading.Event(), order=[])
with_failure = both([broken, "tiny"], 10)  # one load fails while the other goes on
after = tracker.run(exp(99), home=home, mlflow=False, progress=False)
print(json.dumps({"two": two, "with_failure": with_failure, "after": [after.done, after.failed],
                  "globals_unchanged": globals_now() == original}))
"""


@pytest.mark.slow
def test_two_threads_running_at_once_on_one_workspace_both_succeed_and_leave_no_global_patch(tmp_path):
    """``tracker.run()`` from two threads at once (a notebook's): loading a model patches library globals
    (accelerate's empty-weights context swaps ``nn.Module.register_parameter``), so two loads at once used to
    fail both ("Unsupported device type 'meta'") and leave the patch in place for every later run. Loads are
    serialized and a failed load leaves nothing changed. Real threads in a fresh process."""
    import json
    import os
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(REPO / "tracker" / "models" / "tiny", broken)
    unet = next((broken / "unet").glob("*.safetensors"))
    unet.write_bytes(unet.read_bytes()[:4096])  # a truncated weights file: loading fails part-way
    proc = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(tmp_path / "home"), str(broken)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["two"] == [[2, 0], [2, 0]], out
    failed, ok = out["with_failure"]
    assert isinstance(failed, str) and "ModelError" in failed and ok == [2, 0], out
    assert out["after"] == [2, 0] and out["globals_unchanged"], out


@pytest.mark.parametrize("changes, field, says", [
    ({"steps": object()}, "steps", "must be text, a number, a list or a mapping but is a object"),
    ({"axes": {"age": ["old", b"young"]}}, "axes.age[1]", "is a bytes"),
    ({"seeds": {1, 2}}, "seeds", "a set (give a list"),
    ({"scheduler_options": {("a", "b"): 1}}, "scheduler_options", "keys must be text"),
    ({"guidance_scale": float("inf")}, "guidance_scale", "must be a finite number >= 0 but is inf"),
    ({"guidance_scale": float("-inf")}, "guidance_scale", "finite number"),
    ({"guidance_scale": [7.5, float("inf")]}, "guidance_scale", "finite number"),
])
def test_from_dict_wrong_types_and_infinite_numbers_are_one_spec_error(changes, field, says):
    """A value YAML cannot write, or an infinite float setting, is one SpecError naming the field (never the YAML
    library's RepresenterError, never a sweep with guidance_scale inf)."""
    data = {"name": "t", "model": "tiny", "prompt": "a {{ age }} cat", "axes": {"age": ["old", "young"]}, **changes}
    with pytest.raises(SpecError) as info:
        tracker.Experiment.from_dict(data)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("<experiment t>: ") and field in msg and says in msg, msg


def test_the_cli_refuses_an_infinite_guidance_scale_in_one_line(cli, write_yaml):
    path = write_yaml("name: t\nmodel: tiny\nprompt: a cat\nguidance_scale: .inf\n")
    res = cli("expand", path)
    assert res.code == 2 and res.err.count("\n") == 1 and "guidance_scale" in res.err and "finite" in res.err, res.err


def test_to_pandas_has_numeric_columns_and_the_scheduler_that_ran(tmp_path):
    """Steps as an axis stays a number (sorts 4 < 10), an axis of numbers is numeric, "default" becomes the
    scheduler the model ships, and the metric is spelled as ``tracker runs`` and MLflow spell it."""
    exp = tracker.Experiment("a {{ colour }} circle on white{{ size_px }}", name="frame", model="shapes",
                             axes={"colour": ["red"], "size_px": {"4": "", "10": ", red"}}, seeds=[0],
                             steps=[10, 4], scheduler="default", metrics=["shapes"])
    result = tracker.run(exp, home=tmp_path / "home", mlflow=False, progress=False)
    assert result.ok
    df = result.runs.to_pandas()
    numeric = ["steps", "size_px", "seed", "width", "height", "guidance_scale", "seconds",
               "seconds_per_step", "peak_memory_bytes", "shapes"]
    assert {c: str(df[c].dtype) for c in numeric} == {
        "steps": "int64", "size_px": "int64", "seed": "int64", "width": "int64", "height": "int64",
        "guidance_scale": "float64", "seconds": "float64", "seconds_per_step": "float64", "peak_memory_bytes": "int64",
        "shapes": "float64"}
    import pandas as pd

    assert not pd.api.types.is_numeric_dtype(df["colour"])
    assert sorted(df["steps"]) == [4, 4, 10, 10] and list(df.sort_values("size_px")["size_px"]) == [4, 4, 10, 10]
    assert set(df["scheduler"]) == {"DPMSolverMultistepScheduler (DPM++ 2M)"}
    assert not any(c.startswith("metric.") for c in df)
