"""Plain-text tables for the terminal: one renderer for every command that prints rows."""

from __future__ import annotations

import shutil
from typing import Sequence


def short(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, max_width: int | None = None,
          fit_last: bool = False, rule: bool = False) -> str:
    """Left-aligned columns separated by two spaces.

    ``max_width`` cuts every column but the last; ``fit_last`` cuts the last column to what the terminal
    has left (at least 20 characters); ``rule`` draws dashes under the header.
    """
    last = len(header) - 1
    cells = [[c if i == last or max_width is None else short(c, max_width) for i, c in enumerate(row)]
             for row in [list(header), *map(list, rows)]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    if fit_last:
        fixed = sum(widths[:-1]) + 2 * last
        widths[-1] = max(20, min(widths[-1], shutil.get_terminal_size((160, 20)).columns - fixed))
        cells = [[*r[:-1], short(r[-1], widths[-1])] for r in cells]
    if rule:
        cells.insert(1, ["-" * w for w in widths])
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in cells)


class NoBar:
    """A progress bar that shows nothing (``tqdm``'s interface, as far as sweeps and scoring use it)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "NoBar":
        return self

    def __exit__(self, *exc) -> None:
        pass
