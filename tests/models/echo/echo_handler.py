"""Echo: each request's body comes back as it came (bytes, str or decoded JSON)."""


def handle(data, context):
    if data is None:  # TorchServe's load-time initialization call
        return None
    return [row.get("body") for row in data]
