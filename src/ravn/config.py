"""The base of every config: plain dataclasses that round-trip to versioned dicts (torchao's ``AOBaseConfig``).

Contract of a config class (methods, search, fine-tuning, ...):

- a ``@dataclass`` subclass of :class:`Config`; every field documented by a ``#:`` comment right above
  it (:func:`field_docs` reads them: they are the CLI's help texts);
- fields hold plain values (bool, int, float, str, tuples, dicts of those), ``None``, or another
  :class:`Config` (composition: ``finetune: FineTuneConfig | None``, where ``None`` means the step is
  not run); ``__post_init__`` validates and raises ``ValueError`` with one line naming the field;
- ``VERSION`` goes up when a field changes meaning; :meth:`Config.from_dict` refuses dicts written by
  a newer version and passes older ones through :meth:`Config.migrate`;
- a field added after configs were stored may say ``metadata={"omit_default": True}``: ``to_dict()`` leaves
  it out while it holds its default, so a config that does not use it is stored exactly as before (the
  same file header, so the same file bytes, and the same run-folder stamp); ``from_dict`` restores it.

``to_dict()`` is JSON-able and ``type(c).from_dict(c.to_dict()) == c`` exactly, so a config stored in a
``.ravn`` file rebuilds the config that made it, and configs travel to worker processes as data.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import inspect
import json
import textwrap
import types
import typing
from typing import Any, ClassVar, TypeVar

from ravn.errors import RavnError

C = TypeVar("C", bound="Config")

#: Every config class by name, so a stored dict names the class that reads it.
CONFIG_TYPES: dict[str, type[Config]] = {}


@dataclasses.dataclass
class Config:
    """Base of all configs (see the module docstring for the contract)."""

    VERSION: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        CONFIG_TYPES[cls.__name__] = cls

    def to_dict(self) -> dict:
        """Plain JSON-able data: ``{"type": ..., "version": ..., <fields>}``; nested configs likewise."""
        out: dict[str, Any] = {"type": type(self).__name__, "version": self.VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("omit_default") and value == f.default:
                continue
            out[f.name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict) -> C:
        """The config ``data`` describes (its ``type`` must be ``cls`` or a subclass)."""
        data = dict(data)
        name = data.pop("type", cls.__name__)
        version = data.pop("version", cls.VERSION)
        target = CONFIG_TYPES.get(name)
        if target is None or not issubclass(target, cls):
            raise RavnError(f"a stored config names {name!r}, not a {cls.__name__}", "was it written by another tool?")
        if not isinstance(version, int) or version > target.VERSION:
            raise RavnError(f"{name} version {version} is newer than this ravn reads ({target.VERSION})",
                            "upgrade ravn")
        data = target.migrate(data, version)
        hints = typing.get_type_hints(target)
        names = {f.name for f in dataclasses.fields(target)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise RavnError(f"{name} has no field {', '.join(unknown)}", "was it written by another ravn version?")
        return target(**{k: _typed(v, hints[k]) for k, v in data.items()})

    @classmethod
    def migrate(cls, data: dict, version: int) -> dict:
        """Rewrite a dict written by an older ``version`` into this version's fields (none changed yet)."""
        return data

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _typed(value: Any, hint: Any) -> Any:
    """``value`` (plain data) as the field's annotated type: nested configs rebuilt, lists made tuples."""
    if value is None:
        return None
    for option in _options(hint):
        if isinstance(option, type) and issubclass(option, Config) and isinstance(value, dict):
            return option.from_dict(value)
        origin = typing.get_origin(option)
        if (option is tuple or origin is tuple) and isinstance(value, list):
            return tuple(value)
    return value


def _options(hint: Any) -> tuple:
    """The alternatives of ``X | Y | None`` (or ``hint`` alone)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(hint) if a is not type(None))
    return (hint,)


def nested_config_type(hint: Any) -> type[Config] | None:
    """The config class a field of annotation ``hint`` holds, if it holds one."""
    for option in _options(hint):
        if isinstance(option, type) and issubclass(option, Config):
            return option
    return None


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The ``#:`` comment above each field of a dataclass (base classes included), joined into one line."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            lines = textwrap.dedent(inspect.getsource(klass)).splitlines()
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
                continue
            comment: list[str] = []
            row = node.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#:"):
                comment.insert(0, lines[row].strip()[2:].strip())
                row -= 1
            if comment:
                docs[node.target.id] = " ".join(comment)
    return docs


def current_form(stamp: Any) -> Any:
    """A settings stamp as this ravn writes it (JSON data), its ``"config"`` (a :class:`Config`'s
    dict, perhaps written by an older ravn) migrated by :meth:`Config.from_dict`;
    so a stamp of an older version with the same settings equals today's. A config this version cannot read
    is left as stored (it then compares as other settings)."""
    stamp = json.loads(json.dumps(stamp))
    if isinstance(stamp, dict) and isinstance(stamp.get("config"), dict):
        with contextlib.suppress(ValueError, TypeError, KeyError, RavnError):
            stamp["config"] = json.loads(json.dumps(Config.from_dict(stamp["config"]).to_dict()))
    return stamp
