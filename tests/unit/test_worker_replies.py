"""The worker's reply socket: order between the reply thread and direct sends, its failures,
and the worker loop handing long batches' answers to it while the next batch runs.

Real sockets on loopback (a ROUTER standing in for the worker_broker); every wait is bounded."""

import json
import shutil
import threading

import pytest
import zmq
from zerobatch.worker.replies import ReplyWriter

from tests.models import model_path
from tests.support.fake_worker_broker import item
from tests.support.thread_worker import ThreadWorker, worker_config
from zerobatch import protocol

IDENTITY = b"w-replies" + protocol.REPLY_SUFFIX


@pytest.fixture
def writer(worker_broker):
    replies = ReplyWriter(zmq.Context.instance(), worker_broker.address, "w-replies")
    yield replies
    replies.close()


def receive(worker_broker, timeout_ms=5000):
    assert worker_broker.router.poll(timeout_ms, zmq.POLLIN), "nothing arrived"
    return worker_broker.router.recv_multipart()


def test_a_direct_send_waits_for_what_the_thread_still_holds(worker_broker, writer):
    release = threading.Event()

    def slow_encoding():
        assert release.wait(5)
        return [protocol.VERSION, protocol.W_REPLY, b"first"]

    writer.send_later(slow_encoding)
    sender = threading.Thread(target=writer.send,
                              args=([protocol.VERSION, protocol.W_PARTIAL, b"second"],))
    sender.start()
    assert not worker_broker.router.poll(100, zmq.POLLIN)  # the direct send waits for the held one
    release.set()
    sender.join(5)
    assert receive(worker_broker) == [IDENTITY, protocol.VERSION, protocol.W_REPLY, b"first"]
    assert receive(worker_broker) == [IDENTITY, protocol.VERSION, protocol.W_PARTIAL, b"second"]
    assert writer.sent_later == 1


def test_a_failed_encoding_is_raised_to_the_next_caller(worker_broker, writer):
    def broken():
        raise KeyError("no encoder")

    writer.send_later(broken)
    writer.send_later(lambda: [b"never sent"])
    assert writer.wait_sent(5)
    assert isinstance(writer.error, KeyError)
    with pytest.raises(RuntimeError, match="reply thread failed"):
        writer.send([protocol.VERSION, protocol.W_DISCONNECT])
    with pytest.raises(RuntimeError, match="reply thread failed"):
        writer.send_later(lambda: [b"nor this"])
    assert not worker_broker.router.poll(100, zmq.POLLIN)


@pytest.mark.parametrize("overlap", [True, False])
def test_long_batches_are_answered_beside_the_next_one(worker_broker, tmp_path, overlap):
    """Three batches wait at once; the first two take 20 ms each in the handler, so each has
    its answers sent by the reply thread while the next runs (`overlapReplies: true`). The
    last has nothing after it and is answered at once, by the loop itself. Every answer
    arrives, in order. By default the loop answers every batch itself."""
    path = model_path("slow")
    if overlap:
        path = shutil.copytree(path, tmp_path / "slow")
        (tmp_path / "slow" / "model-config.yaml").write_text("overlapReplies: true\n")
    worker = ThreadWorker(worker_config(worker_broker, model="slow", path=str(path)))
    try:
        identity, _ = worker_broker.wait_ready()
        for batch_id in (1, 2, 3):
            worker_broker.send_batch(identity, batch_id,
                              [item(json.dumps({"sleep_ms": 20, "tag": f"b{batch_id}"}))])
        # wait_reply drops what it does not match: a reply out of order would time out
        seen = [json.loads(worker_broker.wait_reply(batch_id)[0].body)["seen"]
                for batch_id in (1, 2, 3)]
        assert [tags[-1] for tags in seen] == ["b1", "b2", "b3"]
        assert seen[2][-3:] == ["b1", "b2", "b3"]
        assert worker.loop.overlapped == (2 if overlap else 0)
    finally:
        worker.stop()


def test_short_batches_are_answered_by_the_loop_itself(worker_broker, tmp_path):
    """With the overlap on, batches far shorter than OVERLAP_MIN_HANDLER_NS never take it."""
    path = shutil.copytree(model_path("echo"), tmp_path / "echo")
    (tmp_path / "echo" / "model-config.yaml").write_text("overlapReplies: true\n")
    worker = ThreadWorker(worker_config(worker_broker, model="echo", path=str(path)))
    try:
        identity, _ = worker_broker.wait_ready()
        for batch_id in (1, 2, 3):
            worker_broker.send_batch(identity, batch_id, [item(f'"{batch_id}"')])
        assert [worker_broker.wait_reply(batch_id)[0].body for batch_id in (1, 2, 3)] == [
            b"1", b"2", b"3"]
        assert worker.loop.overlapped == 0
    finally:
        worker.stop()
