"""Prompt weighting: ``prompt_syntax: plain | a1111 | compel``.

- ``plain``: the prompt goes to the pipeline as text; brackets are text (diffusers' own behaviour).
- ``compel``: the prompt is compel's syntax (``old++``, ``(old)1.3``, ``("a", "b").and()``, ``.blend()``);
  compel turns prompt and negative prompt into embeddings with its class for the pipeline's family
  (``COMPEL_CLASSES``: ``CompelForSD`` for SD 1.x/2.x, ``CompelForSDXL`` with its two text encoders,
  ``CompelForFlux`` (CLIP pooled + T5), ``CompelForSana``, ``CompelForLumina2``); SD and SDXL chunk prompts
  longer than the encoder's 77 tokens instead of cutting them; Flux, Sana and Lumina2 cut at the T5/LLM limit
  as their pipelines do. Other families (SD3, Qwen-Image, FLUX.2, PixArt, ...) are refused in one line.
- ``a1111``: AUTOMATIC1111's attention syntax, which compel does not read itself, is first translated to
  compel's: ``(word:1.2)`` -> ``(word)1.2``, ``(word)`` -> x1.1, ``((word))`` -> x1.21, ``[word]`` -> /1.1,
  ``BREAK`` -> a new chunk (compel's ``.and()``), ``\\(`` stays a literal bracket. The weights are computed
  the way A1111's ``parse_prompt_attention`` (modules/prompt_parser.py) computes them. A1111 constructs
  with no compel equivalent (prompt editing ``[a:b:10]``, alternation ``[a|b]``) stay text and get a note.

``translate`` and ``notes`` are pure; ``conditioning`` runs compel (torch) and is called by the engine.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

SYNTAXES = ("plain", "a1111", "compel")
DEFAULT = "plain"

# A1111 modules/prompt_parser.py: re_attention and re_break
_ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_UP, _DOWN = 1.1, 1 / 1.1
# constructs compel has no equivalent for; A1111 resolves them per sampling step
_EDITING = re.compile(r"\[[^\[\]:|]*:[^\[\]:|]*(:\s*[\d.]+\s*)?\]")
_ALTERNATION = re.compile(r"\[[^\[\]|]*(\|[^\[\]|]*)+\]")
_EXTRA_NETWORK = re.compile(r"<(lora|lyco|hypernet):[^>]*>", re.I)


class WeightError(ValueError):
    """An A1111 prompt whose weights compel's syntax cannot carry faithfully; ``str()``: the reason, one line."""


def a1111_weights(text: str) -> list[tuple[str, float]]:
    """(text, weight) pieces of an A1111 prompt, as A1111's ``parse_prompt_attention`` gives them;
    ``("BREAK", -1)`` between chunks."""
    res: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= factor

    for m in _ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            multiply(round_open.pop(), _number(weight, token))
        elif token == ")" and round_open:
            multiply(round_open.pop(), _UP)
        elif token == "]" and square_open:
            multiply(square_open.pop(), _DOWN)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for start in round_open:
        multiply(start, _UP)
    for start in square_open:
        multiply(start, _DOWN)
    merged: list[list[Any]] = []
    for piece in res or [["", 1.0]]:
        if merged and merged[-1][1] == piece[1] and piece[1] != -1:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(t, w) for t, w in merged]


def _number(weight: str, token: str) -> float:
    """An ``(x:W)`` weight: a finite number (A1111 itself fails on ``(x:1.2.3)`` with a bare ValueError)."""
    import math

    try:
        value = float(weight)
    except ValueError:
        raise WeightError(f"the weight {_short(weight)!r} is not a number") from None
    if not math.isfinite(value):
        raise WeightError(f"the weight {_short(weight)!r} is not a finite number")
    return value


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").replace('"', '\\"')


def _weight(w: float) -> str:
    """A weight as compel's grammar reads it: plain decimals (``1e+06`` would be read as 1, then text)."""
    return f"{round(w, 4):.4f}".rstrip("0").rstrip(".")


def a1111_to_compel(text: str) -> str:
    """An A1111 prompt in compel's syntax (extra-network tags such as ``<lora:x:0.8>`` removed; prompt editing
    and alternation, which have no equivalent, kept as literal text)."""
    text = _EXTRA_NETWORK.sub("", text)
    for rx in (_EDITING, _ALTERNATION):
        text = rx.sub(lambda m: "\\[" + m.group(0)[1:-1] + "\\]", text)
    chunks: list[list[str]] = [[]]
    for piece, w in a1111_weights(text):
        if w == -1:
            chunks.append([])
        elif piece == "BREAK" and w < 0:  # A1111 multiplies its BREAK marker by the brackets around it
            raise WeightError("BREAK inside brackets: A1111 reads it as the word BREAK with a negative weight, "
                              "not as a new chunk; put BREAK outside the brackets")
        elif w < 0:
            raise WeightError(f"{piece.strip()!r} has the negative weight {_weight(w)}; compel's syntax has no "
                              f"negative weights (it reads '-' as a down-weight)")
        elif piece.strip():
            chunks[-1].append(_escape(piece) if abs(w - 1.0) < 1e-9 else f"({_escape(piece.strip())}){_weight(w)}"
                              + (" " if piece.endswith(" ") else ""))
        elif piece:
            chunks[-1].append(piece)
    parts = ["".join(c).strip() for c in chunks]
    if len(parts) == 1:
        return parts[0]
    return "(" + ", ".join('"' + p.replace('"', '\\"') + '"' for p in parts) + ").and()"


def check(text: str, syntax: str) -> None:
    """Raise WeightError when ``text`` under ``syntax`` cannot be handed to compel faithfully (before any run)."""
    if syntax == "a1111":
        a1111_to_compel(text)


def translate(text: str, syntax: str) -> str:
    """The prompt compel reads for ``syntax`` (a1111 or compel)."""
    return a1111_to_compel(text) if syntax == "a1111" else text


def notes(text: str, syntax: str, label: str = "prompt") -> list[str]:
    """One line per construct of ``text`` that has no equivalent under ``syntax``."""
    if syntax != "a1111":
        return []
    out = [f"{label}: A1111 prompt editing {m.group(0)!r} has no compel equivalent (it switches text mid-sampling); "
           f"read as text" for m in _EDITING.finditer(text)]
    out += [f"{label}: A1111 alternation {m.group(0)!r} has no compel equivalent (it alternates every step); "
            f"read as text" for m in _ALTERNATION.finditer(text)]
    return out


# ---------------------------------------------------------------------------------------------- torch side


# compel 2.5's class per pipeline family, by the pipeline's class (or a base class): what its encoders are.
COMPEL_CLASSES: dict[str, str] = {
    "StableDiffusionXLPipeline": "CompelForSDXL",
    "StableDiffusionPipeline": "CompelForSD",
    "FluxPipeline": "CompelForFlux",
    "SanaPipeline": "CompelForSana",
    "Lumina2Pipeline": "CompelForLumina2",
}
# Classes whose compel wrapper takes attention masks (a T5/LLM encoder read up to a padded length).
_MASKED = ("CompelForSana", "CompelForLumina2")


def compel_class_name(pipe: Any) -> str | None:
    """The name of compel's class for ``pipe``'s family: by its class or a base class (``COMPEL_CLASSES``); a
    UNet pipeline of another class with CLIP encoders (an SD variant) as before: SDXL's with two, else SD's.
    None: compel has none for this family."""
    for klass in type(pipe).__mro__:
        if klass.__name__ in COMPEL_CLASSES:
            return COMPEL_CLASSES[klass.__name__]
    if getattr(pipe, "unet", None) is not None and getattr(pipe, "text_encoder", None) is not None:
        return "CompelForSDXL" if getattr(pipe, "text_encoder_2", None) is not None else "CompelForSD"
    return None


def check_supported(pipe: Any, syntax: str) -> None:
    """One line when ``syntax`` needs compel and compel has no class for this pipeline's family."""
    from tracker.errors import ModelError

    if syntax != "plain" and compel_class_name(pipe) is None:
        raise ModelError(f"prompt_syntax {syntax}: family {type(pipe).__name__} has no prompt weighting support "
                         f"(compel has classes for {', '.join(sorted(COMPEL_CLASSES))}); use prompt_syntax: plain")


def conditioning(pipe: Any, prompts: Sequence[str], negatives: Sequence[str], syntax: str) -> dict[str, Any]:
    """Pipeline keyword arguments with compel's embeddings for ``prompts`` and ``negatives`` (one per image).
    On Flux, Sana and Lumina2 no negative prompt at all is none (no negative embeddings: the pipeline's own
    behaviour without one); SD and SDXL encode the empty negative as before."""
    import compel

    check_supported(pipe, syntax)
    name = compel_class_name(pipe)
    cls = getattr(compel, name)
    cache = pipe.__dict__.setdefault("_tracker_compel", {})
    if cls not in cache:
        cache[cls] = cls(pipe)
    no_negative = name not in ("CompelForSD", "CompelForSDXL") and not any(negatives)
    out = cache[cls]([translate(p, syntax) for p in prompts],
                     negative_prompt=None if no_negative else [translate(n, syntax) for n in negatives])
    kwargs = {"prompt_embeds": out.embeds}
    if not no_negative:
        kwargs["negative_prompt_embeds"] = out.negative_embeds
    if name in ("CompelForSDXL", "CompelForFlux"):
        kwargs["pooled_prompt_embeds"] = out.pooled_embeds
        if not no_negative:
            kwargs["negative_pooled_prompt_embeds"] = out.negative_pooled_embeds
    if name in _MASKED:
        kwargs["prompt_attention_mask"] = out.attention_mask
        if not no_negative:
            kwargs["negative_prompt_attention_mask"] = out.negative_attention_mask
    return kwargs
