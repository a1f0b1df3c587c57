"""``tracker reproduce`` / ``tracker verify`` / ``--from KEY`` on the real tiny pipeline and a real store.

One workspace per module: ``tracker run`` makes the images once (one batch of 4, so reproduction must
also get the batch size right), the tests then reproduce, tamper and verify them.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from conftest import Result
from tracker.images import pngmeta

pytestmark = pytest.mark.slow

SMALL = """\
name: small
model: tiny
prompt: "portrait photo of {{ age }} warrior chief, {{ style }}"
negative_prompt: "blurry, lowres"
axes:
  age: {old: "a old", young: "a young"}
  style: [photo]
seeds: [3, 5]
scheduler: DPM++ 2M Karras
steps: 2
guidance_scale: 6.5
size: 64x64
"""


class Home:
    """A tracker home in a temporary folder; ``call`` runs the real CLI in this process."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"

    def call(self, *args) -> Result:
        from tracker.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(["--home", str(self.home), *map(str, args)])
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return Result(code, out.getvalue(), err.getvalue())

    def write(self, name: str, text: str) -> Path:
        p = self.root / name
        p.write_text(textwrap.dedent(text))
        return p

    def runs(self, experiment: str) -> list[dict]:
        res = self.call("runs", experiment, "--json")
        assert res.code == 0, res.err
        return json.loads(res.out)

    def store(self):
        from tracker.store.runstore import Store

        return Store.open(f"sqlite:///{self.home / 'tracker.db'}")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Home:
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.delenv("TRACKER_DB_URL", raising=False)
    w = Home(tmp_path_factory.mktemp("reproduce"))
    res = w.call("run", w.write("small.yaml", SMALL), "--no-mlflow", "-q")
    assert res.code == 0, res.out + res.err
    yield w
    mp.undo()


def _image(ws: Home, seed: int = 5, age: str = "young") -> dict:
    return next(r for r in ws.runs("small") if r["seed"] == seed and r["axes"]["age"] == age)


def _rewrite(src: Path, dst: Path, parameters: str | None, recipe: dict | None) -> None:
    """Copy ``src``'s pixels to ``dst`` with the given text chunks only."""
    info = PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    if recipe is not None:
        info.add_itxt("prompt-tracker", json.dumps(recipe))
    with Image.open(src) as im:
        im.save(dst, pnginfo=info)


def test_images_made_in_a_batch_reproduce_identically(ws):
    run = _image(ws)
    assert run["batch_size"] == 4  # made in one batch of 4: a single-image call could differ by one level
    res = ws.call("reproduce", run["image"])
    assert res.code == 0, res.out + res.err
    assert f"reproducing run {run['key']} of experiment small from the recipe" in res.out
    assert "DPM++ 2M Karras, 2 steps, CFG 6.5, 64x64, model tiny" in res.out
    assert "identical: all 4096 pixels match" in res.out
    assert "warning" not in res.err

    # by key prefix, from the run store, keeping the regenerated image
    saved = ws.root / "again.png"
    res = ws.call("reproduce", run["key"][:10], "--device", "cpu", "--save", saved)
    assert res.code == 0, res.out + res.err
    assert "from the run store" in res.out and "identical" in res.out and "(regenerated on cpu)" in res.out
    _, recipe = pngmeta.read_png(saved)
    assert recipe["key"] == run["key"] and recipe["seed"] == 5
    with Image.open(saved) as a, Image.open(run["image"]) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_a_tampered_seed_is_reported_as_a_mismatch(ws, tmp_path):
    run = _image(ws)
    text, recipe = pngmeta.read_png(run["image"])
    recipe["seed"] = 6
    tampered = tmp_path / "tampered.png"
    _rewrite(Path(run["image"]), tampered, text.replace("Seed: 5,", "Seed: 6,"), recipe)
    res = ws.call("reproduce", tampered)
    assert res.code == 1, res.out + res.err
    assert "seed 6" in res.out
    assert "differs: max abs pixel difference" in res.out and "pixels differ" in res.out
    # the A1111 chunk alone says the same
    _rewrite(Path(run["image"]), tampered, text.replace("Seed: 5,", "Seed: 6,"), None)
    res = ws.call("reproduce", tampered)
    assert res.code == 1 and "differs: max abs pixel difference" in res.out


def test_environment_drift_is_warned_one_line_each(ws, tmp_path):
    run = _image(ws, seed=3, age="old")
    text, recipe = pngmeta.read_png(run["image"])
    recipe["environment"]["torch"] = "1.13.1"
    recipe["environment"]["cuda"] = "11.8"
    recipe["model_revision"] = "sha256:" + "0" * 64
    copy = tmp_path / "env.png"
    _rewrite(Path(run["image"]), copy, text, recipe)
    res = ws.call("reproduce", copy)
    assert res.code == 0, res.out + res.err  # the pixels still match
    warnings = [line for line in res.err.splitlines() if line.startswith("warning: ")]
    assert any(w.startswith("warning: torch differs: 1.13.1 when the image was made, ") for w in warnings), res.err
    assert any("model revision differs: sha256:0000" in w for w in warnings), res.err
    assert not any("cuda" in w for w in warnings)  # None now: unknown, not a difference
    assert len(warnings) == 2


def test_a_foreign_a1111_png_reproduces_with_notes_on_what_was_not_mapped(ws, tmp_path):
    # pixels from an equivalent tracker experiment (batch size 1), metadata replaced by an A1111 chunk
    res = ws.call("run", ws.write("foreign.yaml", """\
        name: foreign
        model: tiny
        prompt: "a castle on a hill, (golden hour:1.2)"
        negative_prompt: "text, watermark"
        prompt_syntax: a1111
        seeds: [1]
        scheduler: DPM++ 2M Karras
        steps: 4
        guidance_scale: 7
        size: 64x64
        batch_size: 1
        """), "--no-mlflow", "-q")
    assert res.code == 0, res.out + res.err
    (made,) = ws.runs("foreign")
    foreign = tmp_path / "00012-1.png"
    a1111 = ("a castle on a hill, (golden hour:1.2)\nNegative prompt: text, watermark\n"
             "Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 64x64, "
             "Model hash: 6ce0161689, Model: tiny, ENSD: 31337, Version: v1.7.0")
    _rewrite(Path(made["image"]), foreign, a1111, None)
    res = ws.call("reproduce", foreign)
    assert res.code == 0, res.out + res.err
    assert "from the A1111 parameters" in res.out
    lines = res.out.splitlines()
    assert "  ENSD: 31337 (not supported, ignored)" in lines  # (Clip skip maps to call: clip_skip: test_families)
    assert not any("Version" in line or "Steps" in line for line in lines)
    assert "identical: all 4096 pixels match" in res.out
    assert "warning: model hash differs: 6ce0161689 in the PNG" in res.err

    # the same chunk with Karras dropped makes another image: the mapping is what made it identical
    _rewrite(Path(made["image"]), foreign, a1111.replace("Schedule type: Karras, ", ""), None)
    assert ws.call("reproduce", foreign).code == 1


def test_bad_inputs_are_one_line_and_exit_2(ws, tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "bare.png")
    _rewrite(tmp_path / "bare.png", tmp_path / "ckpt.png",
             "x\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 512x512, Model: v1-5-pruned-emaonly", None)
    (tmp_path / "text.png").write_text("not a png")
    cases = {
        tmp_path / "missing.png": "no such file",
        tmp_path / "bare.png": "has no prompt-tracker or parameters metadata",
        tmp_path / "text.png": "not a readable image",
        tmp_path / "ckpt.png": "model: 'v1-5-pruned-emaonly' is not a builtin model",
        "ffffffffffff": "no run with key 'ffffffffffff'",
    }
    for target, message in cases.items():
        res = ws.call("reproduce", target)
        assert res.code == 2, (target, res.out, res.err)
        assert message in res.err and len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err
    res = ws.call("verify", "nope")
    assert res.code == 2 and "no experiment 'nope'" in res.err


def test_verify_stores_its_result_and_finds_drift(ws):
    res = ws.call("verify", "small", "--sample", "3")
    assert res.code == 0, res.out + res.err
    header, rule, *rows, summary = res.out.strip().splitlines()
    assert header.split() == ["key", "labels", "max", "mean", "result"]
    assert len(rows) == 3 and all(r.rstrip().endswith("identical") for r in rows)
    assert "3 of 3 sampled runs identical, 0 differ (4 done; each regenerated in its original batch)" in summary
    with ws.store() as store:
        sweep = store.sweeps("small")[-1]
    v = sweep["verify"]
    assert (v["sample"], v["identical"], v["drifted"], v["max_abs"]) == (3, 3, 0, 0)
    sampled = [r["key"] for r in v["runs"]]
    assert ws.call("verify", "small", "--sample", "3").code == 0
    with ws.store() as store:
        assert [r["key"] for r in store.sweeps("small")[-1]["verify"]["runs"]] == sampled  # the same sample

    # one stored image changed by one level in one pixel: verify of every run catches it
    target = Path(next(r["image"] for r in ws.runs("small") if r["key"] == sampled[0]))
    backup = target.with_suffix(".bak")
    shutil.copy2(target, backup)
    try:
        with Image.open(target) as im:
            recipe = json.loads(im.info["prompt-tracker"])
            pixels = np.asarray(im.convert("RGB")).copy()
        pixels[0, 0, 0] ^= 1  # one level, whatever the value
        pngmeta.save_png(Image.fromarray(pixels), target, recipe)
        res = ws.call("verify", "small", "--sample", "10")
        assert res.code == 1, res.out + res.err
        assert "3 of 4 sampled runs identical" in res.out
        with ws.store() as store:
            v = store.sweeps("small")[-1]["verify"]
        bad = [r for r in v["runs"] if not r["identical"]]
        assert [(r["key"], r["max_abs"], r["differing"]) for r in bad] == [(sampled[0], 1, 1)]
    finally:
        shutil.move(backup, target)


def test_from_key_reuses_the_seed_and_settings_of_a_run(ws):
    base = _image(ws, seed=5, age="old")
    variants = """\
        name: {name}
        prompt:
          plain: "portrait photo of a old warrior chief"
          styled: "portrait photo of a old warrior chief, tribal panther make up, blue on red, side profile"
        steps: 3
        {seeds}
        """
    # seeds: {from: KEY} in the file
    path = ws.write("refine.yaml", variants.format(name="refine", seeds=f"seeds: {{from: \"{base['key'][:12]}\"}}"))
    res = ws.call("run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.out + res.err
    # --from KEY on the command line
    path = ws.write("refine2.yaml", variants.format(name="refine2", seeds=""))
    res = ws.call("run", path, "--from", base["key"], "--no-mlflow", "-q")
    assert res.code == 0, res.out + res.err
    for name in ("refine", "refine2"):
        runs = ws.runs(name)
        assert sorted(r["axes"]["prompt"] for r in runs) == ["plain", "styled"]
        for r in runs:
            assert r["seed"] == 5
            assert r["steps"] == 3  # the file sets it
            for field in ("model", "scheduler", "scheduler_options", "guidance_scale", "width", "height", "dtype"):
                assert r[field] == base[field], (name, field)
    assert base["scheduler_options"] == {"use_karras_sigmas": True} and base["guidance_scale"] == 6.5
