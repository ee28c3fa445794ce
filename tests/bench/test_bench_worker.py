"""`python -m benchmarks.bench_worker` measures a real Service around a real handler."""

from __future__ import annotations

import pytest

from benchmarks import bench_worker


def test_it_times_the_worker_around_the_echo_handler(capsys):
    figures = bench_worker.measure("echo", batch_size=2, batches=3)
    assert set(figures) == {"before_ms", "handler_ms", "after_ms"}
    assert all(value > 0 for value in figures.values())
    assert bench_worker.main(["--workload", "echo", "--batch-size", "2", "--batches", "3"]) == 0
    assert "echo, batch size 2, medians of 3 batches: before the handler" in capsys.readouterr().out


def test_bad_counts_are_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        bench_worker.main(["--batches", "0"])
    assert exit_info.value.code == 2
