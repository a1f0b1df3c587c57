"""LoRA adapters: ``lora:`` in an experiment file.

A list of adapters applies to every run; a mapping label -> list of adapters is an axis (``none: []``,
``ink@0.6: [{path: loras/ink.safetensors, scale: 0.6}]``). An adapter is ``{path: FILE}`` (relative to the
experiment file) or ``{hub: ORG/NAME, weight_name: FILE}`` (from the Hugging Face cache), with ``scale``
(default 1.0) and ``name`` (default: the file's stem). Its file's sha256 goes into the run key and the
recipe (not its path, so keys agree across machines). Safetensors only unless ``allow_pickle: true``.

The engine loads each adapter once per pipeline with diffusers' ``load_lora_weights`` and switches between
them with ``set_adapters`` / ``disable_lora``: the base model is never reloaded (``apply``).

Parsing is pure (hashlib and huggingface_hub's cache lookup); ``apply`` needs the loaded pipeline.
"""

from __future__ import annotations

import math

import hashlib
import os
import re
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

from tracker.fsutil import sha256_once

DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
LORAS_ENV = "TRACKER_LORAS"  # where ``tracker reproduce`` looks for A1111's <lora:name:scale> files
A1111_TAG = re.compile(r"\s*<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>", re.I)
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")

Adapter = tuple[tuple[str, Any], ...]  # sorted (field, value) pairs: name, scale, sha256, source, weight_name and,
# for a safetensors file, addnet (A1111's hash of it; not in the run key)


# ---------------------------------------------------------------------------------------------- parsing


def parse(raw: Any, base_dir: Path | None, allow_pickle: bool,
          err: Callable[[str, str], None]) -> tuple[Adapter, ...] | list[tuple[str, tuple[Adapter, ...]]]:
    """A list of adapters (one set for every run), or [(label, adapters)] for a mapping (an axis)."""
    if isinstance(raw, dict):
        if not raw:
            err("lora", "is an empty mapping; give label -> list of adapters (none: [] for no LoRA)")
        return [(str(label), _adapters(v, f"lora.{label}", base_dir, allow_pickle, err)) for label, v in raw.items()]
    return _adapters(raw, "lora", base_dir, allow_pickle, err)


def _adapters(raw: Any, field: str, base_dir: Path | None, allow_pickle: bool,
              err: Callable[[str, str], None]) -> tuple[Adapter, ...]:
    if raw is None or raw == "none":
        return ()
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, list):
        err(field, f"must be a list of adapters ({{path: FILE, scale: S}}) but is {raw!r}")
    out = [_adapter(a, f"{field}[{i}]", base_dir, allow_pickle, err) for i, a in enumerate(raw)]
    names = [dict(a)["name"] for a in out]
    if len(set(names)) != len(names):
        err(field, f"names an adapter twice ({', '.join(names)}); give each a distinct name:")
    return tuple(out)


def _adapter(raw: Any, field: str, base_dir: Path | None, allow_pickle: bool,
             err: Callable[[str, str], None]) -> Adapter:
    if isinstance(raw, str):
        raw = {"path": raw}
    if not isinstance(raw, dict) or set(raw) - {"path", "hub", "weight_name", "scale", "name"} \
            or ("path" in raw) == ("hub" in raw):
        err(field, f"must be {{path: FILE}} or {{hub: ORG/NAME}} with optional scale, name, weight_name but is {raw!r}")
    scale = raw.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        err(f"{field}.scale", f"must be a finite number but is {scale!r}")
    if "path" in raw:
        file = _local(raw["path"], field, base_dir, err)
        source, weight_name, default_name = str(file), None, file.stem
    else:
        source, weight_name = str(raw["hub"]), str(raw.get("weight_name") or DEFAULT_WEIGHT_NAME)
        file = _cached(source, weight_name, field, err)
        default_name = source.rsplit("/", 1)[-1]
    if not allow_pickle and file.suffix.lower() != ".safetensors":
        err(field, f"{file.name} is not a .safetensors file; pickle weights can run code when loaded: convert it, "
                   f"or set allow_pickle: true if you trust it")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        err(f"{field}.name", f"must match [A-Za-z0-9_.-]+ but is {name!r}")
    pairs = {"name": name, "scale": float(scale), "sha256": sha256_once(file), "source": source,
             **_short_hash(file)}
    if weight_name:
        pairs["weight_name"] = weight_name
    return tuple(sorted(pairs.items()))


def _local(path: Any, field: str, base_dir: Path | None, err: Callable[[str, str], None]) -> Path:
    if not isinstance(path, str) or not path.strip():
        err(f"{field}.path", f"must be a file path but is {path!r}")
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    if p.is_dir():
        p = p / DEFAULT_WEIGHT_NAME
    if not p.is_file():
        err(f"{field}.path", f"{path!r}: no such LoRA file (looked at {p})")
    return p.resolve()


def _cached(repo: str, weight_name: str, field: str, err: Callable[[str, str], None]) -> Path:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, weight_name)
    except Exception as e:  # noqa: BLE001 - a malformed repo id
        err(f"{field}.hub", f"{repo!r} is not a Hugging Face Hub id ({e})")
    if not isinstance(found, str):
        err(f"{field}.hub", f"{repo}/{weight_name} is not in the Hugging Face cache; run `hf download {repo} "
                            f"{weight_name}` while online, or give a local path")
    return Path(found)


@lru_cache(maxsize=256)
def _addnet(path: str, size: int, mtime: int) -> str | None:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        skip = 8 + int.from_bytes(head, "little")
        if skip > size:
            return None
        f.seek(skip)
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def addnet_hash(path: str) -> str | None:
    """The hash AUTOMATIC1111, kohya's sd-scripts and Civitai give a ``.safetensors`` LoRA (the "addnet" hash):
    the sha256 of the tensor bytes after the file's header (8 bytes of little-endian header length, then the
    JSON header), so editing the metadata does not change it. None for a file too short to have a header."""
    st = os.stat(path)
    return _addnet(path, st.st_size, st.st_mtime_ns)


def _short_hash(file: Path) -> dict[str, str]:
    """``{"addnet": hash}`` for a safetensors file (A1111's ``Lora hashes`` use it), else nothing: A1111 hashes
    other formats whole, which ``sha256`` already is."""
    if file.suffix.lower() != ".safetensors":
        return {}
    h = addnet_hash(str(file))
    return {"addnet": h} if h else {}


# ---------------------------------------------------------------------------------------------- labels, keys, PNG


def label(adapters: Iterable[Adapter]) -> str:
    """``none``, or ``name@scale`` per adapter joined by ``+``."""
    return "+".join(f"{dict(a)['name']}@{dict(a)['scale']:g}" for a in adapters) or "none"


def key_material(adapters: Iterable[Adapter]) -> list[dict[str, Any]]:
    """What of each adapter changes the image: name, scale, file hash (not where the file lies)."""
    return [{k: v for k, v in a if k not in ("source", "weight_name", "addnet")} for a in adapters]


def a1111_hash(adapter: dict) -> str:
    """The 12 hex digits A1111 writes for a LoRA in ``Lora hashes``: the addnet hash of a safetensors file, the whole
    file's sha256 otherwise (and for a recipe from before the tracker recorded ``addnet``)."""
    return str(adapter.get("addnet") or adapter["sha256"])[:12]


def a1111_hashes(adapters: Iterable[dict]) -> str | None:
    """A1111's ``Lora hashes`` value: ``name: 12 hex digits`` (``a1111_hash``) per adapter."""
    return ", ".join(f"{a['name']}: {a1111_hash(a)}" for a in adapters) or None


def matches_hash(adapter: dict, short: str) -> bool:
    """Whether a hash a PNG names (A1111's addnet short hash, or the whole file's sha256 the tracker wrote before)
    is this adapter's file."""
    short = short.strip().lower()
    if not short:
        return False
    return any(str(h).startswith(short) for h in (adapter.get("sha256"), adapter.get("addnet")) if h)


def a1111_tags(adapters: Iterable[dict]) -> str:
    """A1111's ``<lora:name:scale>`` tags, as its prompts carry them."""
    return "".join(f" <lora:{a['name']}:{a['scale']:g}>" for a in adapters)


def from_a1111(prompt: str, folders: Iterable[Path], allow_pickle: bool = False) -> tuple[str, tuple[Adapter, ...], list[str]]:
    """A1111 ``<lora:name:scale>`` tags -> (prompt without them, adapters found in ``folders``, notes)."""
    adapters, notes = [], []
    folders = [f for f in folders if f.is_dir()]
    for m in A1111_TAG.finditer(prompt):
        name, scale = m.group(1).strip(), m.group(2)
        suffixes = (".safetensors",) + (PICKLE_SUFFIXES if allow_pickle else ())
        file = next((f / f"{name}{s}" for f in folders for s in suffixes if (f / f"{name}{s}").is_file()), None)
        try:
            weight = float(scale) if scale not in (None, "") else 1.0
        except ValueError:
            weight = None
        if weight is not None and not math.isfinite(weight):
            weight = None
        if file is None or weight is None:
            where = ", ".join(map(str, folders)) or f"no loras folder (a loras/ folder beside the PNG, or {LORAS_ENV})"
            notes.append(f"LoRA {m.group(0).strip()}: " + (f"no {name}.safetensors in {where}; generated without it"
                                                          if file is None else "scale is not a number; ignored"))
            continue
        pairs = {"name": name, "scale": weight, "sha256": sha256_once(file), "source": str(file.resolve()),
                 **_short_hash(file)}
        adapters.append(tuple(sorted(pairs.items())))
    return A1111_TAG.sub("", prompt).strip(), tuple(adapters), notes


def folders_for(folder: Path) -> list[Path]:
    """Where ``tracker reproduce`` looks for A1111's LoRA files: ``$TRACKER_LORAS``, then ``loras/`` beside the PNG."""
    out = [Path(p) for p in os.environ.get(LORAS_ENV, "").split(os.pathsep) if p]
    return out + [folder / "loras"]


# ---------------------------------------------------------------------------------------------- engine side


def apply(pipe: Any, adapters: tuple[Adapter, ...], allow_pickle: bool, local_only: bool) -> None:
    """Make ``adapters`` the active LoRA set of ``pipe``: load each new one once, then switch.

    Adapter names in the pipeline are ``name_<hash prefix>``, so two files with one name never collide.
    """
    loaded: set[str] = pipe.__dict__.setdefault("_tracker_lora", set())
    names, weights = [], []
    for a in map(dict, adapters):
        adapter = f"{a['name']}_{a['sha256'][:8]}"
        if adapter not in loaded:
            if a.get("weight_name"):
                where, weight_name = a["source"], a["weight_name"]
            else:
                where, weight_name = str(Path(a["source"]).parent), Path(a["source"]).name
            from tracker.engine import loadguard

            with loadguard.loading(), warnings.catch_warnings():  # one load at a time (see loadguard)
                # peft says so for every adapter after the first: that is the point
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                pipe.load_lora_weights(where, weight_name=weight_name, adapter_name=adapter,
                                       use_safetensors=not allow_pickle, local_files_only=local_only)
            loaded.add(adapter)
        names.append(adapter)
        weights.append(a["scale"])
    if names:
        pipe.enable_lora()
        pipe.set_adapters(names, adapter_weights=weights)
    elif loaded:
        pipe.disable_lora()
