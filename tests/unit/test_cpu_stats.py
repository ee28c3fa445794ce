"""The CPU figures of benchmarks.cpu_per_request, read from /proc for real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks.cpu_per_request import cpu_seconds, cpu_wait_seconds

#: each child spins this long on the one CPU both are pinned to
SPIN_S = 0.4
SPIN = ("import time\n"
        f"end = time.process_time() + {SPIN_S}\n"
        "while time.process_time() < end:\n"
        "    pass\n"
        "input()\n")  # then wait, so that its /proc entry can still be read


def test_two_processes_on_one_cpu_each_wait_for_it():
    """Two busy processes pinned to one CPU take turns: each is runnable and waiting for
    about as long as it runs, and the figures show that; a finished process reads as 0."""
    cpu = min(os.sched_getaffinity(0))
    children = [subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL) for _ in range(2)]
    try:
        for child in children:
            os.sched_setaffinity(child.pid, {cpu})
        # wait until both have spun their CPU time
        for child in children:
            for _ in range(200):
                if cpu_seconds(child.pid) >= SPIN_S * 0.9:
                    break
                time.sleep(0.05)
        for child in children:
            assert cpu_seconds(child.pid) >= SPIN_S * 0.9
            assert cpu_wait_seconds(child.pid) > SPIN_S / 4
    finally:
        for child in children:
            child.kill()
            child.wait(timeout=10)
            child.stdin.close()
    assert cpu_wait_seconds(children[0].pid) == 0.0
    assert cpu_seconds(children[0].pid) == 0.0
