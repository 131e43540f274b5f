"""Read an experiment file strictly: plain YAML mappings, lists and scalars, each key once.

An experiment needs none of YAML's heavier features, and each of them hides a mistake or a risk: a key
written twice silently keeps its last value (`seed: 1` ... `seed: 2`), an explicit tag (`!!float`,
`!custom`) changes how a value is read, and aliases can expand a small file into a huge document. So a
duplicate key, a tag, a merge key (`<<`) or aliases that expand beyond `MAX_EXPANDED_NODES` are
configuration errors that name the key and the lines; small anchors (one training phase reused for
another) stay allowed. `--set` values are held to the same rules.
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
    data = parse(text, source, "")
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(source, "", f"expected a mapping of settings at the top level, got {got}")
    return data


def parse(text: str, source: str, key: str) -> Any:
    """Return the value of a YAML document held to the rules above (`key`: where it goes, for messages:
    an `--set` value is checked like a file)."""
    node, tagged = _compose(text, source, key)
    if node is None:
        return None
    _check(node, tagged, source, key)
    if _expanded_size(node, {}) > MAX_EXPANDED_NODES and _expanded_size(node, {}) > _distinct_nodes(node):
        raise ConfigError(source, key, f"YAML aliases expand to more than {MAX_EXPANDED_NODES:,} values "
                                       "(an alias bomb?); write the values out")
    try:
        return _constructor().construct_document(node)
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        raise ConfigError(source, key, f"not a plain YAML value ({_short(exc)})") from None


def _constructor() -> yaml.SafeLoader:
    return yaml.SafeLoader("")


def _short(exc: Exception) -> str:
    if isinstance(exc, yaml.YAMLError):
        return yaml_reason(exc)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _compose(text: str, source: str, key: str) -> tuple[yaml.Node | None, dict[int, str]]:
    loader = _TagRecordingLoader(text)
    try:
        return loader.get_single_node(), loader.tagged
    except yaml.YAMLError as exc:
        raise ConfigError(source, key, f"not valid YAML ({yaml_reason(exc)})") from None
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
    """Reject explicit tags, merge keys and duplicate keys anywhere under `node` (`key`: its dotted path).
    Keys are compared as YAML loads them (`1` and `1.0`, `null` and `~` are one key), not as written."""
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
        first: dict[Any, int] = {}
        for key_node, value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError(source, key or "<top level>", f"line {_line(key_node)}: YAML merge keys (<<) are "
                                                                "not allowed in an experiment file")
            _check(key_node, tagged, source, key, seen)
            name = _key_value(key_node, source, key)
            dotted = f"{key}.{name}" if key else str(name)
            if name in first:
                raise ConfigError(source, dotted, f"set twice, at line {first[name]} and line {_line(key_node)} "
                                                  "(YAML would silently keep the last; keep one)")
            first[name] = _line(key_node)
            _check(value, tagged, source, dotted, seen)


def _key_value(node: yaml.Node, source: str, parent: str) -> Any:
    """Return a mapping key as YAML loads it; a key that is not a plain scalar is refused."""
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(source, parent or "<top level>", f"line {_line(node)}: a key must be a plain name, "
                                                           "not a list or a mapping")
    try:
        return _constructor().construct_object(node)
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(source, parent or "<top level>", f"line {_line(node)}: key {node.value!r} is not a "
                                                           f"plain value ({_short(exc)})") from None


def _distinct_nodes(node: yaml.Node, seen: set[int] | None = None) -> int:
    """Count the nodes as written (an alias's target once)."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return 0
    seen.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    return 1 + sum(_distinct_nodes(child, seen) for child in children)


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
