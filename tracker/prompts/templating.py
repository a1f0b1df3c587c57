"""Prompt templates: Jinja2 in its sandbox, undefined variables are errors."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable, Mapping

from jinja2 import TemplateSyntaxError, UndefinedError, meta
from jinja2.exceptions import SecurityError

from tracker.errors import SpecError
from tracker.prompts.sandbox import BoundedSandbox, TemplateLimit


@lru_cache(maxsize=1)
def _env() -> BoundedSandbox:
    return BoundedSandbox(autoescape=False, keep_trailing_newline=False)


@lru_cache(maxsize=4096)
def _compile(source: str):
    return _env().from_string(source)


def check(source: str, variables: Iterable[str], path: str | None, field: str, line: int | None) -> None:
    """Parse a template and check that every variable it uses is a known axis."""
    try:
        ast = _env().parse(source)
    except TemplateSyntaxError as e:
        raise SpecError(path, field, f"template error: {e.message}", line) from None
    known = sorted(variables)
    for name in sorted(meta.find_undeclared_variables(ast)):
        if name not in known:
            raise SpecError(path, field, f"undefined template variable {name!r}; known axes: {', '.join(known) or '(none)'}", line)


@lru_cache(maxsize=4096)
def variables(source: str) -> frozenset[str]:
    """The variables a template uses (it must parse: ``check`` it first)."""
    return frozenset(meta.find_undeclared_variables(_env().parse(source)))


def render(source: str, variables: Mapping[str, Any], path: str | None, field: str, line: int | None) -> str:
    try:
        return _env().render(_compile(source), dict(variables))
    except TemplateLimit as e:
        raise SpecError(path, field, f"template exceeds a limit: {e}", line) from None
    except SecurityError as e:
        raise SpecError(path, field, f"template tries to reach Python internals, which the sandbox forbids: {e}", line) from None
    except UndefinedError as e:
        known = ", ".join(sorted(variables)) or "(none)"
        raise SpecError(path, field, f"undefined template value: {e.message}; known axes: {known}", line) from None
    except TemplateSyntaxError as e:
        raise SpecError(path, field, f"template error: {e.message}", line) from None
    except Exception as e:  # a filter or call failing inside the template
        raise SpecError(path, field, f"template failed to render: {type(e).__name__}: {e}", line) from None
