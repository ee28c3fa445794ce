"""TorchServe's explanations API: `/explanations/{model_name}[/{model_version}[/{url_path}]]`.

An explanation is a prediction request that reaches the handler with the request header
`explain: True` (on /predictions it is "False", whatever the client sent), as TorchServe's
front end marks it; everything else (the body, the key check, the batching, the answer, the
errors, `url_path`) is a prediction's, so this resource hands the request to the app's
PredictionsResource (api/http_app.py). A BaseHandler subclass's `handle` then runs
`explain_handle` instead of inference and postprocess (worker/base_handler.py); a handler of
its own reads the header itself, as under TorchServe.
"""

from __future__ import annotations

from typing import Any

import falcon.asgi

__all__ = ["ExplanationsResource"]


class ExplanationsResource:
    """POST (or PUT, as on /predictions) /explanations/{model_name}[/{model_version}[/...]]."""

    def __init__(self, predictions: Any) -> None:
        #: PredictionsResource.forward(req, resp, model, version, url_path, explain=...)
        self._forward = predictions.forward

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                      model_name: str, model_version: str | None = None,
                      url_path: str = "") -> None:
        await self._forward(req, resp, model_name, model_version, url_path, explain=True)

    on_put = on_post
