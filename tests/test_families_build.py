"""The tiny pipelines of every text-to-image family (tests/families.py): they build offline and deterministically,
reload with ``DiffusionPipeline.from_pretrained``, draw with a plain diffusers call, answer the prompt, and the
SD 1.5 / SDXL single files in the original (A1111) layout load back to the same model."""

from __future__ import annotations

import pytest

from families import CLASSES, FAMILIES, NATIVE, build, call_kwargs, digest, write_single_file

PROMPTS = ("a photo of a cat", "an old red castle at night")


def _load(folder):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _draw(pipe, family: str, prompt: str, seed: int = 0, **kwargs):
    import torch

    return pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed),
                **{**call_kwargs(family), **kwargs}).images


@pytest.mark.parametrize("family", FAMILIES)
def test_build_is_deterministic(family, family_model, tmp_path):
    """A second build writes the same model (weights, configs, tokenizer) as the session's one."""
    again = build(family, tmp_path / family)
    assert (again / "model_index.json").is_file()
    assert digest(again) == digest(family_model(family))


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_and_answers_the_prompt(family, family_model):
    import numpy as np

    pipe = _load(family_model(family))
    assert type(pipe).__name__ == CLASSES[family]
    native = getattr(pipe, "default_sample_size", None) or (pipe.unet if family == "sd15" else pipe.transformer
                                                              ).config.sample_size
    assert native * pipe.vae_scale_factor == NATIVE[family]
    first, second = (_draw(pipe, family, p) for p in PROMPTS)
    assert first.shape == second.shape == (1, 32, 32, 3)
    assert np.isfinite(first).all() and 0 <= first.min() and first.max() <= 1 and first.std() > 0.01
    assert np.abs(first - second).max() * 255 >= 4, "two prompts should move the image by several levels"
    assert np.array_equal(first, _draw(pipe, family, PROMPTS[0]))


def test_qwen_tokenizer_splits_the_template_like_qwen(family_model):
    """QwenImagePipeline drops the first 34 tokens of its prompt template (the system part, as the real Qwen2.5
    tokenizer splits it); ours splits it into as many, so what reaches the model is the user's prompt."""
    pipe = _load(family_model("qwenimage"))
    prefix = pipe.prompt_template_encode.split("{}")[0]
    assert len(pipe.tokenizer(prefix).input_ids) == pipe.prompt_template_encode_start_idx == 34


@pytest.mark.parametrize("family, prefixes, model_type", [
    ("sd15", ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."), "v1"),
    ("sdxl", ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.transformer.text_model.",
              "conditioner.embedders.1.model."), "xl_base"),
])
def test_single_file_has_the_original_layout(family, prefixes, model_type, family_single_file):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

    checkpoint = load_single_file_checkpoint(str(family_single_file(family)))
    assert {next(p for p in prefixes if k.startswith(p)) for k in checkpoint} == set(prefixes)
    assert infer_diffusers_model_type(checkpoint) == model_type


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_single_file_draws_like_its_folder(family, family_model, family_single_file):
    import diffusers
    import numpy as np

    folder = family_model(family)
    cls = getattr(diffusers, CLASSES[family])
    single = cls.from_single_file(str(family_single_file(family)), config=str(folder), local_files_only=True)
    single.set_progress_bar_config(disable=True)
    pipe = _load(folder)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            ours, theirs = getattr(pipe, name).state_dict(), getattr(single, name).state_dict()
            assert ours.keys() == theirs.keys()
            assert all(ours[k].equal(theirs[k]) for k in ours), name
    a, b = _draw(pipe, family, PROMPTS[0]), _draw(single, family, PROMPTS[0])
    assert np.abs(a - b).max() * 255 <= 2
