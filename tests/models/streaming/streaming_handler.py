"""Streams "<body>-0,", "<body>-1,", "<body>-2," for each request, then returns "<body>-end"."""

from ts.handler_utils.utils import send_intermediate_predict_response


def handle(data, context):
    if data is None:
        return None
    bodies = [row["body"] if isinstance(row["body"], str) else bytes(row["body"]).decode()
              for row in data]
    request_ids = {index: context.get_request_id(index) for index in range(len(data))}
    for step in range(3):
        send_intermediate_predict_response([f"{body}-{step}," for body in bodies], request_ids,
                                           "Intermediate Prediction success", 200, context)
    return [f"{body}-end" for body in bodies]
