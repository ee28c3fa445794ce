"""Echo: returns each request body unchanged, so a benchmark measures pure server overhead.

Shared by zerobatch, TorchServe and LitServe's adapter, so it imports nothing from `ts`."""


def _as_bytes(body):
    # bytearray is what the servers hand over for octet-stream bodies; bytes is what every
    # server writes back without a JSON detour
    return bytes(body) if isinstance(body, (bytearray, memoryview)) else body


def handle(data, context):
    if data is None:  # TorchServe calls a module-level handler once with None to initialize
        return None
    return [_as_bytes(row["body"] if row.get("body") is not None else row.get("data"))
            for row in data]
