"""GPU counting without torch, and which gpu_id each worker slot gets."""

from __future__ import annotations

import pytest

from zerobatch.broker.gpus import GpuAssigner, count_visible_gpus
from zerobatch.broker.supervisor import Supervisor
from zerobatch.config import ModelConfig, ServerConfig


@pytest.mark.parametrize("visible, count", [
    ("0,1,2", 3), ("", 0), ("-1", 0), ("0,-1,2", 1), ("GPU-1a2b,GPU-3c4d", 2), (" 3 ", 1)])
def test_cuda_visible_devices_decides_the_count(visible, count, tmp_path):
    assert count_visible_gpus({"CUDA_VISIBLE_DEVICES": visible}, str(tmp_path)) == count


def test_device_nodes_are_counted_without_cuda_visible_devices(tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvme0"):
        (tmp_path / name).touch()
    assert count_visible_gpus({}, str(tmp_path)) == 2
    assert count_visible_gpus({}, str(tmp_path / "missing")) == 0


def test_no_gpu_means_cpu_for_everyone():
    assigner = GpuAssigner(0)
    assert [assigner.next_gpu("m/1", None) for _ in range(3)] == [None, None, None]


def test_round_robin_is_shared_across_models_and_device_ids_are_per_model():
    assigner = GpuAssigner(2)
    assert [assigner.next_gpu("a/1", None) for _ in range(3)] == [0, 1, 0]
    assert assigner.next_gpu("b/1", None) == 1
    assert [assigner.next_gpu("c/1", (3, 5)) for _ in range(3)] == [3, 5, 3]


def test_supervisor_slots_get_round_robin_gpu_ids():
    models = (ModelConfig(name="a", path="/x", workers=3),
              ModelConfig(name="b", path="/y", workers=2),
              ModelConfig(name="c", path="/z", workers=2, device_ids=(1,)))
    supervisor = Supervisor(ServerConfig(models=models, frontends=0), "ipc://b", "ipc://f",
                            gpu_count=2, http_fd=None)
    assert [(c.slot_name, c.gpu_id) for c in supervisor.children] == [
        ("a@1.0#0", 0), ("a@1.0#1", 1), ("a@1.0#2", 0), ("b@1.0#0", 1), ("b@1.0#1", 0),
        ("c@1.0#0", 1), ("c@1.0#1", 1)]
