"""`ts.handler_utils.utils`: streaming helpers.

`send_intermediate_predict_response(ret, req_id_map, message, code, context)` sends `ret[i]`
as an intermediate chunk to request `i` of the running batch (for each index in
`req_id_map`), encoded like a result, before the handler's final return value ends each
request. The worker's Service installs `context.send_partial`, which sends one W_PARTIAL on
the worker's data socket at once.
"""

from __future__ import annotations

from typing import Any


def send_intermediate_predict_response(ret: list, req_id_map: dict, message: str, code: int,
                                       context: Any) -> None:
    """Stream ret[i] now to request i of the batch (i in req_id_map), with status `code`."""
    send_partial = getattr(context, "send_partial", None)
    if send_partial is None:
        raise RuntimeError("send_intermediate_predict_response needs the Context of a running "
                           "zerobatch worker")
    if len(ret) != len(req_id_map):
        raise ValueError(f"send_intermediate_predict_response got {len(ret)} results for "
                         f"{len(req_id_map)} requests")
    for index in sorted(req_id_map):
        send_partial(index, ret[index], code)
