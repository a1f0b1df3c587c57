"""PNG metadata: the A1111 ``parameters`` chunk, the ``prompt-tracker`` recipe chunk, atomic writes.

The parser under test is written from A1111's published regex; the reference parser below is a direct
transcription of A1111's ``parse_generation_parameters`` so that what we write reads back in their tools.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
from hypothesis import given, settings as hsettings, strategies as st
from PIL import Image

from tracker import fsutil
from tracker.images import pngmeta
from tracker.experiment.plan import RECIPE_FORMAT
from tracker.errors import NotFoundError, TrackerError
from tracker.experiment.plan import expand
from tracker.experiment.parse import parse

# --- A1111's own code (modules/infotext_utils.py), transcribed as the oracle --------------------------
re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def a1111_parse(x):
    res = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in re_param.findall(lastline):
        if v[0:1] == '"' and v[-1:] == '"':
            v = a1111_unquote(v)
        res[k] = v
    return prompt, negative_prompt, res


# ------------------------------------------------------------------------------------------------------

TRICKY = [
    "portrait photo of a old warrior chief",
    'a "quoted", comma: colon prompt',
    "line one\nline two: with colon, and comma",
    "ünïcödé 戦士 🐉, émoji: yes",
    'back\\slash "and \\" escaped quote',
    "Steps: 20, Sampler: Euler, Seed: 3",  # looks like a parameters line, but it is the prompt
    "ends with a comma,",
]


def _run(prompt="portrait photo of a old warrior chief", negative="", **settings):
    body = {"prompt": prompt, "steps": 2, "size": "64x64", "seeds": [7], **settings}
    if negative:
        body["negative_prompt"] = negative
    exp = parse(json.dumps(body, ensure_ascii=False), "t.yaml", default_name="t")
    return expand(exp).runs[0]


def _recipe(**kw):
    return pngmeta.recipe_for(_run(**kw), model_revision="0123456789abcdef", scheduler_config={"_class_name": "PNDMScheduler"},
                              environment={"torch": "2.13.0", "device_name": "cpu"}, device_used="cpu")


@pytest.mark.parametrize("prompt", TRICKY)
@pytest.mark.parametrize("negative", ["", "blurry, lowres: bad", "two\nlines"])
def test_parameters_round_trip_through_a1111_parser(prompt, negative):
    recipe = _recipe(prompt=prompt, negative=negative)
    text = pngmeta.a1111_parameters(recipe)
    ours = pngmeta.parse_a1111(text)
    theirs = a1111_parse(text)
    assert (ours.prompt, ours.negative_prompt, ours.settings) == theirs
    assert ours.prompt == prompt
    assert ours.negative_prompt == negative
    assert ours.settings["Seed"] == "7"
    assert ours.settings["Size"] == "64x64"
    assert ours.settings["Tracker key"] == recipe["key"]


def test_a1111_key_order_and_sampler_names():
    recipe = _recipe(scheduler="DPM++ 2M Karras", vae="stabilityai/sd-vae-ft-mse", guidance_scale=7)
    recipe["vae_revision"] = "fedcba9876543210"
    text = pngmeta.a1111_parameters(recipe)
    last = text.splitlines()[-1]
    assert last.startswith("Steps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 7, Size: 64x64, ")
    keys = list(pngmeta.parse_a1111(text).settings)
    assert keys == ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
                    "VAE hash", "VAE", "Tracker key", "Tracker experiment", "Dtype", "Generator device", "RNG"]
    s = pngmeta.parse_a1111(text).settings
    assert (s["Model hash"], s["Model"], s["VAE hash"], s["VAE"]) == ("0123456789", "tiny", "fedcba9876", "stabilityai/sd-vae-ft-mse")


def test_default_scheduler_is_named_from_the_scheduler_config_and_extra_options_are_kept():
    s = pngmeta.parse_a1111(pngmeta.a1111_parameters(_recipe())).settings
    assert s["Sampler"] == "PLMS" and s["Schedule type"] == "Uniform"
    r = _recipe(scheduler="DPM++ 2M SDE", scheduler_options={"solver_order": 3})
    s = pngmeta.parse_a1111(pngmeta.a1111_parameters(r)).settings
    assert s["Sampler"] == "DPM++ 2M SDE"
    assert json.loads(s["Scheduler options"]) == {"solver_order": 3}
    assert s["Schedule type"] == "Uniform"


def test_values_are_quoted_like_a1111():
    assert pngmeta.quote("plain") == "plain"
    assert pngmeta.quote("a, b") == '"a, b"'
    assert pngmeta.quote("C:/models/x") == '"C:/models/x"'
    assert pngmeta.quote("a\nb") == '"a\\nb"'
    assert pngmeta.quote("戦士: x") == '"戦士: x"'  # ensure_ascii=False, as A1111


def test_parses_a_real_a1111_infotext():
    text = ("masterpiece, best quality, 1girl\nNegative prompt: lowres, bad anatomy\n"
            "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
            'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Lora hashes: "add_detail: 7c6bad76eb54", '
            "Version: v1.7.0")
    p = pngmeta.parse_a1111(text)
    assert p.prompt == "masterpiece, best quality, 1girl"
    assert p.negative_prompt == "lowres, bad anatomy"
    assert p.settings["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert p.settings["Clip skip"] == "2" and p.settings["Version"] == "v1.7.0"
    assert list(p.settings)[:6] == ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size"]
    assert (p.prompt, p.negative_prompt, p.settings) == a1111_parse(text)


@hsettings(max_examples=300, deadline=None)
@given(st.text())
def test_any_value_round_trips_through_the_regex(value):
    line = f"Steps: 2, Model: {pngmeta.quote(value)}, Seed: 3"
    p = pngmeta.parse_a1111("prompt\n" + line)
    assert p.settings == {"Steps": "2", "Model": value, "Seed": "3"}
    assert a1111_parse("prompt\n" + line)[2]["Model"] == value


_line = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",))).map(str.strip).filter(
    lambda s: not s.startswith("Negative prompt:"))


@hsettings(max_examples=200, deadline=None)
@given(st.lists(_line, min_size=1, max_size=4).filter(lambda ls: ls[0] and ls[-1]).map("\n".join))
def test_any_prompt_with_stripped_lines_round_trips(prompt):
    text = pngmeta.a1111_parameters({"prompt": prompt, "steps": 2, "seed": 1, "guidance_scale": 7.5,
                                     "width": 64, "height": 64, "model": "tiny"})
    assert pngmeta.parse_a1111(text).prompt == prompt


def test_recipe_chunk_round_trips_through_a_png(tmp_path):
    recipe = _recipe(prompt=TRICKY[3], negative="two\nlines")
    path = tmp_path / "img.png"
    pngmeta.save_png(Image.new("RGB", (8, 8), (10, 20, 30)), path, recipe)
    text, back = pngmeta.read_png(path)
    assert back == json.loads(json.dumps(recipe))
    assert back["format"] == RECIPE_FORMAT and back["seed"] == 7 and back["prompt"] == TRICKY[3]
    assert text == pngmeta.a1111_parameters(recipe)
    with Image.open(path) as im:  # what A1111 itself reads
        assert im.info["parameters"] == text
        assert im.getpixel((0, 0)) == (10, 20, 30)


def test_save_png_is_atomic_and_returns_the_file_hash(tmp_path):
    path = tmp_path / "exp" / "k.png"
    digest = pngmeta.save_png(Image.new("RGB", (8, 8)), path, _recipe())
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert os.listdir(path.parent) == ["k.png"]


@pytest.mark.parametrize("fault", ["write", "fsync", "replace"])
def test_a_fault_in_the_write_leaves_no_file_and_no_temp(tmp_path, monkeypatch, fault):
    path = tmp_path / "k.png"

    def boom(*a, **k):
        raise OSError(28, "No space left on device (injected)")

    if fault == "write":
        real_fdopen = os.fdopen

        class Broken:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                boom()

        monkeypatch.setattr(fsutil.os, "fdopen", lambda fd, mode: Broken(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(fsutil.os, fault, boom)
    with pytest.raises(OSError, match="injected"):
        pngmeta.save_png(Image.new("RGB", (8, 8)), path, _recipe())
    assert os.listdir(tmp_path) == []


def test_a_fault_keeps_the_old_image_intact(tmp_path, monkeypatch):
    path = tmp_path / "k.png"
    pngmeta.save_png(Image.new("RGB", (8, 8), (1, 2, 3)), path, _recipe())
    before = path.read_bytes()
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("injected")))
    with pytest.raises(OSError):
        pngmeta.save_png(Image.new("RGB", (8, 8), (9, 9, 9)), path, _recipe())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["k.png"]


def test_read_png_errors_are_one_line(tmp_path):
    with pytest.raises(NotFoundError, match="no such file"):
        pngmeta.read_png(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(TrackerError, match="not a readable image"):
        pngmeta.read_png(tmp_path / "notes.png")
    with pytest.raises(TrackerError, match="is a folder"):
        pngmeta.read_png(tmp_path)
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("prompt-tracker", "{not json")
    Image.new("RGB", (4, 4)).save(tmp_path / "bad.png", pnginfo=info)
    with pytest.raises(TrackerError, match="not valid JSON"):
        pngmeta.read_png(tmp_path / "bad.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "bare.png")
    assert pngmeta.read_png(tmp_path / "bare.png") == (None, None)


@pytest.mark.parametrize("scheduler, options, schedule", [
    ("DPM++ 2M", {}, "Uniform"), ("DPM++ 2M Karras", {}, "Karras"), ("Euler", {}, "Uniform"),
    ("DPM++ 2M SDE", {"use_exponential_sigmas": True}, "Exponential"), ("DDIM", {}, "Uniform"),
])
def test_schedule_type_is_always_written_so_a1111_never_reads_automatic(scheduler, options, schedule):
    """Issue 13, problem 7: A1111 1.9+ reads a missing Schedule type as Automatic (= Karras for DPM++ 2M)."""
    from tracker.reproduce import a1111

    text = pngmeta.a1111_parameters(_recipe(scheduler=scheduler, scheduler_options=options))
    s = pngmeta.parse_a1111(text).settings
    assert s["Schedule type"] == schedule
    run, _ = a1111.run_from_a1111(pngmeta.parse_a1111(text))  # and it reads back as the same scheduler
    from tracker.experiment import schedulers

    cls, implied = schedulers.resolve(scheduler, options)
    assert (run.settings.scheduler, run.settings.options()) == (cls, implied)


@pytest.mark.parametrize("sampler, options", [
    ("DPM++ 2M", {"use_karras_sigmas": True}), ("Euler", {}), ("DPM++ 2M SDE", {"algorithm_type": "sde-dpmsolver++",
                                                                                  "use_exponential_sigmas": True}),
    ("DPM2 a", {"use_karras_sigmas": True}), ("LMS", {}),
])
def test_automatic_schedule_reads_as_a1111s_default_for_the_sampler(sampler, options):
    from tracker.reproduce import a1111

    text = f"a cat\nSteps: 4, Sampler: {sampler}, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 64x64, Model: tiny"
    run, notes = a1111.run_from_a1111(pngmeta.parse_a1111(text))
    assert run.settings.options() == options
    assert not [n for n in notes if "Schedule" in n]
