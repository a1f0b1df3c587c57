"""Per-image metrics: the CLIP score plumbing on a tiny CLIP built here (random weights), the shapes
analyzer as a metric on the demo model's images, and a metric added through the entry point group."""

from __future__ import annotations

import math
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import missing_weights_error
from tracker import metrics
from tracker.demo import shapes as demo
from tracker.metrics import MetricError
from tracker.metrics import clip as clipmod

REPO = Path(__file__).resolve().parent.parent
REPO_TOKENIZER = "tracker/models/shapes/tokenizer"


@dataclass
class Run:
    prompt: str
    negative_prompt: str = ""
    axes: dict = field(default_factory=dict)


def build_tiny_clip(folder, seed: int = 0) -> str:
    """A CLIPModel with random weights (text 32-d, vision 32 px / patch 8) and a CLIPProcessor, saved."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(REPO / REPO_TOKENIZER))
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": tokenizer.model_max_length,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(autouse=True)
def _fresh_cache():
    metrics.clear_cache()
    yield
    metrics.clear_cache()


def demo_images(n: int = 12):
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        c, s, b = demo.combos()[(i * 5) % 24]
        out.append((demo.draw(c, s, b, rng), Run(demo.prompt(c, s, b))))
    return out


def test_clip_score_is_finite_and_batch_independent(tiny_clip):
    pairs = demo_images(10)
    images, runs = [p[0] for p in pairs], [p[1] for p in pairs]
    metric = metrics.get("clip_score", {"model": tiny_clip, "batch_size": 4})
    together = metrics.score(metric, images, runs).values["clip_score"]
    alone = [metrics.score(metric, [im], [r]).values["clip_score"][0] for im, r in zip(images, runs)]
    assert len(together) == 10 and all(math.isfinite(v) and -100 <= v <= 100 for v in together)
    assert np.allclose(together, alone, atol=1e-4)
    assert len(set(np.round(together, 6))) > 1  # it looks at the inputs (random weights still vary)
    assert metric.version.startswith("1+" + tiny_clip + "@sha256:")


def test_clip_model_loads_once_per_process(tiny_clip, monkeypatch):
    loads = []
    real = clipmod.load
    monkeypatch.setattr(clipmod, "load", lambda *a: loads.append(a) or real(*a))
    first = metrics.get("clip_score", {"model": tiny_clip})
    again = metrics.get("clip_score", {"model": tiny_clip})
    metrics.score(again, *zip(*demo_images(2)))
    assert first is again and len(loads) == 1
    other = metrics.get("clip_score", {"model": tiny_clip, "batch_size": 2})  # other options: built anew
    assert other is not first and len(loads) == 2


def test_clip_offline_without_weights_is_one_clear_line(monkeypatch, tmp_path):
    text = missing_weights_error(monkeypatch, tmp_path, "clip_score")
    assert "\n" not in text
    assert "openai/clip-vit-base-patch16" in text and "hf download" in text and "HF_HUB_OFFLINE" in text


def test_clip_unknown_option_names_it(tiny_clip):
    with pytest.raises(MetricError, match="unknown option 'modle'"):
        metrics.get("clip_score", {"modle": tiny_clip})


def test_shapes_metric_parts_and_prompt_parsing():
    assert metrics.factory("shapes") is not None
    img = demo.draw("red", "square", "black", 3)
    m = metrics.get("shapes")
    s = metrics.score(m, [img, img, img], [Run("a red square on black"), Run("a blue square on black"),
                                          Run("portrait of a chief")])
    v = s.values
    assert [v["shapes"][0], v["shapes.colour"][0], v["shapes.shape"][0], v["shapes.background"][0]] == [1, 1, 1, 1]
    assert v["shapes.colour"][1] == 0 and v["shapes"][1] == pytest.approx(2 / 3)
    assert all(math.isnan(v[k][2]) for k in v)  # a prompt that names none of them is not judged
    assert s.higher_is_better and s.version == "1"


@pytest.mark.slow
def test_shapes_metric_on_the_demo_model_ranks_the_prompted_colour_first(tmp_path):
    """The shapes model's images for all 4 colours x 3 shapes on white, 4 seeds (48 images)."""
    from tracker.experiment import plan, parse as spec
    from tracker.engine.core import Engine

    demo_file = REPO / "examples" / "shapes.yaml"
    exp = spec.parse(demo_file.read_text(), str(demo_file))
    runs = [r for r in plan.expand(exp).runs if dict(r.axes)["negative"] == "none"]
    engine = Engine(device="cpu")
    engine.prepare(runs[0].settings)
    images = []
    for i in range(0, len(runs), 16):
        images.extend(img.image for img in engine.generate(runs[i:i + 16]).images)
    colour = metrics.score(metrics.get("shapes"), images, runs).values["shapes.colour"]
    assert len(colour) == 48
    assert sum(colour) / len(colour) >= 0.9


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(MetricError, match="unknown metric 'clip'; known: aesthetic, clip_score, hps, pickscore, shapes"):
        metrics.get("clip")


def test_a_metric_from_the_entry_point_group(tmp_path, monkeypatch):
    """A package installed on sys.path with a dist-info declaring a prompt_tracker.metrics entry point."""
    site = tmp_path / "site"
    (site / "brightness_metric").mkdir(parents=True)
    (site / "brightness_metric" / "__init__.py").write_text(textwrap.dedent('''
        import numpy as np

        class Brightness:
            name = "brightness"
            higher_is_better = True
            version = "7"

            def __init__(self, options, device):
                self.scale = options.get("scale", 1.0)

            def score(self, images, runs):
                return [self.scale * float(np.asarray(im.convert("L")).mean()) for im in images]
    '''))
    dist = site / "brightness_metric-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brightness-metric\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{metrics.ENTRY_POINT_GROUP}]\nbrightness = brightness_metric:Brightness\n")
    monkeypatch.syspath_prepend(str(site))
    assert metrics.available()["brightness"] == "brightness_metric:Brightness"
    m = metrics.get("brightness", {"scale": 0.5})
    white, black = Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black")
    s = metrics.score(m, [white, black], [Run("x"), Run("y")])
    assert s.values == {"brightness": [127.5, 0.0]} and s.version == "7"
    monkeypatch.delitem(sys.modules, "brightness_metric", raising=False)


def test_a_metric_breaking_the_protocol_is_refused(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "bad_metric").mkdir(parents=True)
    (site / "bad_metric" / "__init__.py").write_text("class Bad:\n    def __init__(self, options, device):\n        pass\n")
    dist = site / "bad_metric-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-metric\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{metrics.ENTRY_POINT_GROUP}]\nbad = bad_metric:Bad\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(MetricError, match="lacks name, higher_is_better, version, score"):
        metrics.get("bad")
    monkeypatch.delitem(sys.modules, "bad_metric", raising=False)
