"""The floor: what pyzmq and libzmq can do at best, with no serving logic at all.

Processes started by the benchmarks, each in its own interpreter:

    python -m benchmarks.floor relay FRONT BACK   # Python ROUTER->ROUTER relay, LRU workers
    python -m benchmarks.floor proxy FRONT BACK   # libzmq's C zmq_proxy, ROUTER->DEALER
    python -m benchmarks.floor echo BACK          # DEALER echo worker for the relay
    python -m benchmarks.floor echo-router BACK   # ROUTER echo server behind the proxy

The relay has the same socket shape as the broker (client DEALER -> ROUTER, ROUTER -> worker
DEALER), so "ours against the relay" measures exactly what the broker's logic costs.
Every process stops on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
from collections import deque

import zmq


def relay(front_address: str, back_address: str) -> None:
    context = zmq.Context()
    front = context.socket(zmq.ROUTER)
    front.bind(front_address)
    back = context.socket(zmq.ROUTER)
    back.bind(back_address)
    idle: deque[bytes] = deque()
    waiting: deque[list] = deque()
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    while True:
        events = dict(poller.poll())
        if back in events:
            while True:
                try:
                    frames = back.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                worker = frames[0]
                if len(frames) > 2:
                    front.send_multipart(frames[1:])
                if waiting:
                    back.send_multipart([worker] + waiting.popleft())
                else:
                    idle.append(worker)
        if front in events:
            while True:
                try:
                    frames = front.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if idle:
                    back.send_multipart([idle.popleft()] + frames)
                else:
                    waiting.append(frames)


def echo_worker(back_address: str) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.connect(back_address)
    socket.send(b"READY")
    while True:
        socket.send_multipart(socket.recv_multipart())


def proxy(front_address: str, back_address: str) -> None:
    context = zmq.Context()
    front = context.socket(zmq.ROUTER)
    front.bind(front_address)
    back = context.socket(zmq.DEALER)
    back.bind(back_address)
    zmq.proxy(front, back)


def echo_router(back_address: str) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.connect(back_address)
    while True:
        socket.send_multipart(socket.recv_multipart())


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    commands = {"relay": relay, "proxy": proxy, "echo": echo_worker, "echo-router": echo_router}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m benchmarks.floor {{{','.join(commands)}}} ADDRESS...",
              file=sys.stderr)
        return 2
    commands[argv[0]](*argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
