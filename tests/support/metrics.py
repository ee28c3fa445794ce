"""Reading and faking Prometheus metrics in tests: parse an exposition into samples, and
write a process's prometheus_client multiprocess file for any pid (as a front end or a
worker would), so the metrics API's merging and mark_process_dead can be tested without
them."""

from __future__ import annotations

import os

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families


def families(text: str) -> dict:
    """family name -> family, parsed by prometheus_client's parser (it fails on bad text)."""
    parsed = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in parsed, f"family {family.name} written twice"
        parsed[family.name] = family
    return parsed


def samples(text: str) -> dict[tuple, float]:
    """(sample name, sorted label pairs) -> value, for every sample of an exposition."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in families(text).values() for sample in family.samples}


def value(text: str, name: str, **labels: str) -> float:
    """The value of the one sample of this name whose labels include these."""
    found = [v for (sample, pairs), v in samples(text).items()
             if sample == name and set(labels.items()) <= set(pairs)]
    assert len(found) == 1, f"{len(found)} samples {name}{labels} in:\n{text}"
    return found[0]


def write_process_metric(folder: str, pid: int, kind: str, name: str, amount: float,
                         labels: dict[str, str] | None = None, mode: str = "",
                         help_text: str = "test metric") -> str:
    """Write one sample as prometheus_client's multiprocess mode does in process `pid`: a
    counter (`name` without _total), or a gauge with its multiprocess mode (livesum, ...);
    the file's path."""
    labels = labels or {}
    prefix = f"gauge_{mode}" if kind == "gauge" else kind
    path = os.path.join(folder, f"{prefix}_{pid}.db")
    sample = f"{name}_total" if kind == "counter" else name
    store = MmapedDict(path)
    try:
        store.write_value(mmap_key(name, sample, list(labels), list(labels.values()),
                                   help_text), amount, 0.0)
    finally:
        store.close()
    return path
