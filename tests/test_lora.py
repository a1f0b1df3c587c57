"""LoRA adapters as an axis: a LoRA built here with peft on the tiny model, saved as safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_spec_errors import assert_one_line_error
from tracker.fsutil import sha256_once
from tracker.images import pngmeta
from tracker.experiment.plan import expand
from tracker.prompts import lora
from tracker.experiment.parse import parse_file

FILE = """\
name: ink
model: tiny
prompt: "portrait photo of a old warrior chief"
lora:
  none: []
  ink@0: [{path: loras/ink.safetensors, scale: 0.0}]
  ink@1.0: [{path: loras/ink.safetensors, scale: 1.0}]
  ink@1.0+soft@0.5: [{path: loras/ink.safetensors}, {path: loras/soft.safetensors, scale: 0.5}]
seeds: [2]
scheduler: DPMSolverMultistep
steps: 2
size: 32x32
batch_size: 1
"""


def _make_lora(pipe, folder: Path, name: str, seed: int) -> Path:
    """A random (non-zero) LoRA on the UNet's attention, saved the way diffusers saves trained LoRAs."""
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name=name)
    with torch.no_grad():
        for n, p in pipe.unet.named_parameters():
            if "lora_B" in n and name in n:
                p.mul_(50.0)  # large enough to show in a 2-step image of a random model
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet, adapter_name=name))
    type(pipe).save_lora_weights(folder, unet_lora_layers=state, weight_name=f"{name}.safetensors",
                                 safe_serialization=True)
    pipe.unet.delete_adapters(name)
    return folder / f"{name}.safetensors"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from diffusers import DiffusionPipeline

    from tracker.experiment import model_refs as models

    root = tmp_path_factory.mktemp("lora")
    pipe = DiffusionPipeline.from_pretrained(models.resolve("tiny").location)
    (root / "loras").mkdir()
    _make_lora(pipe, root / "loras", "ink", 1)
    _make_lora(pipe, root / "loras", "soft", 2)
    (root / "exp.yaml").write_text(FILE)
    return root / "exp.yaml"


def test_adapters_are_an_axis_and_their_file_hash_is_in_the_key(experiment, tmp_path):
    p = expand(parse_file(experiment))
    assert [r.labels["lora"] for r in p.runs] == ["none", "ink@0", "ink@1.0", "ink@1.0+soft@0.5"]
    assert len({r.key for r in p.runs}) == 4
    ink = dict(p.runs[2].settings.lora[0])
    assert ink["sha256"] == sha256_once(experiment.parent / "loras" / "ink.safetensors")
    recipe = pngmeta.recipe_for(p.runs[3])
    assert [a["name"] for a in recipe["lora"]] == ["ink", "soft"]
    params = pngmeta.a1111_parameters(recipe)
    assert f'Lora hashes: "ink: {ink["addnet"][:12]}, soft: ' in params
    assert "<lora:ink:1> <lora:soft:0.5>" in params.splitlines()[0]
    # the same file elsewhere gives the same keys (the path is not in the key); another file changes them
    moved = tmp_path / "moved"
    (moved / "loras").mkdir(parents=True)
    for f in (experiment.parent / "loras").iterdir():
        (moved / "loras" / f.name).write_bytes(f.read_bytes())
    (moved / "exp.yaml").write_text(FILE)
    assert [r.key for r in expand(parse_file(moved / "exp.yaml")).runs] == [r.key for r in p.runs]
    (moved / "loras" / "ink.safetensors").write_bytes((moved / "loras" / "soft.safetensors").read_bytes())
    assert expand(parse_file(moved / "exp.yaml")).runs[2].key != p.runs[2].key


@pytest.mark.parametrize("name, text, needles", [
    ("missing", "prompt: a\nlora: [{path: loras/nope.safetensors}]\n", ["exp.yaml: lora[0].path", "no such LoRA"]),
    ("pickle", "prompt: a\nlora: [{path: loras/x.bin}]\n", ["exp.yaml: lora[0]", "not a .safetensors file",
                                                            "allow_pickle"]),
    ("shape", "prompt: a\nlora: [{file: x}]\n", ["exp.yaml: lora[0]", "{path: FILE}"]),
])
def test_bad_lora_entries_are_one_line(cli, tmp_path, name, text, needles):
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "x.bin").write_bytes(b"\0")
    (tmp_path / "exp.yaml").write_text(text)
    assert_one_line_error(cli("expand", tmp_path / "exp.yaml"), *needles)


@pytest.mark.slow
def test_lora_changes_the_image_scale_0_is_none_and_switching_never_reloads(experiment, monkeypatch):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    from tracker.engine.core import Engine

    loads = {"pipeline": 0, "lora": 0}
    real_from_pretrained = DiffusionPipeline.from_pretrained.__func__
    real_load_lora = StableDiffusionPipeline.load_lora_weights

    def counting_from_pretrained(cls, *a, **kw):
        loads["pipeline"] += 1
        return real_from_pretrained(cls, *a, **kw)

    def counting_load_lora(self, *a, **kw):
        loads["lora"] += 1
        return real_load_lora(self, *a, **kw)

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(counting_from_pretrained))
    monkeypatch.setattr(StableDiffusionPipeline, "load_lora_weights", counting_load_lora)
    runs = expand(parse_file(experiment)).runs
    engine = Engine(base_dir=experiment.parent)
    images = {}
    for r in list(runs) + [runs[0], runs[2]]:  # and back: none again, ink again
        images.setdefault(r.labels["lora"], []).append(
            np.asarray(engine.generate([r]).images[0].image, dtype=np.int16))
    none, ink0, ink1, both = (images[k][0] for k in ("none", "ink@0", "ink@1.0", "ink@1.0+soft@0.5"))
    assert np.array_equal(ink0, none)  # scale 0 is no LoRA
    assert np.abs(ink1 - none).max() > 0 and np.abs(both - ink1).max() > 0
    assert np.array_equal(images["none"][1], none) and np.array_equal(images["ink@1.0"][1], ink1)
    assert loads == {"pipeline": 1, "lora": 2}  # the base model once; ink and soft once each


def test_a_lora_runs_png_reproduces_identically(experiment, cli, tmp_path):
    """The PNG's adapters pass trust's checks (a local .safetensors file, its own sha256) and give the same image."""
    assert cli("run", experiment, "--no-mlflow", "-q").code == 0
    runs = {r["axes"]["lora"]: r for r in json.loads(cli("runs", "ink", "--json").out)}
    res = cli("reproduce", runs["ink@1.0+soft@0.5"]["image"])
    assert res.code == 0 and "identical" in res.out, res.out + res.err


# -- what A1111 and the tools around it read -------------------------------------------------------------------


def _infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """A reader written from A1111's documented infotext rules (not its code): the last line holds ``Key: value``
    pairs separated by ", "; a value starting with a double quote is a JSON string (it may hold commas); a line
    starting with "Negative prompt: " begins the negative prompt; the lines before it are the prompt."""
    *body, last = text.split("\n")
    params: dict[str, str] = {}
    i = 0
    while i < len(last):
        colon = last.index(":", i)
        key = last[i:colon].strip()
        j = colon + 1
        while j < len(last) and last[j] == " ":
            j += 1
        if last.startswith('"', j):
            value, end = json.JSONDecoder().raw_decode(last, j)
        else:
            end = last.find(",", j)
            end = len(last) if end < 0 else end
            value = last[j:end].strip()
        params[key] = value
        i = end + 1 if end < len(last) else end
        while i < len(last) and last[i] == " ":
            i += 1
    text = "\n".join(body)
    prompt, _, negative = text.partition("\nNegative prompt: ")
    return prompt, negative, params


def _a1111_lora_hash(path: Path) -> str:
    """A1111's short hash of a safetensors LoRA, computed here from its description: sha256 of what follows the
    8-byte little-endian header length and the header, first 12 hex digits."""
    import hashlib
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + n:]).hexdigest()[:12]


def test_rng_and_lora_hashes_read_back_as_a1111_reads_them(experiment, tmp_path):
    ink_file = experiment.parent / "loras" / "ink.safetensors"
    run = expand(parse_file(experiment)).runs[3]
    prompt, negative, params = _infotext(pngmeta.a1111_parameters(pngmeta.recipe_for(run)))
    assert params["RNG"] == "CPU"
    assert "<lora:ink:1> <lora:soft:0.5>" in prompt
    hashes = dict(part.split(": ") for part in params["Lora hashes"].split(", "))
    assert hashes == {"ink": _a1111_lora_hash(ink_file),
                      "soft": _a1111_lora_hash(experiment.parent / "loras" / "soft.safetensors")}
    assert hashes["ink"] != sha256_once(ink_file)[:12]  # not the whole file's sha256
    # the metadata is in the header: changing it keeps A1111's hash (and changes the file's sha256)
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "ink.safetensors"
    save_file(load_file(str(ink_file)), str(copy), metadata={"ss_output_name": "ink", "note": "edited"})
    assert sha256_once(copy) != sha256_once(ink_file)
    assert _a1111_lora_hash(copy) == hashes["ink"] == lora.addnet_hash(str(copy))[:12]


@pytest.mark.parametrize("which", ["a1111", "sha256", "other"])
def test_reproduce_matches_a_lora_by_either_hash(experiment, which):
    """A genuine A1111 PNG names its LoRA by the addnet hash, older tracker PNGs by the file's sha256: both are the
    file here; any other hash is a note."""
    from tracker.reproduce import a1111

    ink = experiment.parent / "loras" / "ink.safetensors"
    short = {"a1111": _a1111_lora_hash(ink), "sha256": sha256_once(ink)[:12], "other": "0123456789ab"}[which]
    text = (f"a castle <lora:ink:0.8>\nNegative prompt: text\nSteps: 2, Sampler: Euler a, Schedule type: Automatic, "
            f"CFG scale: 7, Seed: 1, Size: 32x32, Model: tiny, RNG: CPU, Lora hashes: \"ink: {short}\", "
            f"Version: v1.10.1")
    run, notes = a1111.run_from_a1111(pngmeta.parse_a1111(text), base_dir=experiment.parent)
    (adapter,) = map(dict, run.settings.lora)
    assert (adapter["name"], adapter["scale"]) == ("ink", 0.8)
    if which == "other":
        assert notes == [f"LoRA ink: the file found has hash {_a1111_lora_hash(ink)} "
                         f"(sha256 {sha256_once(ink)[:12]}), the PNG names 0123456789ab"]
    else:
        assert notes == []
