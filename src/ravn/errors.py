"""One exception type for every problem a user can fix.

The command line prints a :class:`RavnError` as a single line (``error: <what> (<fix>)``) and exits
with a non-zero status; it never shows a traceback for them.
"""

from __future__ import annotations


def few(names: list[str], limit: int = 5) -> str:
    """The first ``limit`` of ``names`` for a one-line message, and how many more there are."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


class RavnError(Exception):
    """A problem with the user's input, stated with what to do about it; ``str()`` is one line.

    Line breaks in ``problem`` or ``fix`` (say, from a quoted exception) become spaces.
    """

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = " ".join(str(problem).splitlines())
        self.fix = None if fix is None else " ".join(str(fix).splitlines())
        super().__init__(f"{self.problem} ({self.fix})" if self.fix else self.problem)
