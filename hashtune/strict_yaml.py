"""YAML as hashtune reads it (config files, search spaces, `key=value` overrides).

Three departures from PyYAML's `safe_load`, so that a file means what it looks like and costs what it weighs:

* a key given twice in one mapping is an error (PyYAML keeps the last silently: a second variant named
  `w/o Q` would replace the first);
* numbers follow YAML 1.2: `1e-3`, `1.0e12` and `1E5` are floats (PyYAML's YAML 1.1 reads them as strings);
* aliases (`*name`) are refused: nested ones expand exponentially ("billion laughs": a few hundred bytes
  that take gigabytes), and no config or space needs them.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from hashtune.errors import InputError

__all__ = ["YamlError", "read_yaml"]

_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class YamlError(InputError):
    """Text that is not YAML hashtune accepts; the message is one line with the line number."""


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YamlError(
                f"alias *{event.anchor} on line {event.start_mark.line + 1}: aliases are not accepted; write the value "
                "out"
            )
        return super().compose_node(parent, index)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise YamlError(
                f"key {key!r} appears twice in one mapping (lines {seen[key]} and {key_node.start_mark.line + 1})"
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(text: str) -> Any:
    """Parse `text` strictly (see the module docstring); raises `YamlError` in one line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        raise YamlError(f"not valid YAML: {' '.join(str(error).split())[:300]}") from None
