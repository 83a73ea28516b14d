"""``python -m cdsf_bench``: the same command line as ``cdsf-bench``."""

from cdsf_bench.cli import main

main(prog_name="cdsf-bench")
