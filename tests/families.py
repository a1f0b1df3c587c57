"""Tiny random-weight pipelines of each text-to-image family, built offline for tests.

`build(family, folder)` writes a complete diffusers folder (``save_pretrained``: model_index.json, safetensors,
tokenizers, scheduler) from configs only: no hub, fixed torch seeds, the same files on every build. Sizes follow
diffusers' own ``tests/pipelines/<family>/`` ``get_dummy_components``, with the changes noted below; tokenizers
are made here with the ``tokenizers``-backed transformers classes (byte-level BPE for CLIP/Qwen, SentencePiece-style
BPE with byte fallback for Gemma/Mistral, Unigram for T5). `write_single_file` writes SD 1.5/SDXL folders as one
original-layout (A1111/CompVis/SGM) ``.safetensors``. In tests use the session fixtures ``family_model(family)``
and ``family_single_file(family)`` (tests/conftest.py); `call_kwargs(family)` gives a fast plain call.

## The tiny models (diffusers 0.42.1, transformers 5.25)

| family | class | parameters | folder | native size |
|---|---|---|---|---|
| sd15 | StableDiffusionPipeline | UNet 0.99 M, VAE 0.24 M, CLIP 33 k (the builtin ``tiny``) | 5.1 MB | 16 x 4 = 64 |
| sdxl | StableDiffusionXLPipeline | UNet 2.0 M, VAE 0.66 M, CLIP 57 k + 267 k | 12 MB | 32 x 2 = 64 |
| sd3 | StableDiffusion3Pipeline | MMDiT 41 k, VAE 3 k, CLIP 58 k x 2, T5 45 k | 2.1 MB | 32 x 1 = 32 |
| flux | FluxPipeline | transformer 78 k, VAE 3 k, CLIP 57 k, T5 23 k | 0.7 MB | 128 x 1 = 128 |
| flux2 | Flux2Pipeline | transformer 78 k, VAE 3 k, Mistral3 91 k (30 layers) | 0.8 MB | 128 x 1 = 128 |
| qwenimage | QwenImagePipeline | transformer 191 k, VAE 4.1 M, Qwen2.5-VL 47 k | 17 MB | 128 x 4 = 512 |
| sana | SanaPipeline | transformer 4 k, DC-AE 10 k, Gemma2 7 k | 0.1 MB | 32 x 2 = 64 (call default 1024) |
| pixart | PixArtSigmaPipeline | transformer 32 k, VAE 67 k, T5 23 k | 0.5 MB | 32 x 8 = 256 |

Cost (CPU seconds, one thread, measured with process_time on the 2-core dev machine): a build 0.05-0.35 s after
imports (the first one in a process ~2 s more), a load 0.03-0.15 s, one 32 px 2-step image 0.03-0.13 s (64 px: up
to 0.6 s, sd3: patch size 1 on a 64x64 latent). Under contention torch's 2 OpenMP threads make wall times 10-50x.

Native size = ``default_sample_size`` (SD 1.5: ``unet.config.sample_size``; PixArt/Sana:
``transformer.config.sample_size``) x ``vae_scale_factor``: what a call with ``height=width=None`` draws. FLUX.1/2 and
Qwen-Image hard-code ``default_sample_size = 128``, so their native size cannot be smaller than 128 x VAE scale.

Changes from diffusers' dummy components, and why:
- sdxl: UNet channels (32, 64) with 8 norm groups instead of (2, 4)/1; text_encoder_2 is wider (64) and has 10
  layers: diffusers' single-file loader tells the two CLIPs apart by width and recognises SDXL files by
  ``conditioner.embedders.1.model.transformer.resblocks.9``; with both at 32 it loads CLIP-L weights into both.
- sd3: T5 width 64 = ``joint_attention_dim`` (CLIP embeddings are padded/cropped to the T5 width).
- flux: ``guidance_embeds=True`` (FLUX.1-dev-like: ``guidance_scale`` moves pixels). flux2: the Mistral text
  encoder has 30 layers because Flux2Pipeline stacks hidden states (10, 20, 30) by default.
- sana/pixart: the schedulers of the real checkpoints (DPM-Solver++; Sana's over flow sigmas, shift 3);
  pixart: transformer ``sample_size`` 32 and a 4-block VAE, so default calls (resolution binning on) work.
- flux, flux2, qwenimage: text-stream attention keys and values scaled at build time (`_text_gain`): otherwise
  two prompts differ by 0-4 levels of 255 (Qwen-Image: 0.4); now by 19-49 levels at 64 px.

## Call facts (plain ``pipe(...)`` calls on these models)

| family | negative prompt | CFG | steps | guidance | scheduler | callback_on_step_end | text max length |
|---|---|---|---|---|---|---|---|
| sd15 | negative_prompt | guidance_scale > 1 | 50 | 7.5 | PNDM | yes | CLIP 77 |
| sdxl | negative_prompt, _2 | guidance_scale > 1 | 50 | 5.0 | EulerDiscrete | yes | CLIP 77 x 2 |
| sd3 | negative_prompt, _2, _3 | guidance_scale > 1 | 28 | 7.0 | FlowMatchEuler (shift 3) | yes | CLIP 77 x 2, T5 256 |
| flux | negative_prompt, _2 | true_cfg_scale > 1 and a negative | 28 | 3.5 (distilled) | FlowMatchEuler, dynamic shift | yes | CLIP 77, T5 512 |
| flux2 | none (TypeError) | none: guidance embedding only | 50 | 4.0 (distilled) | FlowMatchEuler, dynamic shift | yes | Mistral 512 |
| qwenimage | negative_prompt | true_cfg_scale (4.0) if a negative is given | 50 | None: ignored | FlowMatchEuler, dynamic shift | yes | Qwen 1024 (cap 512) |
| sana | negative_prompt="" | guidance_scale > 1 | 20 | 4.5 | DPMSolverMultistep (flow) | yes | Gemma 300 |
| pixart | negative_prompt="" | guidance_scale > 1 | 20 | 4.5 | DPMSolverMultistep | no (old callback=) | T5 300 |

Observed on these models (levels of 255, 64 px, 2 steps):
- Pass ``prompt=`` by keyword: Flux2Pipeline's first parameter is ``image``. SD 1.5, SDXL and PixArt accept
  ``**kwargs``; SD3, FLUX.1/2, Qwen-Image and Sana raise TypeError on unknown keywords.
- sdxl: ``force_zeros_for_empty_prompt`` is true: ``negative_prompt=None`` uses zero embeddings, ``""`` encodes
  the empty string (44 levels apart). sd15/sd3: None and ``""`` give the same image.
- flux: a negative prompt alone changes nothing (``true_cfg_scale`` 1.0); with ``true_cfg_scale=4`` 56 levels,
  4 vs 2: 38. ``guidance_scale`` 1 vs 3.5: 13 levels (guidance embedding).
- flux2: ``guidance_scale`` 1 vs 4: 42 levels. ``text_encoder_out_layers`` (10, 20, 30), ``max_sequence_length``
  512, a long system prompt (139 tokens here) before the user's.
- qwenimage: CFG runs when ``negative_prompt`` is not None, even ``""`` (None vs "" 49 levels); without one each
  call logs "true_cfg_scale is passed as 4.0, but classifier-free guidance is not enabled". Its prompt template's
  first 34 tokens are dropped; our tokenizer splits that prefix into exactly 34.
- sana: ``height``/``width`` default to 1024 (not None) and ``use_resolution_binning=True`` maps sizes to its
  1024 px table (``transformer.sample_size`` 32): pass ``use_resolution_binning=False`` and a size. A long
  ``complex_human_instruction`` is prepended to prompts by default. pixart: binning maps to the 256 px table
  (a 64 px request is drawn at 256 and resized); ``clean_caption=True`` warns (no bs4/ftfy) and falls back.
- Tensors a ``callback_on_step_end`` may ask for: sd15/sana latents, prompt_embeds, negative_prompt_embeds;
  sdxl + add_text_embeds, add_time_ids; sd3 + pooled_prompt_embeds; flux/flux2/qwenimage latents, prompt_embeds.

Single files: ``StableDiffusionPipeline.from_single_file(file, config=<tiny folder>, local_files_only=True)``
(and the SDXL one) load them offline with exactly the folder's weights. Without ``config=`` diffusers looks the
model type up (``infer_diffusers_model_type``: "v1" for sd15, "xl_base" for sdxl) and fetches that type's
configs from the Hub, which fails offline.
"""

from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("sd15", "sdxl", "sd3", "flux", "flux2", "qwenimage", "sana", "pixart")
SEED = 0

# Words that become single tokens in every tokenizer built here, so prompts in tests take few tokens.
WORDS = ("a", "an", "the", "of", "and", "in", "on", "with", "photo", "portrait", "painting", "old", "young",
         "cat", "dog", "red", "blue", "green", "house", "tree", "sky", "man", "woman", "warrior", "chief",
         "bad", "quality", "blurry", "ugly", "high", "detailed", "beautiful", "landscape", "castle", "night")


@lru_cache(maxsize=1)
def _tiny_tools():
    """tools/build_tiny_model.py as a module (the builtin ``tiny`` model and its CLIP tokenizer helpers)."""
    spec = importlib.util.spec_from_file_location("_build_tiny_model", REPO / "tools" / "build_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------- tokenizers

def _chain_merges(words: list[list[str]], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges that join each word's symbols left to right into one token (added to ``vocab``)."""
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for symbols in words:
        left = symbols[0]
        for right in symbols[1:]:
            if (left, right) not in seen:
                seen.add((left, right))
                merges.append((left, right))
            left += right
            vocab.setdefault(left, len(vocab))
    return merges


def clip_tokenizer(max_len: int = 77):
    """CLIP's byte-level BPE (``tools/build_tiny_model.build_tokenizer``) with this module's words."""
    return _tiny_tools().build_tokenizer(tuple(_tiny_tools().MERGE_WORDS) + WORDS, max_len=max_len)


def t5_tokenizer(max_len: int = 512):
    """A T5 Unigram tokenizer: every printable ASCII character, and ``▁word`` pieces for WORDS."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [(chr(c), -8.0) for c in range(33, 127)]
    pieces += [("▁" + chr(c), -7.0) for c in range(33, 127)]
    pieces += [("▁" + w, -2.0) for w in WORDS if len(w) > 1]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_len)


def _bytelevel_alphabet() -> list[str]:
    return list(_tiny_tools().bytes_to_unicode().values())


# Qwen-Image's prompt template (QwenImagePipeline.prompt_template_encode) drops its first 34 tokens, the
# length of the system part in the real Qwen2.5 tokenizer; these words make ours tokenize it the same way.
QWEN_TEMPLATE_WORDS = ("system", "user", "assistant", "Describe", " the", " image", " by", " detailing", " color",
                       " shape", " size", " texture", " quantity", " text", " spatial", " relationships", " of",
                       " objects", " and", " background")
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def qwen_tokenizer():
    """A byte-level BPE Qwen2 tokenizer (GPT-2 byte alphabet, Qwen's split regex) with chat special tokens."""
    from transformers import Qwen2Tokenizer

    enc = _tiny_tools().bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(_bytelevel_alphabet())}
    words = list(QWEN_TEMPLATE_WORDS) + [" " + w for w in WORDS]
    merges = _chain_merges([[enc[b] for b in w.encode()] for w in words if len(w) > 1], vocab)
    for tok in QWEN_SPECIALS:
        vocab.setdefault(tok, len(vocab))
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=32768,
                         additional_special_tokens=list(QWEN_SPECIALS[1:]))
    return tok


def _metaspace_vocab(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """SentencePiece-style BPE vocabulary with byte fallback: specials, <0xNN> bytes, ASCII, ``▁word`` merges."""
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    vocab.setdefault("▁", len(vocab))
    for c in range(33, 127):
        vocab.setdefault(chr(c), len(vocab))
    merges = _chain_merges([["▁", *w] for w in WORDS], vocab)
    return vocab, merges


def gemma_tokenizer():
    from transformers import GemmaTokenizer

    vocab, merges = _metaspace_vocab(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    return GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=8192, add_bos_token=True)


# A Mistral-style chat template (system prompt, then [INST] user [/INST]) that reads the list-of-parts message
# contents Flux2Pipeline.format_input passes.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join('') %}{% endif %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]{{ text }}[/INST]"
    "{% else %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}"
)


def mistral_tokenizer():
    from transformers import LlamaTokenizer

    specials = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]"]
    vocab, merges = _metaspace_vocab(specials)
    tok = LlamaTokenizer(vocab=vocab, merges=merges, pad_token="<pad>", model_max_length=131072,
                         additional_special_tokens=specials[4:])
    tok.chat_template = MISTRAL_CHAT_TEMPLATE
    return tok


# ----------------------------------------------------------------------------------------------- families

def _seed(k: int):
    import torch

    torch.manual_seed(SEED + k)


def _clip(tok, hidden: int, layers: int = 5, projection: int | None = None, act: str = "quick_gelu"):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_hidden_layers=layers,
                         num_attention_heads=4, max_position_embeddings=tok.model_max_length,
                         projection_dim=projection or hidden, hidden_act=act, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _t5(tok, d_model: int, layers: int = 2):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=37, num_layers=layers, num_heads=4,
                   relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=0)
    return T5EncoderModel(cfg).eval()


def _text_gain(transformer, keys: float, values: float):
    """Multiply the text stream's attention key norms and value projections of every joint-attention block.

    With random weights, image tokens attend almost uniformly over hundreds of text tokens that are the same for
    every prompt (padding, system prompts), so two prompts change a FLUX/Qwen-Image image by 0-4 levels of 255.
    Larger text keys (``norm_added_k``: sharper attention on text) and values (``add_v_proj``) make the prompt move
    the image by tens of levels, as the tests of negative prompts and guidance scales need."""
    import torch

    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if name.endswith("attn.norm_added_k.weight"):
                param.mul_(keys)
            elif ".attn.add_v_proj." in name:
                param.mul_(values)
    return transformer


def _sd15():
    return _tiny_tools().build_pipeline()


def _seeded(*makers):
    """Each maker's component, the k-th made right after ``torch.manual_seed(SEED + k)``: a component's weights
    depend on its own maker only (the denoiser first, then the VAE, then the text encoders)."""
    made = []
    for k, make in enumerate(makers):
        _seed(k)
        made.append(make())
    return made


def _pipeline(cls, **parts):
    """``cls(**parts)`` with its torch modules in eval mode."""
    import torch

    return cls(**{k: v.eval() if isinstance(v, torch.nn.Module) else v for k, v in parts.items()})


def _sdxl():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tok, tok2 = clip_tokenizer(), clip_tokenizer()
    unet, vae, te, te2 = _seeded(
        lambda: UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=6 * 8 + 64, cross_attention_dim=32 + 64, norm_num_groups=8),
        lambda: AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
                              down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                              block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
                              scaling_factor=0.13025, force_upcast=False),
        lambda: _clip(tok, hidden=32),
        # Wider than the first encoder (as OpenCLIP bigG is wider than CLIP-L): diffusers' single-file loader tells
        # the two apart by width. Ten layers: it recognises an SDXL file by
        # ``...embedders.1.model.transformer.resblocks.9``.
        lambda: _clip(tok2, hidden=64, layers=10, projection=64, act="gelu"))
    sched = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                   beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
                                   interpolation_type="linear", prediction_type="epsilon", use_karras_sigmas=False)
    return _pipeline(StableDiffusionXLPipeline, vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok,
                     tokenizer_2=tok2, unet=unet, scheduler=sched, force_zeros_for_empty_prompt=True,
                     add_watermarker=False)


def _sd3():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok, tok2, tok3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer(256)
    transformer, vae, te, te2, te3 = _seeded(
        # 16 latent channels as SD3's own VAE has (diffusers' dummy has 4): its inpainting pipeline needs 16; two
        # blocks: the last is context_pre_only, which takes no ControlNet residual
        lambda: SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=16, num_layers=2, attention_head_dim=8,
                                      num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64,
                                      pooled_projection_dim=64, out_channels=16),
        lambda: AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,),
                              layers_per_block=1, latent_channels=16, norm_num_groups=1, use_quant_conv=False,
                              use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        lambda: _clip(tok, hidden=32, projection=32),
        lambda: _clip(tok2, hidden=32, projection=32, act="gelu"),
        lambda: _t5(tok3, d_model=64))
    return _pipeline(StableDiffusion3Pipeline, transformer=transformer,
                     scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0), vae=vae,
                     text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2, text_encoder_3=te3,
                     tokenizer_3=tok3)


FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                      max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def _flux():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok, tok2 = clip_tokenizer(), t5_tokenizer(512)
    transformer, vae, te, te2 = _seeded(
        lambda: _text_gain(FluxTransformer2DModel(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
            guidance_embeds=True), keys=8, values=8),
        lambda: AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,),
                              layers_per_block=1, latent_channels=1, norm_num_groups=1, use_quant_conv=False,
                              use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        lambda: _clip(tok, hidden=32),
        lambda: _t5(tok2, d_model=32))
    return _pipeline(FluxPipeline, scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae,
                     text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2, transformer=transformer)


def _flux2():
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    tok = mistral_tokenizer()
    transformer, vae, te = _seeded(
        # Flux2Pipeline stacks the text encoder's hidden states 10, 20 and 30 by default: 30 layers, 3 x 16 features.
        lambda: _text_gain(Flux2Transformer2DModel(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=3 * 16, timestep_guidance_channels=256,
            axes_dims_rope=[4, 4, 4, 4]), keys=12, values=24),
        lambda: AutoencoderKLFlux2(sample_size=32, in_channels=3, out_channels=3,
                                   down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                                   block_out_channels=(4,), layers_per_block=1, latent_channels=1, norm_num_groups=1,
                                   use_quant_conv=False, use_post_quant_conv=False),
        lambda: Mistral3ForConditionalGeneration(Mistral3Config(
            text_config={"model_type": "mistral", "vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 37,
                         "max_position_embeddings": 2048, "num_attention_heads": 4, "num_hidden_layers": 30,
                         "num_key_value_heads": 2, "head_dim": 4, "rms_norm_eps": 1e-5, "rope_theta": 1e9,
                         "sliding_window": None, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                         "pad_token_id": tok.pad_token_id},
            vision_config={"model_type": "pixtral", "hidden_size": 16, "num_hidden_layers": 1,
                           "num_attention_heads": 4, "intermediate_size": 37, "image_size": 30, "patch_size": 6,
                           "num_channels": 3},
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            image_seq_length=4, vision_feature_layer=-1, image_token_index=tok.convert_tokens_to_ids("[IMG]"))))
    return _pipeline(Flux2Pipeline, scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae,
                     text_encoder=te, tokenizer=tok, transformer=transformer)


def _qwenimage():
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline
    from diffusers import QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = qwen_tokenizer()
    ids = tok.convert_tokens_to_ids
    transformer, vae, te = _seeded(
        lambda: _text_gain(QwenImageTransformer2DModel(
            patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
            joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4)), keys=16, values=16),
        lambda: AutoencoderKLQwenImage(base_dim=4 * 6, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                       temperal_downsample=[False, True], latents_mean=[0.0] * 4,
                                       latents_std=[1.0] * 4),
        lambda: Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": len(tok),
                         "max_position_embeddings": 4096,
                         "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                         "rope_theta": 1000000.0, "bos_token_id": ids("<|endoftext|>"),
                         "eos_token_id": ids("<|im_end|>"), "pad_token_id": ids("<|endoftext|>")},
            vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                           "out_hidden_size": 16},
            hidden_size=16, vocab_size=len(tok), vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"), vision_token_id=ids("<|vision_pad|>"),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"))))
    sched = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
        base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential")
    return _pipeline(QwenImagePipeline, scheduler=sched, vae=vae, text_encoder=te, tokenizer=tok,
                     transformer=transformer)


def _sana():
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tok = gemma_tokenizer()
    transformer, vae, te = _seeded(
        lambda: SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                       num_attention_heads=2, attention_head_dim=4, num_cross_attention_heads=2,
                                       cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
                                       sample_size=32),
        lambda: AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                              encoder_block_types=("ResBlock", "EfficientViTBlock"),
                              decoder_block_types=("ResBlock", "EfficientViTBlock"),
                              encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                              encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
                              encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1],
                              downsample_block_type="conv", upsample_block_type="interpolate",
                              decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407),
        lambda: Gemma2Model(Gemma2Config(
            head_dim=16, hidden_size=8, intermediate_size=64, max_position_embeddings=8192, num_attention_heads=2,
            num_hidden_layers=1, num_key_value_heads=2, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, attn_implementation="eager")))
    # Sana's own checkpoints ship DPM-Solver++ over flow-matching sigmas.
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                        use_flow_sigmas=True, flow_shift=3.0, algorithm_type="dpmsolver++",
                                        solver_order=2, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    return _pipeline(SanaPipeline, tokenizer=tok, text_encoder=te, vae=vae, transformer=transformer, scheduler=sched)


def _pixart():
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    tok = t5_tokenizer(300)
    transformer, vae, te = _seeded(
        lambda: PixArtTransformer2DModel(sample_size=32, num_layers=2, patch_size=2, attention_head_dim=8,
                                         num_attention_heads=3, caption_channels=32, in_channels=4,
                                         cross_attention_dim=24, out_channels=8, attention_bias=True,
                                         activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                         norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6),
        lambda: AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=256,
                              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                              block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=8),
        lambda: _t5(tok, d_model=32))
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001,
                                        beta_end=0.02, prediction_type="epsilon", solver_order=2,
                                        algorithm_type="dpmsolver++")
    return _pipeline(PixArtSigmaPipeline, tokenizer=tok, text_encoder=te, vae=vae, transformer=transformer,
                     scheduler=sched)


CLASSES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline",
           "flux": "FluxPipeline", "flux2": "Flux2Pipeline", "qwenimage": "QwenImagePipeline", "sana": "SanaPipeline",
           "pixart": "PixArtSigmaPipeline"}
# What the pipeline draws when height/width are None: default sample size x VAE scale factor (SanaPipeline's
# __call__ defaults to height=width=1024 instead).
NATIVE = {"sd15": 64, "sdxl": 64, "sd3": 32, "flux": 128, "flux2": 128, "qwenimage": 512, "sana": 64, "pixart": 256}

BUILDERS = {"sd15": _sd15, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux, "flux2": _flux2, "qwenimage": _qwenimage,
            "sana": _sana, "pixart": _pixart}


def build_pipeline(family: str):
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return BUILDERS[family]()


def build(family: str, folder: Path) -> Path:
    """Write the tiny ``family`` pipeline as a diffusers folder at ``folder`` (replaced atomically); returns it."""
    return _tiny_tools().save(build_pipeline(family), Path(folder))


def digest(folder: Path) -> dict[str, str]:
    """sha256 per file of what makes the model (``tools/build_tiny_model.digest``: no library version stamps)."""
    return _tiny_tools().digest(Path(folder))


def cached(family: str, root: Path) -> Path:
    """``root/family``, built the first time it is asked for."""
    folder = Path(root) / family
    if not (folder / "model_index.json").is_file():
        build(family, folder)
    return folder


# ----------------------------------------------------------------------------------------------- single files
# diffusers -> original (CompVis/SGM, as A1111 and ComfyUI read them) key names, after the mapping documented in
# diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py and convert_diffusers_to_original_sdxl.py,
# generalised from their hard-coded SD sizes (4 blocks, 2 layers per block) to any UNet/VAE config.

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def _unet_prefixes(config: dict) -> list[tuple[str, str]]:
    """(diffusers prefix, original prefix) for every block of a UNet2DConditionModel with this config."""
    per = config["layers_per_block"]
    n = len(config["block_out_channels"])
    up_has_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    out: list[tuple[str, str]] = []
    for i in range(n):
        for j in range(per):
            out.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.0."))
            out.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.1."))
        if i < n - 1:
            out.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (i + 1)}.0.op."))
        for j in range(per + 1):
            out.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(per + 1) * i + j}.0."))
            out.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(per + 1) * i + j}.1."))
        if i < n - 1:
            slot = 2 if up_has_attn[i] else 1
            out.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(per + 1) * i + per}.{slot}."))
    out += [("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
            ("mid_block.resnets.1.", "middle_block.2.")]
    return out


def _rename(key: str, prefixes: list[tuple[str, str]], resnet: tuple[tuple[str, str], ...] = ()) -> str:
    for new, old in prefixes:
        if key.startswith(new):
            rest = key[len(new):]
            if "resnets" in new:
                for a, b in resnet:
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a):]
                        break
            return old + rest
    raise KeyError(key)


def unet_to_original(state: dict, config: dict) -> dict:
    prefixes = _unet_prefixes(config)
    out = {}
    for key, value in state.items():
        stem, _, leaf = key.rpartition(".")
        if stem in _UNET_TOP:
            out[f"{_UNET_TOP[stem]}.{leaf}"] = value
        else:
            out[_rename(key, prefixes, _RESNET)] = value
    return out


def vae_to_original(state: dict, config: dict) -> dict:
    """AutoencoderKL: encoder.down.{i}.block.{j}, decoder.up.{n-1-i}.block.{j} (original up blocks run in reverse),
    mid.block_{1,2}, mid.attn_1 with q/k/v/proj_out as 1x1 convolutions, nin_shortcut, norm_out."""
    n = len(config["block_out_channels"])
    prefixes: list[tuple[str, str]] = []
    for i in range(n):
        prefixes += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
                     (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
                     (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block."),
                     (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.")]
    for part in ("encoder", "decoder"):
        prefixes += [(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."),
                     (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2."),
                     (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."),
                     (f"{part}.conv_norm_out.", f"{part}.norm_out."), (f"{part}.conv_in.", f"{part}.conv_in."),
                     (f"{part}.conv_out.", f"{part}.conv_out.")]
    prefixes += [("quant_conv.", "quant_conv."), ("post_quant_conv.", "post_quant_conv.")]
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in state.items():
        new = _rename(key, prefixes).replace("conv_shortcut", "nin_shortcut")
        if ".mid.attn_1." in new:
            head, _, tail = new.partition(".mid.attn_1.")
            layer, _, leaf = tail.rpartition(".")
            new = f"{head}.mid.attn_1.{attn[layer]}.{leaf}"
            if leaf == "weight" and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)
        out[new] = value
    return out


def _clip_hf_layout(state: dict) -> dict:
    """transformers >= 5.6 saves CLIPTextModel without its ``text_model.`` wrapper; single files keep it."""
    return {(k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
            for k, v in state.items()}


def openclip_from_hf(state: dict) -> dict:
    """A CLIPTextModelWithProjection state dict in OpenCLIP's layout (SDXL's second text encoder): resblocks with
    fused in_proj q/k/v, ln_1/ln_2, mlp.c_fc/c_proj, ln_final, token_embedding, positional_embedding and
    text_projection as the transposed (width, embed) matrix."""
    import torch

    state = _clip_hf_layout(state)
    out = {}
    qkv: dict[str, dict[str, dict[str, object]]] = {}
    for key, value in state.items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        if key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = value
            continue
        if key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
            continue
        if key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key.rpartition(".")[2]] = value
            continue
        if key.startswith("text_model.embeddings.position_ids"):
            continue
        layer = key[len("text_model.encoder.layers."):]
        idx, _, rest = layer.partition(".")
        base = f"transformer.resblocks.{idx}."
        proj, _, leaf = rest.rpartition(".")
        if proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault(base, {}).setdefault(leaf, {})[proj[-6]] = value
            continue
        rest = (rest.replace("layer_norm1", "ln_1").replace("layer_norm2", "ln_2").replace("mlp.fc1", "mlp.c_fc")
                .replace("mlp.fc2", "mlp.c_proj").replace("self_attn.out_proj", "attn.out_proj"))
        out[base + rest] = value
    for base, leaves in qkv.items():
        for leaf, parts in leaves.items():
            out[f"{base}attn.in_proj_{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def write_single_file(family: str, folder: Path, out_file: Path) -> Path:
    """Write the diffusers folder ``folder`` of ``family`` ("sd15" or "sdxl") as one original-layout
    ``.safetensors`` file: UNet ``model.diffusion_model.*``, VAE ``first_stage_model.*``, and CLIP
    ``cond_stage_model.transformer.*`` (SD 1.x) or ``conditioner.embedders.0.transformer.*`` plus OpenCLIP
    ``conditioner.embedders.1.model.*`` (SDXL)."""
    from safetensors.torch import load_file, save_file

    folder, out_file = Path(folder), Path(out_file)
    if family not in ("sd15", "sdxl"):
        raise ValueError(f"single files are written for sd15 and sdxl, not {family!r}")

    def part(name: str, weights: str = "diffusion_pytorch_model.safetensors"):
        return load_file(str(folder / name / weights)), json.loads((folder / name / "config.json").read_text())

    unet, unet_cfg = part("unet")
    vae, vae_cfg = part("vae")
    state = {"model.diffusion_model." + k: v for k, v in unet_to_original(unet, unet_cfg).items()}
    state.update({"first_stage_model." + k: v for k, v in vae_to_original(vae, vae_cfg).items()})
    text = _clip_hf_layout(load_file(str(folder / "text_encoder" / "model.safetensors")))
    if family == "sd15":
        state.update({"cond_stage_model.transformer." + k: v for k, v in text.items()})
    else:
        state.update({"conditioner.embedders.0.transformer." + k: v for k, v in text.items()})
        text2 = openclip_from_hf(load_file(str(folder / "text_encoder_2" / "model.safetensors")))
        state.update({"conditioner.embedders.1.model." + k: v for k, v in text2.items()})
    state = {k: v.contiguous() for k, v in state.items()}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, out_file)
    return out_file


def cached_single_file(family: str, folder: Path, root: Path) -> Path:
    """``root/<family>.safetensors`` made from ``folder`` by ``write_single_file``, the first time it is asked for."""
    out = Path(root) / f"{family}.safetensors"
    if not out.is_file():
        write_single_file(family, folder, out)
    return out


def call_kwargs(family: str, size: int = 32, steps: int = 2) -> dict:
    """Keyword arguments for a plain diffusers call drawing one small image fast (pass the prompt by keyword:
    Flux2Pipeline's first parameter is ``image``). Sana and PixArt bin sizes to their aspect-ratio tables unless
    ``use_resolution_binning=False`` (a 32 px request would be drawn at 1024 or 256 px and resized)."""
    kwargs = {"num_inference_steps": steps, "height": size, "width": size, "output_type": "np"}
    if family in ("sana", "pixart"):
        kwargs["use_resolution_binning"] = False
    return kwargs
