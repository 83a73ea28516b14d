"""A conformance kit for plugin authors: does a component keep the contract of ``interfaces``?

Call these in your plugin's own tests (docs/plugins.md, "Testing a plugin"); each builds the
component on tiny volumes, runs in seconds on a CPU, and raises ``AssertionError`` naming
what failed:

- :func:`check_synthesiser`: an MRI batch [B,1,D,H,W] in, PET of the same shape, dtype and
  device out, in [-1, 1]; trainable; per subject in evaluation mode;
- :func:`check_diagnoser`: MRI (and PET) channels in, a ``DiagnoserOutput`` of [B, K]
  logits and [B, F] features out, for one and two channels and two and three classes;
- :func:`check_coupling`: modules on the run's device; stages the engine can run (each
  step updates its modules and returns finite 0-d losses); predictions of the right
  shapes that never read the PET of a subject without it (``has_pet`` false), including a
  batch where no subject has PET. Its batches carry ``pet_truth`` and ``pet_expected``
  only where the coupling declares it needs them, as the core's do: a coupling that
  relies on one without declaring it fails here as it would in a run.

Every check also asks that the same seed gives the same output, that the state survives a
checkpoint (``state_dict`` -> ``torch.save`` -> ``torch.load(weights_only=True)`` ->
``load_state_dict`` into a freshly built component gives identical outputs), and, given a
:class:`~cdsf_bench.interfaces.Component`, that its declared search space names real
settings whose defaults lie inside it with the right type (:func:`check_space`).
"""

from cdsf_bench.testing.couplings import check_coupling
from cdsf_bench.testing.networks import check_diagnoser, check_space, check_synthesiser

__all__ = ["check_coupling", "check_diagnoser", "check_space", "check_synthesiser"]
