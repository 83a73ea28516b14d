"""The hook specifications: the one place that says what a plugin can contribute.

Every component hook returns a list of :class:`~cdsf_bench.interfaces.Component`, each a name
(the user interface: ``--synth NAME``), a factory, a one-line description and, optionally,
the search space of the factory's settings that ``cdsf-bench tune`` samples. Built-in plugins
implement these hooks exactly as third-party plugins do, and are found through the same
``cdsf_bench`` entry-point group. See docs/plugins.md for a complete external plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # the specifications are read by name; torch is imported by the plugins
    from cdsf_bench.interfaces import Component, MethodDefaults

PROJECT = "cdsf_bench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def cdsf_bench_synthesisers() -> list[Component]:
    """Synthesisers: factories of ``nn.Module`` mapping an MRI batch [B,1,D,H,W] to PET.

    The factory takes only keyword arguments with defaults (the user sets them with
    ``--set synth.NAME.KEY=VALUE``); the module's output has the input's shape, in [-1, 1].
    """


@hookspec
def cdsf_bench_diagnosers() -> list[Component]:
    """Diagnosers: factories called as ``factory(in_channels, input_shape, num_classes, **params)``.

    A factory that names an ``affine`` parameter also gets the grid's [4, 4] voxel-to-MNI
    affine (``TrainingContext.affine``), to place an atlas on it.

    The module maps a batch [B, in_channels, D, H, W] (MRI, then PET when present) to a
    :class:`~cdsf_bench.interfaces.DiagnoserOutput` of logits and features.
    """


@hookspec
def cdsf_bench_couplings() -> list[Component]:
    """Couplings: subclasses of :class:`~cdsf_bench.interfaces.Coupling`.

    A coupling decides how the synthesiser and diagnoser are trained (its stages) and how
    it predicts when PET is missing. Its keyword-only constructor arguments are its settings.
    A coupling's component may declare a :class:`~cdsf_bench.interfaces.Flag`: the command-line
    flag (``--NAME``) of ``run``, ``data check`` and ``tune`` that chooses it, as ``--joint``
    chooses ``--coupling joint``.
    """


@hookspec
def cdsf_bench_data_sources() -> list[Component]:
    """Data sources: subclasses of :class:`~cdsf_bench.interfaces.DataSource`.

    ``--data SPEC`` is given to the first source whose ``detect(SPEC)`` is true.
    """


@hookspec
def cdsf_bench_trackers() -> list[Component]:
    """Experiment trackers: factories of a :class:`~cdsf_bench.tracking.Tracker`.

    Selected with ``--track NAME`` (or a suite's ``[track.NAME]``); the factory takes only
    keyword arguments with defaults, set with ``--set track.NAME.KEY=VALUE``. It is called
    once per process that tracks, before any data are read: import the tracking library
    inside it (nothing is imported unless selected) and raise
    :class:`~cdsf_bench.errors.InputError` naming the extra to install when it is missing.
    """


@hookspec(firstresult=True)
def cdsf_bench_defaults() -> MethodDefaults | None:
    """The method run when the user names none, which is also the reference of reports.

    The first plugin that answers wins (the built-in CDSF plugin proposes ISM + MDM, joint);
    a plugin that has no opinion does not implement this hook.
    """
