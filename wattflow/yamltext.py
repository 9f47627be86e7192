"""YAML as wattflow reads it: safe, with a duplicate key an error, and every error naming
the file, line and column (a config or spec is a user's text, not a program's output)."""

from __future__ import annotations

from typing import Any

import yaml


class YamlError(ValueError):
    """Invalid YAML; the message names the file, line and column."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last one
    silently, so one of two settings would vanish without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {key!r} is given twice (first on line {first})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def loads(text: str, where: str) -> Any:
    """Parse `text` (from `where`, a file name for messages)."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{where}, line {mark.line + 1}, column {mark.column + 1}" if mark else where
        problem = getattr(exc, "problem", None) or str(exc)
        hint = " (YAML does not allow tabs for indentation)" if "\t" in text else ""
        raise YamlError(f"{at}: not valid YAML: {problem}{hint}") from None
