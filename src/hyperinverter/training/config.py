"""Typed training configs read from YAML, with ``key=value`` command-line overrides.

Configs live at the edge: the trainers read them and pass explicit arguments to the models.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..config_base import decode, encode
from ..errors import ConfigError
from ..io.files import refuse_special_file

__all__ = ["ConfigError", "apply_overrides", "load_config", "to_yaml"]

T = TypeVar("T")


class _ConfigLoader(yaml.SafeLoader):
    """YAML as configs want it: a key given twice is an error (the last one won, without a word), and ``1:30`` is
    a string, not YAML 1.1's base-60 number (``steps=1:0`` trained 60 steps)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        twice = sorted({str(k) for k in keys if keys.count(k) > 1})
        if twice:
            raise yaml.constructor.ConstructorError(None, None, f"keys given more than once: {twice}",
                                                    node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_document(self, node):
        _check_expansion(node)
        return super().construct_document(node)


# How many values a config may hold once its aliases are expanded: a real one holds a few hundred. Aliases share
# what they name, so ten lines of them ("billion laughs") load at once as 10**9 values, which every later walk
# over the config (paths' ~, type checks, error messages) expanded for an hour; an alias inside its own anchor
# was a RecursionError.
MAX_CONFIG_VALUES = 100_000


def _check_expansion(root: yaml.Node) -> None:
    """A ``ConstructorError`` where the document refers to itself through an alias, or expands through its aliases
    to more than ``MAX_CONFIG_VALUES`` values (each node is counted once, so this takes the time of the text)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise yaml.constructor.ConstructorError(None, None, "an alias refers to the value it is in",
                                                    node.start_mark)
        open_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(key) + size(value) for key, value in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(item) for item in node.value)
        else:
            total = 1
        open_nodes.discard(id(node))
        if total > MAX_CONFIG_VALUES:
            raise yaml.constructor.ConstructorError(None, None, f"its aliases expand it to more than "
                                                    f"{MAX_CONFIG_VALUES:,} values", node.start_mark)
        sizes[id(node)] = total
        return total

    size(root)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if not (tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") and ":" in regexp.pattern)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _tag, _pattern, _first in (
        ("tag:yaml.org,2002:int", r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$",
         "-+0123456789"),
        ("tag:yaml.org,2002:float", (r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?"
                                      r"|\.[0-9_]+(?:[eE][-+][0-9]+)?"
                                      r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), "-+0123456789."),
):  # YAML 1.1's int and float without their base-60 forms
    _ConfigLoader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_ConfigLoader)  # (a SafeLoader: it never builds an object)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["lr=0.002", "data.path=/x"]`` -> nested updates; values are parsed as YAML scalars."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}", "needs a key before '=' (keys of nested configs: trunk.units)")
        try:
            value = _load_yaml(raw)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"override {item!r}", f"its value is not a YAML scalar, list or mapping ({problem})"
                              ) from None
        except RecursionError:  # (as a config file's: it was an internal error)
            shown = item if len(item) <= 40 else f"{item[:40]}..."
            raise ConfigError(f"override {shown!r}", "nests too deeply to be a config value") from None
        node = data
        for depth, part in enumerate(parts[:-1], start=1):
            inner = node.get(part)
            if inner is not None and not isinstance(inner, dict):
                raise ConfigError(f"override {item!r}", f"{'.'.join(parts[:depth])} holds {inner!r:.40}, not a "
                                  "config of its own keys")
            node[part] = dict(inner or {})
            node = node[part]
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """The training config ``cls`` from a YAML file and ``key=value`` overrides; errors name the file and key."""
    data: Any = {}
    if path is not None:
        refuse_special_file(path, ConfigError, "a config file")
        try:
            data = _load_yaml(Path(path).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(path, f"is not valid YAML ({_yaml_problem(e)})") from None
        except FileNotFoundError:
            raise ConfigError(path, "no such config file") from None
        except IsADirectoryError:
            raise ConfigError(path, "is a folder, not a config file") from None
        except UnicodeDecodeError as e:
            raise ConfigError(path, f"is not a text (UTF-8) file: byte {e.start} is {e.object[e.start]:#04x}") from None
        except RecursionError:
            raise ConfigError(path, "nests too deeply to be a config") from None
        if not isinstance(data, dict):
            raise ConfigError(path, f"must hold a mapping of config keys, got {type(data).__name__}")
    overrides = overrides or []
    merged = _home_expanded(apply_overrides(data, overrides))
    try:
        return decode(cls, merged)
    except ConfigError as e:
        if path is None:
            raise
        # A value given on the command line is named with the file, so that nobody looks for it in the file.
        given = [o for o in overrides if _blames(o.split("=", 1)[0].strip(), str(e))]
        raise ConfigError(f"{path} with {' '.join(given)}" if given else path, str(e)) from None


def _home_expanded(value: Any) -> Any:
    """Paths as a shell would take them: ``~/runs`` is in the home folder (a folder named ``~`` was made)."""
    if isinstance(value, dict):
        return {k: _home_expanded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_home_expanded(v) for v in value]
    return os.path.expanduser(value) if isinstance(value, str) and (value == "~" or value.startswith("~/")) else value


def _blames(key: str, message: str) -> bool:
    """Whether a config error's ``message`` is about the override ``key`` (``generator.resolution`` is named as
    ``generator: resolution``) or the section it is in; the list of valid keys after the subject is not read."""
    subject = message.split("; valid:")[0]
    parts = key.split(".")
    path = r"(?:\.|: (?:\w+: )*)".join(map(re.escape, parts))
    if re.search(rf"(?<![\w.]){path}(?!\w)", subject):
        return True
    return len(parts) > 1 and re.match(rf"(?:\w+: )*{re.escape(parts[0])}: ", subject) is not None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (PyYAML's message draws a caret over the line)."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(encode(config), sort_keys=False)
