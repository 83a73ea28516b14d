"""``cdsf-bench tune``: equal tuning budgets, on the training and validation splits only.

A study samples settings from a search space that the plugins declare for their own
components (``Component.space``) and the core completes with the training settings
(:mod:`cdsf_bench.tune.space`); each trial trains on the training split and is scored on
the validation split (:mod:`cdsf_bench.tune.trial`); Optuna (an optional extra, imported
only here and only when a study runs) samples with TPE and prunes on the per-epoch
validation metric (:mod:`cdsf_bench.tune.study`). The outputs are the best settings as a
config ``run --config`` takes, the trials table, a figure and a summary
(:mod:`cdsf_bench.tune.outputs`). Tuned suites (:mod:`cdsf_bench.bench.tuning`) drive the
same plan and loop for every method of every replicate. The test split is never predicted
here. This package imports the run machinery (assembly, engine, run folder), never ``bench``.
"""
