"""Read an experiment file strictly: plain YAML mappings, lists and scalars, each key once.

An experiment needs none of YAML's heavier features, and each of them hides a mistake or a risk: a key
written twice silently keeps its last value (`seed: 1` ... `seed: 2`), an explicit tag (`!!float`,
`!custom`) changes how a value is read, and aliases can expand a small file into a huge document. So a
duplicate key, a tag, a merge key (`<<`) or aliases that expand beyond `MAX_EXPANDED_NODES` are
configuration errors that name the key and the lines; small anchors (one training phase reused for
another) stay allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dsetool.validate import ConfigError

MAX_FILE_BYTES = 1_000_000
MAX_EXPANDED_NODES = 20_000   # an experiment file has a few hundred; sweeps of long lists stay far below


class _TagRecordingLoader(yaml.SafeLoader):
    """A safe loader that remembers which nodes carried an explicit tag (composed nodes lose that)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.tagged: dict[int, str] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        tag = getattr(event, "tag", None)
        node: yaml.Node | None = super().compose_node(parent, index)
        if node is not None and tag not in (None, "!") and not isinstance(event, yaml.AliasEvent):
            self.tagged[id(node)] = tag
        return node


def read_yaml(source: str) -> dict[str, Any]:
    """Load an experiment file's top-level mapping; raise ConfigError on anything but plain, small YAML."""
    path = Path(source)
    if not path.is_file():
        raise ConfigError(source, "", "no such file" if not path.exists() else "not a regular file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(source, "", f"file larger than {MAX_FILE_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(source, "", "not a UTF-8 text file") from None
    node, tagged = _compose(text, source)
    if node is not None:
        _check(node, tagged, source, "")
        if _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            raise ConfigError(source, "", f"YAML aliases expand to more than {MAX_EXPANDED_NODES:,} values "
                                          "(an alias bomb?); write the values out")
    data = yaml.safe_load(text) if node is not None else None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(source, "", f"expected a mapping of settings at the top level, got {got}")
    return data


def _compose(text: str, source: str) -> tuple[yaml.Node | None, dict[int, str]]:
    loader = _TagRecordingLoader(text)
    try:
        return loader.get_single_node(), loader.tagged
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"not valid YAML ({yaml_reason(exc)})") from None
    finally:
        loader.dispose()


def yaml_reason(exc: yaml.YAMLError) -> str:
    """Return a YAML error's problem and line in a few words."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return f"{problem} at line {mark.line + 1}" if mark is not None else str(problem)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _check(node: yaml.Node, tagged: dict[int, str], source: str, key: str, seen: set[int] | None = None) -> None:
    """Reject explicit tags, merge keys and duplicate keys anywhere under `node` (`key`: its dotted path)."""
    seen = set() if seen is None else seen
    if id(node) in seen:   # an alias: its anchor was checked where it was defined
        return
    seen.add(id(node))
    if id(node) in tagged:
        raise ConfigError(source, key, f"line {_line(node)}: YAML tag {tagged[id(node)]} is not allowed in an "
                                       "experiment file (write the plain value)")
    if isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            _check(child, tagged, source, f"{key}[{index}]" if key else f"[{index}]", seen)
    elif isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value in node.value:
            name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.id}>"
            dotted = f"{key}.{name}" if key else name
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError(source, key or "<top level>", f"line {_line(key_node)}: YAML merge keys (<<) are "
                                                                "not allowed in an experiment file")
            if name in first:
                raise ConfigError(source, dotted, f"set twice, at line {first[name]} and line {_line(key_node)} "
                                                  "(YAML would silently keep the last; keep one)")
            first[name] = _line(key_node)
            _check(key_node, tagged, source, dotted, seen)
            _check(value, tagged, source, dotted, seen)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Count nodes as if every alias were expanded, memoized so shared subtrees cost one visit."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # guards recursive aliases
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = min(total, MAX_EXPANDED_NODES + 1)
    return memo[id(node)]
