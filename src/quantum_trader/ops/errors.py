"""Errors of the backup/restore tooling. Each message says what is wrong and what to do."""

from __future__ import annotations


class BackupError(Exception):
    """A backup, restore, verify or off-site operation that could not be completed."""


class BackupInvalid(BackupError):
    """A backup set that is partial, tampered with, or unreadable: nothing was restored."""

    def __init__(self, set_name: str, problems: list[str]) -> None:
        self.set_name = set_name
        self.problems = list(problems)
        listing = "\n  - ".join(problems)
        super().__init__(
            f"backup set {set_name} refused, nothing was restored:\n  - {listing}"
        )


class TargetNotEmpty(BackupError):
    """Restore refused because the target already holds data (use --force to replace it)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        listing = "\n  - ".join(problems)
        super().__init__(
            "restore refused: the target deployment is not empty, nothing was changed:\n  - "
            f"{listing}\nStop the deployment and pass --force to replace its data."
        )
