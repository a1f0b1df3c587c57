"""ControlNet, IP-Adapter and refiner hand-off (tracker.engine.conditioning) on tiny models built in the tests
(tests/conditioning.py): the tracker's path makes the pixels a plain diffusers call makes with the same arguments
and seeds, a ControlNet of another family is one clear error before anything is generated, and scales move pixels."""

from __future__ import annotations

import numpy as np
import pytest

import conditioning as fixtures

STEPS = 3


def _u8(images) -> np.ndarray:
    return (np.asarray(images) * 255).round().astype(np.int16)


def _gens(seeds):
    import torch

    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def _kwargs(seeds=(0, 1), prompt="a red house", size=64):
    return {"prompt": [prompt] * len(seeds), "num_inference_steps": STEPS, "width": size, "height": size,
            "generator": _gens(seeds), "output_type": "np"}


def _load(folder):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tracker(base, cond, seeds=(0, 1), **kw):
    import torch
    from tracker.engine.conditioning import Conditioner

    from tracker.engine.variants import PipelineVariants
    from tracker.experiment.settings import Settings

    conditioner = kw.pop("conditioner", None) or Conditioner()
    variants = kw.pop("variants", None) or PipelineVariants()
    prepared = conditioner.prepare(base, cond, dtype=torch.float32, allow_pickle=False, model="tiny",
                                   base_location=kw.pop("base_location", None))
    pipe = variants.pipeline(base, Settings(model="tiny"), prepared.components)  # as Engine.generate makes it
    return _u8(conditioner.call(prepared, pipe, base, {**_kwargs(seeds, **kw), **prepared.kwargs(pipe)}).images)


@pytest.mark.slow
def test_one_controlnet_matches_plain_diffusers(family_model, conditioning_model):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from tracker.engine.conditioning import Conditioning

    sd, cn = family_model("sd15"), conditioning_model("controlnet", "sd15")
    image = fixtures.control_image(64)
    ours = _tracker(_load(sd), Conditioning(controlnet=(str(cn),), control_image=(image,),
                                            controlnet_conditioning_scale=(0.7,), control_guidance_end=(0.8,)))
    plain = StableDiffusionControlNetPipeline(**_load(sd).components, controlnet=ControlNetModel.from_pretrained(cn))
    plain.set_progress_bar_config(disable=True)
    ref = _u8(plain(**_kwargs(), image=image, controlnet_conditioning_scale=0.7, control_guidance_end=0.8).images)
    assert ours.shape == ref.shape == (2, 64, 64, 3)
    assert np.abs(ours - ref).max() <= 2
    without = _u8(_load(sd)(**_kwargs()).images)
    assert np.abs(ours - without).max() > 10  # the ControlNet did change the image


@pytest.mark.slow
def test_two_controlnets_match_plain_diffusers(family_model, conditioning_model, tmp_path):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from tracker.engine.conditioning import Conditioning

    sd = family_model("sd15")
    cn1 = conditioning_model("controlnet", "sd15")
    cn2 = fixtures.controlnet(sd, tmp_path / "cn2", seed=11)
    images = (fixtures.control_image(64, 0), fixtures.control_image(64, 3))
    ours = _tracker(_load(sd), Conditioning(controlnet=(str(cn1), str(cn2)), control_image=images,
                                            controlnet_conditioning_scale=(1.0, 0.5)))
    plain = StableDiffusionControlNetPipeline(**_load(sd).components, controlnet=[
        ControlNetModel.from_pretrained(cn1), ControlNetModel.from_pretrained(cn2)])
    plain.set_progress_bar_config(disable=True)
    ref = _u8(plain(**_kwargs(), image=list(images), controlnet_conditioning_scale=[1.0, 0.5]).images)
    assert np.abs(ours - ref).max() <= 2
    one = _tracker(_load(sd), Conditioning(controlnet=(str(cn1),), control_image=images[:1]))
    assert np.abs(ours - one).max() > 10


@pytest.mark.slow
def test_ip_adapter_matches_plain_diffusers_and_unloads(family_model, conditioning_model):
    from tracker.engine.conditioning import Conditioner, Conditioning

    sd, ipa = family_model("sd15"), conditioning_model("ip_adapter", "sd15")
    ref_image = fixtures.reference_image(32)
    weights = {"path": str(ipa), "weight_name": fixtures.IP_WEIGHT_NAME}
    base, conditioner = _load(sd), Conditioner()
    ours = _tracker(base, Conditioning(ip_adapter=weights, ip_adapter_image=ref_image, ip_adapter_scale=0.6),
                    conditioner=conditioner)
    plain = _load(sd)
    plain.load_ip_adapter(str(ipa), subfolder="", weight_name=fixtures.IP_WEIGHT_NAME,
                          image_encoder_folder="image_encoder")
    plain.set_ip_adapter_scale(0.6)
    ref = _u8(plain(**_kwargs(), ip_adapter_image=ref_image).images)
    assert np.abs(ours - ref).max() <= 2
    # the next run has no IP-Adapter: the same pipeline draws what the plain model draws
    after = _tracker(base, Conditioning(), conditioner=conditioner)
    without = _u8(_load(sd)(**_kwargs()).images)
    assert np.abs(after - without).max() <= 2
    assert np.abs(ours - without).max() > 10
    assert base.image_encoder is None
    # and back again: from the cache, the same pixels
    again = _tracker(base, Conditioning(ip_adapter=weights, ip_adapter_image=ref_image, ip_adapter_scale=0.6),
                     conditioner=conditioner)
    assert np.abs(again - ours).max() <= 2


@pytest.mark.slow
def test_refiner_hand_off_matches_plain_diffusers(family_model, conditioning_model):
    from diffusers import DiffusionPipeline
    from tracker.engine.conditioning import Conditioner, Conditioning

    xl, refiner = family_model("sdxl"), conditioning_model("refiner", "sdxl")
    base, conditioner = _load(xl), Conditioner()
    cond = Conditioning(refiner=str(refiner), denoising_end=0.6)
    ours = _tracker(base, cond, conditioner=conditioner, base_location=str(xl))
    loaded = next(iter(conditioner.refiners.values()))
    assert loaded.text_encoder_2 is base.text_encoder_2 and loaded.vae is base.vae  # shared, as diffusers' docs do

    plain = _load(xl)
    plain_refiner = DiffusionPipeline.from_pretrained(refiner, text_encoder_2=plain.text_encoder_2, vae=plain.vae)
    plain_refiner.set_progress_bar_config(disable=True)
    kw = _kwargs()
    latents = plain(**{**kw, "output_type": "latent"}, denoising_end=0.6).images
    ref = _u8(plain_refiner(prompt=kw["prompt"], num_inference_steps=STEPS, generator=kw["generator"], image=latents,
                            denoising_start=0.6, output_type="np").images)
    assert np.abs(ours - ref).max() <= 2
    base_only = _u8(_load(xl)(**_kwargs()).images)
    assert np.abs(ours - base_only).max() > 2


def test_controlnet_of_another_family_is_one_clear_error(family_model, conditioning_model):
    import torch
    from tracker.engine.conditioning import Conditioner, Conditioning
    from tracker.errors import ConditioningError
    from tracker.errors import TrackerError

    base = _load(family_model("sd15"))
    xl_cn = conditioning_model("controlnet", "sdxl")
    with pytest.raises(ConditioningError) as err:
        Conditioner().prepare(base, Conditioning(controlnet=(str(xl_cn),), control_image=(fixtures.control_image(),)),
                              dtype=torch.float32, allow_pickle=False, model="tiny")
    msg = str(err.value)
    assert isinstance(err.value, TrackerError) and "\n" not in msg
    assert msg.startswith(f"controlnet {str(xl_cn)!r}: made for another model family than model 'tiny'")
    assert "cross_attention_dim 96 (model: 32)" in msg and "addition_embed_type 'text_time' (model: None)" in msg


def test_missing_controlnet_and_pickle_only_are_one_line(family_model, tmp_path):
    import torch
    from tracker.engine.conditioning import Conditioner, Conditioning
    from tracker.errors import ConditioningError
    from tracker.errors import ModelError

    base = _load(family_model("sd15"))
    with pytest.raises(ModelError, match="no diffusers model in local folder"):
        Conditioner().prepare(base, Conditioning(controlnet=(str(tmp_path / "nope"),), control_image=(None,)),
                              dtype=torch.float32, allow_pickle=False, model="tiny")
    (tmp_path / "cn.ckpt").write_bytes(b"x")
    with pytest.raises(ConditioningError, match="pickle file"):
        Conditioner().prepare(base, Conditioning(controlnet=(str(tmp_path / "cn.ckpt"),), control_image=(None,)),
                              dtype=torch.float32, allow_pickle=False, model="tiny")


@pytest.mark.slow
def test_conditioning_scale_values_make_different_images(family_model, conditioning_model):
    from tracker.engine.conditioning import Conditioner, Conditioning

    sd, cn = family_model("sd15"), conditioning_model("controlnet", "sd15")
    from tracker.engine.variants import PipelineVariants

    base, conditioner, variants = _load(sd), Conditioner(), PipelineVariants()
    images = [_tracker(base, Conditioning(controlnet=(str(cn),), control_image=(fixtures.control_image(),),
                                          controlnet_conditioning_scale=(s,)), seeds=(0,), conditioner=conditioner,
                       variants=variants)
              for s in (0.0, 0.5, 1.0)]
    assert len(conditioner.controlnets) == 1 and len(variants._made) == 1  # loaded and made once
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(images[a] - images[b]).max() > 10


def test_family_mismatch_reads_the_configs():
    from tracker.engine.conditioning import family_mismatch

    sd = {"in_channels": 4, "cross_attention_dim": 768, "block_out_channels": [320, 640, 1280, 1280],
          "layers_per_block": 2, "addition_embed_type": None}
    assert family_mismatch({**sd, "conditioning_embedding_out_channels": [16, 32, 96, 256]}, sd, 8) == []
    xl = {**sd, "cross_attention_dim": 2048, "addition_embed_type": "text_time"}
    assert family_mismatch(xl, sd) == ["cross_attention_dim 2048 (model: 768)",
                                       "addition_embed_type 'text_time' (model: None)"]
    assert family_mismatch({"conditioning_embedding_out_channels": [16, 32]}, sd, 8) == [
        "control image downsampled 2x (model's latents: 8x)"]


# ---------------------------------------------------------------------------------------------- end to end


def _plain_controlnet(sd, cn, image, scale, seed):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    plain = StableDiffusionControlNetPipeline(**_load(sd).components, controlnet=ControlNetModel.from_pretrained(cn))
    plain.set_progress_bar_config(disable=True)
    kw = {**_kwargs((seed,)), "prompt": ["a red house"]}
    return _u8(plain(**kw, image=image, controlnet_conditioning_scale=scale).images)[0]


def _stored(home, name):
    """Each stored run's labels and pixels (uint8, as the PNG holds them), read back through the Python API."""
    import tracker

    runs = tracker.open(home).runs(name)
    return [(r.labels, np.asarray(r.image.convert("RGB")).astype(np.int16)) for r in runs]


@pytest.mark.slow
def test_a_controlnet_scale_axis_through_tracker_run(cli, write_yaml, tmp_path, conditioning_model):
    """``tracker run`` with ``controlnet:``, ``control_image:`` and a conditioning-scale axis: three scales make three
    different images, each what a plain diffusers ControlNet call with the same seed makes; the report shows them."""
    from tracker.experiment import model_refs

    cn = conditioning_model("controlnet", "sd15")
    (tmp_path / "pics").mkdir()
    control = fixtures.control_image(64)
    control.save(tmp_path / "pics" / "control.png")
    f = write_yaml(f"""
        name: cn
        model: tiny
        prompt: a red house
        seeds: [0]
        steps: {STEPS}
        controlnet: {cn}
        control_image: pics/control.png
        controlnet_conditioning_scale: [0.0, 0.5, 1.0]
    """)
    r = cli("run", f, "--no-mlflow")
    assert r.code == 0, r.err
    assert "3 done" in r.out
    stored = {labels["controlnet_conditioning_scale"]: px for labels, px in _stored(tmp_path / "home", "cn")}
    assert sorted(stored) == ["0.0", "0.5", "1.0"]
    tiny = model_refs.builtin_path("tiny")
    for label, px in stored.items():
        assert np.abs(px - _plain_controlnet(tiny, cn, control, float(label), 0)).max() <= 2, label
    values = list(stored.values())
    assert all(np.abs(values[a] - values[b]).max() > 10 for a in range(3) for b in range(a + 1, 3))


@pytest.mark.slow
def test_ip_adapter_and_refiner_through_tracker_run(cli, write_yaml, tmp_path, conditioning_model, family_model):
    """``ip_adapter:``/``ip_adapter_image:`` and ``refiner:``/``denoising_end:`` in experiment files run end to end
    and make what the plain diffusers calls make."""
    from diffusers import DiffusionPipeline
    from tracker.experiment import model_refs

    ipa, xl, refiner = (conditioning_model("ip_adapter", "sd15"), family_model("sdxl"),
                        conditioning_model("refiner", "sdxl"))
    (tmp_path / "pics").mkdir()
    fixtures.reference_image(32).save(tmp_path / "pics" / "ref.png")
    ip = write_yaml(f"""
        name: ip
        model: tiny
        prompt: a red house
        seeds: [0]
        steps: {STEPS}
        ip_adapter: {{path: {ipa}, weight_name: {fixtures.IP_WEIGHT_NAME}}}
        ip_adapter_image: pics/ref.png
        ip_adapter_scale: 0.6
    """, "ip.yaml")
    ref = write_yaml(f"""
        name: refine
        model: {xl}
        prompt: a red house
        seeds: [0]
        steps: {STEPS}
        size: 64x64
        refiner: {refiner}
        denoising_end: 0.6
    """, "ref.yaml")
    for f in (ip, ref):
        r = cli("run", f, "--no-mlflow")
        assert r.code == 0 and "1 done" in r.out, r.err

    plain = _load(model_refs.builtin_path("tiny"))
    plain.load_ip_adapter(str(ipa), subfolder="", weight_name=fixtures.IP_WEIGHT_NAME, image_encoder_folder="image_encoder")
    plain.set_ip_adapter_scale(0.6)
    from PIL import Image

    want = _u8(plain(**{**_kwargs((0,)), "prompt": ["a red house"]},
                     ip_adapter_image=Image.open(tmp_path / "pics" / "ref.png")).images)[0]
    [(_, got)] = _stored(tmp_path / "home", "ip")
    assert np.abs(got - want).max() <= 2

    base = _load(xl)
    plain_refiner = DiffusionPipeline.from_pretrained(refiner, text_encoder_2=base.text_encoder_2, vae=base.vae)
    plain_refiner.set_progress_bar_config(disable=True)
    kw = {**_kwargs((0,)), "prompt": ["a red house"]}
    latents = base(**{**kw, "output_type": "latent"}, denoising_end=0.6).images
    want = _u8(plain_refiner(prompt=kw["prompt"], num_inference_steps=STEPS, generator=kw["generator"],
                             image=latents, denoising_start=0.6, output_type="np").images)[0]
    [(_, got)] = _stored(tmp_path / "home", "refine")
    assert np.abs(got - want).max() <= 2


def test_a_controlnet_of_another_family_in_an_experiment_file_is_one_line(cli, write_yaml, tmp_path,
                                                                          conditioning_model):
    xl_cn = conditioning_model("controlnet", "sdxl")
    (tmp_path / "pics").mkdir()
    fixtures.control_image(64).save(tmp_path / "pics" / "control.png")
    f = write_yaml(f"""
        name: wrong
        model: tiny
        prompt: a red house
        steps: 2
        controlnet: {xl_cn}
        control_image: pics/control.png
    """)
    r = cli("run", f, "--no-mlflow")
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    assert lines[0].startswith(f"error: {f}: controlnet {str(xl_cn)!r}: made for another model family")
    assert not (tmp_path / "home" / "images" / "wrong").exists()  # nothing generated


def test_the_controlnet_example_expands_with_its_control_image_recorded_by_hash():
    import hashlib

    from conftest import EXAMPLES
    from tracker.experiment import parse as spec, plan

    exp = spec.parse_file(EXAMPLES / "controlnet-scales.yaml")
    digest = hashlib.sha256((EXAMPLES / "inputs" / "house-edges.png").read_bytes()).hexdigest()
    p = plan.expand(exp)
    assert len(p.runs) == 3 * 3 * 2 * 2 and set(exp.inputs) == {digest}
    assert {r.settings.control_image for r in p.runs} == {(digest,)}
    assert {r.settings.controlnet for r in p.runs} == {("lllyasviel/sd-controlnet-canny",)}
    assert sorted({r.settings.controlnet_conditioning_scale for r in p.runs}) == [0.4, 0.7, 1.0]
    assert len({r.key for r in p.runs}) == len(p.runs)


def test_the_examples_control_image_is_what_the_script_draws(tmp_path):
    import runpy
    import shutil

    from PIL import Image

    from conftest import EXAMPLES

    shutil.copy(EXAMPLES / "inputs" / "make.py", tmp_path / "make.py")
    runpy.run_path(str(tmp_path / "make.py"))
    with Image.open(tmp_path / "house-edges.png") as a, Image.open(EXAMPLES / "inputs" / "house-edges.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_the_engine_counts_and_evicts_a_controlnet_with_the_pipeline_that_used_it(conditioning_model):
    """A warm worker's cache budget sees a pipeline's ControlNet and IP-Adapter as part of it; unloading the pipeline
    drops them (nothing else uses them), and a run without an IP-Adapter takes it back out of the UNet."""
    from tracker.engine.core import Engine
    from tracker.experiment.settings import Settings

    cn, ipa = conditioning_model("controlnet", "sd15"), conditioning_model("ip_adapter", "sd15")
    engine = Engine(device="cpu")
    plain = Settings(model="tiny", steps=2, width=64, height=64)
    engine.prepare(plain)
    key = engine.pipeline_key(plain)
    alone = engine.pipeline_bytes()[key]
    ip = {"path": str(ipa), "weight_name": fixtures.IP_WEIGHT_NAME}
    cond = Settings(model="tiny", steps=2, width=64, height=64, controlnet=(str(cn),), control_image=("ab" * 32,),
                    ip_adapter=tuple(sorted(ip.items())), ip_adapter_image="cd" * 32)
    engine.prepare(cond)
    assert engine.pipeline_key(cond) == key  # the same pipeline, with more beside it
    conditioner = engine.conditioner
    cn_bytes = sum(p.numel() * p.element_size() for p in next(iter(conditioner.controlnets.values())).parameters())
    assert engine.pipeline_bytes()[key] > alone + cn_bytes
    pipe = engine.pipelines.pipes[key].pipe
    assert pipe.image_encoder is not None
    engine.prepare(plain)
    assert pipe.image_encoder is None and getattr(pipe.unet, "_tracker_ip_adapter", None) is None
    engine.unload(key)
    assert not conditioner.controlnets and not conditioner.ip_adapters and not conditioner.used


def test_a_refiner_with_weighted_prompts_or_without_denoising_end_is_refused_up_front(family_model,
                                                                                      conditioning_model):
    import torch
    from tracker.engine.conditioning import Conditioner, Conditioning
    from tracker.errors import ConditioningError

    base, refiner = _load(family_model("sdxl")), str(conditioning_model("refiner", "sdxl"))
    conditioner = Conditioner()
    with pytest.raises(ConditioningError, match="prompt_syntax a1111 .* use prompt_syntax: plain"):
        conditioner.prepare(base, Conditioning(refiner=refiner, denoising_end=0.8), dtype=torch.float32,
                            allow_pickle=False, model="xl", prompt_syntax="a1111")
    with pytest.raises(ConditioningError, match="give denoising_end"):
        conditioner.prepare(base, Conditioning(refiner=refiner), dtype=torch.float32, allow_pickle=False, model="xl")
    assert not conditioner.refiners  # refused before anything was loaded


@pytest.mark.slow
def test_a_single_file_controlnet_with_its_config_draws_what_its_folder_draws(family_model, conditioning_model,
                                                                              tmp_path):
    import shutil

    from tracker.engine.conditioning import Conditioning
    from tracker.experiment import single_file

    sd, cn = family_model("sd15"), conditioning_model("controlnet", "sd15")
    file = tmp_path / "control.safetensors"
    shutil.copy(cn / "diffusion_pytorch_model.safetensors", file)
    image = (fixtures.control_image(64),)
    from_file = _tracker(_load(sd), Conditioning(controlnet=(single_file.canonical(str(file), str(cn)),),
                                                 control_image=image), seeds=(0,))
    from_folder = _tracker(_load(sd), Conditioning(controlnet=(str(cn),), control_image=image), seeds=(0,))
    assert np.array_equal(from_file, from_folder)


@pytest.mark.slow
def test_an_sdxl_controlnet_matches_plain_diffusers(family_model, conditioning_model):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline
    from tracker.engine.conditioning import Conditioning

    xl, cn = family_model("sdxl"), conditioning_model("controlnet", "sdxl")
    image = fixtures.control_image(64)
    ours = _tracker(_load(xl), Conditioning(controlnet=(str(cn),), control_image=(image,),
                                            controlnet_conditioning_scale=(0.8,)), seeds=(0,))
    plain = StableDiffusionXLControlNetPipeline(**_load(xl).components, controlnet=ControlNetModel.from_pretrained(cn))
    plain.set_progress_bar_config(disable=True)
    ref = _u8(plain(**_kwargs((0,)), image=image, controlnet_conditioning_scale=0.8).images)
    assert np.abs(ours - ref).max() <= 2
    assert np.abs(ours - _u8(_load(xl)(**_kwargs((0,))).images)).max() > 10


def test_the_png_parameters_carry_a1111s_controlnet_and_refiner_fields():
    from tracker.images import pngmeta

    base = {"prompt": "a house", "steps": 20, "seed": 1, "model": "sd15"}
    text = pngmeta.a1111_parameters({**base, "controlnet": ["lllyasviel/sd-controlnet-canny", "pose"],
                                     "controlnet_conditioning_scale": [0.7, 1.0], "control_guidance_start": 0.0,
                                     "control_guidance_end": 0.5})
    assert ('ControlNet 0: "Module: none, Model: lllyasviel/sd-controlnet-canny, Weight: 0.7, Guidance Start: 0, '
            'Guidance End: 0.5"') in text
    assert 'ControlNet 1: "Module: none, Model: pose, Weight: 1, Guidance Start: 0, Guidance End: 0.5"' in text
    parsed = pngmeta.parse_a1111(text)
    assert parsed.settings["ControlNet 1"].startswith("Module: none, Model: pose")
    text = pngmeta.a1111_parameters({**base, "refiner": "stabilityai/stable-diffusion-xl-refiner-1.0",
                                     "denoising_end": 0.8, "controlnet": []})
    assert "Refiner: stabilityai/stable-diffusion-xl-refiner-1.0, Refiner switch at: 0.8" in text
    assert "ControlNet" not in text and "Refiner" not in pngmeta.a1111_parameters(base)


@pytest.mark.slow
def test_a_users_pipeline_gets_the_ip_adapter_taken_out_again(tmp_path, write_yaml, family_model, conditioning_model):
    """``tracker.run(exp, pipeline=pipe)`` with an IP-Adapter: the runs use it, and the user's pipeline comes back
    without it (no image encoder, no IP-Adapter attention processors)."""
    import tracker

    ipa = conditioning_model("ip_adapter", "sd15")
    (tmp_path / "pics").mkdir()
    fixtures.reference_image(32).save(tmp_path / "pics" / "ref.png")
    f = write_yaml(f"""
        name: users
        prompt: a red house
        seeds: [0]
        steps: {STEPS}
        ip_adapter: {{path: {ipa}, weight_name: {fixtures.IP_WEIGHT_NAME}, image_encoder: {ipa / "image_encoder"}}}
        ip_adapter_image: pics/ref.png
        ip_adapter_scale: [0.0, 1.0]
    """)
    pipe = _load(family_model("sd15"))
    processors = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
    result = tracker.run(tracker.Experiment.from_yaml(f), home=tmp_path / "home", mlflow=False, pipeline=pipe)
    assert result.done == 2
    a, b = [px for _, px in _stored(tmp_path / "home", "users")]
    assert np.abs(a - b).max() > 10  # the adapter was in use
    assert pipe.image_encoder is None
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == processors


def test_the_refiner_shares_a_component_only_where_both_configs_are_read_and_equal(family_model,
                                                                                   conditioning_model, tmp_path):
    from tracker.engine.refiner import component_config

    xl, refiner = family_model("sdxl"), conditioning_model("refiner", "sdxl")
    assert component_config(str(refiner), "vae") == component_config(str(xl), "vae") is not None
    assert "_diffusers_version" not in component_config(str(xl), "vae")
    assert component_config(str(refiner), "unet") != component_config(str(xl), "unet")
    (tmp_path / "base.safetensors").write_bytes(b"")
    assert component_config(str(tmp_path / "base.safetensors"), "vae") is None  # a single file: not shared
    assert component_config("nobody/not-cached", "vae") is None  # a Hub id not in the cache: not shared


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flux", "sd3", "qwenimage"])
def test_a_transformer_controlnet_scale_axis_matches_plain_diffusers(family, cli, write_yaml, tmp_path,
                                                                     family_model, conditioning_model):
    """A FLUX.1, an SD3 and a Qwen-Image ControlNet (transformer ControlNets, tests/conditioning.py) with a
    ``controlnet_conditioning_scale`` axis through ``tracker run``: each image equals a plain
    ``FluxControlNetPipeline`` / ``StableDiffusion3ControlNetPipeline`` call with the same arguments and seed (torch's
    global generator seeded with it too: SD3's ControlNet pipeline draws from it), the scale moves pixels, and
    the PNG reproduces identically."""
    import diffusers

    base, cn = family_model(family), conditioning_model("controlnet", family)
    (tmp_path / "pics").mkdir()
    fixtures.control_image(32).save(tmp_path / "pics" / "control.png")
    f = write_yaml(f"""
        name: cn-{family}
        model: {base}
        prompt: a red house
        seeds: [0]
        steps: {STEPS}
        size: 32x32
        controlnet: {cn}
        control_image: pics/control.png
        controlnet_conditioning_scale: [0.0, 0.8]
    """, f"cn-{family}.yaml")
    r = cli("run", f, "--no-mlflow", "-q")
    assert r.code == 0 and "2 done" in r.out, r.out + r.err
    import tracker

    runs = {run.record.controlnet_conditioning_scale: run.record
            for run in tracker.open(tmp_path / "home").runs(f"cn-{family}")}
    assert sorted(runs) == [0.0, 0.8]
    pipeline, model = {"flux": ("FluxControlNetPipeline", "FluxControlNetModel"),
                       "sd3": ("StableDiffusion3ControlNetPipeline", "SD3ControlNetModel"),
                       "qwenimage": ("QwenImageControlNetPipeline", "QwenImageControlNetModel")}[family]
    plain = getattr(diffusers, pipeline)(**_load(base).components,
                                         controlnet=getattr(diffusers, model).from_pretrained(cn))
    plain.set_progress_bar_config(disable=True)
    from PIL import Image

    import torch

    got = {}
    for scale, rec in runs.items():
        torch.manual_seed(0)  # SD3's ControlNet pipeline samples the control latent from the global generator
        want = _u8(plain(**_kwargs((0,), size=32), control_image=Image.open(tmp_path / "pics" / "control.png"),
                         controlnet_conditioning_scale=scale, guidance_scale=rec.guidance_scale).images)[0]
        got[scale] = np.asarray(Image.open(rec.image).convert("RGB"), dtype=np.int16)
        assert got[scale].shape == want.shape and np.abs(got[scale] - want).max() <= 2, (family, scale)
    assert np.abs(got[0.8] - got[0.0]).max() > 10  # the ControlNet's scale moves pixels
    r = cli("reproduce", runs[0.8].image)
    assert r.code == 0 and "identical" in r.out, r.out + r.err


@pytest.mark.slow
def test_a_flux_ip_adapter_in_xlabs_layout_matches_plain_diffusers(cli, write_yaml, tmp_path, family_model,
                                                                   conditioning_model):
    """A FLUX.1 IP-Adapter in XLabs' file layout (tests/conditioning.py), its image encoder given as a model of
    its own (as XLabs' is openai/clip-vit-large-patch14), with an ``ip_adapter_scale`` axis through
    ``tracker run``: each image equals a plain FluxPipeline with ``load_ip_adapter`` (the same file and image
    encoder) and ``set_ip_adapter_scale``, the scale moves pixels, and the PNG reproduces identically."""
    import torch
    from PIL import Image

    base, ipa = family_model("flux"), conditioning_model("ip_adapter", "flux")
    (tmp_path / "pics").mkdir()
    fixtures.reference_image(32).save(tmp_path / "pics" / "ref.png")
    f = write_yaml(f"""
        name: ip-flux
        model: {base}
        prompt: a red house
        seeds: [0]
        steps: {STEPS}
        size: 32x32
        ip_adapter: {{path: {ipa}, weight_name: {fixtures.IP_WEIGHT_NAME}, image_encoder: {ipa / "image_encoder"}}}
        ip_adapter_image: pics/ref.png
        ip_adapter_scale: [0.0, 1.0]
    """, "ip-flux.yaml")
    r = cli("run", f, "--no-mlflow", "-q")
    assert r.code == 0 and "2 done" in r.out, r.out + r.err
    import tracker

    runs = {run.record.ip_adapter_scale: run.record for run in tracker.open(tmp_path / "home").runs("ip-flux")}
    plain = _load(base)
    plain.load_ip_adapter(str(ipa), weight_name=fixtures.IP_WEIGHT_NAME,
                          image_encoder_pretrained_model_name_or_path=str(ipa / "image_encoder"),
                          image_encoder_dtype=torch.float32)
    got = {}
    for scale, rec in sorted(runs.items()):
        plain.set_ip_adapter_scale(scale)
        want = _u8(plain(**_kwargs((0,), size=32), ip_adapter_image=Image.open(tmp_path / "pics" / "ref.png"),
                         guidance_scale=rec.guidance_scale).images)[0]
        got[scale] = np.asarray(Image.open(rec.image).convert("RGB"), dtype=np.int16)
        assert got[scale].shape == want.shape and np.abs(got[scale] - want).max() <= 2, scale
    assert np.abs(got[1.0] - got[0.0]).max() > 10  # the adapter's scale moves pixels
    r = cli("reproduce", runs[1.0].image)
    assert r.code == 0 and "identical" in r.out, r.out + r.err
