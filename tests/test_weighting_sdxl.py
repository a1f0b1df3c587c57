"""Weighting on an SDXL pipeline: compel's two-encoder mode (CompelForSDXL), on a tiny SDXL built here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tracker.experiment.plan import expand
from tracker.experiment.parse import parse


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    """A tiny random StableDiffusionXLPipeline (two CLIP text encoders) saved with save_pretrained."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from tracker.experiment import model_refs as models

    torch.manual_seed(0)
    tiny = models.resolve("tiny").location
    tokenizer = CLIPTokenizer.from_pretrained(tiny, subfolder="tokenizer")
    config = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                            vocab_size=len(tokenizer), projection_dim=32, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64, norm_num_groups=1)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=32)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(config), tokenizer=tokenizer,
                                     text_encoder_2=CLIPTextModelWithProjection(config), tokenizer_2=tokenizer,
                                     unet=unet, scheduler=scheduler)
    folder = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl"
    pipe.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_sdxl_prompts_go_through_both_encoders(sdxl_folder):
    from tracker.engine.core import Engine

    engine = Engine()

    def image(prompt: str, syntax: str) -> np.ndarray:
        text = (f"model: {json.dumps(str(sdxl_folder))}\nprompt: {json.dumps(prompt)}\nnegative_prompt: blurry\n"
                f"prompt_syntax: {syntax}\nseeds: [1]\nsteps: 2\nsize: 32x32\n")
        run = expand(parse(text, "x.yaml")).runs[0]
        return np.asarray(engine.generate([run]).images[0].image, dtype=np.int16)

    plain = image("a red circle", "compel")
    weighted = image("a (red)1.8 circle", "compel")
    assert np.abs(weighted - plain).max() > 0
    assert np.array_equal(image("a (red:1.8) circle", "a1111"), weighted)
    assert image("a red circle" + ", white" * 40, "compel").shape == plain.shape  # past 77 tokens: chunked
