"""Threads: the count a training command sets, the OpenMP wait policy, the load warning."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from click.testing import CliRunner

from cdsf_bench.cli import COMMANDS, load_command, main, passive_openmp_waits
from cdsf_bench.host import default_threads, load_warning, usable_cores, use_threads

#: the commands that train, each of which takes --threads
TRAINING = ("run", "bench", "tune", "predict", "perf")


@pytest.fixture
def restored_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_passive_waits_unless_the_user_chose_a_wait_setting():
    environ: dict[str, str] = {}
    passive_openmp_waits(environ)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    for given in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "10000"}, {"KMP_BLOCKTIME": "0"}):
        environ = dict(given)
        passive_openmp_waits(environ)
        assert environ == given


def test_use_threads_sets_torch_and_defaults_within_the_usable_cores(restored_threads: None):
    assert use_threads(1) == 1 and torch.get_num_threads() == 1
    assert 1 <= default_threads() <= usable_cores()
    assert use_threads(None) == torch.get_num_threads()


def test_load_warning_names_the_load_and_the_threads():
    assert load_warning(2, load=lambda: (2.0, 0.0, 0.0), cores=lambda: 2) is None
    busy = load_warning(2, load=lambda: (5.3, 0.0, 0.0), cores=lambda: 2)
    assert busy is not None and "load average 5.3 on 2" in busy and "2 thread(s)" in busy
    assert "--threads 1" in busy
    alone = load_warning(1, load=lambda: (5.3, 0.0, 0.0), cores=lambda: 2)
    assert alone is not None and "--threads 1" not in alone


@pytest.mark.parametrize("name", TRAINING)
def test_every_training_command_takes_threads(name: str):
    assert name in COMMANDS
    options = {opt for param in load_command(name).params for opt in param.opts}
    assert "--threads" in options


def test_threads_below_one_are_refused_and_the_option_sets_the_count(restored_threads: None):
    runner = CliRunner()
    refused = runner.invoke(main, ["perf", "--threads", "0"])
    assert refused.exit_code == 2 and "--threads" in refused.output
    # the callback runs as the line is parsed; --repeats 0 then stops perf before any work
    stopped = runner.invoke(main, ["perf", "--threads", "1", "--repeats", "0"])
    assert stopped.exit_code == 2 and torch.get_num_threads() == 1
