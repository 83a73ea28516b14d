"""Benchmark suites: define, run, merge, report and check them against a baseline.

- :mod:`~cdsf_bench.bench.suite`: the suite file and the runs it expands into
- :mod:`~cdsf_bench.bench.checks`: a suite's expected findings (``[[checks]]``), pass / fail
- :mod:`~cdsf_bench.bench.runner`: running a suite (or a shard) and merging shards
- :mod:`~cdsf_bench.bench.report`: the suite report (:mod:`~cdsf_bench.bench.stats` for the
  paired tests, :mod:`~cdsf_bench.bench.figures` and :mod:`~cdsf_bench.bench.render` for
  drawing and rendering it)
- :mod:`~cdsf_bench.bench.regress`: metric regression checks against a stored baseline
- :mod:`~cdsf_bench.bench.commands`: the ``bench``, ``merge``, ``report`` and ``regress`` commands
"""
