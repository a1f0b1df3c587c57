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
    ("image: 12", "image", "must be the path of an image file"),
    ("control_guidance_start: 0.6\ncontrol_guidance_end: 0.4", "control_guidance_start", "must be less than"),
]


@pytest.mark.parametrize("extra,field,message", BAD, ids=[b[1] + ":" + b[2][:24] for b in BAD])
def test_bad_input_is_one_line_naming_file_field_and_value(tmp_path, write_yaml, cli, extra, field, message):
    from PIL import Image

    make_images(tmp_path / "pics")
    (tmp_path / "pics" / "notes.png").write_text("not a picture")
    Image.new("1", (5000, 4000)).save(tmp_path / "pics" / "huge.png")  # 16.7 M pixels allowed; this is 20 M
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
