"""`python -m benchmarks.bench_gc` builds each process's startup state in a fresh interpreter
and times full collections before and after the freeze."""

from __future__ import annotations

import pytest

from benchmarks import bench_gc


@pytest.mark.parametrize("kind", ["frontend", "broker", "worker"])
def test_each_process_kind_is_built_and_frozen(kind):
    figures = bench_gc.measure(kind, repeat=2)
    assert figures["tracked"] > 1000  # the modules and objects of that process's startup
    assert figures["frozen"] > 1000  # what survived the timed collections, frozen
    assert len(figures["full_collection_ms"]) == len(figures["after_freeze_ms"]) == 2


def test_one_collection_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        bench_gc.main(["--repeat", "1"])
    assert exit_info.value.code == 2
