"""A TorchServe handler that answers each request with the headers TorchServe's front end adds
to a prediction: `url_path` (the path after the model's version) and `explain`."""


def handle(data, context):
    if data is None:
        return None
    return [{"url_path": context.get_request_header(index, "url_path"),
             "explain": context.get_request_header(index, "explain")}
            for index in range(len(data))]
