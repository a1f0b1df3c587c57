"""Prompt weighting per family (issue 23, point 5): compel's own class for the pipeline's family, a family
without one refused in one line, and truncation warnings from the family's own tokenizer and limit.

The slow tests build tiny random-weight pipelines (``tests/families.py``) once per session.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import pixels, runs_by_seed
from tracker.prompts import weighting


def test_the_compel_class_follows_the_pipeline_class():
    import diffusers

    for pipeline, compel_class in weighting.COMPEL_CLASSES.items():
        assert weighting.compel_class_name(object.__new__(getattr(diffusers, pipeline))) == compel_class
    # a subclass is its family (SDXL's img2img is an SDXL pipeline for compel too)
    class MySDXL(diffusers.StableDiffusionXLPipeline):
        pass

    assert weighting.compel_class_name(object.__new__(MySDXL)) == "CompelForSDXL"
    for cls in ("StableDiffusion3Pipeline", "QwenImagePipeline", "Flux2Pipeline", "PixArtSigmaPipeline"):
        assert weighting.compel_class_name(object.__new__(getattr(diffusers, cls))) is None, cls


def test_a_family_without_weighting_is_one_line():
    import diffusers

    from tracker.errors import ModelError

    with pytest.raises(ModelError) as e:
        weighting.check_supported(object.__new__(diffusers.StableDiffusion3Pipeline), "a1111")
    assert str(e.value).startswith("prompt_syntax a1111: family StableDiffusion3Pipeline has no prompt weighting "
                                   "support") and str(e.value).endswith("use prompt_syntax: plain")
    weighting.check_supported(object.__new__(diffusers.StableDiffusion3Pipeline), "plain")  # plain is always fine


# ------------------------------------------------------------------------------------ slow: tiny pipelines


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    import families as builders

    root = tmp_path_factory.mktemp("weighting-models")
    return lambda family: builders.cached(family, root)




@pytest.mark.slow
def test_a1111_weighting_on_flux_is_compel_for_flux(models, cli, write_yaml):
    """A1111 weighting on the tiny Flux equals CompelForFlux's own embeddings passed to a plain call (it built
    CompelForSDXL over CLIP + T5 before); the weight changes the pixels."""
    import compel
    import diffusers
    import torch

    folder = models("flux")
    path = write_yaml(f"name: wflux\nmodel: {folder}\nprompt_syntax: a1111\nseeds: [3]\nsteps: 2\nsize: 32x32\n"
                      "prompt: {plain: 'a photo of a red cat', weighted: 'a photo of a (red:1.6) cat'}\n")
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.out + res.err
    runs = {r["run"]["axes"]["prompt"]: r for r in runs_by_seed(cli, "wflux")}
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    conditioning = compel.CompelForFlux(pipe)
    for label, text in (("plain", "a photo of a red cat"), ("weighted", "a photo of a (red)1.6 cat")):
        r = runs[label]
        with torch.no_grad():
            out = conditioning([text])
        want = pipe(prompt_embeds=out.embeds, pooled_prompt_embeds=out.pooled_embeds, num_inference_steps=2,
                    guidance_scale=r["guidance_scale"], width=32, height=32,
                    generator=[torch.Generator().manual_seed(3)], output_type="np").images[0]
        got = pixels(r["image"])
        assert np.abs(got - (np.asarray(want) * 255).round().astype(int)).max() <= 2, label
    assert np.abs(pixels(runs["plain"]["image"]) - pixels(runs["weighted"]["image"])).max() > 0


@pytest.mark.slow
def test_sdxl_weighting_passes_the_negative_prompt_as_the_negative(models, cli, write_yaml):
    """The SDXL compel call took the negative prompts as its style prompts (the second positional argument of
    CompelForSDXL), so the negative was dropped and the pooled embedding came from it. Unweighted, compel's
    embeddings now give what the pipeline gives the same text (within 2 levels)."""
    import diffusers
    import torch

    folder = models("sdxl")
    path = write_yaml(f"name: wsdxl\nmodel: {folder}\nprompt_syntax: compel\nseeds: [2]\nsteps: 2\nsize: 32x32\n"
                      "prompt: a photo of a red cat\nnegative_prompt: blurry ugly\nguidance_scale: 7.0\n")
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.out + res.err
    (run,) = runs_by_seed(cli, "wsdxl")
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(prompt="a photo of a red cat", negative_prompt="blurry ugly", num_inference_steps=2,
                guidance_scale=7.0, width=32, height=32, generator=[torch.Generator().manual_seed(2)],
                output_type="np").images[0]
    assert np.abs(pixels(run["image"]) - (np.asarray(want) * 255).round().astype(int)).max() <= 2


@pytest.mark.slow
def test_weighting_on_sd3_is_refused_before_anything_is_made(models, cli, write_yaml, tmp_path):
    folder = models("sd3")
    path = write_yaml(f"name: wsd3\nmodel: {folder}\nprompt_syntax: a1111\nseeds: [0]\nsteps: 2\nsize: 32x32\n"
                      "prompt: a (red:1.2) cat\n")
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 2 and "Traceback" not in res.err
    (line,) = res.err.strip().splitlines()
    assert line == (f"error: {path}: prompt_syntax a1111: family StableDiffusion3Pipeline has no prompt weighting "
                    f"support (compel has classes for {', '.join(sorted(weighting.COMPEL_CLASSES))}); "
                    f"use prompt_syntax: plain")
    assert not list((tmp_path / "home").glob("images/**/*.png"))


@pytest.mark.slow
def test_truncation_is_measured_by_the_familys_own_encoder(models, caplog):
    """Flux's conditioning is T5's (512 tokens here), not CLIP's 77: a 100-word prompt is not cut; SD 1.5 cuts it
    at 77; a ``call: {max_sequence_length: 64}`` on Flux cuts it at 64."""
    import diffusers

    from tracker.engine.facts import RecordFacts

    long = "a photo of a red cat" + " with a blue house" * 20  # ~85 words, one token each
    flux = diffusers.DiffusionPipeline.from_pretrained(models("flux"), local_files_only=True)
    sd = diffusers.DiffusionPipeline.from_pretrained(models("sd15"), local_files_only=True)

    def warnings(pipe, call=()) -> list[str]:
        facts = RecordFacts(pipelines=None)
        run = SimpleNamespace(prompt=long, negative_prompt="", settings=SimpleNamespace(call=call))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tracker"):
            facts.warn_truncated(pipe, [run])
        return [r.getMessage() for r in caplog.records if r.name == "tracker"]

    assert warnings(flux) == []
    cut = warnings(sd)
    assert len(cut) == 1, cut
    cut = cut[0]
    assert "the text encoder reads the first 77" in cut, cut
    (cut,) = warnings(flux, (("max_sequence_length", 64),))
    assert "T5EncoderModel (max_sequence_length 64) reads the first 64" in cut
