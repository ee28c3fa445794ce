"""The CPU figures of benchmarks.cpu_per_request, read from /proc for real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks.cpu_per_request import cpu_seconds, cpu_wait_seconds

#: each child spins this long, pinned to the CPU its argument names
SPIN_S = 0.4
SPIN = ("import os, sys, time\n"
        "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
        f"end = time.process_time() + {SPIN_S}\n"
        "while time.process_time() < end:\n"
        "    pass\n"
        "input()\n")  # then wait, so that its /proc entry can still be read


def test_processes_sharing_a_cpu_wait_for_it_and_one_alone_does_not():
    """Two busy processes pinned to one CPU take turns, so each waits for it about as long
    as it runs; one alone on the other CPU (where there is one) hardly waits. Both spin
    their CPU time. A process that has ended reads as 0."""
    cpus = sorted(os.sched_getaffinity(0))
    shared, alone = cpus[0], cpus[-1] if len(cpus) > 1 else None
    pinned = [shared, shared] + ([alone] if alone is not None else [])
    children = [subprocess.Popen([sys.executable, "-c", SPIN, str(cpu)],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
                for cpu in pinned]
    try:  # wait until each has spun its CPU time
        for child in children:
            for _ in range(200):
                if cpu_seconds(child.pid) >= SPIN_S * 0.9:
                    break
                time.sleep(0.05)
        for child in children:
            assert cpu_seconds(child.pid) >= SPIN_S * 0.9
        for child in children[:2]:
            assert cpu_wait_seconds(child.pid) > SPIN_S / 4
        if alone is not None:
            assert cpu_wait_seconds(children[2].pid) < SPIN_S / 4
    finally:
        for child in children:
            child.kill()
            child.wait(timeout=10)
            child.stdin.close()
    assert cpu_wait_seconds(children[0].pid) == 0.0
    assert cpu_seconds(children[0].pid) == 0.0
