"""Command-line options that several commands share, declared once.

``--set KEY=VALUE`` reaches the same configuration resolver from every command, so it is
one declaration here rather than a copy per command that could drift (metavar, multiplicity).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def set_option(help: str) -> Callable[[F], F]:
    """``--set KEY=VALUE``, repeatable, passed to the command as the ``assignments`` tuple."""
    return click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help=help)
