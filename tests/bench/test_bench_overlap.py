"""`python -m benchmarks.bench_overlap` drives real worker processes with overlap on and off."""

from __future__ import annotations

import os

import pytest
import yaml

from benchmarks import bench_overlap


def test_it_counts_batches_of_real_workers_both_ways(capsys):
    assert bench_overlap.main(["--workload", "echo", "--batch-size", "2", "--rounds", "1",
                               "--seconds", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "overlap on :" in out and "overlap off:" in out
    assert "echo, batch size 2: overlap on / off = " in out


@pytest.mark.parametrize("overlap", [True, False])
def test_a_copy_keeps_the_model_and_adds_the_flag(tmp_path, overlap):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"w")
    (model / "model-config.yaml").write_text("batchSize: 4\n")
    copy = bench_overlap.overlap_copy(str(model), str(tmp_path), overlap)
    assert os.path.islink(os.path.join(copy, "weights.bin"))
    with open(os.path.join(copy, "model-config.yaml")) as f:
        assert yaml.safe_load(f) == {"batchSize": 4, "overlapReplies": overlap}


def test_bad_counts_are_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        bench_overlap.main(["--rounds", "0"])
    assert exit_info.value.code == 2
