"""Jinja2's immutable sandbox with bounded cost: output length, loop iterations and render time.

Jinja2's sandbox stops a template from reaching Python internals but not from being expensive:
``{{ '{0:>1000000000}'.format(1) }}`` or ``{{ 'x' * 10**9 }}`` allocate a gigabyte in one call and nested
``range`` loops run for hours. This sandbox refuses, before the allocation, any format width, repeat
count or padding larger than the prompt limit; checks every string a call, filter or operator returns,
and the output while it grows (``~``, ``{% set %}`` blocks, macros and the prompt itself: doubling a
string 30 times builds no gigabyte); counts loop iterations over ``range``; bounds ``lipsum``; and stops
a render that runs past its time budget (a trace function on the template's own frames, so it works in
any thread).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from functools import update_wrapper
from typing import Any, Callable

from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter, safe_range
from jinja2.utils import generate_lorem_ipsum

from tracker import limits


class TemplateLimit(Exception):
    """A template crossed one of the bounds in ``tracker.limits``."""


_DIGITS = re.compile(r"\d+")
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?([-#0 +]*[\d*]*(?:\.[\d*]*)?)[a-zA-Z%]")
# filters and str methods whose integer arguments size their output
_SIZING = {"center", "ljust", "rjust", "zfill", "expandtabs", "indent", "wordwrap", "truncate", "format"}


def _check_width(spec: str, what: str) -> None:
    for digits in _DIGITS.findall(spec):
        if len(digits) > 9 or int(digits) > limits.MAX_PROMPT_CHARS:
            raise TemplateLimit(f"{what} {spec!r} asks for more than {limits.MAX_PROMPT_CHARS} characters")


def _check_percent(fmt: str) -> None:
    for spec in _PERCENT_SPEC.findall(fmt):
        if "*" in spec:
            raise TemplateLimit(f"a '*' width in the % format {fmt[:40]!r} is not allowed")
        _check_width(spec, "the % format")


def _check_result(value: Any) -> Any:
    if isinstance(value, (str, list, tuple)) and len(value) > limits.MAX_PROMPT_CHARS:
        kind = "text of {} characters" if isinstance(value, str) else "a list of {} items"
        raise TemplateLimit(f"the template builds {kind.format(len(value))}; at most {limits.MAX_PROMPT_CHARS}")
    return value


def _check_replace(obj: Any, args: tuple) -> None:
    """``s.replace(old, new)`` multiplies: estimate the result before building it."""
    if getattr(obj, "__name__", "") == "replace" and isinstance(getattr(obj, "__self__", None), str) \
            and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]) and args[0]:
        s, old, new = obj.__self__, args[0], args[1]
        _check_result_length(len(s) + s.count(old) * (len(new) - len(old)))


def _check_result_length(n: int) -> None:
    if n > limits.MAX_PROMPT_CHARS:
        raise TemplateLimit(f"the template builds text of {n} characters; at most {limits.MAX_PROMPT_CHARS}")


def _check_sizing_args(name: str, args: tuple, kwargs: dict) -> None:
    if name not in _SIZING:
        return
    for v in (*args, *kwargs.values()):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > limits.MAX_PROMPT_CHARS:
            raise TemplateLimit(f"{name}({v}) asks for more than {limits.MAX_PROMPT_CHARS} characters")


class _BoundedBuffer(list):
    """The output of a block (``{% set x %}...{% endset %}``, a macro, a filter block), bounded as it grows."""

    def __init__(self) -> None:
        super().__init__()
        self.chars = 0

    def _grow(self, item: Any) -> None:
        if isinstance(item, str):
            self.chars += len(item)
            _check_result_length(self.chars)

    def append(self, item: Any) -> None:
        self._grow(item)
        super().append(item)

    def extend(self, items: Any) -> None:
        items = tuple(items)
        for item in items:
            self._grow(item)
        super().extend(items)


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja2's compiler, but block buffers are ``_BoundedBuffer`` and ``a ~ b`` checks its length. ``~`` joins
    with ``str`` as Jinja's own ``str_join`` does: prompts are plain text (``autoescape=False``, tracker.prompts.templating),
    so its Markup-aware join is never needed here."""

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.bounded_buffer()")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002 (Jinja's names)
    if isinstance(n, int) and isinstance(max, int) and abs(n) * abs(max) > limits.MAX_PROMPT_CHARS:
        raise TemplateLimit(f"lipsum({n}, max={max}) asks for more than {limits.MAX_PROMPT_CHARS} words, past the "
                            f"{limits.MAX_PROMPT_CHARS}-character prompt limit")
    return generate_lorem_ipsum(n, html, min, max)


class _BoundedFormatter(SandboxedFormatter):
    def format_field(self, value: Any, format_spec: str) -> Any:
        _check_width(format_spec, "the format spec")
        return _check_result(super().format_field(value, format_spec))


class _Budget:
    """Per render: a deadline and a count of loop iterations."""

    def __init__(self) -> None:
        self.deadline = time.monotonic() + limits.MAX_RENDER_SECONDS
        self.iterations = 0
        self.lines = 0


class BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+", "//"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(undefined=StrictUndefined, **kwargs)
        self._local = threading.local()  # the budget of the render running in this thread
        self.globals["range"] = self._range
        self.globals["lipsum"] = _lipsum
        self.filters = {name: self._bounded_filter(name, f) for name, f in self.filters.items()}

    # -- what a template may build ------------------------------------------------------------

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    if len(seq) * max(n, 0) > limits.MAX_PROMPT_CHARS:
                        raise TemplateLimit(f"repeating {len(seq)} items {n} times builds more than "
                                            f"{limits.MAX_PROMPT_CHARS}")
        elif op == "**":
            if isinstance(right, (int, float)) and isinstance(left, (int, float)) and abs(right) > 64 and abs(left) > 1:
                raise TemplateLimit(f"{left} ** {right} is too large a power")
        elif op == "%" and isinstance(left, str):
            _check_percent(left)
        return _check_result(self.binop_table[op](left, right))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if super().wrap_str_format(value) is None:
            return None
        f_self: str = value.__self__
        formatter = _BoundedFormatter(self)
        is_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            return _check_result(str(formatter.vformat(f_self, args, kwargs)))

        return update_wrapper(wrapper, value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_sizing_args(getattr(__obj, "__name__", ""), args, kwargs)
        _check_replace(__obj, args)
        return _check_result(super().call(__context, __obj, *args, **kwargs))

    def _bounded_filter(self, name: str, f: Callable) -> Callable:
        def bounded(*args: Any, **kwargs: Any) -> Any:
            _check_sizing_args(name, args[1:], kwargs)  # args[0]: the value (or context) filtered
            if name == "format" and args and isinstance(args[0], str):
                _check_percent(args[0])
            if name == "replace" and len(args) >= 3 and all(isinstance(a, str) for a in args[:3]) and args[1]:
                _check_result_length(len(args[0]) + args[0].count(args[1]) * (len(args[2]) - len(args[1])))
            return _check_result(f(*args, **kwargs))

        return update_wrapper(bounded, f)

    @staticmethod
    def bounded_buffer() -> _BoundedBuffer:
        return _BoundedBuffer()

    @staticmethod
    def bounded_concat(parts: tuple) -> str:
        strings = [str(p) for p in parts]
        _check_result_length(sum(map(len, strings)))
        return "".join(strings)

    def _range(self, *args: int):
        rng = safe_range(*args)
        budget = getattr(self._local, "budget", None)
        for i in rng:
            if budget is not None:
                budget.iterations += 1
                if budget.iterations > limits.MAX_LOOP_ITERATIONS:
                    raise TemplateLimit(f"loops run more than {limits.MAX_LOOP_ITERATIONS} iterations")
            yield i

    # -- rendering under a budget -------------------------------------------------------------

    def render(self, template: Any, variables: dict[str, Any]) -> str:
        """Render ``template`` within the length, iteration and time bounds; raises TemplateLimit."""
        budget = self._local.budget = _Budget()
        previous = sys.gettrace()

        def local(frame, event, arg):
            budget.lines += 1
            if budget.lines % 256 == 0 and time.monotonic() > budget.deadline:
                raise TemplateLimit(f"rendering takes more than {limits.MAX_RENDER_SECONDS:g} s")
            return local

        def tracer(frame, event, arg):
            return local if frame.f_code.co_filename == "<template>" else None

        sys.settrace(tracer)
        try:
            pieces, chars = [], 0
            for piece in template.generate(**variables):  # the prompt is bounded while it grows
                chars += len(piece)
                _check_result_length(chars)
                pieces.append(piece)
            out = "".join(pieces)
        finally:
            sys.settrace(previous)
            self._local.budget = None
        return _check_result(out)

