"""Health and readiness in BrokerCore, without sockets: the `ping` verdict (TorchServe's
Healthy / Partial Healthy / Unhealthy from each model's live workers against its minimum) and
the `ready` answer (every model has a live worker), over the control socket and, for anyone,
over the client endpoint."""

from __future__ import annotations

import pytest

from tests.support.broker_core import CLIENT, add, errors, flat, ready, take_control, take_front
from zerobatch import protocol as p
from zerobatch.broker.core import PUBLIC_CONTROL_OPS, BrokerCore

W1, W2 = b"echo@1.0#0.1", b"echo@1.0#1.1"


def control(core: BrokerCore, op: str) -> dict:
    """Call op on the local control socket and return the answer."""
    core.on_control([CLIENT] + p.encode_control(b"c", op), 0)
    ((_identity, command, _rid, _a, body),) = flat(take_control(core))
    assert command == p.REPLY
    return p.unpack_header(body)


def ping(core: BrokerCore) -> dict:
    return control(core, "ping")


def load_failed(core: BrokerCore, model: str = "echo", worker_id: str = "echo@1.0#0.1") -> None:
    core.on_back([worker_id.encode()] + p.encode_load_failed(
        model, "1.0", worker_id,
        "ModuleNotFoundError: No module named 'nope' (/srv/secret/models/echo/handler.py)"), 0)


def lose(core: BrokerCore, identity: bytes) -> None:
    core.worker_lost(identity.decode(), 0, "its process exited")


# ---------------------------------------------------------------- ping


def test_healthy_when_every_model_has_its_minimum(core):
    add(core, workers=2)
    add(core, name="other")
    ready(core, 0, W1)
    ready(core, 0, W2)
    ready(core, 0, b"other@1.0#0.1", model="other")
    assert ping(core) == {"status": "Healthy"}  # the verdict alone, as TorchServe's /ping


def test_partial_healthy_while_a_model_is_below_its_minimum(core):
    add(core, workers=2)
    ready(core, 0, W1)
    assert ping(core) == {"status": "Partial Healthy"}
    ready(core, 0, W2)
    assert ping(core) == {"status": "Healthy"}
    lose(core, W2)  # lost (crashed, silent, timed out): it counts no more
    assert ping(core) == {"status": "Partial Healthy"}


def test_partial_healthy_while_loading_and_while_a_lone_worker_restarts(core):
    add(core)
    assert ping(core) == {"status": "Partial Healthy"}  # not "Healthy" before any worker
    ready(core, 0)
    assert ping(core) == {"status": "Healthy"}
    lose(core, W1)
    assert ping(core) == {"status": "Partial Healthy"}  # restarting: no error said it failed


def test_unhealthy_when_a_model_without_workers_failed_to_load(core):
    add(core)
    add(core, name="other")
    ready(core, 0, b"other@1.0#0.1", model="other")
    load_failed(core)
    assert ping(core) == {"status": "Unhealthy"}  # nothing about why: no paths, no errors
    ready(core, 0)  # a restarted worker loaded it: the error is gone
    assert ping(core) == {"status": "Healthy"}


def test_a_failed_load_beside_a_live_worker_is_partial(core):
    add(core, workers=2)
    ready(core, 0, W1)
    load_failed(core, worker_id=W2.decode())
    assert ping(core) == {"status": "Partial Healthy"}  # what it has still serves


def test_a_model_with_no_minimum_is_always_healthy_and_ready(core):
    add(core, workers=0)
    assert ping(core) == {"status": "Healthy"}
    assert control(core, "ready") == {"ready": True, "loading": []}


def test_ping_counts_the_default_version_as_torchserve_does(core):
    add(core)
    add(core, version="2.0")  # never loads; TorchServe's isModelHealthy looks at the default
    ready(core, 0)
    assert ping(core) == {"status": "Healthy"}
    assert control(core, "ready") == {"ready": False, "loading": ["echo"]}


def test_no_models_is_healthy_and_ready(core):
    assert ping(core) == {"status": "Healthy"}
    assert control(core, "ready") == {"ready": True, "loading": []}


# ---------------------------------------------------------------- ready


def test_not_ready_until_every_model_has_loaded(core):
    add(core)
    add(core, name="other", workers=2)
    assert control(core, "ready") == {"ready": False, "loading": ["echo", "other"]}
    ready(core, 0)
    assert control(core, "ready") == {"ready": False, "loading": ["other"]}
    ready(core, 0, b"other@1.0#0.1", model="other")  # one of its two: it serves
    assert control(core, "ready") == {"ready": True, "loading": []}


def test_not_ready_again_while_a_model_has_no_live_worker(core):
    add(core)
    ready(core, 0)
    assert control(core, "ready")["ready"] is True
    lose(core, W1)
    assert control(core, "ready") == {"ready": False, "loading": ["echo"]}
    ready(core, 0, b"echo@1.0#0.2")
    assert control(core, "ready")["ready"] is True


def test_a_model_whose_load_failed_is_still_loading_by_name_only(core):
    add(core)
    load_failed(core)
    answer = control(core, "ready")
    assert answer == {"ready": False, "loading": ["echo"]}
    assert "secret" not in repr(answer) and "nope" not in repr(answer)


# ---------------------------------------------------------------- who may ask


@pytest.mark.parametrize("op", ["ping", "ready", "models"])
def test_anonymous_clients_may_ask(core, op):
    add(core)
    core.peer_of = lambda frames: ("203.0.113.9", None)
    core.on_front([CLIENT] + p.encode_control(b"c", op), 0)
    replies = take_front(core)
    assert errors(replies) == []
    ((_identity, command, rid, _a, _body),) = flat(replies)
    assert (command, rid) == (p.REPLY, b"c")
    assert op in PUBLIC_CONTROL_OPS



def test_a_retiring_worker_does_not_count(core):
    add(core, workers=2)
    ready(core, 0, W1)
    ready(core, 0, W2)
    core.on_control([CLIENT] + p.encode_control(b"s", "scale", model="echo", workers=1), 0)
    take_control(core)
    assert core.retire(W2.decode())  # what the loop does for the scale down
    assert ping(core) == {"status": "Healthy"}
    lose(core, W1)  # W2 still finishes what it was sent, but takes nothing new
    assert ping(core) == {"status": "Partial Healthy"}
    assert control(core, "ready") == {"ready": False, "loading": ["echo"]}
