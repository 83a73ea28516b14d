"""Command-line options shared by several commands, declared once."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def set_option(help: str) -> Callable[[F], F]:
    """``--set KEY=VALUE`` (repeatable), passed to the command as ``assignments``."""
    return click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help=help)
