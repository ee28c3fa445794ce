"""Whether the broker takes a remote worker's READY: the check, with no sockets.

A remote worker (`zerobatch worker`, docs/remote-workers.md) connects to the worker endpoint
over TCP with CURVE; the ZAP handler has already refused any key not in --curve-worker-keys,
so a READY that arrives with a CURVE key comes from an authorized host. What is left to
check is that it runs what the broker serves: the model and version (find_model, as for any
worker), and the model directory's digest (zerobatch.model_files.model_digest), which the
worker computed at load and the broker at start. A worker refused here is sent DISCONNECT
with the reason, logs it and exits; it is never recorded, so it never gets a batch.

Local workers (the IPC endpoint, no CURVE key) load the broker's own directory: they send no
digest and none is checked.
"""

from __future__ import annotations

#: what a remote worker's id starts with (`zerobatch worker` makes "remote.HOST.PID.RANDOM"),
#: so that it never names one of the supervisor's workers ("MODEL@VERSION#SLOT.GENERATION")
REMOTE_WORKER_PREFIX = "remote."


def refusal(info: dict, curve_key: str | None, expected_digest: str | None) -> str | None:
    """Why a READY (parsed: zerobatch.protocol.parse_ready) from the worker endpoint is
    refused, or None to take it. curve_key: the key the worker authenticated with (None for
    a local worker); expected_digest: the broker's digest of that model version (None when
    it has none: a model registered after start, which remote workers cannot serve)."""
    if curve_key is None:
        if info["worker_id"].startswith(REMOTE_WORKER_PREFIX):
            return (f"worker id {info['worker_id']!r} is a remote worker's, and the worker did "
                    "not authenticate with CURVE")
        return None
    if not info["worker_id"].startswith(REMOTE_WORKER_PREFIX):
        return (f"a remote worker's id must start with {REMOTE_WORKER_PREFIX!r}, not "
                f"{info['worker_id']!r}")
    model = f"{info['model']}/{info['version']}"
    if expected_digest is None:
        return (f"the broker has no digest for model {model} (remote workers serve only the "
                "models given at start)")
    digest = info.get("digest")
    if digest is None:
        return f"model {model}: the worker sent no model digest"
    if digest != expected_digest:
        return (f"model {model}: the worker's model files differ from the broker's (digest "
                f"{digest}, the broker serves {expected_digest})")
    return None
