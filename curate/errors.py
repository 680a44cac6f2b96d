"""Errors a user can fix: the CLI prints them as one paragraph and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the command, the recipe, a path or the cluster, with the fix in the message."""
