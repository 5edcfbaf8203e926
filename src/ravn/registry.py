"""Registries: name -> entry, the one mechanism behind every stage's plug-in point.

``AGENTS = Registry("agent")``; ``@AGENTS.register("ppo")`` adds an entry; ``AGENTS.get_entry("ppo")``
returns it, and an unknown name is a one-line :class:`RavnError` listing the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ravn.errors import RavnError

T = TypeVar("T")


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(entry: T) -> T:
            self[name] = entry
            return entry

        return wrap

    def get_entry(self, name: str) -> Any:
        if name not in self:
            raise RavnError(f"unknown {self.kind} '{name}'", f"use one of {', '.join(self)}")
        return self[name]
