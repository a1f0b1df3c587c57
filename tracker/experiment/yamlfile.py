"""Load YAML keeping the line of every mapping key, so errors can say where a field is."""

from __future__ import annotations

from typing import Any

import yaml

from tracker import limits
from tracker.errors import SpecError


class LinedYaml:
    """A parsed document plus ``line(path)``: the 1-based line where the value at ``path`` starts."""

    def __init__(self, data: Any, lines: dict[tuple, int]):
        self.data = data
        self._lines = lines

    def line(self, *path: Any) -> int | None:
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None


def load(text: str, path: str) -> LinedYaml:
    try:
        _check_bounds(text, path)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            lines: dict[tuple, int] = {}
            if node is not None:
                _walk(node, (), lines, path)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        problem = " ".join(str(err.problem or err.context or "malformed YAML").split())
        raise SpecError(path, None, f"malformed YAML: {problem}", line) from None
    except yaml.YAMLError as err:
        raise SpecError(path, None, f"malformed YAML: {' '.join(str(err).split())}") from None
    return LinedYaml(_fix_surrogates(data, path, ()), lines)


def _check_bounds(text: str, path: str) -> None:
    """Refuse, from the event stream (no recursion, nothing built), a document nested deeper than
    ``YAML_MAX_DEPTH`` or whose aliases expand to more than ``YAML_MAX_NODES`` values ("billion laughs")."""
    if len(text) > limits.YAML_MAX_BYTES:
        raise SpecError(path, None, f"is {len(text)} characters long; an experiment file may hold at most "
                                    f"{limits.YAML_MAX_BYTES}")
    sizes: dict[str, int] = {}  # anchor -> values under it
    stack: list[list] = [[None, 0]]  # per open collection: [anchor, values so far]
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([event.anchor, 1])
            if len(stack) - 1 > limits.YAML_MAX_DEPTH:
                raise SpecError(path, None, f"nests mappings and lists more than {limits.YAML_MAX_DEPTH} deep",
                                event.start_mark.line + 1)
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, n = stack.pop()
            if anchor is not None:
                sizes[anchor] = n
        elif isinstance(event, yaml.ScalarEvent):
            n = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            n = sizes.get(event.anchor, 1)
        else:
            continue
        stack[-1][1] += n
        if stack[-1][1] > limits.YAML_MAX_NODES:
            raise SpecError(path, None, f"expands to more than {limits.YAML_MAX_NODES} values (through YAML "
                                        "aliases?); write the values out or shorten the file",
                            event.start_mark.line + 1)


def _fix_surrogates(value: Any, path: str, at: tuple) -> Any:
    """YAML's "\\ud83d\\udc09" escapes arrive as two surrogate halves: join them into the real character."""
    if isinstance(value, str):
        if not any("\ud800" <= c <= "\udfff" for c in value):
            return value
        try:
            return value.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeDecodeError:
            field = ".".join(str(p) for p in at) or None
            raise SpecError(path, field, f"holds a lone UTF-16 surrogate escape: {value.encode('unicode_escape').decode()!r}") from None
    if isinstance(value, dict):
        return {_fix_surrogates(k, path, at): _fix_surrogates(v, path, (*at, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_fix_surrogates(v, path, (*at, i)) for i, v in enumerate(value)]
    return value


def _walk(node: yaml.Node, at: tuple, lines: dict[tuple, int], path: str) -> None:
    lines[at] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            if key in seen:
                field = ".".join(str(p) for p in (*at, key))
                raise SpecError(path, field, f"duplicate key {key!r}", key_node.start_mark.line + 1)
            seen.add(key)
            _walk(value_node, (*at, key), lines, path)
            lines[(*at, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*at, i), lines, path)
