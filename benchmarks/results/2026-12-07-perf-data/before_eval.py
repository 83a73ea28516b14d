"""perf_data's evaluation timing run on the "before" tree, which lacks ``host.cpu_workers``."""

import importlib.util
import json

import torch

import cdsf_bench.host as host

host.cpu_workers = lambda: max(1, torch.get_num_threads())
spec = importlib.util.spec_from_file_location("perf_data", "/work/wt20/benchmarks/perf_data.py")
assert spec is not None and spec.loader is not None
perf_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(perf_data)
method = {"synth": "ism", "diag": "mdm", "coupling": "joint"}
record = perf_data.time_evaluation(1000, 4.0, 11, method, "quick", "auto")
print(json.dumps({"evaluate": record}, indent=2))
