"""The diffusers side of prompt-tracker: load a pipeline once, set it up for a run's settings, generate.

This module and ``tracker.engine.loading`` (imported only here) are the only ones in ``tracker`` that import torch
and diffusers at module level; everything else imports the engine lazily, so the CLI stays fast.

One ``Engine`` per process keeps every pipeline it has loaded (per model, dtype and allow_pickle) and
every extra VAE, so sweeping schedulers, VAEs, sizes or memory options never reloads weights:
``prepare(settings)`` swaps components in place and reverts what the previous settings turned on.
Building and caching the components (pipelines, VAEs, schedulers) is a part the engine owns, a
``tracker.engine.loading.PipelineCache`` (``Engine.pipelines``); the facts each record needs (scheduler config,
model revision, environment, the prompts' truncation check) are another, a ``tracker.engine.facts.RecordFacts``
(``Engine.facts``). The engine keeps its own state (the active pipeline and settings) and reaches both parts
only through their methods.

Peak memory (``BatchResult.peak_memory_bytes``): on CUDA ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats`` (tensor memory of the batch, weights included); elsewhere the peak
resident set size of the whole process during the batch, sampled every few milliseconds from
``/proc/self/statm`` (psutil where there is no /proc), so it includes the weights and Python itself.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from tracker.engine import cpu, determinism

cpu.before_torch()  # OpenMP reads its wait policy when torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tracker.engine.batches import BatchResult, ImageResult, OutOfMemory  # noqa: E402
from tracker.engine.facts import RecordFacts  # noqa: E402
from tracker.engine.variants import PipelineVariants, call_kwargs as conditioning_kwargs, load_image  # noqa: E402
from tracker.engine.conditioning import Conditioner, from_settings  # noqa: E402
from tracker.engine.loading import DTYPES, PipelineCache, _Loaded, seed_steps, seeded_global_rng  # noqa: E402
from tracker.errors import ModelError  # noqa: E402
from tracker.engine.load_errors import _first_line, _offline  # noqa: E402
from tracker.engine.machine import _PeakRss  # noqa: E402
from tracker.engine.userpipe import denoiser  # noqa: E402
from tracker.experiment.plan import PlannedRun  # noqa: E402
from tracker.experiment import model_refs as models  # noqa: E402
from tracker.experiment.settings import Settings  # noqa: E402

log = logging.getLogger("tracker")


class Engine:
    """Loads and caches pipelines; ``prepare`` applies a run's settings, ``generate`` makes a batch."""

    def __init__(self, device: str | None = None, base_dir: Path | None = None, pipeline: Any = None):
        """``pipeline``: a ``tracker.engine.userpipe.UserPipeline``, used for runs whose model is its ``model`` name;
        its own scheduler, VAE, device and attention processors come back on ``close()``."""
        self.device_override = device
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.user = pipeline
        self.pipelines = self.pipeline_cache(self.base_dir, pipeline, on_load=self._loaded)
        self.facts = RecordFacts(self.pipelines, pipeline)
        self._checked: set[tuple[str, str]] = set()
        self._active: _Loaded | None = None
        self._settings: Settings | None = None
        self._warm: set[tuple] = set()  # compiled batch shapes already warmed up
        self._families: dict[tuple, Any] = {}  # (pipeline id, model) -> its family facts
        self.denoising: threading.Event | None = None  # set at each batch's first denoiser call (a sweep's gate)
        self.inputs_dir: Path | None = None  # the workspace's input images (image-conditioned runs read them here)
        self.variants = PipelineVariants()  # img2img / inpainting pipelines made from the loaded ones
        self.conditioner = Conditioner(self.base_dir)  # ControlNets, IP-Adapters, refiners (engine/conditioning.py)
        self._conditioned: Any = None  # what the conditioner set up for the active settings

    pipeline_cache = PipelineCache  # the class of ``self.pipelines`` (a stand-in engine may give its own)

    def _loaded(self, model: str) -> None:
        """A model's pipeline was just loaded: hashing its folder starts now, beside the rest of the set-up."""
        self.facts.model_revision_later(model)

    # -- the record's facts (see tracker.engine.facts) ------------------------------------------------

    def check_prompts(self, runs: Sequence[PlannedRun]) -> None:
        """Every prompt's truncation check up front (see ``RecordFacts.check_prompts``)."""
        self.facts.check_prompts(runs)

    def scheduler_config(self) -> dict:
        """The full, JSON-ready config of the scheduler now in use (``_class_name`` included)."""
        if self._active is None:
            raise RuntimeError("scheduler_config() before prepare()")
        return self.facts.scheduler_config(self._active.pipe)

    def model_revision(self, model: str) -> str | None:
        """The commit hash of a cached hub model, or ``sha256:<hex>`` over the files of a local/builtin folder."""
        return self.facts.model_revision(model)

    def model_revision_later(self, model: str):
        """``model_revision`` without waiting for it (see ``RecordFacts.model_revision_later``)."""
        return self.facts.model_revision_later(model)

    def vae_revision_later(self, vae: str):
        """A single-file VAE's ``sha256:<hex>``, without waiting for it; None for other VAEs."""
        return self.facts.vae_revision_later(vae)

    def environment(self) -> dict:
        """Versions and hardware that produced the images (of the device of the current settings)."""
        if self._settings is not None:
            device = self.device_for(self._settings)
        else:
            device = self._resolve_device((self.device_override or "auto").lower(), "device")
        return self.facts.environment(device)

    def pipeline_info(self, model: str) -> dict | None:
        """What the recipe records about a user's pipeline object (None for a model the tracker loads)."""
        return self.facts.pipeline_info(model)

    # -- devices -----------------------------------------------------------------------------------

    def device_for(self, settings: Settings) -> str:
        """The device a run uses: the Engine's override, else the setting; ``auto`` picks cuda when present."""
        want = (self.device_override or settings.device or "auto").lower()
        return self._resolve_device(want, "device")

    @staticmethod
    def _resolve_device(want: str, what: str) -> str:
        if want == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if want.startswith("cuda"):
            if not torch.cuda.is_available():
                build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build but sees no GPU"
                raise ModelError(f"{what} {want!r} is not available: torch {torch.__version__} is {build}; "
                                 f"use cpu (or auto)")
            index = int(want.split(":", 1)[1]) if ":" in want else 0
            if index >= torch.cuda.device_count():
                raise ModelError(f"{what} {want!r} is not available: this machine has {torch.cuda.device_count()} "
                                 f"CUDA device(s)")
        elif want == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ModelError(f"{what} 'mps' is not available on this machine; use cpu (or auto)")
        return want

    def _generator_device(self, settings: Settings, device: str) -> str:
        want = (settings.generator_device or "cpu").lower()
        return device if want == "auto" else self._resolve_device(want, "generator_device")

    def _check_dtype(self, device: str, dtype_name: str) -> None:
        """Run one small matmul: some devices cannot compute in some dtypes at all (they raise)."""
        if (device, dtype_name) in self._checked:
            return
        dtype = DTYPES[dtype_name]
        try:
            a = torch.ones((4, 4), dtype=dtype, device=device)
            float((a @ a).float().sum())
            float(torch.nn.functional.conv2d(a[None, None], a[None, None, :3, :3]).float().sum())
        except (RuntimeError, TypeError, NotImplementedError) as e:
            raise ModelError(f"dtype {dtype_name} cannot run on device {device!r} ({_first_line(e)}); "
                             f"use dtype: float32") from None
        self._checked.add((device, dtype_name))
        if device == "cpu" and dtype_name != "float32":
            log.warning("%s runs on this CPU, but typically ~10x slower than float32 (no native half precision)",
                        dtype_name)

    # -- loading -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Give a user's pipeline back as it came: its scheduler, VAE, device and attention processors."""
        from tracker.engine import attention

        for loaded in self.pipelines.pipes.values():
            if loaded.saved is not None:
                self.conditioner.release(loaded.pipe)  # an IP-Adapter the tracker loaded into it
                attention.undo(loaded.pipe, loaded.attention)  # diffusers' process-wide backend too
                loaded.attention = None
                loaded.saved.restore(loaded.pipe, loaded.offloaded)
                loaded.offloaded, loaded.device, loaded.sliced = False, loaded.saved.device, False
        self._active, self._settings = None, None

    # -- a warm worker's cache (tracker.sweep.daemon evicts the least recently used under a budget) --------

    def pipeline_key(self, settings: Settings) -> tuple | None:
        """The cache key of the pipeline ``settings`` load (None: a user's pipeline, never evicted)."""
        if models.is_user_pipeline(settings.model):
            return None
        return (self.pipelines.ref(settings.model).location, settings.dtype, settings.allow_pickle)

    def pipeline_bytes(self) -> dict[tuple, int]:
        """Each cached pipeline (not a user's) -> the bytes of its weights (parameters and buffers)."""
        out = {}
        for key, loaded in self.pipelines.pipes.items():
            if loaded.saved is not None:
                continue
            total = 0
            for module in loaded.pipe.components.values():
                if isinstance(module, torch.nn.Module):
                    total += sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
            out[key] = total + self.conditioner.nbytes(loaded.pipe)  # its ControlNets, IP-Adapter, refiner
        return out

    def unload(self, key: tuple) -> None:
        """Drop a cached pipeline (its weights are freed once nothing else holds them)."""
        import gc

        loaded = self.pipelines.pipes.pop(key, None)
        if loaded is None or loaded.saved is not None:
            if loaded is not None:
                self.pipelines.pipes[key] = loaded
            return
        if self._active is loaded:
            self._active, self._settings = None, None
        self.variants.forget(loaded.pipe)
        self.conditioner.forget(loaded.pipe)
        del loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


    # -- prepare -----------------------------------------------------------------------------------

    def prepare(self, settings: Settings) -> None:
        """Make the pipeline match ``settings``: model, VAE, scheduler, device, dtype and memory options.
        Prepared already for these settings: only a fresh scheduler (a sweep prepares before every batch,
        between two pipeline calls, where moving and checking the modules again would idle the accelerator)."""
        if self._active is not None and settings == self._settings:
            self._active.pipe.scheduler = self.pipelines.scheduler(self._active, settings)
            return
        device = self.device_for(settings)
        self._generator_device(settings, device)
        self._check_dtype(device, settings.dtype)
        if settings.deterministic:
            determinism.cublas_env()  # before the process's first cuBLAS call (a sweep prepares first)
        if settings.cpu_offload and not device.startswith("cuda"):
            raise ModelError(f"cpu_offload needs a CUDA GPU (it moves each model to the GPU only while it runs), "
                             f"but the device is {device!r}; set cpu_offload: false")
        if settings.cpu_offload and importlib.util.find_spec("accelerate") is None:
            raise ModelError("cpu_offload needs the package accelerate; install it with `pip install accelerate`")
        self._settings = None  # until this prepare succeeds, generate() must prepare again
        loaded = self.pipelines.pipeline(settings)
        vae = loaded.vae if settings.vae == "default" else self.pipelines.vae(settings)
        scheduler = self.pipelines.scheduler(loaded, settings)
        if self._active is not None and self._active is not loaded:
            self._park(self._active)
        pipe = loaded.pipe
        if loaded.offloaded and (not settings.cpu_offload or pipe.vae is not vae):
            pipe.remove_all_hooks()
            loaded.offloaded, loaded.device = False, None
        if pipe.vae is not vae:
            pipe.vae.to("cpu")  # the swapped-out VAE stays cached but leaves the accelerator
        pipe.vae = vae
        pipe.scheduler = scheduler
        if settings.cpu_offload:
            if not loaded.offloaded:
                pipe.enable_model_cpu_offload(device=device)
                loaded.offloaded, loaded.device = True, None
        else:
            pipe.to(device)  # a no-op for modules already there; moves a newly swapped VAE
            loaded.device = device
        if settings.attention_slicing != loaded.sliced:
            if settings.attention_slicing:
                pipe.enable_attention_slicing()
            elif loaded.saved is not None:  # a user's pipeline keeps its own attention processors (IP-Adapter, ...)
                loaded.saved.restore_attention(pipe)
            else:
                pipe.disable_attention_slicing()
            loaded.sliced = settings.attention_slicing
        (vae.enable_slicing if settings.vae_slicing else vae.disable_slicing)()
        (vae.enable_tiling if settings.vae_tiling else vae.disable_tiling)()
        if settings.lora or "_tracker_lora" in pipe.__dict__:
            self._lora(pipe, settings)
        self._compile(loaded, settings, device)
        self._attention(loaded, settings, device)
        cond = from_settings(settings, lambda sha, name: load_image(self.inputs_dir, sha, name))
        self._conditioned = self.conditioner.prepare(
            pipe, cond, dtype=DTYPES[settings.dtype], allow_pickle=settings.allow_pickle, model=settings.model,
            base_location=None if loaded.saved else self.pipelines.ref(settings.model).location, device=device,
            prompt_syntax=settings.prompt_syntax)
        self._active, self._settings = loaded, settings

    @staticmethod
    def _attention(loaded: _Loaded, settings: Settings, device: str) -> None:
        """The ``attention`` backend (see ``tracker.engine.attention``), proven to run here before it is set."""
        from tracker.engine import attention

        attention.check(loaded.pipe, settings.attention, device, DTYPES[settings.dtype], settings.model)
        loaded.attention = attention.apply(loaded.pipe, settings.attention, loaded.attention)

    def _compile(self, loaded: _Loaded, settings: Settings, device: str) -> None:
        """torch.compile, channels_last and fused QKV per the ``compile`` setting (see ``tracker.engine.speed``)."""
        from tracker.engine import speed

        speed.check(loaded.pipe, settings.compile, device, settings.model)
        before = loaded.compiled
        loaded.compiled = speed.apply(loaded.pipe, settings.compile, loaded.compiled)
        if loaded.compiled is not None and loaded.compiled is not before:
            log.info("compile: torch.compile of the %s and the VAE decoder (%s); each new batch shape first pays "
                     "a warm-up, recorded apart from per-image times", speed.denoiser_name(loaded.pipe),
                     speed.describe(settings.compile))

    @staticmethod
    def _lora(pipe: Any, settings: Settings) -> None:
        """Switch the pipeline's LoRA adapters (each loaded once, never the base model again)."""
        from tracker.prompts import lora

        try:
            lora.apply(pipe, settings.lora, settings.allow_pickle, _offline())
        except Exception as e:  # noqa: BLE001 - diffusers/peft raise many types for a bad adapter file
            if importlib.util.find_spec("peft") is None:
                raise ModelError("lora: loading LoRA adapters needs the package peft; `pip install peft`") from None
            names = ", ".join(dict(a)["name"] for a in settings.lora) or "(none)"
            raise ModelError(f"lora {names}: cannot be applied to model {settings.model!r}: {_first_line(e)}") from None

    @staticmethod
    def _park(loaded: _Loaded) -> None:
        """Move a pipeline that is no longer in use off the accelerator, keeping it loaded."""
        if loaded.offloaded:
            loaded.pipe.remove_all_hooks()
            loaded.offloaded, loaded.device = False, None  # hooks leave the last-used model on the GPU
        if loaded.device != "cpu":
            loaded.pipe.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        loaded.device = "cpu"

    # -- generate ----------------------------------------------------------------------------------

    def family(self, pipe: Any, model: str) -> Any:
        """The loaded pipeline's family (``tracker.experiment.families``): what its call takes, from its own class."""
        from tracker.experiment import families

        key = (id(pipe), model)
        if key not in self._families:
            self._families[key] = families.facts_of_pipeline(model, pipe)
        return self._families[key]

    def _check_family(self, facts: Any, runs: Sequence[PlannedRun], settings: Settings) -> None:
        """What the plan checked from the model's configs, again with the loaded pipeline (a Hub model the plan
        could not read, a user's pipeline): the call arguments and each run's negative prompt."""
        from tracker.experiment import families

        try:
            facts.check_model()
            facts.check_call(settings.call)
            for negative in dict.fromkeys(r.negative_prompt for r in runs):
                values = {"steps": settings.steps, "guidance_scale": settings.guidance_scale, "width": settings.width,
                          "height": settings.height, "call": settings.call}
                facts.effective(values, negative, {"steps", "guidance_scale", "width", "height"})
        except families.FamilyError as e:
            raise ModelError(f"model {settings.model!r}: {e.field}: {e.message}") from None

    def _call_kwargs(self, pipe: Any, facts: Any, runs: Sequence[PlannedRun], settings: Settings, steps: int,
                     generators: list) -> dict[str, Any]:
        """The keyword arguments of one pipeline call, spelled as this family's ``__call__`` takes them."""
        kw = self._text_inputs(pipe, runs, settings.prompt_syntax, facts)
        kw["num_inference_steps"] = steps
        argument = facts.family.argument_for_guidance(facts.signature)
        if argument is not None:
            kw[argument] = settings.guidance_scale
        kw.update(width=settings.width or None, height=settings.height or None, generator=generators,
                  output_type="np")
        params = facts.signature.params if facts.signature is not None else None
        if params is not None and not facts.signature.var_keyword:  # image-to-image calls take no size (the image's)
            kw = {k: v for k, v in kw.items() if k not in ("width", "height") or k in params}
        kw.update(conditioning_kwargs(settings, len(runs), self.inputs_dir, params))
        kw.update(self._conditioned.kwargs(pipe) if self._conditioned is not None else {})
        kw.update(facts.call_kwargs(settings.call))
        return kw

    def generate(self, runs: Sequence[PlannedRun]) -> BatchResult:
        """Generate one image per run in one pipeline call; each image gets its own seeded generator."""
        if not runs:
            raise ValueError("generate() needs at least one run")
        settings = runs[0].settings
        if any(r.settings != settings for r in runs[1:]):
            raise ValueError("all runs of a batch must share their settings")
        if len({bool(r.negative_prompt) for r in runs}) > 1:  # none is not "" (SDXL's zeros, FLUX's true CFG)
            raise ValueError("runs with and without a negative prompt cannot share a batch")
        if self._settings != settings or self._active is None:
            self.prepare(settings)
        device = self.device_for(settings)
        gen_device = self._generator_device(settings, device)
        extra = self._conditioned.components if self._conditioned is not None else None  # its ControlNet
        pipe = self.variants.pipeline(self._active.pipe, settings, extra)  # the base, or a variant of it
        facts = self.family(pipe, settings.model)
        self._check_family(facts, runs, settings)
        generators = [torch.Generator(gen_device).manual_seed(r.seed) for r in runs]
        seed_steps(pipe.scheduler, generators)  # a stochastic scheduler's noise from the seeds too
        marks: list[float] = []

        def first_unet_call(module: Any, args: Any) -> None:
            if not marks:
                marks.append(time.perf_counter())
                if self.denoising is not None:
                    self.denoising.set()

        def step_end(pipeline: Any, step: int, timestep: Any, kwargs: dict) -> dict:
            marks.append(time.perf_counter())
            return kwargs

        def old_callback(step: int, timestep: Any, latents: Any) -> None:
            marks.append(time.perf_counter())

        params = facts.signature.params
        if "callback_on_step_end" in params:
            timing = {"callback_on_step_end": step_end}
        elif "callback" in params and "callback_steps" in params:  # PixArt: the older per-step callback
            timing = {"callback": old_callback, "callback_steps": 1}
        else:  # no step callback: no per-step timings (the call's time is still recorded)
            timing = {}
        cuda = device.startswith("cuda")
        hook = denoiser(pipe).register_forward_pre_hook(first_unet_call)
        try:
            from tracker.engine import attention

            with determinism.mode(settings.deterministic), attention.kernels(self._active.attention):
                # torch's flags and attention kernels around this call only
                deterministic = determinism.enabled()
                warmup = self._warm_up(pipe, facts, runs, settings, gen_device, cuda, device)
                marks.clear()  # the warm-up call's UNet calls are not this batch's steps
                kwargs = self._call_kwargs(pipe, facts, runs, settings, settings.steps, generators)
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                with _PeakRss() as rss, seeded_global_rng(runs[0].seed, device):
                    start = time.perf_counter()
                    out = self.conditioner.call(self._conditioned, pipe, self._active.pipe, kwargs, timing) \
                        if self._conditioned is not None else pipe(**kwargs, **timing)
                    if cuda:
                        torch.cuda.synchronize(device)
                    wall = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated(device) if cuda else rss.peak
        except torch.cuda.OutOfMemoryError as e:
            torch.cuda.empty_cache()
            raise OutOfMemory(_first_line(e)) from None
        except (MemoryError, RuntimeError) as e:
            if isinstance(e, MemoryError) or "can't allocate memory" in str(e) or "out of memory" in str(e).lower():
                if cuda:
                    torch.cuda.empty_cache()
                raise OutOfMemory(_first_line(e)) from None
            raise
        finally:
            hook.remove()
        steps = [b - a for a, b in zip(marks, marks[1:])] if timing else []
        n = len(runs)
        # per *requested* step: second-order schedulers (Heun, KDPM2) run 2*steps-1 loop iterations
        per_step = sum(steps) / settings.steps / n if steps else None
        images = []  # converted lazily (ImageResult.image): in a sweep by its writing stage
        for r, arr in zip(runs, _images(out, settings.model)):
            images.append(ImageResult(r.key, arr, wall / n, per_step))
        return BatchResult(images=images, seconds=wall, batch_size=n, peak_memory_bytes=int(peak), step_seconds=steps,
                           warmup_seconds=warmup, deterministic=deterministic)

    def _warm_up(self, pipe: Any, facts: Any, runs: Sequence[PlannedRun], settings: Settings, gen_device: str,
                 cuda: bool, device: str) -> float:
        """With compile on: a short call (2 steps) in the batch's shapes compiles before the timed call, so
        compilation is timed apart (seconds) and per-image times stay steady. 0.0 when nothing to warm."""
        from tracker.engine import speed

        shape = (settings.compile, len(runs), settings.width, settings.height, settings.guidance_scale > 1,
                 bool(runs[0].negative_prompt), settings.call)
        if settings.compile == "off" or shape in self._warm:
            return 0.0
        start = time.perf_counter()
        pipe(**self._call_kwargs(pipe, facts, runs, settings, min(speed.WARMUP_STEPS, settings.steps),
                                 [torch.Generator(gen_device).manual_seed(r.seed) for r in runs]))
        if cuda:
            torch.cuda.synchronize(device)
        self._warm.add(shape)
        return time.perf_counter() - start

    def _text_inputs(self, pipe: Any, runs: Sequence[PlannedRun], syntax: str, facts: Any = None) -> dict[str, Any]:
        """Prompts as text (plain), or as compel's embeddings of the weighted prompts (a1111, compel). No
        negative prompt is no negative prompt: the argument is left out (the pipeline's own behaviour without
        one: SDXL's zero embeddings, FLUX/Qwen-Image without true CFG)."""
        prompts, negatives = [r.prompt for r in runs], [r.negative_prompt for r in runs]
        if syntax == "plain":
            self.facts.warn_truncated(pipe, runs)
            out: dict[str, Any] = {"prompt": prompts}
            if any(negatives):
                out["negative_prompt"] = negatives
            return out
        from tracker.prompts import weighting

        with torch.no_grad():
            return weighting.conditioning(pipe, prompts, negatives, syntax)


def _images(out: Any, model: str) -> Any:
    """The pipeline output's images as one array (N, H, W, C); a video pipeline's frames are refused."""
    images = getattr(out, "images", None)
    if images is None:
        if getattr(out, "frames", None) is not None:
            raise ModelError(f"model {model!r}: {type(out).__name__} holds video frames; the tracker records still "
                             f"images (use a text-to-image pipeline)")
        raise ModelError(f"model {model!r}: the pipeline returned {type(out).__name__}, which has no images")
    return np.asarray(images)
