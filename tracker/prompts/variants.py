"""Dynamic Prompts variants in prompt templates: ``a {red|green} car``, ``__colours__`` wildcard files,
``{2$$a|b|c}``. Jinja2 renders a template first; the rendered text then expands with the ``dynamicprompts``
library (its combinatorial generator, or its random generator with a fixed seed for ``variants: {sample: N}``).

Each expansion becomes a labelled value of an axis (``variant`` by default, ``negative_variant`` for the
negative prompt). A label is made of the words the expansion chose, e.g. ``red / large``: the expanded text
is matched against the literal parts of the parsed template, and what lies between them is what was chosen.

Pure (no torch); dynamicprompts is imported only when a template may hold its syntax.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tracker import limits
from tracker.prompts import templating
from tracker.experiment.model import Axis, AxisValue

DEFAULT_AXIS = "variant"
NEGATIVE_AXIS = "negative_variant"
MAX_PROMPTS = limits.MAX_VARIANTS  # the plan limit: more expansions than this can never become a plan
NO_VARIANT = "(none)"  # the label of a text without variant syntax, next to texts with it
WILDCARDS_ENV = "TRACKER_WILDCARDS"
SAMPLE_TRIES = 20  # rounds of draws for ``sample: N`` before settling for fewer distinct texts
_SYNTAX_HINTS = ("{", "__", "${")


@dataclass(frozen=True)
class VariantOptions:
    sample: int | None = None  # None: every combination; N: seeded draws until N distinct texts
    seed: int = 0
    axis: str = DEFAULT_AXIS
    wildcards: str | None = None  # absolute folder of wildcard files
    explicit: bool = False  # the file set ``variants:``; otherwise on only where a template uses the syntax


class VariantError(Exception):
    """A template's variant syntax is bad or names a wildcard that does not exist. ``str()``: the message."""


# ---------------------------------------------------------------------------------------------- options


def options(raw: Any, wildcards: Any, base_dir: Path | None, err: Callable[[str, str], None]) -> VariantOptions | None:
    """``variants:`` and ``wildcards:`` of an experiment file; None when variants are switched off.

    ``err(field, message)`` raises the spec error.
    """
    folder = _wildcards_folder(wildcards, base_dir, err)
    if raw is False or raw == "off":
        return None
    if raw is None:
        return VariantOptions(wildcards=folder)
    if raw is True or raw == "combinatorial":
        return VariantOptions(wildcards=folder, explicit=True)
    if not isinstance(raw, dict) or set(raw) - {"sample", "seed", "axis"}:
        err("variants", f"must be combinatorial, off, or a mapping with sample, seed and axis but is {raw!r}")
    sample, seed, axis = raw.get("sample"), raw.get("seed", 0), raw.get("axis", DEFAULT_AXIS)
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
        err("variants.sample", f"must be a positive integer but is {sample!r}")
    if sample is not None and sample > limits.MAX_VARIANTS:
        err("variants.sample", f"is {sample}; at most {limits.MAX_VARIANTS} variants of a template are drawn "
                               f"(the plan limit)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        err("variants.seed", f"must be an integer >= 0 but is {seed!r}")
    if "seed" in raw and sample is None:
        err("variants.seed", "seeds the sampling; give sample: N too (without it every combination is used)")
    if not isinstance(axis, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", axis):
        err("variants.axis", f"must be an identifier ([A-Za-z_][A-Za-z0-9_]*) but is {axis!r}")
    if axis == NEGATIVE_AXIS:
        err("variants.axis", f"{axis!r} is the axis of the negative prompt's variants; name the prompt's another way")
    return VariantOptions(sample=sample, seed=seed, axis=axis, wildcards=folder, explicit=True)


def _wildcards_folder(raw: Any, base_dir: Path | None, err: Callable[[str, str], None]) -> str | None:
    field = "wildcards"
    if raw is None:
        raw, field = os.environ.get(WILDCARDS_ENV) or None, WILDCARDS_ENV
        if raw is None:
            return None
    if not isinstance(raw, str) or not raw.strip():
        err(field, f"must be a folder of wildcard files but is {raw!r}")
    folder = Path(raw).expanduser()
    if not folder.is_absolute() and field == "wildcards" and base_dir is not None:
        folder = base_dir / folder
    if not folder.is_dir():
        err(field, f"{raw!r} is not a folder (looked at {folder})")
    return str(folder.resolve())


# ---------------------------------------------------------------------------------------------- expansion


@lru_cache(maxsize=8)
def _wildcard_manager(folder: str | None):
    from dynamicprompts.wildcards import WildcardManager
    from dynamicprompts.wildcards.tree import WildcardTree

    class StrictWildcards(WildcardManager):
        """The wildcards of ``folder`` as ``_walk`` reads them (within the folder, bounded), instead of the
        library's own walk (``os.walk(followlinks=True)``: a link to the folder itself never ends, a link out of
        it is read). A missing wildcard is an error (the library leaves it in the text with a log warning), and
        so is a name with ``..`` or ``\\`` (the library logs two tracebacks for those, then finds nothing)."""

        def __init__(self):
            super().__init__(None)
            self._walked = None

        @property
        def tree(self):
            if self._walked is None:
                self._walked = WildcardTree.from_map(_walk(folder) if folder is not None else {})
            return self._walked

        def get_values(self, wildcard: str):
            name = wildcard.removeprefix(self.wildcard_wrap).removesuffix(self.wildcard_wrap)
            if ".." in name or "\\" in name:
                raise _Unsafe(name)
            values = super().get_values(wildcard)
            if not values:
                raise _Missing(wildcard)
            return values

    return StrictWildcards()


class _Missing(Exception):
    pass


class _Unsafe(Exception):
    pass


class _BadWildcards(Exception):
    """A wildcard file or folder that cannot be read as it is; ``str()``: the whole message."""


_WILDCARD_SUFFIXES = (".txt", ".json", ".yaml")


def _walk(folder: str) -> dict[str, Any]:
    """The wildcard collections under ``folder`` by name (``colours``, ``people/chiefs``), as the library names
    them: every .txt, .json and .yaml file, hidden folders skipped, links followed only where they lead to a
    place inside the folder (a link leading out of it is an error; one leading back to a folder it is in is a
    loop, not followed). At most ``limits.MAX_WILDCARD_ENTRIES`` entries, ``MAX_WILDCARD_DEPTH`` folders deep.
    Text files are read when first used (``_text_collection``); structured ones now, for their names."""
    root = Path(folder).resolve()
    found: dict[str, Any] = {}
    seen = 0

    def visit(real: Path, shown: Path, prefix: str, ancestors: tuple[Path, ...]) -> None:
        nonlocal seen
        if len(ancestors) > limits.MAX_WILDCARD_DEPTH:
            raise _BadWildcards(f"wildcards folder {root}: {shown} is more than {limits.MAX_WILDCARD_DEPTH} folders "
                                f"deep (tracker.limits.MAX_WILDCARD_DEPTH)")
        try:
            entries = sorted(os.scandir(real), key=lambda e: e.name)
        except OSError as e:
            raise _BadWildcards(f"wildcards folder {root}: cannot read {shown}: {e.strerror or e}") from None
        for entry in entries:
            seen += 1
            if seen > limits.MAX_WILDCARD_ENTRIES:
                raise _BadWildcards(f"wildcards folder {root}: more than {limits.MAX_WILDCARD_ENTRIES} files and "
                                    f"folders, links followed (tracker.limits.MAX_WILDCARD_ENTRIES)")
            path = shown / entry.name
            target = (real / entry.name).resolve()
            if target != root and root not in target.parents:
                raise _BadWildcards(f"wildcards folder {root}: {path.relative_to(root)} is a link to {target}, "
                                    f"outside the folder; wildcard files are read only inside it")
            if target.is_dir():
                if entry.name.startswith(".") or target in ancestors:  # hidden (as the library), or a loop
                    continue
                visit(target, path, f"{prefix}{entry.name}/", ancestors + (target,))
            elif target.is_file() and target.suffix in _WILDCARD_SUFFIXES:
                stem = entry.name[:-len(target.suffix)] if entry.name.endswith(target.suffix) else entry.name
                if target.suffix == ".txt":
                    found[prefix + stem] = _text_collection()(target, path)
                else:
                    found.update((prefix + name, c) for name, c in _structured(target, path))

    visit(root, root, "", (root,))
    return found


def _read_text(real: Path, shown: Path) -> str:
    """A wildcard file's text: UTF-8 (a byte-order mark allowed), at most ``limits.MAX_WILDCARD_FILE_BYTES``."""
    try:
        with open(real, "rb") as f:
            data = f.read(limits.MAX_WILDCARD_FILE_BYTES + 1)
    except OSError as e:
        raise _BadWildcards(f"wildcard file {shown}: cannot be read: {e.strerror or e}") from None
    if len(data) > limits.MAX_WILDCARD_FILE_BYTES:
        raise _BadWildcards(f"wildcard file {shown}: is larger than {limits.MAX_WILDCARD_FILE_BYTES} bytes "
                            f"(tracker.limits.MAX_WILDCARD_FILE_BYTES)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise _BadWildcards(f"wildcard file {shown}: line {line} is not UTF-8 (byte {data[e.start]:#04x}); "
                            f"save the file as UTF-8") from None


@lru_cache(maxsize=1)
def _text_collection():
    from dynamicprompts.utils import is_empty_line
    from dynamicprompts.wildcards.collection import WildcardCollection

    class TextFile(WildcardCollection):
        """A .txt wildcard file read when first used, as the library reads one (a value per line, stripped;
        blank lines and ``#`` comments skipped), except that its text must be UTF-8 (the library drops what
        does not decode: ``café`` read as ``caf``)."""

        def __init__(self, real: Path, shown: Path):
            self.real, self.shown, self._values = real, shown, None

        def get_values(self) -> list[str]:
            if self._values is None:
                text = _read_text(self.real, self.shown)
                self._values = [ln.strip() for ln in text.splitlines() if not is_empty_line(ln)]
            return self._values

    return TextFile


def _structured(real: Path, shown: Path):
    """The collections of a .json or .yaml wildcard file (the library's reader, after this module's checks:
    UTF-8, size, and for YAML the experiment files' bounds on nesting and aliases)."""
    from dynamicprompts.wildcards.collection.structured import parse_structured_file

    text = _read_text(real, shown)
    try:
        if real.suffix == ".yaml":
            from tracker.experiment import yamlfile

            yamlfile.load(text, str(shown))
        else:
            import json

            json.loads(text)
    except ValueError as e:
        raise _BadWildcards(f"wildcard file {shown}: malformed JSON: {e}") from None
    return list(parse_structured_file(real))


def _maybe_syntax(text: str) -> bool:
    return any(h in text for h in _SYNTAX_HINTS)


@lru_cache(maxsize=4096)
def expand_text(text: str, opts: VariantOptions) -> tuple[tuple[str, str], ...] | None:
    """The expansions of one rendered template as (label, text) pairs, in the library's order.

    None when the text holds no variant syntax. Raises VariantError for bad syntax or a missing wildcard.
    """
    if not _maybe_syntax(text):
        return None
    from dynamicprompts.commands import LiteralCommand

    command = _parse(text)
    if isinstance(command, LiteralCommand):
        return None
    texts = _generate(text, opts)
    return _labelled(command, texts)


def _parse(text: str):
    import pyparsing
    from dynamicprompts.parser.parse import parse

    try:
        return parse(text)
    except pyparsing.ParseBaseException as e:
        near = text[max(0, e.loc - 10):e.loc + 10]
        raise VariantError(f"bad Dynamic Prompts syntax at character {e.loc + 1} (near {near!r}) of {text!r}; "
                           f"set variants: off to read braces as text") from None
    except ValueError as e:
        raise VariantError(f"bad Dynamic Prompts syntax in {text!r}: {e}") from None


def _generate(text: str, opts: VariantOptions) -> list[str]:
    from dynamicprompts.generators import CombinatorialPromptGenerator, RandomPromptGenerator

    manager = _wildcard_manager(opts.wildcards)
    try:
        if opts.sample is None:
            texts = CombinatorialPromptGenerator(manager).generate(text, max_prompts=MAX_PROMPTS + 1)
            if len(texts) > MAX_PROMPTS:
                raise VariantError(f"{text!r} expands to more than {MAX_PROMPTS} prompts; "
                                   f"sample some with variants: {{sample: N, seed: S}}")
        else:  # seeded draws until N distinct texts (the generator's stream goes on across calls), or until every
            # text the template can make is drawn: a template with fewer combinations than N stops there
            every = len(CombinatorialPromptGenerator(manager).generate(text, max_prompts=opts.sample))
            generator, texts = RandomPromptGenerator(manager, seed=opts.seed), []
            for _ in range(SAMPLE_TRIES):
                texts = list(dict.fromkeys(texts + generator.generate(text, opts.sample - len(texts))))
                if len(texts) >= min(opts.sample, every):
                    break
    except _Missing as e:
        raise VariantError(_missing_message(text, str(e), opts)) from None
    except _Unsafe as e:
        raise VariantError(f"wildcard __{e}__ names a file outside the wildcards folder ('..' and '\\' are not "
                           f"allowed in wildcard names)") from None
    except _BadWildcards as e:
        raise VariantError(str(e)) from None
    except RecursionError:
        raise VariantError(f"wildcards in {text!r} refer to each other in a loop") from None
    return list(dict.fromkeys(texts))


def _missing_message(text: str, name: str, opts: VariantOptions) -> str:
    wrapped = f"__{name}__"
    at = text.find(wrapped)
    where = f"at character {at + 1}" if at >= 0 else "used inside a wildcard file"
    if opts.wildcards is None:
        return (f"wildcard {wrapped} ({where}) needs a wildcards folder: set wildcards: FOLDER in the file "
                f"or {WILDCARDS_ENV}")
    return f"wildcard {wrapped} ({where}) not found in {opts.wildcards} (looked for {name}.txt, .yaml, .json)"


def _labelled(command, texts: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Labels from the chosen words: what lies between the template's literal parts in each text."""
    from dynamicprompts.commands import LiteralCommand, SequenceCommand
    from dynamicprompts.commands.variable_commands import VariableAssignmentCommand

    tokens = command.tokens if isinstance(command, SequenceCommand) else [command]
    pattern = "".join(re.escape(t.literal) if isinstance(t, LiteralCommand)
                      else "" if isinstance(t, VariableAssignmentCommand) else "(.*?)" for t in tokens)
    rx = re.compile(pattern, re.S)
    out: list[tuple[str, str]] = []
    used: set[str] = set()
    for text in texts:
        m = rx.fullmatch(text)
        parts = [g.strip() or "(empty)" for g in m.groups()] if m else [text.strip()]
        label = " / ".join(parts) or "(empty)"
        base, n = label, 2
        while label in used:  # two texts whose chosen words read the same (white space, adjacent variants)
            label, n = f"{base} #{n}", n + 1
        used.add(label)
        out.append((label, text))
    return tuple(out)


# ---------------------------------------------------------------------------------------------- axes


@dataclass(frozen=True)
class Template:
    """One template of a prompt field: ``field`` (prompt or negative_prompt), how errors name it, its line."""

    field: str
    name: str
    line: int | None
    source: str


def axes_for(opts: VariantOptions | None, templates: Iterable[Template], var_axes: Sequence[Axis],
             path: str | None, error: Callable[[str, str, int | None], None]) -> list[Axis]:
    """The variant axes: every rendering of every template expanded, labels in first-seen order.

    ``var_axes``: the axes a template may use as variables (their every combination is rendered).
    ``error(field, message, line)`` raises the spec error.
    """
    if opts is None:
        return []
    labels: dict[str, dict[str, None]] = {}
    for t in templates:
        if not (_maybe_syntax(t.source) or any(_maybe_syntax(str(v.value)) for a in var_axes for v in a.values)):
            continue  # fast path: neither the template nor any value it could take holds variant syntax
        names = templating.variables(t.source)
        used = [a for a in var_axes if a.name in names]  # the axes this template renders with
        combinations = math.prod(len(a.values) for a in used)
        if combinations > limits.MAX_TEMPLATE_RENDERINGS:  # checked before the plan's size: renders cost time
            error(t.name, f"its axes {', '.join(a.name for a in used)} make {combinations} combinations to render; "
                          f"at most {limits.MAX_TEMPLATE_RENDERINGS}: narrow the axes", t.line)
        for rendered in _renderings(t, used, path):
            try:
                expanded = expand_text(rendered, opts)
            except VariantError as e:
                error(t.name, str(e), t.line)
            found = labels.setdefault(t.field, {})
            for label, _ in expanded or ((NO_VARIANT, rendered),):
                found[label] = None
    axes = []
    for field, found in labels.items():
        if set(found) == {NO_VARIANT}:
            continue
        name = opts.axis if field == "prompt" else NEGATIVE_AXIS
        axes.append(Axis(name, "variant", tuple(AxisValue(lab, value=lab) for lab in found)))
    return axes


def _renderings(t: Template, axes: Sequence[Axis], path: str | None) -> Iterable[str]:
    """``t`` rendered with every combination of the ``axes`` it uses, each distinct text once."""
    seen: set[str] = set()
    for values in itertools.product(*(a.values for a in axes)):
        variables = {a.name: v.value for a, v in zip(axes, values)}
        text = templating.render(t.source, variables, path, t.name, t.line)
        if text not in seen:
            seen.add(text)
            yield text


def choose(opts: VariantOptions, label: str | None, text: str) -> str | None:
    """The text of variant ``label`` of a rendered template; None when that template has no such variant."""
    expanded = expand_text(text, opts)
    if expanded is None:
        return text if label in (None, NO_VARIANT) else None
    if label is None:
        return None
    return _by_label(text, opts).get(label)


@lru_cache(maxsize=64)
def _by_label(text: str, opts: VariantOptions) -> dict[str, str]:
    """``expand_text`` as a mapping (built once: a plan looks up each of up to MAX_PROMPTS labels)."""
    return dict(expand_text(text, opts) or ())
