"""The pipeline a run's inputs call for, and the image arguments of its call (docs/image-conditioned.md).

A run with an ``image`` is image-to-image, with an ``image`` and a ``mask_image`` inpainting: the engine loads the
text-to-image pipeline as always and this module makes the variant from it with diffusers'
``AutoPipelineForImage2Image.from_pipe`` / ``AutoPipelineForInpainting.from_pipe`` (the same modules, no new
weights), once per base pipeline and task (``PipelineVariants``). Before each call the variant takes the base's
components again (the engine swaps the scheduler and the VAE on the base). ``image_kwargs`` loads the run's
input images from the workspace by their sha256 (``tracker.experiment.inputs``) and spells them as the call
takes them.

The seam for the other conditioning inputs (ControlNet, IP-Adapter, the refiner: ``tracker.engine.conditioning``):
``PipelineVariants.pipeline(base, settings, components)`` takes the extra modules ``from_pipe`` should get (e.g.
``controlnet=``) and caches per (base, task, those modules); ``call_kwargs`` is where their call arguments join.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from tracker.errors import ModelError
from tracker.experiment.settings import Settings

TASK_LOADERS = {"img2img": "AutoPipelineForImage2Image", "inpaint": "AutoPipelineForInpainting"}


class PipelineVariants:
    """Image-to-image and inpainting pipelines made from loaded text-to-image ones, cached per base and task."""

    def __init__(self) -> None:
        self._made: dict[tuple, tuple[Any, Any]] = {}  # key -> (base, variant): the base kept so its id stays its

    def pipeline(self, base: Any, settings: Settings, components: Mapping[str, Any] | None = None) -> Any:
        """The pipeline ``settings`` call for, made from ``base`` (``base`` itself for text-to-image without extra
        components); its modules are the base's current ones."""
        components = dict(components or {})
        task = settings.task
        if task == "text2img" and not components:
            return base
        key = (id(base), task, tuple(sorted((k, id(v)) for k, v in components.items())))
        if key not in self._made:
            self._made[key] = (base, self._make(base, task, components, settings.model))
            self._made[key][1].set_progress_bar_config(disable=True)  # from_pipe makes a pipeline with its bar on
        variant = self._made[key][1]
        for name, module in base.components.items():  # the scheduler and VAE the engine set on the base
            if name in variant.components and name not in components and variant.components[name] is not module:
                setattr(variant, name, module)
        return variant

    @staticmethod
    def _make(base: Any, task: str, components: dict[str, Any], model: str) -> Any:
        import diffusers

        loader = getattr(diffusers, TASK_LOADERS.get(task, "AutoPipelineForText2Image"))
        try:
            return loader.from_pipe(base, **components)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            what = {"img2img": "image-to-image", "inpaint": "inpainting"}.get(task, "text-to-image")
            raise ModelError(f"model {model!r}: diffusers makes no {what} pipeline of {type(base).__name__} "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None

    def forget(self, base: Any) -> None:
        """Drop the variants made from ``base`` (the engine unloads it)."""
        for key in [k for k, (b, _) in self._made.items() if b is base]:
            del self._made[key]


def load_image(inputs_dir: Path | None, sha256: str, field: str, size: tuple[int, int] | None = None) -> Any:
    """An input image from the workspace by its hash (a one-line error when it is not there), at ``size``."""
    from tracker.experiment import inputs

    if inputs_dir is None:
        raise ModelError(f"{field}: input image {sha256} needs a workspace to read it from (this engine has none)")
    image = inputs.load(inputs_dir, sha256, field)
    if size is not None and size[0] and size[1] and image.size != tuple(size):
        from PIL import Image

        image = image.resize(tuple(size), Image.LANCZOS)
    return image


def image_kwargs(settings: Settings, n: int, inputs_dir: Path | None, params: Any) -> dict[str, Any]:
    """The call arguments of a batch of ``n`` runs' input images: ``image`` (and ``mask_image``) one per run, and
    ``strength`` where the pipeline takes it. An image to repaint (a pipeline with ``strength``) is given at the
    run's size, as diffusers' image processor would resize it; a reference image (FLUX.2: no ``strength``) as
    it is, since the pipeline sizes references itself and a resize would change their aspect ratio."""
    if settings.task == "text2img":
        return {}
    repaint = params is None or "strength" in params
    size = (settings.width, settings.height) if repaint else None
    kw: dict[str, Any] = {"image": [load_image(inputs_dir, settings.image, "image", size)] * n}
    if settings.mask_image:
        kw["mask_image"] = [load_image(inputs_dir, settings.mask_image, "mask_image", size)] * n
    if repaint:
        kw["strength"] = settings.strength
    return kw


def call_kwargs(settings: Settings, n: int, inputs_dir: Path | None, params: Any) -> dict[str, Any]:
    """Every conditioning argument of one call (input images now; ControlNet, IP-Adapter and the refiner's
    hand-off join here)."""
    return image_kwargs(settings, n, inputs_dir, params)
