"""The one message a tracker whose library is missing gives."""

from __future__ import annotations

from cdsf_bench.errors import InputError


def missing(tracker: str, package: str, error: ImportError) -> InputError:
    return InputError(
        f"Tracker '{tracker}' needs the {package} package, which is not installed ({error}). "
        f"Install it with: pip install 'cdsf-bench[{tracker}]'"
    )
