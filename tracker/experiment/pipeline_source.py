"""What a model's files and the installed diffusers' source say, read without importing torch or diffusers:
the pipeline class (``model_index.json``'s ``_class_name``), the component configs (a local folder, a built-in
model, or a Hub id's files in the Hugging Face cache, offline) and the pipeline class's ``__call__`` signature,
parsed from diffusers' source with ``ast``. ``tracker.experiment.families`` builds its adapters on these.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

NO_DEFAULT = object()  # a parameter without a default
NOT_LITERAL = object()  # a default that is not a Python literal (read from source)

# Arguments the tracker passes itself: each names the setting to use instead.
RESERVED = {
    "prompt": "the prompt field", "negative_prompt": "the negative_prompt field",
    "num_inference_steps": "the steps setting", "guidance_scale": "the guidance_scale setting",
    "width": "the size (or width) setting", "height": "the size (or height) setting", "generator": "seeds",
    "output_type": "the tracker (it reads arrays)", "return_dict": "the tracker",
    "num_images_per_prompt": "the tracker (one image per run; use seeds)",
    "num_videos_per_prompt": "the tracker", "callback_on_step_end": "the tracker (it times each step)",
    "callback_on_step_end_tensor_inputs": "the tracker", "callback": "the tracker", "callback_steps": "the tracker",
    # image-conditioned runs: settings of their own (docs/image-conditioned.md)
    "strength": "the strength setting", "controlnet_conditioning_scale": "the controlnet_conditioning_scale setting",
    "control_guidance_start": "the control_guidance_start setting",
    "control_guidance_end": "the control_guidance_end setting", "denoising_end": "the denoising_end setting",
    "denoising_start": "the denoising_start setting",
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


def vae_factor(configs: Mapping[str, Mapping[str, Any]]) -> int | None:
    vae = configs.get("vae") or {}
    channels = vae.get("block_out_channels")
    if isinstance(channels, list) and channels:
        return 2 ** (len(channels) - 1)
    return None


def sample_size(configs: Mapping[str, Mapping[str, Any]], component: str) -> tuple[int, int] | None:
    s = (configs.get(component) or {}).get("sample_size")
    if isinstance(s, int) and not isinstance(s, bool):
        return s, s
    if isinstance(s, list) and len(s) == 2 and all(isinstance(x, int) for x in s):
        return int(s[1]), int(s[0])  # (height, width) in diffusers' configs -> (w, h)
    return None


# ---------------------------------------------------------------------------------------------- image tasks

_TASK_MAPPINGS = {"img2img": "AUTO_IMAGE2IMAGE_PIPELINES_MAPPING", "inpaint": "AUTO_INPAINT_PIPELINES_MAPPING",
                  "text2img": "AUTO_TEXT2IMAGE_PIPELINES_MAPPING"}


@lru_cache(maxsize=1)
def _auto_mappings() -> dict[str, dict[str, str]]:
    """diffusers' AutoPipeline tables (task -> {family key: class name}), read from ``auto_pipeline.py``."""
    root = _diffusers_root()
    out: dict[str, dict[str, str]] = {task: {} for task in _TASK_MAPPINGS}
    try:
        tree = _parsed(root / "pipelines" / "auto_pipeline.py") if root is not None else None
    except (OSError, SyntaxError, UnicodeDecodeError):
        tree = None
    for node in tree.body if tree is not None else ():
        if not isinstance(node, ast.Assign) or len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            continue
        task = next((t for t, name in _TASK_MAPPINGS.items() if name == node.targets[0].id), None)
        if task is None or not isinstance(node.value, ast.Call) or not node.value.args:
            continue
        for item in getattr(node.value.args[0], "elts", ()):
            if isinstance(item, ast.Tuple) and len(item.elts) == 2 and isinstance(item.elts[1], ast.Name):
                key = ast.literal_eval(item.elts[0]) if isinstance(item.elts[0], ast.Constant) else None
                if isinstance(key, str):
                    out[task].setdefault(key, item.elts[1].id)
    return out


def task_class(class_name: str | None, task: str) -> str | None:
    """The pipeline class diffusers' ``AutoPipelineFor<Task>.from_pipe`` makes of a text-to-image ``class_name``
    for ``task`` ("img2img", "inpaint"); the class itself for "text2img"; None when diffusers maps none."""
    if task == "text2img" or not class_name:
        return class_name
    tables = _auto_mappings()
    key = next((k for k, c in tables["text2img"].items() if c == class_name), None)
    if key is None:  # already an image-to-image or inpainting class
        key = next((k for t in ("img2img", "inpaint") for k, c in tables[t].items() if c == class_name), None)
    return tables.get(task, {}).get(key) if key is not None else None
