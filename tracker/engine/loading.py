"""What an ``Engine`` builds once and keeps: pipelines (per model, dtype and allow_pickle; a user's own pipeline
object as handed over), extra VAEs and schedulers (per class and options, from the checkpoint's own config).
``PipelineCache`` holds them; the engine owns one (``Engine.pipelines``) and reads it only through its methods.
Model-loading errors become one line (``tracker.engine.load_errors``).
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tracker.engine import cpu, loadguard

cpu.before_torch()  # OpenMP reads its wait policy when torch loads

import diffusers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoencoderKL, DiffusionPipeline  # noqa: E402

from tracker.experiment import model_refs as models  # noqa: E402
from tracker.experiment import schedulers  # noqa: E402
from tracker.errors import ModelError  # noqa: E402
from tracker.engine.load_errors import (_DropRepeatedNoise, _DropTorchvisionNotice, _describe, _first_line,  # noqa: E402
                              _is_missing, _missing_error, _offline, _pickle_error, _pickle_only, _quiet_loading,
                              _safetensors_refused)
from tracker.experiment.settings import Settings  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _quiet_libraries() -> None:
    """Loading progress bars and import notices would drown the tracker's own progress output."""
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers.utils.import_utils").addFilter(_DropTorchvisionNotice())
    for handler in (*logging.getLogger("diffusers").handlers, *logging.getLogger("transformers").handlers):
        handler.addFilter(_DropRepeatedNoise())


_quiet_libraries()


@dataclass
class _Loaded:
    """One loaded pipeline and what it came with, so every swap can be undone."""

    pipe: Any
    vae: Any  # the checkpoint's own VAE
    scheduler_config: dict  # the checkpoint's scheduler config
    scheduler_class: str
    device: str | None = None  # where the weights are now (None: offloaded by accelerate hooks)
    offloaded: bool = False
    saved: Any = None  # a user's pipeline (tracker.engine.userpipe.Saved): its state as handed over, restored by close()
    sliced: bool = False  # attention slicing on (changing it resets the attention processors)
    compiled: Any = None  # tracker.engine.speed.Compiled while the compile setting is on
    attention: Any = None  # tracker.engine.attention.Applied while the attention setting is not "default"
    schedulers: dict = field(default_factory=dict)  # (class, options) -> a never-used scheduler, copied for use


# ------------------------------------------------------------------------------------------------
# small helpers


def load_kwargs(dtype: torch.dtype, allow_pickle: bool) -> dict[str, Any]:
    """``from_pretrained`` keywords: the dtype, safetensors only unless pickle is allowed, local files when offline."""
    kw: dict[str, Any] = {"dtype": dtype}
    if not allow_pickle:
        kw["use_safetensors"] = True
    if _offline():
        kw["local_files_only"] = True
    return kw



def seed_steps(scheduler: Any, generators: list) -> None:
    """Give a scheduler's ``step`` the batch's seeded generators (one per image) unless the pipeline passes its
    own: the flow pipelines (Flux, SD3, Qwen-Image) call ``scheduler.step`` without a generator, so a stochastic
    scheduler (FlowMatchLCM, ``stochastic_sampling``) would draw its noise from torch's global generator and
    the same seed would not make the same image again. Noise then continues each image's own generator, as
    the DDPM-family pipelines do, so an image does not depend on its batch.

    DPMSolverSDE (A1111's "DPM++ SDE") draws its Brownian noise from torchsde trees, not from a generator: each
    image's tree is seeded with that image's seed (``noise_sampler_seed``, one entry per image, as A1111 seeds
    them), not from torch's global generator, so the image is the same alone, in any batch, and again."""
    if hasattr(scheduler, "noise_sampler_seed"):
        scheduler.noise_sampler_seed = [g.initial_seed() for g in generators]
    step = type(scheduler).step
    if "generator" not in inspect.signature(step).parameters:
        return

    def seeded(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("generator", generators)
        return step(scheduler, *args, **kwargs)

    # the pipeline passes ``eta`` (DDIM) and ``generator`` only to a ``step`` whose signature names them
    # (``prepare_extra_step_kwargs``): the wrapper keeps the bound method's signature, or ``eta`` is dropped
    seeded.__signature__ = inspect.signature(step.__get__(scheduler))  # type: ignore[attr-defined]
    scheduler.step = seeded


@contextmanager
def seeded_global_rng(seed: int, device: str) -> Iterator[None]:
    """Around one pipeline call: torch's global generators seeded with the batch's first seed, and put back after.
    Some pipelines draw from them whatever generator they are given (SD3's ControlNet pipeline samples the
    control image's latent with ``latent_dist.sample()``), so without this the same run made a new image each
    time; with it, a run is the same again in its batch (``reproduce`` regenerates in the original batch)."""
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _single_file(ref: models.ModelRef, what: str, allow_pickle: bool) -> Path:
    """A single-file checkpoint's path, checked: it exists, and it is safetensors unless pickle is allowed."""
    from tracker.experiment import single_file

    path = Path(ref.location)
    if not path.is_file():
        raise ModelError(f"{what}: no such file ({path})")
    if path.suffix.lower() != single_file.SAFETENSORS and not allow_pickle:
        raise ModelError(f"{what}: a pickle file ({path.suffix}) can run code when loaded; "
                         f"convert it to .safetensors, or set allow_pickle: true if you trust it")
    return path


_TIMESTEP_ARGUMENTS: dict[type, frozenset[str]] = {}


def _timestep_arguments(pipeline_class: type) -> frozenset[str]:
    """What a pipeline's ``__call__`` passes to ``scheduler.set_timesteps`` besides the step count, read from
    its source (diffusers' ``retrieve_timesteps`` call): ``sigmas`` when it computes its own by default
    (``np.linspace(1.0, 1 / num_inference_steps, ...)``: Flux, Qwen-Image) and ``mu`` when it always passes one."""
    if pipeline_class not in _TIMESTEP_ARGUMENTS:
        try:
            source = inspect.getsource(pipeline_class.__call__)
        except (OSError, TypeError):
            source = ""
        call = source[source.find("retrieve_timesteps("):] if "retrieve_timesteps(" in source else ""
        call = call[:call.find(")") + 1]
        needs = set()
        if "sigmas=sigmas" in call and "sigmas = np.linspace(" in source:
            needs.add("sigmas")
        if "mu=mu" in call:
            needs.add("mu")
        _TIMESTEP_ARGUMENTS[pipeline_class] = frozenset(needs)
    return _TIMESTEP_ARGUMENTS[pipeline_class]


def _diffusers_class(name: str) -> Any:
    """diffusers' class of that name; None when there is none or it needs a missing extra (torchsde)."""
    try:
        return getattr(diffusers, name, None)
    except Exception:  # noqa: BLE001 - diffusers' lazy import raises ImportError/RuntimeError for missing extras
        return None


def _takes(cls: Any, names: frozenset[str]) -> bool:
    """Whether a scheduler class's ``set_timesteps`` takes every keyword in ``names``."""
    if cls is None or not hasattr(cls, "set_timesteps"):
        return False
    params = inspect.signature(cls.set_timesteps).parameters
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) or names <= set(params)


class PipelineCache:
    """Building and caching the engine's components (see the module's docstring).

    ``base_dir``: where relative model paths are resolved; ``user``: a ``tracker.engine.userpipe.UserPipeline``
    (or None); ``on_load(model)``: called once when a model's pipeline is loaded (the engine starts hashing its
    folder then, beside the rest of the set-up)."""

    def __init__(self, base_dir: Path | None = None, user: Any = None,
                 on_load: Callable[[str], Any] | None = None):
        self.base_dir = base_dir
        self.user = user
        self.on_load = on_load
        self.pipes: dict[tuple, _Loaded] = {}  # (location, dtype, allow_pickle) or ("user", model) -> _Loaded
        self.vaes: dict[tuple, Any] = {}  # (location, dtype, allow_pickle) -> an extra VAE

    def ref(self, name: str) -> models.ModelRef:
        return models.resolve(name, self.base_dir)

    def pipeline(self, settings: Settings) -> _Loaded:
        """The pipeline of ``settings.model`` (loaded once per model, dtype and allow_pickle)."""
        if models.is_user_pipeline(settings.model):
            return self._user_pipeline(settings)
        ref = self.ref(settings.model)
        key = (ref.location, settings.dtype, settings.allow_pickle)
        if ref.config:  # a single file with its own config: one pipeline per config
            key += (ref.config,)
        if key in self.pipes:
            return self.pipes[key]
        if ref.kind == "file":
            return self._cache_pipeline(key, settings, self._single_file_pipeline(ref, settings))
        if ref.kind != "hub" and not (Path(ref.location) / "model_index.json").is_file():
            raise _missing_error("model", ref)
        if ref.kind != "hub" and not settings.allow_pickle and _pickle_only(Path(ref.location)):
            raise _pickle_error("model", ref, _pickle_only(Path(ref.location)))
        try:
            with loadguard.loading(), _quiet_loading():
                pipe = DiffusionPipeline.from_pretrained(ref.location, **load_kwargs(DTYPES[settings.dtype],
                                                                                       settings.allow_pickle))
        except Exception as e:  # noqa: BLE001 - diffusers raises many types for a bad model; all become one line
            if not settings.allow_pickle and _safetensors_refused(e):
                raise _pickle_error("model", ref) from None
            if _is_missing(e):
                raise _missing_error("model", ref, e) from None
            raise ModelError(f"model {settings.model!r}: {_describe(ref)} could not be loaded: {_first_line(e)}") \
                from None
        return self._cache_pipeline(key, settings, pipe)

    def _cache_pipeline(self, key: tuple, settings: Settings, pipe: Any) -> _Loaded:
        pipe.set_progress_bar_config(disable=True)
        if self.on_load is not None:
            self.on_load(settings.model)
        sched = pipe.scheduler
        loaded = _Loaded(pipe=pipe, vae=getattr(pipe, "vae", None), scheduler_config=dict(sched.config),
                         scheduler_class=type(sched).__name__, device="cpu")
        self.pipes[key] = loaded
        return loaded

    def _single_file_pipeline(self, ref: models.ModelRef, settings: Settings) -> Any:
        """A single-file checkpoint through diffusers' ``from_single_file`` of the pipeline class its config names,
        with ``config=`` always given (without it diffusers fetches the type's config from the Hub)."""
        from tracker.experiment import single_file

        cfg = self._single_file_config(settings.model, "model")
        cls_name = cfg.class_name() or ""
        cls = getattr(diffusers, cls_name, None) if cls_name in single_file.PIPELINE_CLASSES else None
        if cls is None or not hasattr(cls, "from_single_file"):
            what = cls_name or "folder without a model_index.json"
            raise ModelError(f"model {settings.model!r}: config {cfg.location} is a {what}, whose single files the "
                             f"tracker does not load (supported: {single_file.SUPPORTED})")
        path = _single_file(ref, f"model {settings.model!r}", settings.allow_pickle)
        kw = {"config": cfg.location, "dtype": DTYPES[settings.dtype]}
        if _offline() or cfg.inferred:
            kw["local_files_only"] = True  # an inferred config comes from the cache only, never the network
        try:
            with _quiet_loading():
                return cls.from_single_file(str(path), **kw)
        except Exception as e:  # noqa: BLE001 - diffusers raises many types for a bad file; all become one line
            raise ModelError(f"model {settings.model!r}: the single file {path} could not be loaded as a {cls_name} "
                             f"with the config of {cfg.location}: {_first_line(e)}") from None

    def _single_file_config(self, name: str, what: str) -> Any:
        from tracker.experiment import single_file

        try:
            return single_file.checkpoint_config(name, self.base_dir)
        except (single_file.SingleFileError, OSError) as e:
            raise ModelError(f"{what} {name!r}: {e}") from None

    def _single_file_vae(self, ref: models.ModelRef, settings: Settings) -> Any:
        """A single-file VAE through ``AutoencoderKL.from_single_file``; its config is the ``config:`` given with it,
        else the run model's own VAE config (its folder's, its Hub id's, or its single file's config's ``vae/``)."""
        from tracker.experiment import single_file

        path = _single_file(ref, f"vae {settings.vae!r}", settings.allow_pickle)
        if ref.config:
            cfg = single_file.config_of(ref.config, self.base_dir)
            location, local = cfg.location, cfg.folder
        elif models.is_user_pipeline(settings.model):
            raise ModelError(f"vae {settings.vae!r}: give its config ({{file: ..., config: FOLDER}}): the model is a "
                             f"pipeline object, whose VAE config the tracker cannot name")
        else:
            model = self.ref(settings.model)
            if model.kind == "file":
                cfg = self._single_file_config(settings.model, "model")
                location, local = cfg.location, cfg.folder
            else:
                location = model.location
                local = Path(model.location) if model.kind != "hub" else None
        subfolder = None if local is not None and (local / "config.json").is_file() else "vae"
        kw: dict[str, Any] = {"config": location, "dtype": DTYPES[settings.dtype]}
        if subfolder:
            kw["subfolder"] = subfolder
        if _offline():
            kw["local_files_only"] = True
        try:
            with _quiet_loading():
                return AutoencoderKL.from_single_file(str(path), **kw)
        except Exception as e:  # noqa: BLE001 - one line, whatever diffusers raises
            raise ModelError(f"vae {settings.vae!r}: the single file {path} could not be loaded as an AutoencoderKL "
                             f"with the config of {location}{'/' + subfolder if subfolder else ''}: "
                             f"{_first_line(e)}") from None

    def _user_pipeline(self, settings: Settings) -> _Loaded:
        """The user's own pipeline object: never loaded, never cast; its state is saved to be restored."""
        from tracker.engine.userpipe import Saved

        if self.user is None or settings.model != self.user.model:
            raise ModelError(f"model {settings.model!r}: made with a pipeline object passed to tracker.run(pipeline=...), "
                             f"which the tracker cannot rebuild; in Python pass that same pipeline again "
                             f"(tracker.open(home).reproduce(key, pipeline=pipe))")
        key = ("user", settings.model)
        if key not in self.pipes:
            pipe = self.user.pipe
            saved = Saved.take(pipe)
            pipe.set_progress_bar_config(disable=True)
            self.pipes[key] = _Loaded(pipe=pipe, vae=getattr(pipe, "vae", None), scheduler_config=dict(pipe.scheduler.config),
                                      scheduler_class=type(pipe.scheduler).__name__, device=saved.device, saved=saved)
        return self.pipes[key]

    def vae(self, settings: Settings) -> Any:
        """The extra VAE of ``settings.vae`` (not \"default\"), loaded once per location, dtype and allow_pickle."""
        ref = self.ref(settings.vae)
        key = (ref.location, settings.dtype, settings.allow_pickle)
        if ref.kind == "file":  # its config may come from the model: one per model too
            key = (ref.location, ref.config, settings.model if not ref.config else None, settings.dtype,
                   settings.allow_pickle)
        if key in self.vaes:
            return self.vaes[key]
        if ref.kind == "file":
            vae = self._single_file_vae(ref, settings)
            vae.eval()
            self.vaes[key] = vae
            return vae
        subfolders: list[str | None] = [None, "vae"]
        if ref.kind != "hub":
            folder = Path(ref.location)
            subfolders = [s for s in subfolders if (folder / (s or "") / "config.json").is_file()]
            if not subfolders:
                raise ModelError(f"vae {settings.vae!r}: no AutoencoderKL in {_describe(ref)} (looked for config.json "
                                 f"and vae/config.json); give a VAE folder or hub id, or vae: default")
            sub = subfolders[0] or ""
            if not settings.allow_pickle and _pickle_only(folder / sub) in (".",):
                raise _pickle_error("vae", ref, sub or ".")
        error: BaseException | None = None
        for sub in subfolders:
            kw = load_kwargs(DTYPES[settings.dtype], settings.allow_pickle)
            if sub:
                kw["subfolder"] = sub
            try:
                with loadguard.loading(), _quiet_loading():
                    vae = AutoencoderKL.from_pretrained(ref.location, **kw)
                break
            except Exception as e:  # noqa: BLE001 - try the next layout, report the first failure
                error = error or e
        else:
            assert error is not None
            if not settings.allow_pickle and _safetensors_refused(error):
                raise _pickle_error("vae", ref)
            if _is_missing(error):
                raise _missing_error("vae", ref, error)
            raise ModelError(f"vae {settings.vae!r}: {_describe(ref)} could not be loaded: {_first_line(error)}")
        vae.eval()
        self.vaes[key] = vae
        return vae

    # -- schedulers --------------------------------------------------------------------------------

    @staticmethod
    def scheduler(loaded: _Loaded, settings: Settings) -> Any:
        """A fresh scheduler (no state carried over) from the checkpoint's own config plus the options: a copy
        of one built once per class and options (``from_config`` inspects signatures: ~1.5-30 ms each time)."""
        choice = settings.scheduler_choice.made_with({"_class_name": loaded.scheduler_class})
        cls_name, options = choice.class_name, dict(choice.options)
        key = (cls_name, json.dumps(options, sort_keys=True, default=repr))
        if key not in loaded.schedulers:
            ran = schedulers.for_model(cls_name, loaded.scheduler_class)  # "Euler" on a flow model: its flow Euler
            PipelineCache._check_family(loaded, ran, choice, settings.model)
            loaded.schedulers[key] = PipelineCache._new_scheduler(loaded, ran, options)
        return copy.deepcopy(loaded.schedulers[key])

    @staticmethod
    def compatible(loaded: _Loaded) -> list[str]:
        """The scheduler classes that can run this pipeline: diffusers' ``compatibles`` of the model's own
        scheduler (the flow-matching ones together for a flow-matching model; only those with flow sigmas
        for a DPM-Solver over flow sigmas, as Sana ships), less those whose ``set_timesteps`` cannot take what
        the pipeline passes it (Flux and Qwen-Image pass their own ``sigmas`` and ``mu``)."""
        own = _diffusers_class(loaded.scheduler_class)
        if own is None or not hasattr(own, "_compatibles"):
            return [loaded.scheduler_class]
        names = {own.__name__, *own._compatibles}  # names only: importing one may need an extra (torchsde)
        if loaded.scheduler_class in schedulers.FLOW_SCHEDULERS:
            names |= set(schedulers.FLOW_SCHEDULERS)
        cfg = loaded.scheduler_config
        if cfg.get("use_flow_sigmas") or cfg.get("prediction_type") == "flow_prediction":
            names = {n for n in names if n == loaded.scheduler_class or "use_flow_sigmas" in
                     inspect.signature(getattr(_diffusers_class(n), "__init__", object.__init__)).parameters}
        needs = _timestep_arguments(type(loaded.pipe))
        return sorted(n for n in names if n == loaded.scheduler_class or not needs
                      or _takes(_diffusers_class(n), needs))

    @staticmethod
    def _check_family(loaded: _Loaded, cls_name: str, choice: schedulers.SchedulerChoice, model: str) -> None:
        """A scheduler of another family (a DDPM one on a flow-matching model, or the reverse) fails every
        image: refused here, in one line, before anything is generated."""
        if cls_name == loaded.scheduler_class or not hasattr(diffusers.schedulers, cls_name):
            return  # the model's own, or not a diffusers scheduler class (``_new_scheduler`` says so)
        cls = _diffusers_class(cls_name)
        ok = PipelineCache.compatible(loaded)
        if cls_name in ok:
            return
        pipeline = type(loaded.pipe).__name__
        shown = choice.describe() if cls_name == choice.class_name else f"{choice.describe()} (as {cls_name})"
        needs = _timestep_arguments(type(loaded.pipe))
        why = (f"{pipeline} passes its own {' and '.join(sorted(needs))} to set_timesteps, which {cls_name} "
               f"does not take" if needs and not _takes(cls, needs) and cls_name in schedulers.FLOW_SCHEDULERS
               else f"not in the compatibles of the model's {loaded.scheduler_class}")
        names = ", ".join(n.removesuffix("Scheduler") + (f" (A1111 '{schedulers.FLOW_SAMPLERS[n]}')"
                                                         if n in schedulers.FLOW_SAMPLERS else "") for n in ok)
        raise ModelError(f"scheduler {shown} cannot run model {model!r} ({pipeline}): {why}; compatible: {names}")

    @staticmethod
    def _new_scheduler(loaded: _Loaded, cls_name: str, options: dict) -> Any:
        if cls_name == "DPMSolverSDEScheduler" and importlib.util.find_spec("torchsde") is None:
            raise ModelError("scheduler DPMSolverSDEScheduler (A1111 'DPM++ SDE') needs the package torchsde; "
                             "install it with `pip install torchsde`, or pick another scheduler")
        if cls_name == "DPMSolverSDEScheduler":  # float32 sigmas a rounding step outside the tree's float range
            warnings.filterwarnings("ignore", message=r"Should have t[ab][<>]=t[01]", category=UserWarning,
                                    module=r"torchsde\.")
        cls = getattr(diffusers, cls_name, None)
        if cls is None or not hasattr(cls, "from_config"):
            raise ModelError(f"scheduler {cls_name!r} is not a diffusers scheduler class in diffusers "
                             f"{diffusers.__version__}")
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            accepted = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
            unknown = [k for k in options if k not in accepted]
            if unknown:
                raise ModelError(f"scheduler_options: {cls_name} does not accept {', '.join(map(repr, unknown))}; "
                                 f"it accepts: {', '.join(accepted)}")
        try:
            sched = cls.from_config(loaded.scheduler_config, **options)
        except Exception as e:  # noqa: BLE001 - a bad option value raises ValueError/NotImplementedError/...
            raise ModelError(f"scheduler {cls_name} with options {options}: {_first_line(e)}") from None
        return sched
