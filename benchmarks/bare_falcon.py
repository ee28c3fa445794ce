"""The HTTP floor: a bare Falcon ASGI app that answers from memory, with no serving logic.

Served by benchmarks/bench_http.py as `uvicorn benchmarks.bare_falcon:app --workers 2`.
"""

import falcon
import falcon.asgi

_ANSWER = b"x" * 100


class Predict:
    async def on_post(self, req, resp, model_name):
        await req.stream.read()
        resp.content_type = "application/octet-stream"
        resp.data = _ANSWER


class Ping:
    async def on_get(self, req, resp):
        resp.media = {"status": "Healthy"}


app = falcon.asgi.App()
app.add_route("/predictions/{model_name}", Predict())
app.add_route("/ping", Ping())
