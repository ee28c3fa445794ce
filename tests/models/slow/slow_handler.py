"""Sleeps the largest {"sleep_ms": N} of the batch, then reports the batch size and every
"tag" this worker has run so far, so a test can prove a request never reached the handler."""

import time

SEEN: list = []


def _sleep_ms(body):
    if isinstance(body, dict):
        value = body.get("sleep_ms", 0)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return max(0.0, float(value))
    return 0.0


def handle(data, context):
    if data is None:
        return None
    SEEN.extend(row["body"]["tag"] for row in data
                if isinstance(row.get("body"), dict) and "tag" in row["body"])
    time.sleep(max(_sleep_ms(row.get("body")) for row in data) / 1000.0)
    return [{"batch_size": len(data), "seen": list(SEEN)} for _ in data]
