"""zerobatch.gc_policy: startup objects leave the collections, later garbage is still collected.

Each case runs in a fresh interpreter: freezing the test process's own heap would keep every
later test's garbage alive.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import gc, weakref
    from zerobatch.gc_policy import YOUNG_THRESHOLD, freeze_startup_objects

    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    gc.collect()
    startup = cycle()  # garbage from before the freeze: frozen with the rest, never walked
    freeze_startup_objects()
    assert gc.get_freeze_count() > 0, gc.get_freeze_count()
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD, gc.get_threshold()
    serving = cycle()  # garbage made while serving: still collected
    gc.collect()
    assert serving() is None, "a cycle made after the freeze was not collected"
    assert startup() is not None, "a frozen object was walked by a collection"
    print("ok")
""")


def test_startup_objects_are_frozen_and_later_cycles_collected():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
