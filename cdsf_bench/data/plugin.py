"""The built-in data sources, registered through the ``cdsf_bench`` entry-point group."""

from __future__ import annotations

from cdsf_bench.hookspecs import hookimpl
from cdsf_bench.interfaces import Component


@hookimpl
def cdsf_bench_data_sources() -> list[Component]:
    from cdsf_bench.data import sources

    return [
        Component(cls.name, cls, cls.description)
        for cls in (
            sources.PhantomSource,
            sources.PhantomFolderSource,
            sources.ManifestSource,
            sources.CapsSource,
        )
    ]
