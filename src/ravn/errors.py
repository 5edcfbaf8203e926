"""One exception type for every problem a user can fix.

The command line prints a :class:`RavnError` as a single line (``error: <what> (<fix>)``) and exits
with a non-zero status; it never shows a traceback for them.
"""

from __future__ import annotations


class RavnError(Exception):
    """A problem with the user's input, stated with what to do about it."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} ({fix})" if fix else problem)
