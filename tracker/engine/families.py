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

import ast
import difflib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

NO_DEFAULT = object()  # a parameter without a default
NOT_LITERAL = object()  # a default that is not a Python literal (read from source)
GENERIC_STEPS, GENERIC_GUIDANCE, GENERIC_SIZE = 50, 7.5, 512

# Arguments the tracker passes itself: each names the setting to use instead.
RESERVED = {
    "prompt": "the prompt field", "negative_prompt": "the negative_prompt field",
    "num_inference_steps": "the steps setting", "guidance_scale": "the guidance_scale setting",
    "width": "the size (or width) setting", "height": "the size (or height) setting", "generator": "seeds",
    "output_type": "the tracker (it reads arrays)", "return_dict": "the tracker",
    "num_images_per_prompt": "the tracker (one image per run; use seeds)",
    "num_videos_per_prompt": "the tracker", "callback_on_step_end": "the tracker (it times each step)",
    "callback_on_step_end_tensor_inputs": "the tracker", "callback": "the tracker", "callback_steps": "the tracker",
}
# Annotation words that mark a tensor, an image, a function or a generator: not a plain value.
_OBJECT_WORDS = ("Tensor", "Image", "PipelineImageInput", "ndarray", "Callable", "Generator", "Module",
                 "FloatTensor", "PIL", "Processor")
_SPECIAL_KINDS = ("*", "**")


# ---------------------------------------------------------------------------------------------- signatures


@dataclass(frozen=True)
class Param:
    name: str
    annotation: str = ""  # source text ("" when none)
    default: Any = NO_DEFAULT

    @property
    def plain_types(self) -> tuple[type, ...] | None:
        """The plain Python types a value may have, from the annotation (or the default's type); None: any."""
        text = self.annotation
        if not text:
            if self.default is NO_DEFAULT or self.default is NOT_LITERAL or self.default is None:
                return None
            return (type(self.default),) + ((int,) if isinstance(self.default, float) else ())
        words = set(re.findall(r"[A-Za-z_]+", text))
        if "Any" in words:
            return None
        out: list[type] = []
        if "bool" in words:
            out.append(bool)
        if "int" in words:
            out.append(int)
        if "float" in words:
            out += [float, int]
        if "str" in words:
            out.append(str)
        if words & {"list", "List", "tuple", "Tuple", "Sequence"}:
            out.append(tuple)
        if words & {"dict", "Dict"}:
            out.append(dict)
        if words & {"None", "Optional"}:
            out.append(type(None))
        return tuple(out) if out else None

    @property
    def is_object(self) -> bool:
        """A tensor, image, callable or generator argument (not something an experiment file can hold)."""
        return any(w in self.annotation for w in _OBJECT_WORDS) or "embeds" in self.name or self.name == "latents" \
            or self.name in ("image", "mask_image", "control_image", "ip_adapter_image")

    @property
    def wants_list(self) -> bool:
        words = set(re.findall(r"[A-Za-z_]+", self.annotation))
        return bool(words & {"list", "List"}) and not words & {"tuple", "Tuple"}


@dataclass(frozen=True)
class CallSignature:
    """A pipeline class's ``__call__`` parameters (self and ``*args`` left out)."""

    class_name: str
    params: Mapping[str, Param]
    var_keyword: bool = False  # takes **kwargs (and so does not refuse an unknown name itself)

    def default(self, name: str, fallback: Any = None) -> Any:
        p = self.params.get(name)
        if p is None or p.default is NO_DEFAULT or p.default is NOT_LITERAL:
            return fallback
        return p.default

    def __contains__(self, name: str) -> bool:
        return name in self.params


def _literal(node: ast.AST | None) -> Any:
    if node is None:
        return NO_DEFAULT
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return NOT_LITERAL


def _from_function(class_name: str, fn: ast.FunctionDef) -> CallSignature:
    a = fn.args
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    params: dict[str, Param] = {}
    for arg, d in zip(positional, defaults):
        if arg.arg != "self":
            params[arg.arg] = Param(arg.arg, ast.unparse(arg.annotation) if arg.annotation else "", _literal(d))
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        params[arg.arg] = Param(arg.arg, ast.unparse(arg.annotation) if arg.annotation else "", _literal(d))
    return CallSignature(class_name, params, var_keyword=a.kwarg is not None)


def signature_of_callable(class_name: str, fn: Any) -> CallSignature:
    """The signature of a loaded pipeline's ``__call__`` (the engine's side; ``inspect``)."""
    import inspect

    params: dict[str, Param] = {}
    var_keyword = False
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind is p.VAR_KEYWORD:
            var_keyword = True
            continue
        if p.kind is p.VAR_POSITIONAL or name == "self":
            continue
        ann = "" if p.annotation is p.empty else (p.annotation if isinstance(p.annotation, str)
                                                  else inspect.formatannotation(p.annotation))
        params[name] = Param(name, ann, NO_DEFAULT if p.default is p.empty else p.default)
    return CallSignature(class_name, params, var_keyword)


@lru_cache(maxsize=1)
def _diffusers_root() -> Path | None:
    spec = importlib.util.find_spec("diffusers")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=1)
def _class_index() -> dict[str, Path]:
    """Every class defined in diffusers' ``pipelines`` package -> its source file (text search, ~0.1-0.3 s once)."""
    root = _diffusers_root()
    out: dict[str, Path] = {}
    if root is None:
        return out
    pattern = re.compile(r"^class (\w+)\(", re.M)
    for folder, _, files in os.walk(root / "pipelines"):
        for f in sorted(files):
            if f.endswith(".py"):
                p = Path(folder) / f
                try:
                    text = p.read_text(encoding="utf-8")
                except OSError:
                    continue
                for m in pattern.finditer(text):
                    out.setdefault(m.group(1), p)
    return out


@lru_cache(maxsize=64)
def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


@lru_cache(maxsize=256)
def signature_of(class_name: str) -> CallSignature | None:
    """The ``__call__`` signature of a diffusers pipeline class, read from the installed diffusers' source
    (following base classes defined in diffusers); None when the class is not found there."""
    seen: set[str] = set()
    name = class_name
    while name and name not in seen:
        seen.add(name)
        path = _class_index().get(name)
        if path is None:
            return None
        try:
            tree = _parsed(path)
        except (OSError, SyntaxError, UnicodeDecodeError):
            return None
        node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
        if node is None:
            return None
        fn = next((n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                   and n.name == "__call__"), None)
        if fn is not None:
            return _from_function(class_name, fn)
        bases = [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases]
        name = next((b for b in bases if b in _class_index()), "")
    return None


# ---------------------------------------------------------------------------------------------- model configs


@dataclass(frozen=True)
class ModelConfigs:
    """What a model's folder says about itself: its pipeline class and its component configs."""

    class_name: str | None  # model_index.json's ``_class_name``; None when not readable (an uncached Hub id)
    configs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # unet / transformer / vae -> config
    where: str = ""  # where they were read ("" when nowhere)


def _read_json(path: Path | str | None) -> dict | None:
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _hub_file(repo: str, filename: str) -> str | None:
    """A file of a Hub model from the local Hugging Face cache only (never the network)."""
    if not re.match(r"^[\w.-]+(/[\w.-]+)?$", repo):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo, filename)
    except Exception:  # noqa: BLE001 - a malformed id or cache: treated as not cached
        return None
    return found if isinstance(found, str) else None


@lru_cache(maxsize=256)
def read_configs(kind: str, location: str) -> ModelConfigs:
    """``kind``/``location`` as ``tracker.experiment.model_refs.resolve`` gives them."""
    if kind == "hub":
        def get(name: str) -> dict | None:
            return _read_json(_hub_file(location, name))
        where = f"the Hugging Face cache of {location}"
    else:
        folder = Path(location)

        def get(name: str) -> dict | None:
            return _read_json(folder / name)
        where = str(folder)
    index = get("model_index.json")
    if index is None:
        return ModelConfigs(None, {}, "")
    configs = {}
    for comp in ("unet", "transformer", "vae"):
        c = get(f"{comp}/config.json")
        if c is not None:
            configs[comp] = c
    cls = index.get("_class_name")
    return ModelConfigs(cls if isinstance(cls, str) else None, configs, where)


# ---------------------------------------------------------------------------------------------- families


def _vae_factor(configs: Mapping[str, Mapping[str, Any]]) -> int | None:
    vae = configs.get("vae") or {}
    channels = vae.get("block_out_channels")
    if isinstance(channels, list) and channels:
        return 2 ** (len(channels) - 1)
    return None


def _sample(configs: Mapping[str, Mapping[str, Any]], component: str) -> tuple[int, int] | None:
    s = (configs.get(component) or {}).get("sample_size")
    if isinstance(s, int) and not isinstance(s, bool):
        return s, s
    if isinstance(s, list) and len(s) == 2 and all(isinstance(x, int) for x in s):
        return int(s[1]), int(s[0])  # (height, width) in diffusers' configs -> (w, h)
    return None


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

    def argument_for_guidance(self, sig: CallSignature | None) -> str | None:
        if sig is not None and self.guidance_argument not in sig:
            return None
        return self.guidance_argument

    def vae_factor(self, configs: Mapping[str, Mapping[str, Any]]) -> int | None:
        return _vae_factor(configs)

    def native_size(self, configs: Mapping[str, Mapping[str, Any]], sig: CallSignature | None) -> tuple[int, int] | None:
        factor = self.vae_factor(configs)
        if self.default_sample_size is not None and factor:
            return self.default_sample_size * factor, self.default_sample_size * factor
        for comp in (self.denoiser, "unet", "transformer"):
            sample = _sample(configs, comp)
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
    from tracker.experiment import model_refs

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
