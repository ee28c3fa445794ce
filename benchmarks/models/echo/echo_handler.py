"""Echo: returns each request body unchanged, so a benchmark measures pure server overhead."""


def handle(data, context):
    if data is None:  # TorchServe calls a module-level handler once with None to initialize
        return None
    return [row.get("body") for row in data]
