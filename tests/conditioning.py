"""Tiny conditioning models for tests: ControlNets, an IP-Adapter and an SDXL refiner, built offline from configs.

Each is written as files a user would have on disk, so the tracker loads them the way it loads real ones:

- ``controlnet(base, out)``: a ``ControlNetModel`` made with ``ControlNetModel.from_unet`` from the tiny base
  pipeline's UNet (so its config matches that family: SD 1.5 ``tiny`` or the tiny SDXL of tests/families.py), saved
  as a folder (config.json + diffusion_pytorch_model.safetensors). ``from_unet`` zero-initialises the ControlNet's
  output convolutions (a real untrained ControlNet changes nothing); here they get random weights (seeded) so the
  control image and ``controlnet_conditioning_scale`` move pixels. Its ``conditioning_embedding_out_channels`` has
  one more entry than the VAE downsamples (x2 each): the control image is embedded to the latent size.
- ``ip_adapter(base, out)``: an IP-Adapter in the layout of h94/IP-Adapter's ``models/`` folder:
  ``out/ip-adapter.safetensors`` with ``image_proj.proj.{weight,bias}``, ``image_proj.norm.{weight,bias}``
  (diffusers' ``ImageProjection``: 4 image tokens of the UNet's cross-attention width) and
  ``ip_adapter.{1,3,5,...}.to_{k,v}_ip.weight`` (one pair per cross-attention processor, in ``attn_processors``
  order, numbered as diffusers' ``_convert_ip_adapter_attn_to_diffusers`` reads them), and
  ``out/image_encoder/``: a tiny ``CLIPVisionModelWithProjection`` (32 px images, 8 px patches, width 32,
  projection 32). ``pipe.load_ip_adapter(out, subfolder="", weight_name="ip-adapter.safetensors",
  image_encoder_folder="image_encoder")`` loads both with no hub access.
- ``refiner(base_folder, out)``: an SDXL refiner (``StableDiffusionXLImg2ImgPipeline``, ``requires_aesthetics_score``,
  no first text encoder) sharing the tiny SDXL's ``text_encoder_2``/``tokenizer_2`` and VAE, with its own UNet of
  cross-attention width 64 (the second encoder's) and ``5 * 8 + 64`` add-embedding inputs (original size, crop,
  aesthetic score, pooled text), as diffusers' test_stable_diffusion_xl_img2img ``skip_first_text_encoder=True``.

Sizes: ControlNet (SD) ~0.6 M parameters, the IP-Adapter ~60 k plus a 40 k image encoder, the refiner UNet ~1.9 M.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SEED = 7
IP_WEIGHT_NAME = "ip-adapter.safetensors"


def _replace(tmp: Path, out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _fresh(out: Path) -> Path:
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def controlnet(base_folder: Path, out: Path, seed: int = SEED, gain: float = 0.5) -> Path:
    """A ControlNet folder for the diffusers pipeline at ``base_folder`` (see the module's docstring)."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    base_folder, out = Path(base_folder), Path(out)
    unet = UNet2DConditionModel.from_pretrained(base_folder, subfolder="unet")
    vae_blocks = len(AutoencoderKL.load_config(base_folder / "vae")["block_out_channels"])
    torch.manual_seed(seed)
    channels = tuple([8, 16, 32, 32][:vae_blocks])  # vae_blocks - 1 stride-2 convolutions: the VAE's downsampling
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels, load_weights_from_unet=True)
    with torch.no_grad():
        for module in (*cn.controlnet_down_blocks, cn.controlnet_mid_block,
                       cn.controlnet_cond_embedding.conv_out):
            torch.nn.init.normal_(module.weight, std=gain)
            torch.nn.init.normal_(module.bias, std=gain)
    tmp = _fresh(out)
    cn.eval().save_pretrained(tmp, safe_serialization=True)
    return _replace(tmp, out)


def transformer_controlnet(base_folder: Path, out: Path, seed: int = SEED, gain: float = 0.5) -> Path:
    """A ControlNet folder for a transformer pipeline (the tiny FLUX.1, SD3 or Qwen-Image of tests/families.py):
    diffusers' ``FluxControlNetModel.from_transformer`` / ``QwenImageControlNetModel.from_transformer`` / an
    ``SD3ControlNetModel`` of the transformer's config, one block each, with its zero-initialised output projections given random weights (seeded) so that it moves pixels."""
    import torch
    from diffusers import (FluxControlNetModel, FluxTransformer2DModel, QwenImageControlNetModel,
                           QwenImageTransformer2DModel, SD3ControlNetModel, SD3Transformer2DModel)

    base_folder, out = Path(base_folder), Path(out)
    cls_name = FluxTransformer2DModel.load_config(base_folder / "transformer")["_class_name"]
    torch.manual_seed(seed)
    if cls_name == "QwenImageTransformer2DModel":
        t = QwenImageTransformer2DModel.from_pretrained(base_folder, subfolder="transformer")
        cn = QwenImageControlNetModel.from_transformer(t, num_layers=1, attention_head_dim=t.config.attention_head_dim,
                                                       num_attention_heads=t.config.num_attention_heads)
        outputs = [*cn.controlnet_blocks, cn.controlnet_x_embedder]
    elif cls_name == "FluxTransformer2DModel":
        t = FluxTransformer2DModel.from_pretrained(base_folder, subfolder="transformer")
        cn = FluxControlNetModel.from_transformer(t, num_layers=1, num_single_layers=1,
                                                  attention_head_dim=t.config.attention_head_dim,
                                                  num_attention_heads=t.config.num_attention_heads)
        outputs = [*cn.controlnet_blocks, *cn.controlnet_single_blocks, cn.controlnet_x_embedder]
    else:
        c = SD3Transformer2DModel.load_config(base_folder / "transformer")
        cn = SD3ControlNetModel(**{k: c[k] for k in ("sample_size", "patch_size", "in_channels", "attention_head_dim",
                                                    "num_attention_heads", "joint_attention_dim",
                                                    "caption_projection_dim", "pooled_projection_dim",
                                                    "out_channels")}, num_layers=1)
        outputs = [*cn.controlnet_blocks, cn.pos_embed_input.proj]
    with torch.no_grad():
        for module in outputs:
            torch.nn.init.normal_(module.weight, std=gain)
            torch.nn.init.normal_(module.bias, std=gain)
    tmp = _fresh(out)
    cn.eval().save_pretrained(tmp, safe_serialization=True)
    return _replace(tmp, out)


def image_encoder(seed: int = SEED, projection: int = 32):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, projection_dim=projection, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, image_size=32, patch_size=8, num_channels=3)
    return CLIPVisionModelWithProjection(cfg).eval()


def ip_adapter_state(unet, embed_dim: int = 32, seed: int = SEED, tokens: int = 4) -> dict:
    """The flat IP-Adapter state dict (``image_proj.*``, ``ip_adapter.*``) for ``unet`` (see the docstring)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    blocks = unet.config.block_out_channels

    def rand(*shape, std=0.3):
        return (torch.randn(*shape, generator=gen) * std).contiguous()

    state = {"image_proj.proj.weight": rand(tokens * cross, embed_dim), "image_proj.proj.bias": rand(tokens * cross),
             "image_proj.norm.weight": 1 + rand(cross, std=0.1), "image_proj.norm.bias": rand(cross, std=0.1)}
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        state[f"ip_adapter.{key}.to_k_ip.weight"] = rand(hidden, cross, std=1.0)
        state[f"ip_adapter.{key}.to_v_ip.weight"] = rand(hidden, cross, std=1.0)
        key += 2
    return state


def ip_adapter(base_folder: Path, out: Path, seed: int = SEED) -> Path:
    """An IP-Adapter for the pipeline at ``base_folder``: ``out/ip-adapter.safetensors`` + ``out/image_encoder/``."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    base_folder, out = Path(base_folder), Path(out)
    unet = UNet2DConditionModel.from_pretrained(base_folder, subfolder="unet")
    encoder = image_encoder(seed)
    tmp = _fresh(out)
    tmp.mkdir(parents=True)
    save_file(ip_adapter_state(unet, encoder.config.projection_dim, seed), str(tmp / IP_WEIGHT_NAME))
    encoder.save_pretrained(tmp / "image_encoder")
    return _replace(tmp, out)


def flux_ip_adapter(base_folder: Path, out: Path, seed: int = SEED, tokens: int = 4) -> Path:
    """A FLUX.1 IP-Adapter in XLabs' layout (XLabs-AI/flux-ip-adapter's ``ip_adapter.safetensors``:
    ``ip_adapter_proj_model.{proj,norm}.*`` projecting the image embedding to ``tokens`` tokens of the
    transformer's ``joint_attention_dim``, and ``double_blocks.N.processor.ip_adapter_double_stream_{k,v}_proj.*``
    per double block), written as ``out/ip-adapter.safetensors`` with ``out/image_encoder/``."""
    import torch
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    base_folder, out = Path(base_folder), Path(out)
    config = FluxTransformer2DModel.load_config(base_folder / "transformer")
    joint, inner = config["joint_attention_dim"], config["num_attention_heads"] * config["attention_head_dim"]
    encoder = image_encoder(seed)
    embed = encoder.config.projection_dim
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.3):
        return (torch.randn(*shape, generator=gen) * std).contiguous()

    state = {"ip_adapter_proj_model.proj.weight": rand(tokens * joint, embed),
             "ip_adapter_proj_model.proj.bias": rand(tokens * joint),
             "ip_adapter_proj_model.norm.weight": 1 + rand(joint, std=0.1),
             "ip_adapter_proj_model.norm.bias": rand(joint, std=0.1)}
    for block in range(config["num_layers"]):
        for kv in ("k", "v"):
            name = f"double_blocks.{block}.processor.ip_adapter_double_stream_{kv}_proj"
            state[f"{name}.weight"], state[f"{name}.bias"] = rand(inner, joint, std=1.0), rand(inner, std=0.3)
    tmp = _fresh(out)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / IP_WEIGHT_NAME))
    encoder.save_pretrained(tmp / "image_encoder")
    return _replace(tmp, out)


def refiner(base_folder: Path, out: Path, seed: int = SEED) -> Path:
    """A tiny SDXL refiner folder sharing ``base_folder``'s (the tiny SDXL's) second text encoder and VAE."""
    import torch
    from diffusers import DiffusionPipeline, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    base = DiffusionPipeline.from_pretrained(base_folder)
    width = base.text_encoder_2.config.hidden_size
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=5 * 8 + base.text_encoder_2.config.projection_dim,
        cross_attention_dim=width, norm_num_groups=8)
    pipe = StableDiffusionXLImg2ImgPipeline(vae=base.vae, text_encoder=None, text_encoder_2=base.text_encoder_2,
                                            tokenizer=None, tokenizer_2=base.tokenizer_2, unet=unet.eval(),
                                            scheduler=base.scheduler, requires_aesthetics_score=True,
                                            force_zeros_for_empty_prompt=False, add_watermarker=False)
    tmp = _fresh(Path(out))
    pipe.save_pretrained(tmp, safe_serialization=True)
    return _replace(tmp, Path(out))


def cached(kind: str, base_family: str, base_folder: Path, root: Path) -> Path:
    """``root/<kind>-<base_family>``, built from ``base_folder`` the first time it is asked for."""
    out = Path(root) / f"{kind}-{base_family}"
    if not out.exists():
        if kind == "controlnet" and base_family in ("flux", "sd3", "qwenimage"):
            transformer_controlnet(base_folder, out)
        elif kind == "ip_adapter" and base_family == "flux":
            flux_ip_adapter(base_folder, out)
        else:
            {"controlnet": controlnet, "ip_adapter": ip_adapter, "refiner": refiner}[kind](base_folder, out)
    return out


def control_image(size: int = 64, seed: int = 0):
    """A control image (PIL RGB): a bright square on black, placed by ``seed``."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size))
    a = (seed * 7) % (size // 2)
    ImageDraw.Draw(img).rectangle((a, size // 4, a + size // 2, size // 4 + size // 2), fill=(255, 255, 255))
    return img


def reference_image(size: int = 32, seed: int = 0):
    """An IP-Adapter reference image (PIL RGB): a smooth colour gradient, varied by ``seed``."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, (x + y + seed * 0.3) % 1.0], -1)
    return Image.fromarray((rgb * 255).astype("uint8"))
