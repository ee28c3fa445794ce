"""Open Inference Protocol requests: each input doubled, answered with its own datatype, so a
benchmark measures the protocol's cost (decoding, packing, the result's way back)."""

from zerobatch.worker.tensors import infer_response


def handle(data, context):
    if data is None:  # TorchServe calls a module-level handler once with None to initialize
        return None
    return [infer_response(**{tensor["name"] + "_out": tensor["data"] * 2
                              for tensor in row["body"]["inputs"]}) for row in data]
