"""Prompt sets as an axis source: ``prompts: {file: PartiPrompts.tsv, column: Prompt, label: Category,
where: {Challenge: Basic}, sample: 50, seed: 1}``.

Each prompt of the file becomes a value of the axis ``prompt`` (its label the text, shortened to
``LABEL_CHARS``; the template the text itself, Jinja markup in it taken literally). With ``label:`` each prompt's
category (that column's value) becomes its label on the axis ``category``: a *label axis* (kind ``"label"``), not a
factor of the product; the plan gives every run of a prompt its prompt's category, so ``--where category=X``,
grids per category and ``tracker effects --by category`` work on stored runs. Files: ``.tsv``, ``.csv``,
``.jsonl`` (one object per line) or plain lines (``.txt`` or any other name: one prompt a line, ``#`` comments);
the path is relative to the experiment file; only that file is read. Bounded by ``tracker.limits``
(``PROMPT_SET_MAX_BYTES``, ``PROMPT_SET_MAX_ROWS``, ``MAX_PROMPT_CHARS``). Pure: no torch.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any, Callable

from tracker import limits
from tracker.experiment.model import Axis, AxisValue

FIELDS = ("file", "column", "label", "where", "sample", "seed")
LABEL_AXIS = "category"
LABEL_KIND = "label"  # an axis whose value follows from the prompt's (plan.expand sets it; never a product factor)
LABEL_CHARS = 60
Err = Callable[[str, str], None]  # (field, message) -> raises SpecError


def read(raw: Any, base_dir: Path | None, err: Err) -> list[Axis]:
    """The ``prompt`` axis and, with ``label:``, the ``category`` label axis."""
    if isinstance(raw, str):
        raw = {"file": raw}
    if not isinstance(raw, dict):
        err("prompts", f"must be a file name or a mapping with file, column, label, where, sample, seed but is {raw!r}")
    for key in raw:
        if key not in FIELDS:
            err(f"prompts.{key}", f"unknown field {str(key)!r}; known: {', '.join(FIELDS)}")
    name = raw.get("file")
    if not isinstance(name, str) or not name.strip():
        err("prompts.file", f"must name a prompt file (.tsv, .csv, .jsonl or plain lines) but is {name!r}")
    path = Path(name).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    rows, columns = _rows(path, name, err)
    table = path.suffix.lower() in (".tsv", ".csv", ".jsonl")
    column, label = raw.get("column"), raw.get("label")
    for key, value in (("column", column), ("label", label)):
        if value is not None and not table:
            err(f"prompts.{key}", f"{name} is plain lines (one prompt a line); {key} needs a .tsv, .csv or .jsonl file")
        if value is not None and value not in columns:
            err(f"prompts.{key}", f"{name} has no column {value!r}; its columns: {', '.join(columns)}")
    if table and column is None:
        column = next((c for c in columns if c.lower() == "prompt"), None)
        if column is None:
            err("prompts.column", f"{name} has no column 'prompt'; name the prompt column (its columns: "
                                  f"{', '.join(columns)})")
    rows = _where(rows, raw.get("where"), columns, name, table, err)
    picked = _sample(rows, raw.get("sample"), raw.get("seed", 0), err)
    return _axes(picked, column or "", label, name, err)


def _rows(path: Path, name: str, err: Err) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
    """(row number, {column: text}) for each row (plain lines: column ""), and the columns."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            err("prompts.file", f"{name} is not a file (looked at {path})")
        if size > limits.PROMPT_SET_MAX_BYTES:
            err("prompts.file", f"{name} is {size} bytes; a prompt file may hold at most {limits.PROMPT_SET_MAX_BYTES}")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        err("prompts.file", f"no such file {name} (looked at {path})")
    except (OSError, UnicodeDecodeError) as e:
        err("prompts.file", f"{name} cannot be read: {e}")
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict[str, str]]] = []
    columns: list[str] = []
    if suffix in (".tsv", ".csv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        columns = [c for c in (reader.fieldnames or []) if c]
        if not columns:
            err("prompts.file", f"{name} has no header row")
        try:
            for row in reader:
                rows.append((reader.line_num, {k: (v or "") for k, v in row.items() if isinstance(k, str)}))
                _count(rows, name, err)
        except csv.Error as e:
            err("prompts.file", f"{name} line {reader.line_num}: {e}")
    elif suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                err("prompts.file", f"{name} line {n}: not JSON ({e})")
            if not isinstance(obj, dict):
                err("prompts.file", f"{name} line {n}: expected a JSON object but is {line[:60]!r}")
            rows.append((n, {str(k): "" if v is None else str(v) for k, v in obj.items()}))
            _count(rows, name, err)
            columns += [k for k in rows[-1][1] if k not in columns]
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                rows.append((n, {"": line.strip()}))
                _count(rows, name, err)
    return rows, columns


def _count(rows: list, name: str, err: Err) -> None:
    if len(rows) > limits.PROMPT_SET_MAX_ROWS:
        err("prompts.file", f"{name} has more than {limits.PROMPT_SET_MAX_ROWS} rows (tracker.limits.PROMPT_SET_MAX_ROWS)")


def _where(rows, where: Any, columns: list[str], name: str, table: bool, err: Err):
    if where is None:
        return rows
    if not isinstance(where, dict) or not where:
        err("prompts.where", f"must be a mapping column -> value (or list of values) but is {where!r}")
    if not table:
        err("prompts.where", f"{name} is plain lines; where needs a .tsv, .csv or .jsonl file")
    wanted = {}
    for col, want in where.items():
        if col not in columns:
            err(f"prompts.where.{col}", f"{name} has no column {col!r}; its columns: {', '.join(columns)}")
        values = want if isinstance(want, list) else [want]
        if not values or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
            err(f"prompts.where.{col}", f"must be a text value or a list of them but is {want!r}")
        wanted[col] = {str(v) for v in values}
    out = [(n, row) for n, row in rows if all(row.get(c, "") in vs for c, vs in wanted.items())]
    if not out:
        err("prompts.where", f"no row of {name} matches {where!r}")
    return out


def _sample(rows, sample: Any, seed: Any, err: Err):
    for key, v in (("sample", sample), ("seed", seed)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "sample" else 0)):
            err(f"prompts.{key}", f"must be a {'positive' if key == 'sample' else 'non-negative'} integer but is {v!r}")
    if sample is None or sample >= len(rows):
        return rows
    chosen = sorted(random.Random(seed).sample(range(len(rows)), sample))  # file order kept
    return [rows[i] for i in chosen]


def _axes(rows, column: str, label: str | None, name: str, err: Err) -> list[Axis]:
    prompts: list[AxisValue] = []
    groups: dict[str, list[str]] = {}
    texts: set[str] = set()
    labels: set[str] = set()
    for n, row in rows:
        text = row.get(column, "").strip()
        if not text or text in texts:
            continue  # an empty cell has no prompt; a repeated prompt is one run per seed already
        if len(text) > limits.MAX_PROMPT_CHARS:
            err("prompts.file", f"{name} line {n}: the prompt is {len(text)} characters long; at most "
                                f"{limits.MAX_PROMPT_CHARS} (tracker.limits.MAX_PROMPT_CHARS)")
        texts.add(text)
        short = text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1].rstrip() + "…"
        if short in labels:
            short = f"{short} (line {n})"
        labels.add(short)
        literal = f"{{% raw %}}{text}{{% endraw %}}" if any(m in text for m in ("{{", "{%", "{#")) else text
        prompts.append(AxisValue(short, value=literal, template=literal))
        if label is not None:
            groups.setdefault(row.get(label, "").strip() or "(none)", []).append(short)
    if not prompts:
        err("prompts.file", f"{name} holds no prompts" + (f" in column {column!r}" if column else ""))
    axes = [Axis("prompt", "prompt", tuple(prompts))]
    if label is not None:
        axes.append(Axis(LABEL_AXIS, LABEL_KIND, tuple(AxisValue(cat, value=tuple(members))
                                                        for cat, members in groups.items())))
    return axes


def label_of(axis: Axis, prompt_label: str) -> AxisValue | None:
    """The value of a label axis that the prompt ``prompt_label`` belongs to."""
    return next((v for v in axis.values if prompt_label in v.value), None)
