"""Which points of the axes' product an experiment runs: its seeds (the seed axis), zip groups (axes that
advance together) and exclusions. Sections 5 and 8 of ``tracker.experiment.parse.parse``; pure."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from tracker import limits
from tracker.experiment.settings import SETTING_KEYS, suggest

if TYPE_CHECKING:
    from tracker.experiment.model import Axis
    from tracker.experiment.parse import _Parser

MAX_SEED = 2**63 - 1


def _seed(P: "_Parser", v: Any, field: str, *at: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        P.err(field, f"must be an integer but is {v!r}", *at)
    if not 0 <= v <= MAX_SEED:
        P.err(field, f"must be between 0 and 2**63-1 but is {v}", *at)
    return v


def seeds(P: "_Parser", raw: Any) -> tuple[list[int], str | None]:
    """``seeds:`` a list, a range ``A-B``, ``{start, count}`` or ``{from: KEY}`` -> (seeds, the run key or None)."""
    if isinstance(raw, dict):
        if set(raw) == {"from"}:
            if isinstance(raw["from"], int) and not isinstance(raw["from"], bool):
                raw = {"from": str(raw["from"])}  # an all-digit key prefix that YAML read as a number
            if not isinstance(raw["from"], str) or not raw["from"].strip():
                P.err("seeds.from", f"must be a run key but is {raw['from']!r}", "seeds", "from")
            return [0], raw["from"].strip()
        if set(raw) - {"start", "count"} or "count" not in raw:
            P.err("seeds", f"must be a list, a range 'A-B', {{start, count}} or {{from: KEY}} but is {raw!r}", "seeds")
        start = _seed(P, raw.get("start", 0), "seeds.start", "seeds", "start")
        count = raw["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            P.err("seeds.count", f"must be a positive integer but is {count!r}", "seeds", "count")
        if count > limits.MAX_SEEDS:
            P.err("seeds.count", f"asks for {count} seeds; at most {limits.MAX_SEEDS}", "seeds", "count")
        _seed(P, start + count - 1, "seeds", "seeds")
        return list(range(start, start + count)), None
    if isinstance(raw, str):
        m = re.match(r"^\s*(\d+)\s*-\s*(\d+)\s*$", raw)
        if not m:
            P.err("seeds", f"must be a list, a range 'A-B', {{start, count}} or {{from: KEY}} but is {raw!r}", "seeds")
        a, b = int(m.group(1)), int(m.group(2))
        _seed(P, a, "seeds", "seeds")
        _seed(P, b, "seeds", "seeds")
        if b < a:
            P.err("seeds", f"range {raw!r} ends before it starts", "seeds")
        if b - a >= limits.MAX_SEEDS:
            P.err("seeds", f"range {raw!r} holds {b - a + 1} seeds; at most {limits.MAX_SEEDS}", "seeds")
        return list(range(a, b + 1)), None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        P.err("seeds", f"must be a non-empty list, a range 'A-B', {{start, count}} or {{from: KEY}} but is {raw!r}", "seeds")
    out, seen = [], set()
    for i, v in enumerate(raw):
        s = _seed(P, v, f"seeds[{i}]", "seeds", i)
        if s in seen:
            P.err(f"seeds[{i}]", f"seed {s} is listed twice", "seeds", i)
        seen.add(s)
        out.append(s)
    return out, None


def zip_groups(P: "_Parser", raw: Any, axes: tuple["Axis", ...]) -> tuple[tuple[str, ...], ...]:
    """``zip:`` groups of equally long axes that advance together instead of forming a product."""
    if raw is None:
        return ()
    by_name = {a.name: a for a in axes}
    if not isinstance(raw, list) or not all(isinstance(g, list) for g in raw):
        P.err("zip", f"must be a list of lists of axis names but is {raw!r}", "zip")
    groups, used = [], set()
    for i, g in enumerate(raw):
        f = f"zip[{i}]"
        if len(g) < 2:
            P.err(f, f"a zip group pairs two or more axes but has {len(g)}", "zip", i)
        for n in g:
            if n not in by_name:
                P.err(f, f"unknown axis {n!r}; known axes: {', '.join(by_name)}", "zip", i)
            if n in used:
                P.err(f, f"axis {n!r} is in more than one zip group", "zip", i)
            used.add(n)
        sizes = {n: len(by_name[n].values) for n in g}
        if len(set(sizes.values())) > 1:
            desc = ", ".join(f"{n} has {k}" for n, k in sizes.items())
            P.err(f, f"zipped axes must have equal lengths: {desc}", "zip", i)
        groups.append(tuple(g))
    return tuple(groups)


def exclusions(P: "_Parser", raw: Any, names: list[str]) -> tuple[tuple[tuple[str, Any], ...], ...]:
    """``exclude:`` rules (axis or setting -> value); a run matching every item of a rule is left out."""
    if raw is None:
        return ()
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        P.err("exclude", f"must be a list of mappings axis -> value but is {raw!r}", "exclude")
    out = []
    known = sorted(set(names) | set(SETTING_KEYS))
    for i, rule in enumerate(raw):
        f = f"exclude[{i}]"
        if not isinstance(rule, dict) or not rule:
            P.err(f, f"must be a mapping axis -> value but is {rule!r}", "exclude", i)
        items = []
        for k, v in rule.items():
            if k not in names and k not in SETTING_KEYS:
                P.err(f"{f}.{k}", f"unknown axis or setting {str(k)!r}{suggest(k, known)}; known: {', '.join(names)}", "exclude", i)
            if k in SETTING_KEYS:
                v = P.setting(k, v, f"{f}.{k}", "exclude", i)
            items.append((k, v))
        out.append(tuple(items))
    return tuple(out)
