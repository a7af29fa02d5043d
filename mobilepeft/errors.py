"""User-facing errors.

Expected problems with user input (a bad file, a wrong field, a checkpoint that does not
match its config) raise :class:`UserError`. The CLI prints its message and exits with a
non-zero status, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """An error the user can fix: says where (file, sample, field), what, and what to do."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        sample: str | int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.sample = sample
        self.field = field
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.sample is not None:
            where.append(f"sample {self.sample}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        text = f"{': '.join(where)}: {self.message}" if where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text
