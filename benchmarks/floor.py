"""The floor: what pyzmq and libzmq can do at best, with no serving logic at all.

Processes started by the benchmarks, each in its own interpreter:

    python -m benchmarks.floor relay FRONT BACK   # Python loop: ROUTER front -> DEALER back
    python -m benchmarks.floor proxy FRONT BACK   # the same in C: libzmq's zmq_proxy
    python -m benchmarks.floor echo BACK          # a DEALER that sends every message back
    python -m benchmarks.floor zb-echo BACK       # the same, answering in zerobatch's protocol

The client side is a DEALER, so the path is the broker's: client DEALER -> ROUTER -> ... ->
worker DEALER and back. The relay forwards each message as it comes (no queueing, no
batching), which is the least work a Python broker can do per request.
Every process stops on SIGTERM.
"""

from __future__ import annotations

import signal
import sys

import zmq


def relay(front_address: str, back_address: str) -> None:
    context = zmq.Context()
    front = context.socket(zmq.ROUTER)
    front.bind(front_address)
    back = context.socket(zmq.DEALER)
    back.bind(back_address)
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    while True:
        events = dict(poller.poll())
        for source, sink in ((front, back), (back, front)):
            if source in events:
                while True:
                    try:
                        sink.send_multipart(source.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break


def proxy(front_address: str, back_address: str) -> None:
    context = zmq.Context()
    front = context.socket(zmq.ROUTER)
    front.bind(front_address)
    back = context.socket(zmq.DEALER)
    back.bind(back_address)
    zmq.proxy(front, back)


def echo(back_address: str) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.connect(back_address)
    while True:
        socket.send_multipart(socket.recv_multipart())


def zb_echo(back_address: str) -> None:
    """Answer each zerobatch REQUEST (one or more requests) with the bodies, in one REPLIES:
    the floor for our own client (api.aio_client), with no broker and no worker."""
    from zerobatch import protocol as p

    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.connect(back_address)
    answer = p.REPLY + p.encode_reply_meta(200, "application/octet-stream")
    while True:
        frames = socket.recv_multipart()  # [client identity, VERSION, REQUEST, (head, body)...]
        reply = [frames[0], p.VERSION, p.REPLIES]
        for index in range(3, len(frames), 2):
            head = frames[index]
            reply += (head[:1 + head[0]] + answer, frames[index + 1])
        socket.send_multipart(reply)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    commands = {"relay": relay, "proxy": proxy, "echo": echo, "zb-echo": zb_echo}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m benchmarks.floor {{{','.join(commands)}}} ADDRESS...",
              file=sys.stderr)
        return 2
    commands[argv[0]](*argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
