"""`ts.handler_utils.utils`: streaming helpers. Streaming is not supported yet.

`send_intermediate_predict_response` exists so that handler files importing it load; calling
it raises NotImplementedError.
"""

from __future__ import annotations

from typing import Any


def send_intermediate_predict_response(ret: list, req_id_map: dict, message: str, code: int,
                                       context: Any) -> None:
    """TorchServe sends `ret` as a partial answer; zerobatch cannot stream yet."""
    raise NotImplementedError("streaming arrives with a later zerobatch version: "
                              "send_intermediate_predict_response is not supported yet; "
                              "return the whole answer from handle()")
