"""ControlNets, IP-Adapters and the SDXL base + refiner hand-off, on top of a pipeline the engine loaded.

A run's ``Conditioning`` (the ControlNet models and control images with their scales and guidance window, an
IP-Adapter with its reference image and scale, a refiner with the denoising fraction where it takes over) is
applied by a ``Conditioner``, the engine's part that loads and caches what these need:

- ControlNets (``ControlNetModel`` or the class the checkpoint's config names: ``FluxControlNetModel``, ...) from a
  folder, a Hub id or a single file (``from_single_file``, safetensors unless ``allow_pickle``), checked against the
  base model's denoiser config before anything is generated (``family_mismatch``). The called pipeline is made
  from the base by the engine's ``PipelineVariants`` with ``from_pipe(base, controlnet=...)`` (diffusers'
  AutoPipeline's choice for the base's class and task; several ControlNets as one ``MultiControlNetModel``).
- IP-Adapters: the weights file (``image_proj.*``/``ip_adapter.*``) and its CLIP image encoder are read once and
  kept; ``load_ip_adapter`` puts them into the base pipeline (the UNet is shared with its variants),
  ``set_ip_adapter_scale`` sets the scale, and a run without one unloads it (``unload_ip_adapter``).
- Refiners: ``tracker.engine.refiner`` loads them (beside their base, sharing what diffusers' SDXL guide shares)
  and makes the base + refiner hand-off.

Which keyword carries the control image (``image`` or, where the pipeline also takes an init image,
``control_image``) is read from the pipeline class's ``__call__``. Input images are read from the workspace by
their sha256 at call time (``Conditioning.image``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tracker.engine.load_errors import (_describe, _first_line, _is_missing, _missing_error, _offline, _pickle_error,
                                        _quiet_loading, _safetensors_refused)
from tracker.engine import refiner as handoff
from tracker.engine.refiner import call_parameters
from tracker.engine.loading import load_kwargs
from tracker.engine.userpipe import denoiser
from tracker.errors import ConditioningError
from tracker.experiment import model_refs as models

if TYPE_CHECKING:
    import torch

# Denoiser config entries a ControlNet must share with the base model's UNet/transformer: the latent channels, the
# text-embedding width, SDXL's added time/text embedding, and the residual layout the ControlNet adds into.
FAMILY_KEYS = ("in_channels", "cross_attention_dim", "addition_embed_type", "projection_class_embeddings_input_dim",
               "block_out_channels", "layers_per_block", "joint_attention_dim", "pooled_projection_dim")
@dataclass(eq=False)
class Conditioning:
    """What one run adds to its model's call. Images are PIL images, or sha256 hashes ``load`` reads (``image``)."""

    controlnet: tuple[str, ...] = ()
    control_image: tuple[Any, ...] = ()  # one per ControlNet
    controlnet_conditioning_scale: tuple[float, ...] = ()  # one per ControlNet, or one for all; () = 1.0
    control_guidance_start: tuple[float, ...] = ()
    control_guidance_end: tuple[float, ...] = ()
    ip_adapter: Any = None  # the ``ip_adapter`` setting's mapping (``ip_adapter_ref``)
    ip_adapter_image: Any = None
    ip_adapter_scale: float = 1.0
    refiner: str | None = None
    denoising_end: float | None = None  # where the base stops (with a refiner: where the refiner starts)
    denoising_start: float | None = None  # the refiner's start, when not the base's end

    load: Callable[[str, str], Any] | None = None  # reads an image given as its sha256 (the workspace's inputs)

    def image(self, value: Any, name: str) -> Any:
        """An input image: a PIL image as given, or read by its sha256 (at call time: the sweep stores the inputs in
        the workspace after the models are loaded and checked)."""
        return self.load(value, name) if isinstance(value, str) and self.load is not None else value


@dataclass(frozen=True)
class IPAdapterRef:
    """Where an IP-Adapter is: ``location`` (a folder or Hub repo), its ``subfolder`` and ``weight_name``, and its image
    encoder folder (``image_encoder``, relative to ``subfolder`` when it has no "/", else to ``location``: as
    diffusers' ``load_ip_adapter`` reads ``image_encoder_folder``)."""

    location: str
    weight_name: str
    subfolder: str = ""
    image_encoder: str = "image_encoder"
    hub: bool = False

    def encoder_subfolder(self) -> str:
        return str(Path(self.subfolder, self.image_encoder).as_posix()) if "/" not in self.image_encoder \
            else self.image_encoder


def ip_adapter_ref(value: Any, base_dir: Path | None = None) -> IPAdapterRef:
    """An IP-Adapter reference from the ``ip_adapter`` setting: ``{path: FOLDER-OR-HUB-ID, weight_name: FILE,
    subfolder: NAME, image_encoder: FOLDER}`` (as diffusers' ``load_ip_adapter`` takes them)."""
    if isinstance(value, IPAdapterRef):
        return value
    v = dict(value)
    path = Path(str(v["path"])).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).is_dir():
        path = base_dir / path
    local = path.is_dir() or str(v["path"]).startswith((".", "/", "~"))
    return IPAdapterRef(str(path.resolve()) if local else str(v["path"]), str(v["weight_name"]),
                        str(v.get("subfolder") or ""), str(v.get("image_encoder") or "image_encoder"), hub=not local)


def from_settings(settings: Any, image: Callable[[str, str], Any]) -> Conditioning:
    """A run's ``Conditioning`` from its settings; ``image(sha256, field)`` reads an input image from the workspace."""
    scale = settings.controlnet_conditioning_scale
    on = bool(settings.controlnet)
    return Conditioning(
        controlnet=tuple(settings.controlnet),
        control_image=tuple(settings.control_image),
        controlnet_conditioning_scale=(tuple(scale) if isinstance(scale, tuple) else (scale,)) if on else (),
        control_guidance_start=(settings.control_guidance_start,) if on else (),
        control_guidance_end=(settings.control_guidance_end,) if on else (),
        ip_adapter=dict(settings.ip_adapter) or None,
        ip_adapter_image=settings.ip_adapter_image or None,
        ip_adapter_scale=settings.ip_adapter_scale, refiner=settings.refiner or None,
        denoising_end=settings.denoising_end, denoising_start=settings.denoising_start, load=image)


# ------------------------------------------------------------------------------------------------ pure helpers

# The key layouts of an IP-Adapter .safetensors file, as diffusers' load_ip_adapter reads them: h94's
# (``image_proj.*``, ``ip_adapter.N.to_k_ip.*``) and XLabs' for FLUX.1 (``ip_adapter_proj_model.*``,
# ``double_blocks.N.processor.ip_adapter_double_stream_k_proj.*``).
IMAGE_PROJ_PREFIXES = ("ip_adapter_proj_model.", "image_proj.")
IP_ADAPTER_PREFIXES = ("double_blocks.", "ip_adapter.")
IP_ADAPTER_RENAMES = (("ip_adapter_double_stream_k_proj", "to_k_ip"), ("ip_adapter_double_stream_v_proj", "to_v_ip"),
                      ("processor.", ""))


def ip_adapter_state(flat: dict) -> dict:
    """An IP-Adapter's flat weights as the ``{"image_proj": ..., "ip_adapter": ...}`` dict ``load_ip_adapter``
    takes, from either layout (diffusers' FLUX.1 loader reads a file this way)."""
    state: dict = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        rest = key.split(".", 1)[-1]
        if key.startswith(IMAGE_PROJ_PREFIXES):
            state["image_proj"][rest] = value
        elif key.startswith(IP_ADAPTER_PREFIXES):
            for old, new in IP_ADAPTER_RENAMES:
                rest = rest.replace(old, new)
            state["ip_adapter"][rest] = value
    return state


def family_mismatch(controlnet_config: dict, base_config: dict, vae_scale_factor: int | None = None) -> list[str]:
    """The config entries where a ControlNet does not fit a base denoiser ("name X (model: Y)"); [] when it fits."""
    def norm(v: Any) -> Any:
        return list(v) if isinstance(v, (list, tuple)) else v

    out = [f"{k} {norm(controlnet_config[k])!r} (model: {norm(base_config[k])!r})" for k in FAMILY_KEYS
           if k in controlnet_config and k in base_config and norm(controlnet_config[k]) != norm(base_config[k])]
    embed = controlnet_config.get("conditioning_embedding_out_channels")
    if vae_scale_factor and embed and 2 ** (len(embed) - 1) != vae_scale_factor:
        out.append(f"control image downsampled {2 ** (len(embed) - 1)}x (model's latents: {vae_scale_factor}x)")
    return out


def control_kwargs(pipe: Any, cond: Conditioning) -> dict[str, Any]:
    """The ControlNet keywords of a call of ``pipe``: its control image keyword, scales and guidance window."""
    n = len(cond.controlnet)
    if len(cond.control_image) != n:
        raise ConditioningError(f"controlnet: {n} ControlNet(s) but {len(cond.control_image)} control image(s); "
                                f"give one control_image per controlnet")

    def each(values: tuple[float, ...], what: str) -> Any:
        if len(values) not in (0, 1, n):
            raise ConditioningError(f"{what}: {len(values)} values for {n} ControlNets; give one, or one each")
        if not values:
            return None
        return values[0] if n == 1 else (list(values) * n if len(values) == 1 else list(values))

    key = "control_image" if "control_image" in call_parameters(pipe) else "image"
    images = [cond.image(x, "control_image") for x in cond.control_image]
    kw: dict[str, Any] = {key: images[0] if n == 1 else images}
    for name in ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end"):
        value = each(getattr(cond, name), name)
        if value is not None:
            kw[name] = value
    return kw


# ------------------------------------------------------------------------------------------------ the engine part

@dataclass
class ConditionedCall:
    """What ``Conditioner.prepare`` set up for a run's settings: the modules the called pipeline is made with
    (``components``, for diffusers' ``from_pipe``: the ControlNet), the refiner, and the call's extra arguments
    (``kwargs(pipe)``: spelled as the pipeline made from the base with those components takes them)."""

    cond: Conditioning
    components: dict = field(default_factory=dict)
    refiner: Any = None

    def kwargs(self, pipe: Any) -> dict[str, Any]:
        cond = self.cond
        kw = control_kwargs(pipe, cond) if cond.controlnet else {}
        if cond.ip_adapter:
            kw["ip_adapter_image"] = cond.image(cond.ip_adapter_image, "ip_adapter_image")
        if cond.denoising_end is not None and self.refiner is None:
            kw["denoising_end"] = cond.denoising_end
        return kw


class Conditioner:
    """Loads and caches ControlNets, IP-Adapters and refiners; see the module's docstring. ``base_dir`` resolves
    relative paths. Every cache is per location, dtype and allow_pickle, and remembers which base pipelines use what:
    ``nbytes(base)`` counts their weights with the base's, ``forget(base)`` drops what no other base uses."""

    def __init__(self, base_dir: Path | None = None):
        self.base_dir = base_dir
        self.controlnets: dict[tuple, Any] = {}
        self.ip_adapters: dict[tuple, tuple[Any, dict]] = {}  # key -> (image encoder, {"image_proj", "ip_adapter"})
        self.refiners: dict[tuple, Any] = {}  # (location, dtype, allow_pickle, id(base)) -> pipeline
        self.multis: dict[tuple, Any] = {}  # (id(base), ControlNet ids) -> their MultiControlNetModel
        self.used: dict[int, set[tuple[str, tuple]]] = {}  # id(base) -> (cache name, key) of what it uses

    # -- loading -----------------------------------------------------------------------------------

    def _ref(self, name: str) -> models.ModelRef:
        return models.resolve(name, self.base_dir)

    def controlnet(self, name: str, base: Any, dtype: torch.dtype, allow_pickle: bool, model: str) -> Any:
        """The ControlNet ``name`` (loaded once), refused in one line when it does not fit ``base``'s denoiser."""
        ref = self._ref(name)
        key = (ref.location, ref.config, str(dtype), allow_pickle)
        if key not in self.controlnets:
            self.controlnets[key] = self._load_controlnet(name, ref, dtype, allow_pickle)
        cn = self.controlnets[key]
        self.used.setdefault(id(base), set()).add(("controlnets", key))
        bad = family_mismatch(dict(cn.config), dict(denoiser(base).config), getattr(base, "vae_scale_factor", None))
        if bad:
            raise ConditioningError(f"controlnet {name!r}: made for another model family than model {model!r} "
                                    f"({type(base).__name__}): {'; '.join(bad)}; use a ControlNet trained for "
                                    f"this model's family")
        return cn

    def _load_controlnet(self, name: str, ref: models.ModelRef, dtype: torch.dtype, allow_pickle: bool) -> Any:
        import diffusers

        if ref.kind == "file":
            path = Path(ref.location)
            if not path.is_file():
                raise ConditioningError(f"controlnet {name!r}: no such file ({path})")
            if path.suffix.lower() != ".safetensors" and not allow_pickle:
                raise ConditioningError(f"controlnet {name!r}: a pickle file ({path.suffix}) can run code when loaded; "
                                        f"convert it to .safetensors, or set allow_pickle: true if you trust it")
            kw: dict[str, Any] = {"dtype": dtype}
            if ref.config:
                kw["config"] = str(models.resolve(ref.config, self.base_dir).location)
            if _offline():
                kw["local_files_only"] = True
            try:
                with _quiet_loading():
                    return diffusers.ControlNetModel.from_single_file(str(path), **kw).eval()
            except Exception as e:  # noqa: BLE001 - one line, whatever diffusers raises
                raise ConditioningError(f"controlnet {name!r}: the single file {path} could not be loaded as a "
                                        f"ControlNetModel{' with the config of ' + ref.config if ref.config else ''}: "
                                        f"{_first_line(e)}") from None
        try:
            config = diffusers.ControlNetModel.load_config(ref.location, local_files_only=_offline())
            cls = getattr(diffusers, str(config.get("_class_name", "ControlNetModel")), None)
            if cls is None or not hasattr(cls, "from_pretrained"):
                raise ConditioningError(f"controlnet {name!r}: {_describe(ref)} holds a {config.get('_class_name')}, "
                                        f"which is not a diffusers ControlNet class")
            with _quiet_loading():
                return cls.from_pretrained(ref.location, **load_kwargs(dtype, allow_pickle)).eval()
        except ConditioningError:
            raise
        except Exception as e:  # noqa: BLE001 - diffusers raises many types for a bad model; all become one line
            if not allow_pickle and _safetensors_refused(e):
                raise _pickle_error("controlnet", ref) from None
            if _is_missing(e):
                raise _missing_error("controlnet", ref, e) from None
            raise ConditioningError(f"controlnet {name!r}: {_describe(ref)} could not be loaded: {_first_line(e)}") \
                from None

    def _ip_weights(self, ref: IPAdapterRef, name: str, dtype: torch.dtype, allow_pickle: bool,
                    separate_encoder: bool = False) -> tuple[Any, dict]:
        """The image encoder and the weights of ``ref``. With ``separate_encoder`` (FLUX.1's loader, whose
        ``image_encoder_pretrained_model_name_or_path`` is a model of its own), an ``image_encoder`` with a "/" is
        that model: a Hub id or a folder (relative to the experiment file); else it is a folder of the adapter's."""
        key = (ref, str(dtype), allow_pickle, separate_encoder)
        if key in self.ip_adapters:
            return self.ip_adapters[key]
        from diffusers.models.model_loading_utils import load_state_dict
        from transformers import CLIPVisionModelWithProjection

        if not ref.weight_name.endswith(".safetensors") and not allow_pickle:
            raise ConditioningError(f"ip_adapter {name!r}: {ref.weight_name} is a pickle file, which can run code when "
                                    f"loaded; use its .safetensors, or set allow_pickle: true if you trust it")
        try:
            if ref.hub:
                from huggingface_hub import hf_hub_download

                file = hf_hub_download(ref.location, ref.weight_name, subfolder=ref.subfolder or None,
                                       local_files_only=_offline())
            else:
                file = str(Path(ref.location, ref.subfolder, ref.weight_name))
            flat = load_state_dict(file)
            state = flat if isinstance(flat.get("image_proj"), dict) else ip_adapter_state(flat)  # .bin: nested
            if not state["image_proj"] or not state["ip_adapter"]:
                raise ConditioningError(f"ip_adapter {name!r}: {file} holds no image_proj.*/ip_adapter.* weights "
                                        f"(nor XLabs' ip_adapter_proj_model.*/double_blocks.*); it is not an "
                                        f"IP-Adapter")
            where: dict[str, Any] = {"pretrained_model_name_or_path": ref.location,
                                     "subfolder": ref.encoder_subfolder()}
            if separate_encoder and "/" in ref.image_encoder:
                where = {"pretrained_model_name_or_path": str(models.resolve(ref.image_encoder, self.base_dir).location)}
            with _quiet_loading():
                encoder = CLIPVisionModelWithProjection.from_pretrained(**where,
                                                                        **load_kwargs(dtype, allow_pickle)).eval()
        except ConditioningError:
            raise
        except Exception as e:  # noqa: BLE001 - one line, whatever the loaders raise
            raise ConditioningError(f"ip_adapter {name!r}: cannot be loaded from {ref.location} (weights "
                                    f"{ref.subfolder + '/' if ref.subfolder else ''}{ref.weight_name}, image encoder "
                                    f"{ref.encoder_subfolder()}/): {_first_line(e)}") from None
        self.ip_adapters[key] = (encoder, state)
        return encoder, state

    def refiner(self, name: str, base: Any, base_location: str | None, dtype: torch.dtype, allow_pickle: bool) -> Any:
        """The refiner pipeline ``name`` for ``base`` (``tracker.engine.refiner.load``), loaded once."""
        ref = self._ref(name)
        key = (ref.location, str(dtype), allow_pickle, id(base))
        if key not in self.refiners:
            self.refiners[key] = handoff.load(name, ref, base, base_location, load_kwargs(dtype, allow_pickle))
        return self.refiners[key]

    # -- per batch ---------------------------------------------------------------------------------

    def prepare(self, base: Any, cond: Conditioning, *, dtype: torch.dtype, allow_pickle: bool, model: str,
                base_location: str | None = None, device: str | None = None,
                prompt_syntax: str = "plain") -> ConditionedCall:
        """Load and check everything ``cond`` needs (one line for what does not fit, before anything is generated)
        and set ``base`` up for it: its IP-Adapter in or out."""
        device = device or str(denoiser(base).device)
        self._ip_adapter(base, cond, dtype, allow_pickle)
        components: dict[str, Any] = {}
        if cond.controlnet:
            cns = [self.controlnet(n, base, dtype, allow_pickle, model) for n in cond.controlnet]
            for cn in cns:
                cn.to(device)
            components["controlnet"] = cns[0] if len(cns) == 1 else self._multi(base, cns)
        refiner = None
        if cond.refiner:
            if cond.denoising_end is None:
                raise ConditioningError(f"refiner {cond.refiner!r}: give denoising_end, the fraction of the steps the "
                                        f"base model runs before the refiner takes over (0.8 in diffusers' docs)")
            if "denoising_end" not in call_parameters(base):
                raise ConditioningError(f"refiner {cond.refiner!r}: model {model!r} ({type(base).__name__}) cannot "
                                        f"stop at denoising_end and hand over latents")
            if prompt_syntax != "plain":
                raise ConditioningError(f"refiner {cond.refiner!r}: the refiner encodes the prompts as text with its "
                                        f"own encoder; prompt_syntax {prompt_syntax} (weighted prompts) cannot be "
                                        f"handed over: use prompt_syntax: plain")
            refiner = self.refiner(cond.refiner, base, base_location, dtype, allow_pickle)
            refiner.to(device)
        return ConditionedCall(cond, components, refiner)

    def _multi(self, base: Any, cns: list) -> Any:
        """One ``MultiControlNetModel`` per list of ControlNets (the pipeline made with it is cached by its id)."""
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        key = (id(base), tuple(id(c) for c in cns))
        if key not in self.multis:
            self.multis[key] = MultiControlNetModel(cns)
        return self.multis[key]

    def _ip_adapter(self, base: Any, cond: Conditioning, dtype: torch.dtype, allow_pickle: bool) -> None:
        unet = denoiser(base)
        want = ip_adapter_ref(cond.ip_adapter, self.base_dir) if cond.ip_adapter else None
        if getattr(unet, "_tracker_ip_adapter", None) != want:
            self.release(base)
        if want is None:
            return
        if not hasattr(base, "load_ip_adapter"):
            raise ConditioningError(f"ip_adapter {cond.ip_adapter!r}: {type(base).__name__} cannot load IP-Adapters")
        if getattr(unet, "_tracker_ip_adapter", None) != want:
            # the loader is given the image encoder registered here and told to load none (UNet pipelines spell it
            # image_encoder_folder, FLUX.1's image_encoder_pretrained_model_name_or_path: a model of its own)
            params = inspect.signature(base.load_ip_adapter).parameters
            no_encoder = "image_encoder_folder" if "image_encoder_folder" in params else \
                "image_encoder_pretrained_model_name_or_path"
            separate = no_encoder != "image_encoder_folder"
            encoder, state = self._ip_weights(want, str(cond.ip_adapter), dtype, allow_pickle, separate)
            self.used.setdefault(id(base), set()).add(("ip_adapters", (want, str(dtype), allow_pickle, separate)))
            base.register_modules(image_encoder=encoder.to(unet.device))
            try:
                with _quiet_loading():  # its cast of the UNet warns of fp32 modules there are none of
                    base.load_ip_adapter(state, subfolder="", weight_name="", **{no_encoder: None})
            except Exception as e:  # noqa: BLE001 - shapes of another family's adapter, ...
                base.unload_ip_adapter()
                raise ConditioningError(f"ip_adapter {cond.ip_adapter!r}: does not fit model "
                                        f"({type(base).__name__}): {_first_line(e)}") from None
            unet._tracker_ip_adapter = want
        base.set_ip_adapter_scale(cond.ip_adapter_scale)

    @staticmethod
    def call(prepared: ConditionedCall, pipe: Any, base: Any, kwargs: dict, timing: dict | None = None) -> Any:
        """Call ``pipe`` (made from ``base`` with ``prepared.components``, its modules the base's current ones) with
        ``kwargs``, which hold ``prepared.kwargs(pipe)``; with a refiner, ``pipe`` stops at ``denoising_end`` and
        hands its latents to the refiner, which finishes from ``denoising_start`` with the same generators."""
        timing = timing or {}
        if prepared.refiner is None:
            return pipe(**kwargs, **timing)
        return handoff.hand_off(pipe, prepared.refiner, base, kwargs, timing, prepared.cond.denoising_end,
                                prepared.cond.denoising_start)

    # -- the cache ---------------------------------------------------------------------------------

    def nbytes(self, base: Any) -> int:
        """The bytes of the weights held for ``base`` beyond its own: ControlNets, IP-Adapters, refiners' own modules."""
        import torch

        mods: list = []
        for cache, key in self.used.get(id(base), ()):
            held = getattr(self, cache).get(key)
            mods += [held[0], *held[1].values()] if cache == "ip_adapters" and held else [held]
        for key, refiner in self.refiners.items():
            if key[-1] == id(base):
                mods += [m for n, m in refiner.components.items() if n not in refiner._tracker_shared]
        seen: dict[int, Any] = {}
        for m in mods:
            for t in ((*m.parameters(), *m.buffers()) if isinstance(m, torch.nn.Module) else
                      m.values() if isinstance(m, dict) else ()):
                seen[id(t)] = t
        return sum(t.numel() * t.element_size() for t in seen.values())

    def release(self, base: Any) -> None:
        """Take an IP-Adapter this conditioner put into ``base`` out again (a user's pipeline goes back as it came)."""
        if getattr(denoiser(base), "_tracker_ip_adapter", None) is not None:
            base.unload_ip_adapter()
            denoiser(base)._tracker_ip_adapter = None

    def forget(self, base: Any) -> None:
        """Drop what was made for ``base`` (an evicted pipeline), and the models no other base uses."""
        mine = self.used.pop(id(base), set())
        for cache, key in mine - set().union(*self.used.values()):
            getattr(self, cache).pop(key, None)
        for cache in (self.refiners, self.multis):
            for key in [k for k in cache if id(base) in k]:
                del cache[key]
