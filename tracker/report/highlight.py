"""Prompts as spans: which part of a prompt came from an axis value (template expression)."""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

from tracker.errors import TrackerError
from tracker.report.data import Span

TEMPLATE_TAG = re.compile(r"({{.*?}}|{%.*?%}|{#.*?#})", re.S)


def highlight(prompt: str, template: str | None, others: Sequence[str] = (),
              variables: Iterable[tuple[str, Any]] | None = None) -> tuple[Span, ...]:
    """Split ``prompt`` into spans, marking what its template's expressions produced: exactly when the
    template's ``variables`` are known, else by lining the template's text up with the prompt; when
    neither works (control blocks), mark what differs from the ``others`` prompts. Remembered per
    arguments: a report highlights the same prompt for every seed of it."""
    args = (prompt, template, tuple(others), None if variables is None else tuple(variables))
    try:
        hash(args)
    except TypeError:  # a variable holds a list or mapping (from the experiment file): not remembered
        return _highlight(*args)
    return _remembered(*args)


def _highlight(prompt: str, template: str | None, others: tuple[str, ...],
               variables: tuple[tuple[str, Any], ...] | None) -> tuple[Span, ...]:
    spans = None
    if template and variables is not None:
        spans = _rendered_spans(prompt, template, dict(variables))
    if template and spans is None:
        spans = _template_spans(prompt, template)
    return spans if spans is not None else _diff_spans(prompt, [o for o in others if o != prompt])


_remembered = lru_cache(maxsize=4096)(_highlight)


def _template_parts(template: str) -> tuple[list[str], list[str]] | None:
    """The template's literal texts and its ``{{ }}`` expressions, whitespace control applied; None
    for templates with control blocks, whose literals cannot be lined up with the output."""
    parts = TEMPLATE_TAG.split(template)
    if any(p.startswith(("{%", "{#")) for p in parts[1::2]):
        return None
    literals = parts[0::2]
    exprs = parts[1::2]
    for i, ex in enumerate(exprs):  # whitespace control: {{- strips before, -}} strips after
        if ex.startswith("{{-"):
            literals[i] = literals[i].rstrip()
        if ex.endswith("-}}"):
            literals[i + 1] = literals[i + 1].lstrip()
    if literals[-1].endswith("\n"):
        literals[-1] = literals[-1][:-1]
    return literals, exprs


def _rendered_spans(prompt: str, template: str, variables: Mapping[str, Any]) -> tuple[Span, ...] | None:
    from tracker.prompts.templating import render

    split = _template_parts(template)
    if split is None:
        return None
    literals, exprs = split
    out: list[Span] = []
    try:
        for i, lit in enumerate(literals):
            if lit:
                out.append(Span(lit))
            if i < len(exprs):
                text = render(exprs[i], variables, None, "prompt", None)
                if text:
                    out.append(Span(text, True, exprs[i], _variables_of(exprs[i])))
    except TrackerError:
        return None
    return tuple(out) if "".join(s.text for s in out) == prompt else None


def _template_spans(prompt: str, template: str) -> tuple[Span, ...] | None:
    split = _template_parts(template)
    if split is None:
        return None
    literals, exprs = split
    pattern = "(.*?)".join(re.escape(lit) for lit in literals)
    m = re.fullmatch(pattern, prompt, re.S)
    if m is None:
        return None
    out: list[Span] = []
    for i, lit in enumerate(literals):
        if lit:
            out.append(Span(lit))
        if i < len(exprs) and m.group(i + 1):
            out.append(Span(m.group(i + 1), True, exprs[i], _variables_of(exprs[i])))
    return tuple(out)


@lru_cache(maxsize=1024)
def _variables_of(expression: str) -> tuple[str, ...]:
    from jinja2 import Environment, TemplateSyntaxError, meta

    try:
        return tuple(sorted(meta.find_undeclared_variables(Environment().parse(expression))))
    except TemplateSyntaxError:
        return ()


def _diff_spans(prompt: str, others: Sequence[str]) -> tuple[Span, ...]:
    tokens = re.findall(r"\S+|\s+", prompt)
    marked = [False] * len(tokens)
    for other in others:
        sm = difflib.SequenceMatcher(None, tokens, re.findall(r"\S+|\s+", other), autojunk=False)
        for tag, i1, i2, _, _ in sm.get_opcodes():
            if tag != "equal":
                for i in range(i1, i2):
                    marked[i] = not tokens[i].isspace() or marked[i]
    out: list[Span] = []
    for tok, m in zip(tokens, marked):
        if out and out[-1].marked == m:
            out[-1] = Span(out[-1].text + tok, m)
        else:
            out.append(Span(tok, m))
    return tuple(out) or (Span(""),)
