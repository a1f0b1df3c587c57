"""Pipeline families: what each diffusers text-to-image pipeline class takes, and how the tracker calls it.

Pure: no torch, no diffusers import. The plan reads a model's ``model_index.json`` (``_class_name``) and its
component configs (a local folder, a built-in model, or a Hub id's files in the Hugging Face cache), and the
pipeline class's ``__call__`` signature from the installed diffusers' *source* (``ast``), so the family's defaults
are diffusers' own for that class (steps, guidance) and ``call:`` arguments are checked against the real
parameter list before anything loads. The engine (``tracker.engine.core``) asks the same family, with the loaded
pipeline's own signature (``inspect``), to build the keyword arguments of each call.

One small ``Family`` per family (SD 1.x/2.x, SDXL, SD3, FLUX.1, FLUX.2, Qwen-Image, Sana, PixArt) and a generic
one for any other class, driven by its signature:

- ``negatives``: ``"cfg"`` (classifier-free guidance with the negative prompt), ``"true_cfg"`` (FLUX.1: a negative
  prompt is used only with ``call: {true_cfg_scale: > 1}``), ``"cfg_setting"`` (Qwen-Image: the guidance setting is
  passed as ``true_cfg_scale``, and CFG runs only with a negative prompt) or ``"none"`` (FLUX.2: no negative
  prompt parameter);
- ``guidance_argument``: the ``__call__`` parameter the ``guidance_scale`` setting is passed as;
- ``native_size``: ``default_sample_size * vae_scale_factor`` as the pipeline computes it, from the configs.

No negative prompt in the file is no negative prompt: the argument is left out, so each pipeline does what it
does without one (SDXL's zero embeddings, PixArt/Sana's own empty string).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from tracker.experiment.pipeline_source import (NO_DEFAULT, RESERVED, CallSignature, read_configs, sample_size,
                                                 signature_of, signature_of_callable, task_class, vae_factor)

GENERIC_STEPS, GENERIC_GUIDANCE, GENERIC_SIZE = 50, 7.5, 512  # a model whose family is unknown


class Family:
    """The generic family: any text-to-image pipeline, driven by its ``__call__`` signature."""

    name = "generic"
    title = "other text-to-image pipelines"
    classes: tuple[str, ...] = ()
    negatives = "cfg"
    guidance_argument: str | None = "guidance_scale"
    default_sample_size: int | None = None  # fixed in the pipeline's __init__ (FLUX, Qwen-Image); else the config's
    denoiser = "unet"

    def supports_negative(self, sig: CallSignature | None) -> bool:
        return sig is None or "negative_prompt" in sig

    def check_reference(self, width: int, height: int) -> str | None:
        """Why an input ``image`` of that size cannot be taken (None: it can)."""
        return None

    def argument_for_guidance(self, sig: CallSignature | None) -> str | None:
        if sig is not None and self.guidance_argument not in sig:
            return None
        return self.guidance_argument

    def vae_factor(self, configs: Mapping[str, Mapping[str, Any]]) -> int | None:
        return vae_factor(configs)

    def native_size(self, configs: Mapping[str, Mapping[str, Any]], sig: CallSignature | None) -> tuple[int, int] | None:
        factor = self.vae_factor(configs)
        if self.default_sample_size is not None and factor:
            return self.default_sample_size * factor, self.default_sample_size * factor
        for comp in (self.denoiser, "unet", "transformer"):
            sample = sample_size(configs, comp)
            if sample and factor:
                return sample[0] * factor, sample[1] * factor
        if sig is not None:
            w, h = sig.default("width"), sig.default("height")
            if isinstance(w, int) and isinstance(h, int):
                return w, h
        return None

    def default_steps(self, sig: CallSignature | None) -> int:
        steps = sig.default("num_inference_steps") if sig is not None else None
        return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else GENERIC_STEPS

    def default_guidance(self, sig: CallSignature | None) -> float:
        arg = self.argument_for_guidance(sig) or "guidance_scale"
        g = sig.default(arg) if sig is not None else None
        return float(g) if isinstance(g, (int, float)) and not isinstance(g, bool) else GENERIC_GUIDANCE

    def reserved(self) -> dict[str, str]:
        return dict(RESERVED)


class StableDiffusion(Family):
    name, title = "sd", "Stable Diffusion 1.x/2.x"
    classes = ("StableDiffusionPipeline",)


class StableDiffusionXL(Family):
    name, title = "sdxl", "Stable Diffusion XL"
    classes = ("StableDiffusionXLPipeline",)


class StableDiffusion3(Family):
    name, title = "sd3", "Stable Diffusion 3/3.5"
    classes = ("StableDiffusion3Pipeline",)
    denoiser = "transformer"


class Flux(Family):
    """FLUX.1: ``guidance_scale`` is distilled guidance (an input of the transformer); a negative prompt is used
    only with true CFG (``true_cfg_scale`` > 1)."""

    name, title = "flux", "FLUX.1"
    classes = ("FluxPipeline",)
    negatives = "true_cfg"
    default_sample_size = 128
    denoiser = "transformer"


class Flux2(Family):
    name, title = "flux2", "FLUX.2"
    classes = ("Flux2Pipeline", "Flux2KleinPipeline")
    negatives = "none"
    default_sample_size = 128
    denoiser = "transformer"

    def supports_negative(self, sig: CallSignature | None) -> bool:
        return False

    def check_reference(self, width: int, height: int) -> str | None:
        # diffusers' Flux2ImageProcessor.check_image_input (its defaults), read here without importing diffusers
        if min(width, height) < 64:
            return "FLUX.2 takes reference images of at least 64 pixels a side"
        if max(width / height, height / width) > 8:
            return "FLUX.2 takes reference images of an aspect ratio up to 8"
        return None


class QwenImage(Family):
    """Qwen-Image: classifier-free guidance is ``true_cfg_scale``, used only with a negative prompt; the tracker's
    ``guidance_scale`` setting is passed as ``true_cfg_scale`` (the pipeline's own ``guidance_scale`` is for
    guidance-distilled variants and is not reachable from a file)."""

    name, title = "qwenimage", "Qwen-Image"
    classes = ("QwenImagePipeline",)
    negatives = "cfg_setting"
    guidance_argument = "true_cfg_scale"
    default_sample_size = 128
    denoiser = "transformer"

    def vae_factor(self, configs: Mapping[str, Mapping[str, Any]]) -> int | None:
        down = (configs.get("vae") or {}).get("temperal_downsample")
        return 2 ** len(down) if isinstance(down, list) else None

    def reserved(self) -> dict[str, str]:
        return {**RESERVED, "true_cfg_scale": "the guidance_scale setting (Qwen-Image's CFG is passed as "
                                              "true_cfg_scale)"}


class Sana(Family):
    name, title = "sana", "Sana"
    classes = ("SanaPipeline",)
    denoiser = "transformer"

    def vae_factor(self, configs: Mapping[str, Mapping[str, Any]]) -> int | None:
        channels = (configs.get("vae") or {}).get("encoder_block_out_channels")
        return 2 ** (len(channels) - 1) if isinstance(channels, list) and channels else None


class PixArt(Family):
    name, title = "pixart", "PixArt-α/Σ"
    classes = ("PixArtSigmaPipeline", "PixArtAlphaPipeline")
    denoiser = "transformer"


FAMILIES: tuple[Family, ...] = (StableDiffusion(), StableDiffusionXL(), StableDiffusion3(), Flux(), Flux2(),
                                QwenImage(), Sana(), PixArt())
GENERIC = Family()
_BY_CLASS = {c: f for f in FAMILIES for c in f.classes}


def family_of(class_name: str | None) -> Family:
    """The family of a pipeline class name (the generic family for any other)."""
    return _BY_CLASS.get(class_name or "", GENERIC)


# ---------------------------------------------------------------------------------------------- one model


class FamilyError(Exception):
    """A setting the model's family cannot honour: ``field`` (e.g. "negative_prompt", "call.foo") and a message."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


@dataclass(frozen=True)
class ModelFacts:
    """One model's family facts, for the plan (from configs and source) or the engine (from the loaded pipeline)."""

    model: str
    family: Family
    class_name: str | None
    signature: CallSignature | None
    native: tuple[int, int] | None
    where: str = ""

    @property
    def known(self) -> bool:
        """The pipeline class was found (its configs were readable)."""
        return self.class_name is not None

    @property
    def steps(self) -> int:
        return self.family.default_steps(self.signature)

    @property
    def guidance(self) -> float:
        return self.family.default_guidance(self.signature)

    @property
    def native_size(self) -> tuple[int, int]:
        return self.native or (GENERIC_SIZE, GENERIC_SIZE)

    @property
    def is_video(self) -> bool:
        sig = self.signature
        return sig is not None and ("num_frames" in sig or "num_videos_per_prompt" in sig)

    def check_model(self) -> None:
        """Refuse a pipeline the tracker cannot record an image of (video; a required image input)."""
        sig = self.signature
        if sig is None:
            return
        label = self.class_name or "this pipeline"
        if self.is_video:
            raise FamilyError("model", f"{self.model!r} is a {label}, a video pipeline (it takes num_frames and "
                                       f"returns frames); the tracker records still images")
        required = [n for n, p in sig.params.items() if p.default is NO_DEFAULT and n != "prompt"]
        if required:
            raise FamilyError("model", f"{self.model!r} is a {label}, whose call needs {', '.join(required)}; the "
                                       f"tracker runs text-to-image pipelines")
        if "prompt" not in sig.params:
            raise FamilyError("model", f"{self.model!r} is a {label}, which takes no prompt; the tracker runs "
                                       f"text-to-image pipelines")

    # -- call arguments -------------------------------------------------------------------------------

    def check_call(self, call: Iterable[tuple[str, Any]]) -> None:
        """Every ``call:`` argument is a parameter of this pipeline's ``__call__``, with a plain value of its type."""
        sig = self.signature
        if sig is None:
            return
        reserved = self.family.reserved()
        label = self.class_name
        for name, value in call:
            f = f"call.{name}"
            if name in reserved:
                raise FamilyError(f, f"{name} is set by {reserved[name]}, not in call:")
            p = sig.params.get(name)
            if p is None:
                close = difflib.get_close_matches(name, [n for n in sig.params if n not in reserved], n=3, cutoff=0.5)
                hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
                raise FamilyError(f, f"{label} takes no argument {name!r} (given {_show(value)}){hint}")
            if p.is_object:
                raise FamilyError(f, f"{name} takes {p.annotation or 'an object'} ({label}); tensors, images and "
                                     f"other objects cannot be given in an experiment file")
            types = p.plain_types
            if types is not None and not _has_type(value, types):
                want = p.annotation or type(p.default).__name__
                raise FamilyError(f, f"{name} must be {want} ({label}) but is {_show(value)}")

    def call_kwargs(self, call: Iterable[tuple[str, Any]]) -> dict[str, Any]:
        """``call:`` as keyword arguments: a list value as the list or tuple the parameter wants."""
        out = {}
        for name, value in call:
            p = self.signature.params.get(name) if self.signature is not None else None
            out[name] = _thaw(value, p is not None and p.wants_list)
        return out

    # -- image-conditioned runs --------------------------------------------------------------------------

    def task_signature(self, task: str) -> tuple[str | None, CallSignature | None]:
        """The class (and its ``__call__``) diffusers' AutoPipeline makes of this model for ``task``."""
        if task == "text2img":
            return self.class_name, self.signature
        cls = task_class(self.class_name, task)
        return cls, signature_of(cls) if cls else None

    def check_inputs(self, values: dict[str, Any], explicit: set[str]) -> None:
        """An img2img or inpainting run: the model's family must have such a pipeline (diffusers' AutoPipeline
        tables) taking the image (and strength); an unset strength becomes that pipeline's own default."""
        image, mask = values.get("image"), values.get("mask_image")
        if mask and not image:
            raise FamilyError("mask_image", "is given without image: inpainting needs the image to repaint")
        if not image:
            if "strength" in explicit:
                raise FamilyError("strength", "has no effect without an image (img2img or inpainting); give image: "
                                              "or remove strength")
            return
        if self.signature is None:  # configs not readable here: the engine checks the loaded pipeline
            return
        task = "inpaint" if mask else "img2img"
        cls, sig = self.task_signature(task)
        field_ = "mask_image" if mask else "image"
        what = "inpainting" if mask else "image-to-image"
        if sig is None or "image" not in sig or (mask and "mask_image" not in sig):
            raise FamilyError(field_, f"{self.class_name} ({self.family.title}) has no {what} pipeline in diffusers' "
                                      f"AutoPipeline tables; use a model of a family that has one (SD, SDXL, SD3, "
                                      f"FLUX.1, Qwen-Image)")
        if "strength" not in sig:
            if "strength" in explicit:
                raise FamilyError("strength", f"{cls} ({self.family.title}) takes no strength; remove strength")
        elif "strength" not in explicit:
            default = sig.default("strength")
            if isinstance(default, (int, float)) and not isinstance(default, bool) and 0 < default <= 1:
                values["strength"] = float(default)

    # -- one run --------------------------------------------------------------------------------------

    def effective(self, values: dict[str, Any], negative: str, explicit: set[str]) -> list[str]:
        """Put this family's defaults into a run's setting ``values`` (what ``explicit`` does not name), and
        make settings that cannot change this run's image read as what the pipeline does (so two runs of
        identical conditioning share one key). Returns the explicit fields that had no effect here.
        Raises FamilyError for a negative prompt the family would ignore or cannot take."""
        fam = self.family
        call = dict(values.get("call") or ())
        ignored: list[str] = []
        if "steps" not in explicit:
            values["steps"] = self.steps
        if "guidance_scale" not in explicit:
            values["guidance_scale"] = self.guidance
        if not values.get("width") or not values.get("height"):
            w, h = self.native_size
            values["width"] = values.get("width") or w
            values["height"] = values.get("height") or h
        if fam.negatives == "none" or not fam.supports_negative(self.signature):
            if negative:
                raise FamilyError("negative_prompt", f"{self.class_name or self.model} ({fam.title}) takes no "
                                                     f"negative prompt; remove negative_prompt (and its axis)")
        elif fam.negatives == "true_cfg":
            true_cfg = call.get("true_cfg_scale", self.signature.default("true_cfg_scale", 1.0)
                                if self.signature else 1.0)
            if negative and not (isinstance(true_cfg, (int, float)) and true_cfg > 1):
                raise FamilyError("negative_prompt", f"{fam.title} ({self.class_name}) ignores a negative prompt "
                                                     f"unless true CFG is on; turn it on with call: "
                                                     f"{{true_cfg_scale: 4.0}} (twice the compute per step), or "
                                                     f"remove the negative prompt")
            if not negative and "true_cfg_scale" in call:
                del call["true_cfg_scale"]  # no negative prompt: true CFG is off whatever the scale
                ignored.append("call.true_cfg_scale")
        elif fam.negatives == "cfg_setting" and not negative:
            if "guidance_scale" in explicit and values["guidance_scale"] != 1.0:
                ignored.append("guidance_scale")
            values["guidance_scale"] = 1.0  # no negative prompt: the pipeline runs without CFG
        values["call"] = tuple(sorted(call.items()))
        return ignored


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _show(value: Any) -> str:
    return json.dumps(_thaw(value, True)) if isinstance(value, tuple) else repr(value)


def _thaw(value: Any, as_list: bool) -> Any:
    if isinstance(value, tuple):
        items = [_thaw(v, as_list) for v in value]
        return items if as_list else tuple(items)
    return value


_USER_PIPELINES: dict[str, ModelFacts] = {}  # a user's pipeline object's model name -> its facts (userpipe.wrap)


def register_pipeline(facts: ModelFacts) -> None:
    """The facts of a pipeline object a user passed in (``tracker.run(exp, pipeline=pipe)``), for its plan."""
    _USER_PIPELINES[facts.model] = facts


def facts_for(model: str, base_dir: Path | None = None) -> ModelFacts:
    """A model's family facts at plan time (configs from its folder or the HF cache; signature from source)."""
    from tracker.experiment import model_refs

    if model_refs.is_user_pipeline(model):
        return _USER_PIPELINES.get(model) or ModelFacts(model, GENERIC, None, None, None)
    return _facts_for(model, base_dir)


@lru_cache(maxsize=256)
def _facts_for(model: str, base_dir: Path | None) -> ModelFacts:
    from tracker.experiment import model_refs, single_file

    try:
        ref = model_refs.config_ref(model, base_dir)  # a single file: the folder or Hub id of its config
    except (single_file.SingleFileError, OSError):  # refused by the parser already; here: no configs
        ref = model_refs.resolve(model, base_dir)
    cfg = read_configs(ref.kind, ref.location)
    fam = family_of(cfg.class_name)
    sig = signature_of(cfg.class_name) if cfg.class_name else None
    return ModelFacts(model, fam, cfg.class_name, sig, fam.native_size(cfg.configs, sig), cfg.where)


def facts_of_pipeline(model: str, pipe: Any) -> ModelFacts:
    """A loaded pipeline's family facts (its own class and ``__call__``; its components' configs)."""
    cls = type(pipe).__name__
    fam = family_of(cls)
    if fam is GENERIC:  # a subclass of a known pipeline (a user's own class) is that family
        for base in type(pipe).__mro__[1:]:
            if base.__name__ in _BY_CLASS:
                fam = _BY_CLASS[base.__name__]
                break
    if fam is GENERIC:  # an image-to-image or inpainting variant (AutoPipeline) is its text-to-image class's family
        fam = next((f for f in FAMILIES for c in f.classes if cls in (task_class(c, "img2img"),
                                                                       task_class(c, "inpaint"))), GENERIC)
    configs = {}
    for comp in ("unet", "transformer", "vae"):
        module = getattr(pipe, comp, None)
        if module is not None and getattr(module, "config", None) is not None:
            configs[comp] = dict(module.config)
    sig = signature_of_callable(cls, type(pipe).__call__)
    native = None
    size, factor = getattr(pipe, "default_sample_size", None), getattr(pipe, "vae_scale_factor", None)
    if isinstance(size, int) and isinstance(factor, int):
        native = (size * factor, size * factor)
    return ModelFacts(model, fam, cls, sig, native or fam.native_size(configs, sig))


def describe(facts: ModelFacts) -> dict[str, Any]:
    """A family's facts as plain values (for ``tracker expand`` and the docs' table)."""
    fam = facts.family
    return {"family": fam.name, "class": facts.class_name, "steps": facts.steps, "guidance_scale": facts.guidance,
            "guidance_argument": fam.argument_for_guidance(facts.signature), "negatives": fam.negatives,
            "size": "%dx%d" % facts.native_size}
