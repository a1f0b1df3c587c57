"""Single-file checkpoints and VAEs (issue 23, point 6): ``model:`` / ``vae:`` take an A1111-style ``.safetensors``
file, loaded with diffusers' ``from_single_file`` and the family's config from a local folder (``{file, config}``)
or, for ``model: x.safetensors``, from the Hugging Face cache of the canonical repo of the type read from its keys
(offline, never downloaded). The file's sha256 is the run's model revision and its first 10 hex digits the PNG's
``Model hash``, so an A1111 PNG with that hash finds the file in the run store.

The files are written in the original (CompVis/SGM) key layout from the tiny SD 1.5 and SDXL pipelines of
tests/families.py (fixtures ``family_model`` and ``family_single_file``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_tracker
from helpers import pixels, runs_by_seed
from tracker.experiment import single_file
from tracker.fsutil import sha256_once

PROMPT = "a photo of a red cat"


def _yaml(name: str, model: str, extra: str = "", size: str | None = "size: 32x32") -> str:
    lines = [f"name: {name}", f"model: {model}", f"prompt: {PROMPT}", "seeds: [0, 1]", "steps: 3"]
    if size:
        lines.append(size)
    return "\n".join(lines) + "\n" + extra




def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _one_line_error(res, path, *says: str) -> str:
    assert res.code == 2, res.out + res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.err, res.err
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    for s in says:
        assert s in lines[0], lines[0]
    return lines[0]


def _fake_hub_cache(cache: Path, repo: str, folder: Path) -> Path:
    """``repo`` in a Hugging Face cache layout holding ``folder``'s configs and tokenizers (no weights), as
    ``hf download`` would have left them: what ``model: x.safetensors`` reads its config from, offline."""
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    for f in folder.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".txt"):
            (snapshot / f.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, snapshot / f.relative_to(folder))
    (snapshot.parents[1] / "refs").mkdir(parents=True, exist_ok=True)
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    return snapshot


# ------------------------------------------------------------------------------------ pure: what the file is


@pytest.mark.parametrize("family, kind", [("sd15", "v1"), ("sdxl", "xl_base")])
def test_the_type_is_read_from_the_header_as_diffusers_infers_it(family, kind, family_single_file):
    """The header's keys and shapes (no tensor read, no torch) give the type diffusers' own
    ``infer_diffusers_model_type`` gives for the loaded state dict."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors.torch import load_file

    path = family_single_file(family)
    keys = single_file.header(path)
    assert single_file.model_type(keys) == kind
    assert infer_diffusers_model_type(load_file(str(path))) == kind


def test_hashes_are_a1111s(tmp_path):
    """A1111's ``Model hash`` is the first 10 hex digits of the file's sha256 (CheckpointInfo.shorthash); its
    older 8-digit hash is the sha256 of the 64 KiB at offset 1 MiB."""
    data = os.urandom(0x100000 + 0x10000 + 100)
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    full = hashlib.sha256(data).hexdigest()
    assert sha256_once(path) == full and single_file.short_hash(path) == full[:10]
    legacy = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert single_file.legacy_hash(path) == legacy
    assert single_file.matches_hash(path, full[:10].upper()) and single_file.matches_hash(path, legacy)
    assert not single_file.matches_hash(path, "0123456789") and not single_file.matches_hash(path, "nothex!!")


def test_native_size_comes_from_the_config_without_torch(family_model, family_single_file, tmp_path):
    """``tracker expand`` in a fresh process: the plan reads the safetensors header and the config's JSON only."""
    folder, file = family_model("sdxl"), family_single_file("sdxl")
    exp = tmp_path / "exp.yaml"
    exp.write_text(_yaml("native", f"{{file: {file}, config: {folder}}}", size=None))
    code = ("import sys\nfrom tracker.experiment import parse, plan\n"
            f"p = plan.expand(parse.parse_file({str(exp)!r}))\n"
            "print(p.runs[0].settings.width, p.runs[0].settings.height, p.runs[0].settings.model)\n"
            "print('torch' in sys.modules, 'diffusers' in sys.modules)\n")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout.split("\n")
    assert out[0] == f"64 64 {file}?config={folder}"  # the tiny SDXL's native size (32 x 2)
    assert out[1] == "False False"


# ------------------------------------------------------------------------------------ pure: bad inputs


def test_bad_single_files_are_one_line_exit_2(cli, write_yaml, tmp_path, family_model, family_single_file):
    sd15, sd15_file, sdxl = family_model("sd15"), family_single_file("sd15"), family_model("sdxl")
    vae_only = tmp_path / "vae.safetensors"
    from safetensors.numpy import save_file

    save_file({"decoder.up.0.block.0.conv1.weight": np.zeros((1, 1), np.float32)}, str(vae_only))
    odd = tmp_path / "odd.safetensors"
    save_file({"something.else": np.zeros((1,), np.float32)}, str(odd))
    flux = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": np.zeros((1,), np.float32)}, str(flux))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    cases = [
        (f"{tmp_path}/missing.safetensors", "model", ["no such file"]),
        (str(garbage), "model", ["is not a safetensors file"]),
        (str(ckpt), "model", ["is a pickle file (.ckpt)", "allow_pickle: true"]),
        (str(vae_only), "model", ["is a VAE, not a whole checkpoint; give it as vae:"]),
        (str(odd), "model", ["has no UNet in the original layout"]),
        (str(flux), "model", ["is a FLUX.1 transformer single file", "supported: SD 1.x/2.x and SDXL"]),
        (str(sd15_file), "model", ["is a Stable Diffusion 1.x checkpoint (diffusers type 'v1')",
                                   "looked in the Hugging Face cache for stable-diffusion-v1-5/stable-diffusion-v1-5",
                                   "config: FOLDER-OR-HUB-ID"]),
        (f"{{file: {sd15_file}, config: {sdxl}}}", "model",
         ["is a Stable Diffusion 1.x checkpoint, but config", "is a StableDiffusionXLPipeline"]),
        (f"{{file: {sd15_file}, config: nobody/nothing}}", "model", ["neither a local folder nor a Hub id in the"]),
        (f"{{file: {sd15_file}, confg: {sd15}}}", "model", ["must be a name, or a mapping with file"]),
        (f"{{file: {sd15}}}", "model", ["file: must be a single weights file"]),
    ]
    for value, field, says in cases:
        path = write_yaml(_yaml("bad", value))
        line = _one_line_error(cli("expand", path), path, *says)
        assert f": {field} (line 2): " in line, line
    path = write_yaml(_yaml("bad", str(sd15), f"vae: {odd}\n"))
    _one_line_error(cli("run", path, "--no-mlflow"), path, "vae (line 7):", "has no VAE in the original layout")
    path = write_yaml(_yaml("bad", str(sd15), f"vae: {tmp_path}/nope.safetensors\n"))
    _one_line_error(cli("run", path, "--no-mlflow"), path, "no such file")
    assert not (tmp_path / "home" / "images").exists()


# ------------------------------------------------------------------------------------ slow: generating


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_single_file_checkpoint_makes_the_images_of_its_folder(family, family_model, family_single_file, cli,
                                                                write_yaml):
    folder, file = family_model(family), family_single_file(family)
    res = cli("run", write_yaml(_yaml("folder", str(folder)), "a.yaml"), "--no-mlflow", "-q")
    assert res.code == 0, res.out + res.err
    res = cli("run", write_yaml(_yaml("file", f"{{file: {file}, config: {folder}}}"), "b.yaml"), "--no-mlflow", "-q")
    assert res.code == 0, res.out + res.err
    want, got = runs_by_seed(cli, "folder"), runs_by_seed(cli, "file")
    sha = _sha256(file)
    for a, b in zip(want, got):
        assert b["status"] == "done" and b["model"] == f"{file}?config={folder}"
        assert np.abs(pixels(a["image"]) - pixels(b["image"])).max() <= 2, (family, b["seed"])
        assert b["model_revision"] == f"sha256:{sha}"
        with Image.open(b["image"]) as im:
            assert f"Model hash: {sha[:10]}," in im.text["parameters"]
    res = cli("reproduce", got[0]["image"])
    assert res.code == 0 and "identical" in res.out, res.out + res.err
    assert "model hash differs" not in res.err and "model revision differs" not in res.err


@pytest.mark.slow
def test_model_x_safetensors_takes_its_config_from_the_hf_cache_offline(family_model, family_single_file, tmp_path):
    """No ``config:``: the type read from the keys (v1) names the canonical repo, whose configs are taken from the
    Hugging Face cache (here one made by the test), offline; nothing is downloaded. A fresh process, so that
    HF_HUB_CACHE is read at import."""
    folder, file = family_model("sd15"), family_single_file("sd15")
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "stable-diffusion-v1-5/stable-diffusion-v1-5", folder)
    exp = tmp_path / "exp.yaml"
    exp.write_text(_yaml("inferred", str(file), size=None))
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRACKER_HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    res = run_tracker("run", exp, "--no-mlflow", "-q", env=env)
    assert res.code == 0, res.out + res.err
    res = run_tracker("runs", "inferred", "--json", env=env)
    runs = json.loads(res.out)
    assert {(r["width"], r["height"]) for r in runs} == {(64, 64)}  # the config's native size
    assert {r["model_revision"] for r in runs} == {f"sha256:{_sha256(file)}"}
    res = run_tracker("reproduce", runs[0]["image"], env=env)
    assert res.code == 0 and "identical" in res.out, res.out + res.err


def _other_vae(folder: Path, out: Path) -> tuple[Path, Path]:
    """The tiny SD 1.5 VAE with changed decoder weights, saved as a diffusers folder and as an original-layout
    single file (bare ``encoder.*``/``decoder.*`` keys, as A1111 VAE files are)."""
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    import families

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(0.5)
        vae.decoder.conv_out.bias.add_(0.2)
    vae.save_pretrained(out / "vae-folder")
    state = families.vae_to_original(dict(vae.state_dict()), dict(vae.config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "vae.safetensors"))
    return out / "vae-folder", out / "vae.safetensors"


@pytest.mark.slow
def test_a_single_file_vae_is_the_vae_of_its_folder(family_model, cli, write_yaml, tmp_path):
    folder = family_model("sd15")
    vae_folder, vae_file = _other_vae(folder, tmp_path)
    for name, vae in (("own", "default"), ("vfolder", str(vae_folder)), ("vfile", str(vae_file))):
        res = cli("run", write_yaml(_yaml(name, str(folder), f"vae: {vae}\n"), f"{name}.yaml"), "--no-mlflow", "-q")
        assert res.code == 0, res.out + res.err
    own, by_folder, by_file = (runs_by_seed(cli, n) for n in ("own", "vfolder", "vfile"))
    for a, b, c in zip(own, by_folder, by_file):
        assert np.abs(pixels(b["image"]) - pixels(c["image"])).max() <= 2
        assert np.abs(pixels(a["image"]) - pixels(c["image"])).max() > 10  # the VAE was used
        assert c["vae"] == str(vae_file)
        with Image.open(c["image"]) as im:
            assert f"VAE hash: {_sha256(vae_file)[:10]}," in im.text["parameters"]
    res = cli("reproduce", by_file[0]["image"])
    assert res.code == 0 and "identical" in res.out, res.out + res.err


@pytest.mark.slow
def test_an_a1111_png_finds_its_single_file_by_model_hash(family_model, family_single_file, cli, write_yaml,
                                                         tmp_path):
    """A PNG from A1111 (parameters only: ``Model hash`` is the file's short hash, ``Model`` its stem, which names
    nothing here) is reproduced with the single file of that hash known in the run store; the older 8-digit hash
    and ``--model FILE`` work too."""
    folder, file = family_model("sd15"), family_single_file("sd15")
    res = cli("run", write_yaml(_yaml("made", f"{{file: {file}, config: {folder}}}")), "--no-mlflow", "-q")
    assert res.code == 0, res.out + res.err
    run = runs_by_seed(cli, "made")[1]
    from PIL.PngImagePlugin import PngInfo

    with Image.open(run["image"]) as im:
        made = im.text["parameters"]
    made = re.sub(r", Tracker (key|experiment): [^,\n]+", "", made)
    assert f"Model hash: {_sha256(file)[:10]}, Model: " in made
    for name, model_hash in (("a1111.png", _sha256(file)[:10]), ("legacy.png", single_file.legacy_hash(file))):
        info = PngInfo()  # what A1111 writes: the hash and the checkpoint's stem; no recipe chunk
        info.add_text("parameters", re.sub(r"Model hash: \w+, Model: [^,\n]+", f"Model hash: {model_hash}, Model: sd15",
                                           made))
        with Image.open(run["image"]) as im:
            im.save(tmp_path / name, pnginfo=info)
        res = cli("reproduce", tmp_path / name)
        assert res.code == 0 and "identical" in res.out, res.out + res.err
        assert f"the file with Model hash {model_hash} is {file}?config={folder}, found in the run store" in res.out
        assert "model hash differs" not in res.err
    res = cli("reproduce", tmp_path / "a1111.png", "--model", f"{file}?config={folder}")
    assert res.code == 0 and "identical" in res.out and "model hash differs" not in res.err, res.out + res.err
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other.safetensors"
    save_file(load_file(str(file)), str(other), metadata={"note": "a copy"})  # the same weights, another hash
    res = cli("reproduce", tmp_path / "a1111.png", "--model", f"{other}?config={folder}")
    assert f"model hash differs: {_sha256(file)[:10]} in the PNG, {_sha256(other)[:10]} now" in res.err
