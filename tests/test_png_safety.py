"""Issue 13, problem 5: a PNG is data from anywhere. It never switches safety off (pickle weights, the Hub),
never asks for unbounded work, and every value in it is checked like an experiment file."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.test_spec_errors import assert_one_line_error
from tracker.images import pngmeta
from tracker.experiment.plan import expand
from tracker.experiment.parse import parse


def _recipe(**settings) -> dict:
    text = "prompt: a red circle\nmodel: tiny\nsteps: 2\nsize: 64x64\nseeds: [3]\n"
    run = expand(parse(text, "t.yaml", default_name="t")).runs[0]
    recipe = pngmeta.recipe_for(run, device_used="cpu")
    recipe.update(settings)
    return recipe


def _png(path: Path, recipe: dict) -> Path:
    pngmeta.save_png(Image.new("RGB", (64, 64), (128, 128, 128)), path, recipe)
    return path


def _pickle_only_tiny(folder: Path) -> Path:
    """The built-in tiny pipeline saved with pickle (.bin) weights only."""
    from diffusers import DiffusionPipeline

    from tracker.experiment.model_refs import builtin_path

    pipe = DiffusionPipeline.from_pretrained(builtin_path("tiny"), local_files_only=True)
    pipe.save_pretrained(folder, safe_serialization=False)
    for st in folder.rglob("*.safetensors"):  # transformers 5 writes safetensors whatever it is told
        import torch
        from safetensors.torch import load_file

        torch.save(load_file(st), st.with_name("pytorch_model.bin"))
        st.unlink()
    assert not list(folder.rglob("*.safetensors")) and list(folder.rglob("*.bin"))
    return folder


def test_allow_pickle_in_a_png_does_not_load_pickle_weights(cli, tmp_path):
    model = _pickle_only_tiny(tmp_path / "pickled")
    png = _png(tmp_path / "evil.png", _recipe(model=str(model), allow_pickle=True))
    res = cli("reproduce", png)
    assert "allow_pickle: true in the PNG (ignored: only --allow-pickle loads pickle weights)" in res.out
    assert_one_line_error(res, "safetensors")
    res = cli("reproduce", png, "--allow-pickle")  # the command line may
    assert res.code in (0, 1), res.err
    assert "pixels" in res.out


def test_a_hub_id_in_a_png_is_not_fetched(cli, tmp_path):
    png = _png(tmp_path / "hub.png", _recipe(model="someorg/some-model"))
    assert_one_line_error(cli("reproduce", png), "hub.png", "model", "Hub id", "--model someorg/some-model")


@pytest.mark.parametrize("field, value, needles", [
    ("dtype", "int8", ["dtype", "float32, float16, bfloat16", "'int8'"]),
    ("width", 7, ["width", "at least 8"]),
    ("steps", 100_000_000, ["steps", "--max-steps"]),
    ("width", 100_000, ["size", "--max-pixels"]),
    ("guidance_scale", -1, ["guidance_scale", "number >= 0"]),
    ("generator_device", "tpu", ["generator_device", "'tpu'"]),
])
def test_bad_or_costly_recipe_values_are_one_line(cli, tmp_path, field, value, needles):
    recipe = _recipe(**{field: value})
    if field == "width" and value == 100_000:
        recipe["height"] = 100_000
    assert_one_line_error(cli("reproduce", _png(tmp_path / "r.png", recipe)), "r.png", *needles)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_a_huge_header_is_refused_before_decoding(cli, tmp_path):
    png = tmp_path / "bomb.png"
    ihdr = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 2, 0, 0, 0)
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
                    + _chunk(b"IEND", b""))
    assert_one_line_error(cli("reproduce", png), "bomb.png", "pixels")


def test_a_huge_text_chunk_is_refused_before_parsing(cli, tmp_path):
    png = tmp_path / "big.png"
    info = PngInfo()
    info.add_text("parameters", "a cat " * 1_700_000 + "\nSteps: 4, Sampler: Euler, Seed: 1, Size: 64x64, Model: tiny")
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)
    started = time.monotonic()
    res = cli("reproduce", png)
    assert_one_line_error(res, "big.png", "parameters text chunk", "at most")
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("adapter, needles", [
    pytest.param({"name": "ink", "scale": 1.0, "sha256": "0" * 64, "source": "someorg/some-lora",
                  "weight_name": "ink.safetensors"}, ["lora[0]", "someorg/some-lora", "not in the Hugging Face cache"],
                 id="hub-adapter"),
    pytest.param({"name": "ink", "scale": 1.0, "sha256": "0" * 64, "source": "/nonexistent/ink.safetensors"},
                 ["lora[0].path", "no such LoRA file"], id="missing-file"),
    pytest.param({"scale": 1.0}, ["lora[0].source", "None"], id="malformed"),
])
def test_lora_adapters_in_a_png_are_checked_like_a_file(cli, tmp_path, adapter, needles):
    """An adapter in a PNG is a local file (or one already in the Hugging Face cache): never fetched, never
    taken unchecked (a malformed one was a KeyError traceback from the engine)."""
    import json

    png = _png(tmp_path / "l.png", _recipe())
    with Image.open(png) as im:  # the recipe chunk as a hostile file has it (the tracker's writer would refuse it)
        image, text = im.copy(), dict(im.text)
    info = PngInfo()
    info.add_text("parameters", text["parameters"])
    info.add_text("prompt-tracker", json.dumps({**json.loads(text["prompt-tracker"]), "lora": [adapter]}))
    image.save(png, pnginfo=info)
    assert_one_line_error(cli("reproduce", png), "l.png", *needles)
