"""Pipeline families (issue 23): each diffusers text-to-image family run through ``tracker run`` as plain
diffusers runs it, with the family's own defaults, its negative-prompt rules and any ``call:`` argument.

The plan-level tests read only JSON configs and diffusers' source (no model is built: a folder with a
``model_index.json`` is what the plan reads). The slow tests build tiny random-weight pipelines of each family
once per session (``tests/families.py``, the ``family_model`` fixture) and generate 32-64 px images in 2 steps.
"""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import pixels, runs_by_seed
from tracker.errors import SpecError
from tracker.experiment import parse, plan

# What each family's own __call__ defaults to (diffusers 0.42): steps, guidance, and the call argument it is
# passed as; Qwen-Image's CFG is true_cfg_scale.
DEFAULTS = {
    "sd15": ("StableDiffusionPipeline", 50, 7.5, "guidance_scale"),
    "sdxl": ("StableDiffusionXLPipeline", 50, 5.0, "guidance_scale"),
    "sd3": ("StableDiffusion3Pipeline", 28, 7.0, "guidance_scale"),
    "flux": ("FluxPipeline", 28, 3.5, "guidance_scale"),
    "flux2": ("Flux2Pipeline", 50, 4.0, "guidance_scale"),
    "qwenimage": ("QwenImagePipeline", 50, 4.0, "true_cfg_scale"),
    "sana": ("SanaPipeline", 20, 4.5, "guidance_scale"),
    "pixart": ("PixArtSigmaPipeline", 20, 4.5, "guidance_scale"),
}
FAMILY_NAMES = tuple(DEFAULTS)


def _expand(text: str, base: Path) -> plan.Plan:
    path = base / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return plan.expand(parse.parse_file(path))


def _folder(root: Path, class_name: str, **configs) -> Path:
    """A model folder as the plan reads it: model_index.json and component configs (no weights)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    for comp, cfg in configs.items():
        (root / comp).mkdir(exist_ok=True)
        (root / comp / "config.json").write_text(json.dumps(cfg))
    return root


FLUX_CONFIGS = {"vae": {"block_out_channels": [128, 256, 512, 512]}, "transformer": {"in_channels": 64}}


# ------------------------------------------------------------------------------------ plan: pure, no models


def test_the_family_defaults_are_diffusers_own_call_defaults():
    """The table above is what diffusers' __call__ signatures say (read with inspect), and what the families
    module reads from diffusers' source without importing it."""
    import diffusers

    from tracker.experiment import families, pipeline_source

    for name, (cls_name, steps, guidance, argument) in DEFAULTS.items():
        sig = inspect.signature(getattr(diffusers, cls_name).__call__).parameters
        assert sig["num_inference_steps"].default == steps, name
        assert sig[argument].default == guidance, name
        read = pipeline_source.signature_of(cls_name)
        assert read is not None and set(read.params) == set(sig) - {"self", "kwargs"}, name
        fam = families.family_of(cls_name)
        assert (fam.default_steps(read), fam.default_guidance(read)) == (steps, guidance), name
        assert fam.argument_for_guidance(read) == argument, name


def test_unset_settings_come_from_the_family_and_are_recorded_as_values(tmp_path):
    flux = _folder(tmp_path / "flux", "FluxPipeline", **FLUX_CONFIGS)
    sdxl = _folder(tmp_path / "sdxl", "StableDiffusionXLPipeline", unet={"sample_size": 128},
                   vae={"block_out_channels": [128, 256, 512, 512]})
    p = _expand(f"""\
        prompt: a cat
        model: [{flux}, {sdxl}]
        """, tmp_path)
    by_model = {r.settings.model: r.settings for r in p.runs}
    f, x = by_model[str(flux)], by_model[str(sdxl)]
    assert (f.steps, f.guidance_scale, f.width, f.height) == (28, 3.5, 1024, 1024)
    assert (x.steps, x.guidance_scale, x.width, x.height) == (50, 5.0, 1024, 1024)
    # a value the file sets is kept
    p = _expand(f"""\
        prompt: a cat
        model: {flux}
        steps: 4
        guidance_scale: 0
        size: 512x256
        """, tmp_path)
    s = p.runs[0].settings
    assert (s.steps, s.guidance_scale, s.width, s.height) == (4, 0.0, 512, 256)


def test_the_builtin_sd_model_keeps_its_run_keys(tmp_path):
    """SD 1.x's own defaults are the tracker's old ones (50 steps, CFG 7.5): unset and set give one key."""
    unset = _expand("prompt: a cat\nmodel: tiny\n", tmp_path).runs[0]
    set_ = _expand("prompt: a cat\nmodel: tiny\nsteps: 50\nguidance_scale: 7.5\n", tmp_path).runs[0]
    assert unset.key == set_.key and (unset.settings.steps, unset.settings.guidance_scale) == (50, 7.5)
    assert "call" not in unset.settings.key_material()


def test_a_hub_model_in_the_hf_cache_gets_its_native_size_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = cache / "models--someone--flux-like" / "snapshots" / ("a" * 40)
    _folder(snap, "FluxPipeline", **FLUX_CONFIGS)
    (cache / "models--someone--flux-like" / "refs").mkdir()
    (cache / "models--someone--flux-like" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    from tracker.experiment import families, pipeline_source

    families._facts_for.cache_clear()
    pipeline_source.read_configs.cache_clear()
    s = _expand("prompt: a cat\nmodel: someone/flux-like\n", tmp_path).runs[0].settings
    assert (s.steps, s.guidance_scale, s.width, s.height) == (28, 3.5, 1024, 1024)
    families._facts_for.cache_clear()
    pipeline_source.read_configs.cache_clear()


def _refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(SpecError) as e:
        _expand(text, tmp_path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "exp.yaml"))
    return message


def test_call_arguments_are_checked_against_the_pipeline_signature(tmp_path):
    m = _refused(tmp_path, "prompt: a cat\nmodel: tiny\ncall: {guidance_rescal: 0.7}\n")
    assert "call.guidance_rescal" in m and "StableDiffusionPipeline takes no argument 'guidance_rescal'" in m
    assert "did you mean 'guidance_rescale'" in m
    m = _refused(tmp_path, "prompt: a cat\nmodel: tiny\ncall: {clip_skip: two}\n")
    assert "call.clip_skip" in m and "must be" in m and "'two'" in m
    m = _refused(tmp_path, "prompt: a cat\nmodel: tiny\ncall: {latents: 1}\n")
    assert "call.latents" in m and "tensors, images and other objects" in m
    m = _refused(tmp_path, "prompt: a cat\nmodel: tiny\ncall: {num_inference_steps: 3}\n")
    assert "the steps setting" in m
    m = _refused(tmp_path, "prompt: a cat\nmodel: tiny\ncall: {eta: {a: 1}}\n")
    assert "call" in m and "mappings cannot be given" in m
    # in a bundle: the error names the axis value
    m = _refused(tmp_path, """\
        prompt: a cat
        model: tiny
        axes:
          setup: {a: {steps: 2}, b: {call: {clip_skp: 2}}}
        """)
    assert "axes.setup.b.call.clip_skp" in m and "did you mean 'clip_skip'" in m


def test_call_arguments_as_settings_bundles_and_axes(tmp_path):
    p = _expand("""\
        prompt: a cat
        model: tiny
        call: {clip_skip: 2}
        axes:
          rescale: {none: {steps: 2}, strong: {steps: 2, call: {guidance_rescale: 0.7}}}
        """, tmp_path)
    calls = {r.labels["rescale"]: r.settings.call_kwargs() for r in p.runs}
    assert calls == {"none": {"clip_skip": 2}, "strong": {"clip_skip": 2, "guidance_rescale": 0.7}}
    p = _expand("""\
        prompt: a cat
        model: tiny
        call: [{guidance_rescale: 0.0}, {guidance_rescale: 0.7}]
        """, tmp_path)
    assert [r.labels["call"] for r in p.runs] == ["guidance_rescale=0.0", "guidance_rescale=0.7"]
    assert len({r.key for r in p.runs}) == 2


def test_video_pipelines_are_refused_at_plan_time(tmp_path):
    wan = _folder(tmp_path / "wan", "WanPipeline", vae={"base_dim": 96})
    m = _refused(tmp_path, f"prompt: a cat\nmodel: {wan}\n")
    assert "WanPipeline, a video pipeline" in m and "still images" in m


def test_flux1_negative_prompts_need_true_cfg(tmp_path):
    flux = _folder(tmp_path / "flux", "FluxPipeline", **FLUX_CONFIGS)
    m = _refused(tmp_path, f"""\
        prompt: a cat
        model: {flux}
        negative_prompt: {{none: "", bad: "blurry"}}
        """)
    assert "negative_prompt" in m and "call: {true_cfg_scale: 4.0}" in m
    p = _expand(f"""\
        prompt: a cat
        model: {flux}
        negative_prompt: {{none: "", bad: "blurry"}}
        call: {{true_cfg_scale: 4.0}}
        """, tmp_path)
    calls = {r.labels["negative_prompt"]: r.settings.call_kwargs() for r in p.runs}
    # without a negative prompt true CFG is off whatever the scale: the run says what the pipeline does
    assert calls == {"none": {}, "bad": {"true_cfg_scale": 4.0}}
    m = _refused(tmp_path, f"prompt: a cat\nmodel: {flux}\ncall: {{true_cfg_scale: 4.0}}\n")
    assert "call.true_cfg_scale" in m and "only with a negative prompt" in m


def test_flux2_takes_no_negative_prompt(tmp_path):
    flux2 = _folder(tmp_path / "flux2", "Flux2Pipeline", vae={"block_out_channels": [128, 256, 512, 512]})
    m = _refused(tmp_path, f"prompt: a cat\nmodel: {flux2}\nnegative_prompt: blurry\n")
    assert "Flux2Pipeline (FLUX.2) takes no negative prompt" in m
    assert _expand(f"prompt: a cat\nmodel: {flux2}\n", tmp_path).runs[0].settings.guidance_scale == 4.0


def test_flux2_reference_images_are_checked_as_its_pipeline_checks_them(tmp_path):
    """FLUX.2 takes ``image`` as a reference of at least 64 pixels a side and an aspect ratio up to 8 (diffusers'
    Flux2ImageProcessor.check_image_input): refused in one line when the plan is made, not per run."""
    from PIL import Image

    flux2 = _folder(tmp_path / "flux2", "Flux2Pipeline", vae={"block_out_channels": [128, 256, 512, 512]})
    for name, size in (("small", (48, 80)), ("thin", (64, 520)), ("fine", (64, 96))):
        Image.new("RGB", size).save(tmp_path / f"{name}.png")
    m = _refused(tmp_path, f"prompt: a cat\nmodel: {flux2}\nimage: small.png\nsize: 64x64\n")
    assert "image (line 3): 'small.png' is 48x80 pixels; FLUX.2 takes reference images of at least 64" in m
    m = _refused(tmp_path, f"prompt: a cat\nmodel: {flux2}\nimage: thin.png\nsize: 64x64\n")
    assert "'thin.png' is 64x520 pixels; FLUX.2 takes reference images of an aspect ratio up to 8" in m
    assert _expand(f"prompt: a cat\nmodel: {flux2}\nimage: fine.png\nsize: 64x64\n", tmp_path).runs[0].settings.image


def test_qwen_image_cfg_is_the_guidance_setting_and_needs_a_negative_prompt(tmp_path):
    qwen = _folder(tmp_path / "qwen", "QwenImagePipeline", vae={"temperal_downsample": [False, True, True]})
    p = _expand(f"""\
        prompt: a cat
        model: {qwen}
        negative_prompt: {{none: "", bad: "blurry"}}
        guidance_scale: [2.5, 4]
        """, tmp_path)
    runs = {(r.labels["negative_prompt"], r.labels["guidance_scale"]): r for r in p.runs}
    # no negative prompt: no CFG, so both scales are one run (recorded as 1.0, what the pipeline does)
    assert sorted(runs) == [("bad", "2.5"), ("bad", "4.0"), ("none", "2.5")]
    assert runs[("none", "2.5")].settings.guidance_scale == 1.0
    assert runs[("bad", "4.0")].settings.guidance_scale == 4.0
    assert runs[("bad", "4.0")].settings.width == 1024
    m = _refused(tmp_path, f"prompt: a cat\nmodel: {qwen}\nguidance_scale: [2, 4]\n")
    assert "guidance_scale" in m and "negative_prompt" in m
    m = _refused(tmp_path, f"prompt: a cat\nmodel: {qwen}\nnegative_prompt: x\ncall: {{true_cfg_scale: 2}}\n")
    assert "the guidance_scale setting" in m


# ------------------------------------------------------------------------------------ slow: real pipelines


# Per family: a size small enough to be quick (None: the native size, already small), extra call arguments.
SMALL = {
    "sd15": (None, {}), "sdxl": ((32, 32), {}), "sd3": (None, {}), "flux": ((32, 32), {}), "flux2": ((32, 32), {}),
    "qwenimage": ((32, 32), {}), "sana": (None, {"use_resolution_binning": False}),
    "pixart": ((32, 32), {"use_resolution_binning": False}),
}
PROMPT = "a photo of a red cat"


def _yaml(name: str, folder: Path, family: str, extra: str = "", seeds: str = "[0, 1]") -> str:
    size, call = SMALL[family]
    lines = [f"name: {name}", f"model: {folder}", f"prompt: {PROMPT}", f"seeds: {seeds}", "steps: 2"]
    if size:
        lines.append(f"size: {size[0]}x{size[1]}")
    if call:
        lines.append(f"call: {json.dumps(call)}")
    return "\n".join(lines) + "\n" + textwrap.dedent(extra)




_PIPES: dict[str, object] = {}


def _plain(folder: Path, seeds: list[int], **kwargs) -> np.ndarray:
    """Plain diffusers: the pipeline's own call with per-image CPU generators, as 8-bit pixels."""
    import torch
    from diffusers import DiffusionPipeline

    key = str(folder)
    if key not in _PIPES:
        _PIPES[key] = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
        _PIPES[key].set_progress_bar_config(disable=True)
    pipe = _PIPES[key]
    out = pipe(prompt=[PROMPT] * len(seeds), generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
               output_type="np", **kwargs).images
    return (np.asarray(out) * 255).round().astype(int)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_tracker_run_equals_plain_diffusers(family, family_model, cli, write_yaml):
    """``tracker run`` with no guidance set: the family's default is recorded, the images equal a plain diffusers
    call given the same arguments (none for guidance: diffusers' own default), and the native size is used
    where the file sets none; ``tracker reproduce`` of a PNG is identical."""
    folder = family_model(family)
    cls_name, _, guidance, _ = DEFAULTS[family]
    path = write_yaml(_yaml("plain", folder, family))
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.out + res.err
    runs = runs_by_seed(cli, "plain")
    size, call = SMALL[family]
    if size is None:
        import diffusers

        pipe = diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True)
        sample = getattr(pipe, "default_sample_size", None) or (pipe.unet if family in ("sd15",) else
                                                                pipe.transformer).config.sample_size
        native = sample * pipe.vae_scale_factor
        size = (native, native)
    expected_guidance = 1.0 if family == "qwenimage" else guidance  # no negative prompt: Qwen-Image runs no CFG
    for r in runs:
        assert (r["steps"], r["guidance_scale"], r["width"], r["height"]) == (2, expected_guidance, *size)
        assert r["call"] == call
    plain = _plain(folder, [0, 1], num_inference_steps=2, width=size[0], height=size[1], **call)
    for r, want in zip(runs, plain):
        got = pixels(r["image"])
        assert got.shape == want.shape and np.abs(got - want).max() <= 2, family
    res = cli("reproduce", runs[0]["image"])
    assert res.code == 0 and "identical" in res.out, res.out + res.err


NEGATIVE = """\
negative_prompt: {none: "", bad: "blurry ugly bad quality"}
"""


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_negative_prompt_axis_changes_pixels_or_is_refused(family, family_model, cli, write_yaml):
    folder = family_model(family)
    path = write_yaml(_yaml("neg", folder, family, NEGATIVE, seeds="[0]"))
    res = cli("run", path, "--no-mlflow", "-q")
    if family in ("flux", "flux2"):
        assert res.code == 2 and res.err.count("\n") == 1, res.err
        assert "negative_prompt" in res.err
        if family == "flux2":
            return
        assert "call: {true_cfg_scale: 4.0}" in res.err
        text = path.read_text().replace("steps: 2", "steps: 2\ncall: {true_cfg_scale: 4.0}")
        path.write_text(text)
        res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.out + res.err
    runs = {r["axes"]["negative_prompt"]: r for r in runs_by_seed(cli, "neg")}
    assert np.abs(pixels(runs["none"]["image"]) - pixels(runs["bad"]["image"])).max() > 0
    # the negative prompt reaches the pipeline as plain diffusers takes it
    bad = runs["bad"]
    size = (bad["width"], bad["height"])
    kwargs = dict(SMALL[family][1], **({"true_cfg_scale": 4.0} if family == "flux" else {}))
    want = _plain(folder, [0], num_inference_steps=2, width=size[0], height=size[1],
                  negative_prompt=["blurry ugly bad quality"], **kwargs)[0]
    assert np.abs(pixels(bad["image"]) - want).max() <= 2
    assert runs["none"]["call"] == SMALL[family][1]  # true CFG is off without a negative prompt: not recorded


CALL_AXES = {  # an argument that changes pixels, per family: (file text, label of the changed run)
    "sd15": ('call: [{guidance_rescale: 0.0}, {guidance_rescale: 0.7}]\n', "guidance_rescale=0.7"),
    "sdxl": ('call: [{guidance_rescale: 0.0}, {guidance_rescale: 0.7}]\n', "guidance_rescale=0.7"),
    "flux": ('negative_prompt: "blurry ugly"\ncall: [{true_cfg_scale: 1.5}, {true_cfg_scale: 6.0}]\n',
             "true_cfg_scale=6.0"),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CALL_AXES))
def test_call_arguments_reach_the_pipeline_and_round_trip_through_the_png(family, family_model, cli, write_yaml):
    from tracker.images import pngmeta

    folder = family_model(family)
    text, changed = CALL_AXES[family]
    path = write_yaml(_yaml("calls", folder, family, text, seeds="[0]"))
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.out + res.err
    runs = {r["axes"]["call"]: r for r in runs_by_seed(cli, "calls")}
    assert len(runs) == 2
    a, b = (runs[k] for k in sorted(runs) if k != changed), runs[changed]
    a = next(iter(a))
    assert np.abs(pixels(a["image"]) - pixels(b["image"])).max() > 0
    text_chunk, recipe = pngmeta.read_png(b["image"])
    name, value = changed.split("=")
    assert recipe["call"] == {name: float(value)}
    assert "Call: " in text_chunk or "Clip skip" in text_chunk
    size = (b["width"], b["height"])
    extra = {"negative_prompt": ["blurry ugly"]} if family == "flux" else {}
    want = _plain(folder, [0], num_inference_steps=2, width=size[0], height=size[1], **{name: float(value)},
                  **extra)[0]
    assert np.abs(pixels(b["image"]) - want).max() <= 2
    res = cli("reproduce", b["image"])
    assert res.code == 0 and "identical" in res.out, res.out + res.err


def test_call_arguments_in_the_a1111_text_mlflow_params_and_the_store_record(tmp_path):
    """``call:`` in the PNG's A1111 text (Clip skip as A1111 counts it, the rest as Call) and back, as MLflow
    params ``call.<name>``, and on a stored record as a mapping."""
    from tracker.images import pngmeta
    from tracker.mlflow.mapping import child_params
    from tracker.reproduce import a1111
    from tracker.store.records import RunRecord

    run = _expand("prompt: a cat\nmodel: tiny\ncall: {clip_skip: 1, guidance_rescale: 0.7}\n", tmp_path).runs[0]
    recipe = run.to_recipe()
    assert recipe["call"] == {"clip_skip": 1, "guidance_rescale": 0.7}
    params = pngmeta.parse_a1111(pngmeta.a1111_parameters(recipe))
    assert params.settings["Clip skip"] == "2" and json.loads(params.settings["Call"]) == {"guidance_rescale": 0.7}
    again, notes = a1111.run_from_a1111(params)
    assert again.settings.call == run.settings.call and again.key == run.key, notes
    assert not [n for n in notes if "Call" in n or "Clip skip" in n]
    rec = RunRecord(run, "done")
    assert rec.call == {"clip_skip": 1, "guidance_rescale": 0.7}
    mlflow_params = child_params(rec)
    assert mlflow_params["call.clip_skip"] == "1" and mlflow_params["call.guidance_rescale"] == "0.7"
    assert "call" not in mlflow_params
