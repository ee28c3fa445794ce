"""Echo: returns each request body unchanged, so a benchmark measures pure server overhead."""


def handle(data, context):
    return [row.get("body") for row in data]
