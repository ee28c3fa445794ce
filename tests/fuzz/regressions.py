"""Inputs the fuzzers found that once broke a reader outside the fuzz harness, kept as
regression tests (tests/unit/test_fuzz_regressions.py; docs/fuzzing.md lists the bugs):

- damaged archives on which `broker.archive.prepare_model` and
  `api.archiver.read_archive_manifest` let the zip, tar and compression readers' own errors
  through instead of ArchiveError (BadZipFile from zipfile.is_zipfile, NotImplementedError,
  UnicodeDecodeError, IndexError, a ValueError on a zip without members, OSError and
  gzip's BadGzipFile, LZMAError);
- a READY whose worker id is not the identity it came from, which `broker.core` accepted:
  that worker was never lost, and the requests sent to it were never answered;
- POST /predictions/ (an empty model name), which `api.http_app` answered 500;
- Open Inference Protocol requests that `api.tensors.check_input` let through to a TypeError
  (a datatype that is a list) or accepted although the worker cannot build their array (an
  empty tensor whose other dimensions multiply past what numpy can address), or although a
  handler's answer of it takes gigabytes (an empty tensor with millions of rows before its
  first 0, each an empty JSON list).
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
from typing import Any

_MANIFEST = b'{"runtime": "python", "model": {"modelName": "m", "handler": "handler.py"}}'


# ------------------------------------------------------------------ reproducers

def _zip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, content in members:
            zf.writestr(name, content)
    return buffer.getvalue()


def _model_zip(compression: int = zipfile.ZIP_STORED) -> bytes:
    return _zip([("MAR-INF/MANIFEST.json", _MANIFEST), ("handler.py", b"")], compression)


def _rename_central(data: bytes, index: int, name: bytes) -> bytes:
    """data with the name of its index-th central directory entry replaced (same length)."""
    at = -1
    for _ in range(index + 1):
        at = data.index(b"PK\x01\x02", at + 1)
    (length,) = struct.unpack_from("<H", data, at + 28)
    assert len(name) == length
    return data[:at + 46] + name + data[at + 46 + length:]


def damaged_archives() -> dict[str, bytes]:
    """Damaged archives, by name, that once made `broker.archive.prepare_model` raise the
    zip or tar reader's own error (the name says what is damaged) instead of ArchiveError."""
    newer = bytearray(_model_zip())  # "version needed to extract" 25.5
    struct.pack_into("<H", newer, newer.index(b"PK\x01\x02") + 6, 255)

    named = _zip([("MAR-INF/MANIFEST.json", _MANIFEST), ("h\u00e9.py", b"")])
    not_utf8 = _rename_central(named, 1, b"h\xc3\x28.py")  # flagged UTF-8, and not
    no_name = _rename_central(_model_zip(), 1, b"\0" * len("handler.py"))  # read as ""

    multi_disk = _model_zip()  # a zip64 locator that says the zip spans two disks
    end_at = multi_disk.rindex(b"PK\x05\x06")
    multi_disk = (multi_disk[:end_at] + b"PK\x06\x07" + struct.pack("<LQL", 1, 0, 2)
                  + multi_disk[end_at:])

    negative = bytearray(_model_zip())  # the central directory said to start 1000 bytes on
    end = negative.rindex(b"PK\x05\x06")
    struct.pack_into("<I", negative, end + 16, struct.unpack_from("<I", negative, end + 16)[0]
                     + 1000)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("m/MAR-INF/MANIFEST.json")
        info.size = len(_MANIFEST)
        tar.addfile(info, io.BytesIO(_MANIFEST))
    members = buffer.getvalue()[:1024]  # no end-of-archive blocks: read to the gzip trailer
    bad_crc = bytearray(gzip.compress(members))
    bad_crc[-8] ^= 0xFF

    lzma_zip = bytearray(_model_zip(zipfile.ZIP_LZMA))
    local = lzma_zip.index(b"PK\x03\x04")
    name_len, extra_len = struct.unpack_from("<HH", lzma_zip, local + 26)
    lzma_zip[local + 30 + name_len + extra_len + 4] = 0xFF  # the LZMA properties byte

    return {"zip version": bytes(newer), "zip name not UTF-8": not_utf8, "zip empty": _zip([]),
            "zip empty name": no_name, "zip on two disks": multi_disk,
            "zip negative offset": bytes(negative), "gzip CRC": bytes(bad_crc),
            "zip LZMA properties": bytes(lzma_zip)}


def damaged_manifest_archives() -> dict[str, bytes]:
    """The damaged archives that once made `api.archiver.read_archive_manifest` raise the
    reader's own error (LZMAError, and BadZipFile from zipfile.is_zipfile)."""
    archives = damaged_archives()
    return {name: archives[name] for name in ("zip LZMA properties", "zip on two disks")}


def misnamed_ready_conversation() -> tuple[Any, list[tuple]]:
    """A worker says READY from identity w1 naming worker w2, then a client sends a request
    with a 1 s timeout, and time passes: to 10 ms, past the deadline, far past the worker's
    liveness. Returns the core and the answers (command, rid, a, body) the client got."""
    from tests.fuzz import broker_frames
    from zerobatch import protocol as p

    core = broker_frames.make_core()
    core.on_back([b"w1"] + p.encode_ready(broker_frames.MODEL, "1.0", "w2", None, 1), 0)
    core.on_front([b"c1"] + p.encode_request(b"r", p.encode_route(broker_frames.MODEL, None, 1000),
                                             p.encode_meta("text/plain"), b"x"), 0)
    for now_s in (0.01, 5, 1000):
        core.on_tick(int(now_s * 1_000_000_000))
    answers = []
    for message in p.coalesce_client_messages(core.out_front):
        if message[0] == b"c1":
            answers.extend(p.parse_client_replies(message[1:]))
    return core, answers


def empty_model_name_response(path: str = "/predictions/") -> tuple[int, Any, int]:
    """POST path to the HTTP app, over a client that encodes each request as the real client
    core does (which refuses an empty model name with a ValueError). Returns the status, the
    JSON body (None when the body is not JSON) and how many requests reached the client."""
    import asyncio

    import falcon.testing

    from zerobatch.api.client_core import ClientCore
    from zerobatch.api.client_helpers import Reply
    from zerobatch.api.http_app import create_app
    from zerobatch.config import FrontendConfig

    class Client:
        def __init__(self) -> None:
            self.calls = 0

        async def predict_or_stream(self, model: str, body: bytes, **kwargs: object) -> Reply:
            self.calls += 1
            ClientCore().request_message(model, body, 0)
            return Reply(200, None, None, body)

    client = Client()

    async def post() -> falcon.testing.Result:
        app = create_app(FrontendConfig(broker_address="tcp://127.0.0.1:9"), client)
        async with falcon.testing.ASGIConductor(app) as conductor:
            return await conductor.simulate_post(path, body=b"x")

    result = asyncio.run(post())
    try:
        body = result.json
    except ValueError:
        body = None
    return result.status_code, body, client.calls


def bad_tensor_requests() -> dict[str, bytes]:
    """/v2 infer bodies (JSON) that once broke `api.tensors.parse_request`, by name."""
    return {
        "datatype_a_list": b'{"inputs": [{"name": "s", "datatype": [3], "data": [true]}]}',
        "empty_but_huge": b'{"inputs": [{"name": "x", "datatype": "FP64", '
                          b'"shape": [0, 1099511627776, 1099511627776], "data": []}]}',
        # empty, but an echo of it is 5 * 85 * 73 * 78 * 84 empty JSON lists (gigabytes)
        "empty_but_many_rows": b'{"inputs": [{"name": "x", "datatype": "FP64", '
                               b'"shape": [5, 85, 73, 78, 84, 0, 9], "data": []}]}',
    }
