"""Image-conditioned runs (issue 27): input images named in an experiment file are read once, checked, and from then
on only their sha256 is used (run key, store, recipe); img2img and inpainting runs of the built-in tiny SD model
match a plain diffusers call, reproduce from their PNG, and show their inputs in the report."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tracker.experiment import parse as spec, plan
from tracker.experiment.settings import Settings

PROMPT = "a red square on a blue ground"


def make_images(folder: Path, size: int = 64) -> dict[str, Path]:
    """A source picture (two colours, a gradient), an inpainting mask (white: repaint the left half) and a mask of
    another size: made here, so nothing copyrighted is used."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([(x * 255 // size), (y * 255 // size), np.full_like(x, 128)], axis=-1).astype("uint8")
    rgb[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = (220, 30, 30)
    out = {"image": folder / "source.png", "mask": folder / "mask.png", "small_mask": folder / "small-mask.png",
           "other": folder / "other.png"}
    Image.fromarray(rgb).save(out["image"])
    mask = np.zeros((size, size), "uint8")
    mask[:, : size // 2] = 255
    Image.fromarray(mask).save(out["mask"])
    Image.fromarray(mask[: size // 2, : size // 2]).save(out["small_mask"])
    Image.fromarray(255 - rgb).save(out["other"])
    return out


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- the data model


def test_an_image_is_read_once_and_named_by_its_hash(tmp_path, write_yaml):
    imgs = make_images(tmp_path / "pics")
    f = write_yaml("""
        model: tiny
        prompt: a square
        image: pics/source.png
        strength: [0.3, 0.6, 0.9]
        steps: 4
    """)
    exp = spec.parse_file(f)
    h = sha(imgs["image"])
    assert exp.settings.image == h and set(exp.inputs) == {h}
    assert exp.inputs[h].data == imgs["image"].read_bytes() and (exp.inputs[h].width, exp.inputs[h].height) == (64, 64)
    p = plan.expand(exp)
    assert [r.settings.strength for r in p.runs] == [0.3, 0.6, 0.9]
    assert all(r.settings.image == h and r.settings.task == "img2img" for r in p.runs)
    assert (p.runs[0].settings.width, p.runs[0].settings.height) == (64, 64)  # the image's size
    assert len({r.key for r in p.runs}) == 3
    # the key follows the image's bytes, not its path: a copy elsewhere is the same run
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "copy.png").write_bytes(imgs["image"].read_bytes())
    g = write_yaml(f.read_text().replace("pics/source.png", str(tmp_path / "elsewhere" / "copy.png")), "g.yaml")
    assert [r.key for r in plan.expand(spec.parse_file(g)).runs] == [r.key for r in p.runs]


def test_an_image_axis_is_labelled_by_the_paths_and_inpainting_defaults_to_its_pipelines_strength(tmp_path,
                                                                                                    write_yaml):
    make_images(tmp_path / "pics")
    f = write_yaml("""
        model: tiny
        prompt: a square
        image: [pics/source.png, pics/other.png]
        mask_image: pics/mask.png
        steps: 4
    """)
    p = plan.expand(spec.parse_file(f))
    assert [r.labels["image"] for r in p.runs] == ["pics/source.png", "pics/other.png"]
    assert all(r.settings.task == "inpaint" for r in p.runs)
    assert {r.settings.strength for r in p.runs} == {1.0}  # StableDiffusionInpaintPipeline's default


def test_text_to_image_keys_do_not_change():
    """A run without images keeps the key it had before the image settings existed (every new field is at its
    default, so none joins the key material)."""
    s = Settings(model="tiny", steps=20, width=64, height=64)
    material = s.key_material()
    assert not {"image", "mask_image", "control_image", "ip_adapter_image", "strength", "controlnet", "ip_adapter",
                "refiner", "controlnet_conditioning_scale", "denoising_end", "denoising_start"} & set(material)
    assert plan.run_key(s, 0, "a cat", "") == "8501519045c84fd2"  # the key main computed for this run


def test_settings_round_trip_through_json(tmp_path, write_yaml):
    from tracker.experiment.settings import from_json

    h = "ab" * 32
    s = Settings(image=h, control_image=(h, h), controlnet=("a", "b"), controlnet_conditioning_scale=(0.5, 1.0),
                 ip_adapter=(("path", "ip"), ("weight_name", "w.safetensors")), refiner="r", denoising_end=0.8)
    d = s.to_dict()
    assert d["control_image"] == [h, h] and d["ip_adapter"] == {"path": "ip", "weight_name": "w.safetensors"}
    back = from_json(d)
    for name in ("image", "control_image", "controlnet", "controlnet_conditioning_scale", "ip_adapter", "refiner",
                 "denoising_end"):
        assert back[name] == getattr(s, name)
    from tracker.store.records import RunRecord

    run = plan.PlannedRun("k", 0, "e", (), "p", "", "p", "", 0, s)
    assert RunRecord(run).run.settings == s and RunRecord(run).control_image == (h, h)


BAD = [
    ("image: missing.png", "image", "'missing.png' no such file"),
    ("image: pics", "image", "is a folder"),
    ("image: pics/notes.png", "image", "is not an image file"),
    ("image: pics/source.png\nmask_image: pics/small-mask.png", "mask_image", "is 32x32 pixels but the image"),
    ("image: pics/source.png\nstrength: 0", "strength", "must be a number in (0, 1] but is 0"),
    ("image: pics/source.png\nstrength: 1.5", "strength", "must be a number in (0, 1] but is 1.5"),
    ("mask_image: pics/mask.png", "mask_image", "is given without image"),
    ("strength: 0.5", "strength", "has no effect without an image"),
    ("image: pics/huge.png", "image", "is 5000x4000 pixels; an input image may have at most"),
    ("image: pics/truncated.png", "image", "is not an image"),
    ("image: pics/anim.gif", "image", "is a GIF image; input images may be PNG, JPEG, WEBP, BMP"),
    ("image: 12", "image", "must be the path of an image file"),
    ("control_guidance_start: 0.6\ncontrol_guidance_end: 0.4", "control_guidance_start", "must be less than"),
]


@pytest.mark.parametrize("extra,field,message", BAD, ids=[b[1] + ":" + b[2][:24] for b in BAD])
def test_bad_input_is_one_line_naming_file_field_and_value(tmp_path, write_yaml, cli, extra, field, message):
    from PIL import Image

    make_images(tmp_path / "pics")
    (tmp_path / "pics" / "notes.png").write_text("not a picture")
    Image.new("1", (5000, 4000)).save(tmp_path / "pics" / "huge.png")  # 16.7 M pixels allowed; this is 20 M
    whole = (tmp_path / "pics" / "source.png").read_bytes()
    (tmp_path / "pics" / "truncated.png").write_bytes(whole[: len(whole) // 2])  # a valid header, half the data
    Image.new("RGB", (8, 8)).save(tmp_path / "pics" / "anim.gif")
    f = write_yaml("model: tiny\nprompt: a square\nsteps: 2\n" + extra + "\n", "bad.yaml")
    r = cli("expand", f)
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    assert lines[0].startswith(f"error: {f}: {field}") and message in lines[0], lines[0]


def test_an_image_field_the_family_cannot_take_is_refused(tmp_path, write_yaml):
    """PixArt has no image-to-image pipeline in diffusers' AutoPipeline tables (read from diffusers' source)."""
    from tracker.experiment import families
    from tracker.experiment.pipeline_source import task_class

    assert task_class("StableDiffusionPipeline", "img2img") == "StableDiffusionImg2ImgPipeline"
    assert task_class("StableDiffusionXLPipeline", "inpaint") == "StableDiffusionXLInpaintPipeline"
    assert task_class("PixArtSigmaPipeline", "img2img") is None
    facts = families.ModelFacts("m", families.family_of("PixArtSigmaPipeline"), "PixArtSigmaPipeline",
                                families.signature_of("PixArtSigmaPipeline"), (64, 64))
    with pytest.raises(families.FamilyError, match="no image-to-image pipeline"):
        facts.check_inputs({"image": "ab" * 32}, set())


def test_too_many_bytes_is_refused_before_decoding(tmp_path, monkeypatch):
    from tracker import limits
    from tracker.experiment import inputs

    imgs = make_images(tmp_path / "pics")
    monkeypatch.setattr(limits, "MAX_INPUT_IMAGE_BYTES", 100)
    with pytest.raises(inputs.InputError, match="at most 100"):
        inputs.read(str(imgs["image"]), None)


def test_store_writes_each_image_once_atomically_with_the_umask(tmp_path):
    import os
    import stat

    from tracker.experiment import inputs

    imgs = make_images(tmp_path / "pics")
    img = inputs.read(str(imgs["image"]), None)
    folder = tmp_path / "ws" / "inputs"
    old = os.umask(0o027)
    try:
        (p,) = inputs.store([img], folder)
    finally:
        os.umask(old)
    assert p.name == f"{img.sha256}.png" and p.read_bytes() == imgs["image"].read_bytes()
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    mtime = p.stat().st_mtime_ns
    inputs.store([img], folder)  # there already: not written again
    assert p.stat().st_mtime_ns == mtime and sorted(os.listdir(folder)) == [p.name]
    assert inputs.load(folder, img.sha256).size == (64, 64)
    with pytest.raises(inputs.MissingInput, match="cd" * 32):
        inputs.load(folder, "cd" * 32)


# ---------------------------------------------------------------------------------------------- end to end (slow)


def _png_pixels(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def _plain(task: str, prompt: str, seed: int, steps: int, strength: float, image: Path, mask: Path | None = None):
    """The same run as a plain diffusers call: the tiny model loaded by itself, its img2img / inpainting pipeline
    made with from_pipe, one CPU generator seeded with the run's seed (as the tracker seeds it)."""
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline
    from PIL import Image

    from tracker.experiment.model_refs import builtin_path

    base = DiffusionPipeline.from_pretrained(str(builtin_path("tiny")), local_files_only=True)
    cls = StableDiffusionInpaintPipeline if task == "inpaint" else StableDiffusionImg2ImgPipeline
    pipe = cls.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    kw = {"mask_image": [Image.open(mask).convert("RGB")]} if mask is not None else {}
    out = pipe(prompt=[prompt], image=[Image.open(image).convert("RGB")], strength=strength,
               num_inference_steps=steps, guidance_scale=7.5, generator=[torch.Generator("cpu").manual_seed(seed)],
               **kw)
    return np.asarray(out.images[0], dtype=np.int16)


def _run_png(home: Path, experiment: str, where: dict[str, str]) -> Path:
    import tracker

    runs = tracker.open(home).runs(experiment, where=where)
    assert len(runs) == 1
    return Path(runs[0].record.image)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_a_run_matches_plain_diffusers_and_reproduces_from_its_png(tmp_path, write_yaml, cli, task):
    import numpy as np

    make_images(tmp_path / "pics")
    mask = "mask_image: pics/mask.png\n" if task == "inpaint" else ""
    f = write_yaml(f"name: {task}\nmodel: tiny\nprompt: {PROMPT}\nimage: pics/source.png\n{mask}"
                   f"strength: 0.75\nsteps: 8\nseeds: [3]\n", f"{task}.yaml")
    r = cli("run", "--no-mlflow", f)
    assert r.code == 0, r.err
    home = tmp_path / "home"
    png = _run_png(home, task, {"seed": "3"})
    ours = _png_pixels(png)
    plain = _plain(task, PROMPT, 3, 8, 0.75, tmp_path / "pics" / "source.png",
                   tmp_path / "pics" / "mask.png" if task == "inpaint" else None)
    assert ours.shape == plain.shape == (64, 64, 3)
    assert int(np.abs(ours - plain).max()) <= 2
    # the source image is not the output (the run did something), and the input is in the workspace by hash
    assert np.abs(ours - _png_pixels(tmp_path / "pics" / "source.png")).max() > 2
    h = sha(tmp_path / "pics" / "source.png")
    assert (home / "inputs" / f"{h}.png").read_bytes() == (tmp_path / "pics" / "source.png").read_bytes()
    from tracker.images import pngmeta

    params, recipe = pngmeta.read_png(png)
    assert recipe["image"] == h and recipe["strength"] == 0.75 and "Denoising strength: 0.75" in params
    if task == "inpaint":
        assert recipe["mask_image"] == sha(tmp_path / "pics" / "mask.png")
    # the paths outside the workspace are never read again: reproduce works without them
    import shutil

    shutil.rmtree(tmp_path / "pics")
    r = cli("reproduce", png)
    assert r.code == 0 and "identical: all 4096 pixels match" in r.out, r.out + r.err


@pytest.mark.slow
def test_a_missing_input_on_reproduce_is_one_line_naming_its_hash(tmp_path, write_yaml, cli):
    make_images(tmp_path / "pics")
    f = write_yaml(f"name: gone\nmodel: tiny\nprompt: {PROMPT}\nimage: pics/source.png\nsteps: 2\n", "gone.yaml")
    assert cli("run", "--no-mlflow", f).code == 0
    home = tmp_path / "home"
    png = _run_png(home, "gone", {"seed": "0"})
    h = sha(tmp_path / "pics" / "source.png")
    (home / "inputs" / f"{h}.png").unlink()
    for target in (str(png), png.stem):  # a PNG, a run key
        r = cli("reproduce", target)
        assert r.code == 2, r
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and h in lines[0] and "not in the workspace" in lines[0], r.err
    r = cli("verify", "gone")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and h in r.err, r.err


@pytest.mark.slow
def test_a_strength_axis_makes_a_grid_of_three_columns_and_the_report_shows_the_inputs(tmp_path, write_yaml, cli):
    import re

    make_images(tmp_path / "pics")
    f = write_yaml(f"""
        name: strengths
        model: tiny
        prompt: {PROMPT}
        image: pics/source.png
        strength: [0.3, 0.6, 0.9]
        steps: 4
        seeds: [0, 1]
        grid: {{rows: seed, cols: strength}}
    """, "strengths.yaml")
    assert cli("run", "--no-mlflow", f).code == 0
    r = cli("report", "strengths")
    assert r.code == 0, r.err
    html = (tmp_path / "home" / "reports" / "strengths" / "index.html").read_text()
    cols = re.findall(r'<th class="col-header" scope="col">(.*?)</th>', html, re.S)
    assert [re.search(r">([^<]+)</(?:summary|span)>", c).group(1) for c in cols] == ["0.3", "0.6", "0.9"]
    h = sha(tmp_path / "pics" / "source.png")
    # the inputs section shows the source image's thumbnail, and every run's details list it beside the output
    assert re.search(rf'<section class="inputs" id="inputs">.*?<img src="thumbs/{h[:32]}\.png"', html, re.S)
    assert (tmp_path / "home" / "reports" / "strengths" / "thumbs" / f"{h[:32]}.png").is_file()
    data = __import__("json").loads(re.search(r'<script type="application/json" id="run-data">(.*?)</script>',
                                              html, re.S).group(1))
    assert len(data) == 6 and all([i["sha256"] for i in d["inputs"]] == [h] for d in data.values())
    assert all(d["inputs"][0]["thumb"] == f"thumbs/{h[:32]}.png" for d in data.values())
    g = cli("grid", "strengths", "--rows", "seed", "--cols", "strength", "-o", tmp_path / "g.png")
    assert g.code == 0, g.err


@pytest.mark.slow
def test_inputs_are_logged_to_mlflow_once_per_hash_on_the_parent_run(tmp_path, write_yaml, cli):
    make_images(tmp_path / "pics")
    f = write_yaml(f"name: logged\nmodel: tiny\nprompt: {PROMPT}\nimage: pics/source.png\n"
                   f"strength: [0.4, 0.8]\nsteps: 2\n", "logged.yaml")
    assert cli("run", f).code == 0
    from mlflow.tracking import MlflowClient

    home = tmp_path / "home"
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("logged")
    parents = client.search_runs([exp.experiment_id], "tags.`tracker.kind` = 'sweep'")
    assert len(parents) == 1
    h = sha(tmp_path / "pics" / "source.png")
    assert [a.path for a in client.list_artifacts(parents[0].info.run_id, "inputs")] == [f"inputs/{h}.png"]
    children = client.search_runs([exp.experiment_id], "tags.`tracker.kind` = 'image'")
    assert len(children) == 2 and all(c.data.params["image"] == h for c in children)
    assert sorted(c.data.params["strength"] for c in children) == ["0.4", "0.8"]


def test_the_examples_expand_and_their_inputs_are_what_the_script_draws(tmp_path):
    import runpy
    import shutil

    import numpy as np
    from PIL import Image

    examples = Path(__file__).resolve().parent.parent / "examples"
    img2img = plan.expand(spec.parse_file(examples / "img2img.yaml"))
    inpaint = plan.expand(spec.parse_file(examples / "inpaint.yaml"))
    assert len(img2img.runs) == 24 and {r.settings.task for r in img2img.runs} == {"img2img"}
    assert len(inpaint.runs) == 6 and {r.settings.task for r in inpaint.runs} == {"inpaint"}
    shutil.copy(examples / "inputs" / "make.py", tmp_path / "make.py")
    runpy.run_path(str(tmp_path / "make.py"))
    for name in ("circle.png", "right-half.png"):
        with Image.open(tmp_path / name) as a, Image.open(examples / "inputs" / name) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))


# Per family with an image-to-image / inpainting pipeline in diffusers' AutoPipeline tables: its tasks, the size
# of the run (small; Flux.2 takes its image as a reference of at least 64 pixels, with no strength) and how the
# recorded guidance is spelled in the call (Qwen-Image: true CFG, off without a negative prompt: nothing passed).
FAMILY_TASKS = {"sdxl": ("img2img", "inpaint"), "sd3": ("img2img", "inpaint"), "flux": ("img2img", "inpaint"),
                "qwenimage": ("img2img", "inpaint"), "flux2": ("img2img",)}
SIZE = {"flux2": 64}
NO_STRENGTH = {"flux2"}  # a reference image: passed at its own size (96x96 here, not the run's), as a user would
GUIDANCE_ARG = {"sdxl": "guidance_scale", "sd3": "guidance_scale", "flux": "guidance_scale", "flux2": "guidance_scale",
                "qwenimage": None}


@pytest.mark.slow
@pytest.mark.parametrize("family,task", [(f, t) for f, tasks in FAMILY_TASKS.items() for t in tasks])
def test_every_family_with_an_image_pipeline_matches_plain_diffusers(family, task, family_model, tmp_path,
                                                                     write_yaml, cli):
    """img2img and inpainting on the tiny SDXL, SD3, Flux.1 and Qwen-Image pipelines, and Flux.2's reference
    image: the tracker makes its variant with diffusers' AutoPipeline ``from_pipe`` and calls it as a plain
    diffusers user would (the input images at the run's size, ``strength``, the recorded steps and guidance, one
    seeded CPU generator per image); the images match within 2 levels and the PNG reproduces identically."""
    import inspect

    import numpy as np
    import torch
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, DiffusionPipeline
    from PIL import Image

    folder = family_model(family)
    imgs = make_images(tmp_path / "pics", 96 if family in NO_STRENGTH else 64)
    mask = "mask_image: pics/mask.png\n" if task == "inpaint" else ""
    size = SIZE.get(family, 32)
    strength = {} if family in NO_STRENGTH else {"strength": 0.75}
    f = write_yaml(f"name: {family}-{task}\nmodel: {folder}\nprompt: {PROMPT}\nimage: pics/source.png\n{mask}"
                   + "".join(f"{k}: {v}\n" for k, v in strength.items())
                   + f"steps: 4\nsize: {size}x{size}\nseeds: [3, 4]\n", f"{family}-{task}.yaml")
    r = cli("run", "--no-mlflow", "-q", f)
    assert r.code == 0, r.out + r.err
    import tracker

    runs = sorted(tracker.open(tmp_path / "home").runs(f"{family}-{task}"), key=lambda run: run.record.seed)
    assert [run.record.seed for run in runs] == [3, 4]
    rec = runs[0].record
    assert (rec.width, rec.height, rec.steps) == (size, size, 4)

    loader = AutoPipelineForInpainting if task == "inpaint" else AutoPipelineForImage2Image
    pipe = loader.from_pipe(DiffusionPipeline.from_pretrained(folder, local_files_only=True))
    pipe.set_progress_bar_config(disable=True)
    params = inspect.signature(pipe.__call__).parameters
    source = Image.open(imgs["image"]).convert("RGB")
    at_size = [source if family in NO_STRENGTH else source.resize((size, size), Image.LANCZOS)] * 2
    kw = {"mask_image": [Image.open(imgs["mask"]).convert("RGB").resize((size, size), Image.LANCZOS)] * 2} if mask else {}
    kw.update({k: size for k in ("width", "height") if k in params}, **strength)
    if GUIDANCE_ARG[family]:
        kw[GUIDANCE_ARG[family]] = rec.guidance_scale
    out = pipe(prompt=[PROMPT] * 2, image=at_size, num_inference_steps=4, output_type="np",
               generator=[torch.Generator("cpu").manual_seed(s) for s in (3, 4)], **kw).images
    want = (np.asarray(out) * 255).round().astype(int)
    for run, expected in zip(runs, want):
        got = _png_pixels(Path(run.record.image))
        assert got.shape == expected.shape and int(np.abs(got - expected).max()) <= 2, (family, task)
    r = cli("reproduce", runs[0].record.image)
    assert r.code == 0 and "identical" in r.out, r.out + r.err
