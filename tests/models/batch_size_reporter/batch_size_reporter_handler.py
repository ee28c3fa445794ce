"""Reports the size of the batch each request ran in, with the request's body."""


def _plain(body):
    if isinstance(body, (bytes, bytearray)):
        return body.decode("utf-8", errors="replace")
    return body


def handle(data, context):
    if data is None:
        return None
    return [{"batch_size": len(data), "body": _plain(row.get("body"))} for row in data]
