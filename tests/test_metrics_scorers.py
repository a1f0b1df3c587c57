"""Preference scorers through the loading code real weights take: PickScore and the aesthetic predictor on a tiny
random CLIP saved with save_pretrained (as a downloaded folder or a Hugging Face cache entry would be), the
aesthetic head as safetensors in LAION's layouts, and HPS's refusals (open_clip is not installed here: PyPI's
torchvision is the CUDA build and does not import beside a CPU torch, see docs/metrics.md)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from helpers import missing_weights_error
from test_metrics import Run, build_tiny_clip, demo_images
from tracker import metrics
from tracker.metrics import MetricError


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("pick") / "tiny-pickscore", seed=3)


@pytest.fixture(autouse=True)
def _fresh_cache():
    metrics.clear_cache()
    yield
    metrics.clear_cache()


def _pairs(n=6):
    pairs = demo_images(n)
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_pickscore_is_the_logit_scale_times_the_clip_cosine(tiny_clip):
    images, runs = _pairs(6)
    pick = metrics.get("pickscore", {"model": tiny_clip, "batch_size": 4})
    clip = metrics.get("clip_score", {"model": tiny_clip})
    got = metrics.score(pick, images, runs).values["pickscore"]
    cosine = np.array(metrics.score(clip, images, runs).values["clip_score"]) / 100
    scale = float(pick.model.logit_scale.detach().exp())
    assert scale == pytest.approx(math.exp(2.6592), rel=1e-4)  # CLIP's initial logit scale, saved in the folder
    assert np.allclose(got, scale * cosine, atol=1e-4)
    alone = [metrics.score(pick, [im], [r]).values["pickscore"][0] for im, r in zip(images, runs)]
    assert np.allclose(got, alone, atol=1e-4)  # batches of 4 and of 1 agree
    assert pick.version.startswith("1+" + tiny_clip + "@sha256:")


def test_pickscore_takes_its_processor_from_another_folder(tiny_clip, tmp_path):
    import shutil

    weights = tmp_path / "weights-only"
    weights.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(f"{tiny_clip}/{f}", weights / f)
    with pytest.raises(MetricError) as err:
        metrics.get("pickscore", {"model": str(weights)})
    assert "\n" not in str(err.value) and "CLIP processor" in str(err.value) and str(weights) in str(err.value)
    m = metrics.get("pickscore", {"model": str(weights), "processor": tiny_clip})
    images, runs = _pairs(2)
    assert all(math.isfinite(v) for v in metrics.score(m, images, runs).values["pickscore"])
    assert m.version.endswith("+processor:" + tiny_clip)


def test_pickscore_from_the_hugging_face_cache_offline(tiny_clip, tmp_path, monkeypatch):
    """A hub id found in HF_HUB_CACHE (the layout `hf download` writes) loads offline, its commit the revision."""
    import shutil

    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-pickscore"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_clip, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    m = metrics.get("pickscore", {"model": "someone/tiny-pickscore"})
    assert m.version == f"1+someone/tiny-pickscore@{commit}"


def test_pickscore_missing_is_one_line_saying_where_and_how(monkeypatch, tmp_path):
    text = missing_weights_error(monkeypatch, tmp_path, "pickscore")
    assert "\n" not in text and "yuvalkirstain/PickScore_v1" in text and "hf download" in text
    assert "metric_options.pickscore.model" in text


def test_pickscore_refuses_pickle_weights_unless_allowed(tiny_clip, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    import shutil

    for f in __import__("os").listdir(tiny_clip):
        if f != "model.safetensors":
            shutil.copy(f"{tiny_clip}/{f}", folder / f)
    torch.save(load_file(f"{tiny_clip}/model.safetensors"), folder / "pytorch_model.bin")
    with pytest.raises(MetricError, match="no safetensors weights.*allow_pickle: true in metric_options.pickscore"):
        metrics.get("pickscore", {"model": str(folder)})
    m = metrics.get("pickscore", {"model": str(folder), "allow_pickle": True})
    images, runs = _pairs(2)
    assert len(metrics.score(m, images, runs).values["pickscore"]) == 2


def _mlp_head(dims, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    tensors, idx = {}, [0, 2, 4, 6, 7]
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        tensors[f"layers.{idx[i]}.weight"] = torch.randn(b, a, generator=g) / a ** 0.5
        tensors[f"layers.{idx[i]}.bias"] = torch.randn(b, generator=g)
    return tensors


def test_aesthetic_applies_laions_mlp_head_to_the_normalized_image_embedding(tiny_clip, tmp_path):
    import torch
    from safetensors.torch import save_file

    head = _mlp_head([16, 32, 8, 8, 4, 1])  # the improved predictor's layout at the tiny CLIP's 16-d projection
    save_file(head, str(tmp_path / "head.safetensors"))
    m = metrics.get("aesthetic", {"model": tiny_clip, "head": str(tmp_path / "head.safetensors"), "batch_size": 3})
    images, runs = _pairs(5)
    got = metrics.score(m, images, runs).values["aesthetic"]
    # the same numbers by hand: CLIP image features, L2-normalized, through the five linear layers
    pixels = m.processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        x = torch.nn.functional.normalize(m.model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        for i in (0, 2, 4, 6, 7):
            x = x @ head[f"layers.{i}.weight"].T + head[f"layers.{i}.bias"]
    assert np.allclose(got, x[:, 0].tolist(), atol=1e-5)
    assert len(set(np.round(got, 6))) > 1
    assert "+head:sha256:" in m.version


def test_aesthetic_reads_the_single_linear_layout_and_pickles_only_when_allowed(tiny_clip, tmp_path):
    import torch
    from safetensors.torch import save_file

    linear = {"weight": torch.ones(1, 16), "bias": torch.tensor([5.0])}
    save_file(linear, str(tmp_path / "linear.safetensors"))
    torch.save(linear, tmp_path / "linear.pth")
    images, runs = _pairs(3)
    a = metrics.score(metrics.get("aesthetic", {"model": tiny_clip, "head": str(tmp_path / "linear.safetensors")}),
                      images, runs).values["aesthetic"]
    with pytest.raises(MetricError, match="is a pickle; convert it to safetensors"):
        metrics.get("aesthetic", {"model": tiny_clip, "head": str(tmp_path / "linear.pth")})
    b = metrics.score(metrics.get("aesthetic", {"model": tiny_clip, "head": str(tmp_path / "linear.pth"),
                                                "allow_pickle": True}), images, runs).values["aesthetic"]
    assert np.allclose(a, b) and all(v != 5.0 for v in a)


def test_aesthetic_errors_are_one_line(tiny_clip, tmp_path):
    import torch
    from safetensors.torch import save_file

    with pytest.raises(MetricError, match="head is required"):
        metrics.get("aesthetic", {"model": tiny_clip})
    with pytest.raises(MetricError, match=r"no head file .*nope.safetensors.*improved-aesthetic-predictor"):
        metrics.get("aesthetic", {"model": tiny_clip, "head": str(tmp_path / "nope.safetensors")})
    save_file({"layers.0.weight": torch.ones(1, 768), "layers.0.bias": torch.ones(1)}, str(tmp_path / "l14.safetensors"))
    with pytest.raises(MetricError, match="takes 768-d embeddings but .* gives 16-d"):
        metrics.get("aesthetic", {"model": tiny_clip, "head": str(tmp_path / "l14.safetensors")})
    save_file({"layers.0.weight": torch.ones(8, 16), "layers.0.bias": torch.ones(8),
               "layers.2.weight": torch.ones(1, 4), "layers.2.bias": torch.ones(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(MetricError, match="do not chain"):
        metrics.get("aesthetic", {"model": tiny_clip, "head": str(tmp_path / "bad.safetensors")})


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is not None, reason="open_clip is installed here")
def test_hps_without_open_clip_names_the_extra():
    with pytest.raises(MetricError) as err:
        metrics.get("hps")
    assert "\n" not in str(err.value) and "pip install 'prompt-tracker[hps]'" in str(err.value)


def test_hps_checkpoint_pickle_refused_and_missing_cache_named(tmp_path, monkeypatch):
    """The checkpoint rules, before open_clip is needed: a pickle only with allow_pickle, the cache looked up offline."""
    import torch

    from tracker.metrics import hps

    torch.save({"state_dict": {"module.w": torch.ones(2)}}, tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(MetricError, match="is a pickle .* allow_pickle"):
        hps.read_checkpoint(tmp_path / "HPS_v2.1_compressed.pt", allow_pickle=False)
    assert list(hps.read_checkpoint(tmp_path / "HPS_v2.1_compressed.pt", allow_pickle=True)) == ["w"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(MetricError) as err:
        hps.checkpoint_path(None)
    assert "\n" not in str(err.value) and "hf download xswu/HPSv2 HPS_v2.1_compressed.pt" in str(err.value)


def test_scorers_options_are_checked(tiny_clip):
    with pytest.raises(MetricError, match="unknown option 'modle'"):
        metrics.get("pickscore", {"modle": tiny_clip})
    with pytest.raises(MetricError, match="batch_size must be a positive integer"):
        metrics.get("aesthetic", {"head": "x", "batch_size": 0})


def test_hps_with_an_open_clip_that_cannot_import_is_one_line_naming_torchvision(tmp_path, monkeypatch):
    """Injected fault: an ``open_clip`` whose import fails as it does beside PyPI's CUDA torchvision on a CPU torch
    (torchvision 0.28.0's import raises RuntimeError: operator torchvision::nms does not exist)."""
    import sys

    (tmp_path / "open_clip").mkdir()
    (tmp_path / "open_clip" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    with pytest.raises(MetricError) as err:
        metrics.get("hps")
    text = str(err.value)
    assert "\n" not in text and "open_clip is installed but cannot be imported" in text
    assert "torchvision::nms does not exist" in text and "torchvision build made for this torch" in text


@pytest.mark.parametrize("name", ["pickscore", "clip_score"])
def test_clip_scorers_encode_each_distinct_prompt_once_across_batches(tiny_clip, name):
    """Seeds of one prompt share its text embedding: the text tower sees each distinct prompt once per metric
    (counted with a forward hook on the real model), and the values are those of a fresh metric scoring each
    image alone."""
    images, _ = _pairs(6)
    prompts = ["a red circle", "a blue square", "a red circle", "a red circle", "a blue square", "a green triangle"]
    runs = [Run(p) for p in prompts]
    m = metrics.get(name, {"model": tiny_clip, "batch_size": 2})
    counted: list[int] = []
    m.model.text_model.register_forward_pre_hook(
        lambda mod, args, kwargs: counted.append(len(kwargs["input_ids"])), with_kwargs=True)
    first = metrics.score(m, images, runs).values[name]
    again = metrics.score(m, images[::-1], runs[::-1]).values[name]
    # batches (circle, square), (circle, circle), (square, triangle) encode 2, none, 1; the second call none
    assert counted == [2, 1]
    assert np.allclose(again, first[::-1], atol=1e-5)
    metrics.clear_cache()
    fresh = metrics.get(name, {"model": tiny_clip, "batch_size": 1})
    alone = [metrics.score(fresh, [im], [r]).values[name][0] for im, r in zip(images, runs)]
    assert np.allclose(first, alone, atol=1e-4)
