"""Which axis runs down, which across, and which split the runs into one grid per combination."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from tracker.errors import UsageError
from tracker.report.source import AxisInfo, Entry, Source

PROMPT_AXIS_KINDS = ("prompt", "var", "bundle")


# ---------------------------------------------------------------------------------------------
# layout: which axis runs down, which across, which split the grids


@dataclass(frozen=True)
class Layout:
    rows: str | None  # None: a single row
    cols: str | None  # None: a single column
    groups: tuple[str, ...]  # the other axes with more than one label: one grid per combination


def varying(axes: Iterable[AxisInfo]) -> list[AxisInfo]:
    return [a for a in axes if len(a.labels) > 1]


def check_axis(source: Source, name: str | None, option: str) -> str | None:
    if name is not None and name not in source.axis_names:
        raise UsageError(f"unknown axis {name!r} in {option}; known axes: {', '.join(source.axis_names)}")
    return name


def choose_layout(source: Source, rows: str | None = None, cols: str | None = None,
                  fixed: Iterable[str] = ()) -> Layout:
    """Rows and columns from the options, else the file's ``grid:``, else the prompt axis with the most
    labels down and the seeds across. ``fixed`` axes (pinned by --where) never split the grids."""
    check_axis(source, rows, "--rows")
    check_axis(source, cols, "--cols")
    explicit_rows = rows is not None
    g_rows, g_cols = source.experiment.grid if source.experiment and source.experiment.grid else (None, None)
    rows = rows or (g_rows if g_rows in source.axis_names else None)
    cols = cols or (g_cols if g_cols in source.axis_names else None)
    free = [a for a in source.axes if a.name not in set(fixed)]
    rows = rows or _default_rows(free, exclude={cols})
    cols = cols or _default_cols(free, exclude={rows})
    if cols is None and rows == "seed" and not explicit_rows:  # only the seeds vary: lay them out across
        rows, cols = None, "seed"
    if rows is not None and rows == cols:
        raise UsageError(f"--rows and --cols are both {rows!r}; choose two different axes "
                         f"(known axes: {', '.join(source.axis_names)})")
    groups = tuple(a.name for a in varying(free) if a.name not in (rows, cols))
    return Layout(rows, cols, groups)


def _most(axes: Iterable[AxisInfo]) -> str | None:
    best = max(axes, key=lambda a: len(a.labels), default=None)
    return best.name if best is not None else None


def _default_rows(axes: Sequence[AxisInfo], exclude: set) -> str | None:
    pool = [a for a in varying(axes) if a.name not in exclude]
    return (_most(a for a in pool if a.kind in PROMPT_AXIS_KINDS)
            or _most(a for a in pool if a.name != "seed")
            or _most(pool))


def _default_cols(axes: Sequence[AxisInfo], exclude: set) -> str | None:
    pool = [a for a in varying(axes) if a.name not in exclude]
    if any(a.name == "seed" for a in pool):
        return "seed"
    return _most(pool)


def parse_where(source: Source, items: Iterable[str]) -> dict[str, str]:
    """``axis=label`` pairs; an unknown axis or label is a UsageError naming the known ones."""
    from tracker.experiment.plan import parse_where as parse

    return parse(items, {a.name: a.labels for a in source.axes})


def select(source: Source, where: Mapping[str, str]) -> list[Entry]:
    return [e for e in source.entries if all(e.label(k) == v for k, v in where.items())]


@dataclass(frozen=True, eq=False)
class Section:
    """The runs of one grid: the values of the grouping axes, and the row and column labels present."""

    combo: tuple[tuple[str, str], ...]
    row_labels: tuple[str, ...]
    col_labels: tuple[str, ...]
    cells: Mapping[tuple[str, str], Entry]

    @property
    def title(self) -> str:
        return " · ".join(f"{k}: {v}" for k, v in self.combo)


def sections(source: Source, layout: Layout, entries: Sequence[Entry]) -> list[Section]:
    """Split the runs into one section per combination of the grouping axes (in axis-label order)."""
    by_combo: dict[tuple, list[Entry]] = {}
    for e in entries:
        by_combo.setdefault(tuple((g, e.label(g)) for g in layout.groups), []).append(e)
    order = {a.name: a.labels for a in source.axes}
    combos = sorted(by_combo, key=lambda c: tuple(_index(order.get(k, ()), v) for k, v in c))
    return [_section(source, layout, c, by_combo[c]) for c in combos]


def _index(labels: Sequence[str], label: str) -> int:
    return labels.index(label) if label in labels else len(labels)


def _section(source: Source, layout: Layout, combo, entries: Sequence[Entry]) -> Section:
    def ordered(axis: str | None) -> tuple[str, ...]:
        present = {e.label(axis) for e in entries}
        labels = source.axis(axis).labels if axis else ("",)
        return tuple(lab for lab in labels if lab in present)

    cells: dict[tuple[str, str], Entry] = {}
    for e in entries:
        cells.setdefault((e.label(layout.rows), e.label(layout.cols)), e)
    return Section(combo, ordered(layout.rows), ordered(layout.cols), cells)
