"""The Captum objects of the default handlers' explanations, built at the first explanation.

TorchServe's `VisionHandler` and `TextHandler` import Captum when their module is imported and
build their attribution objects in `initialize`: `self.ig`, Integrated Gradients over the
model, and `self.lig`, Layer Integrated Gradients over `self.model.embedding`. Importing
`captum.attr` takes about half a second (it pulls in matplotlib), which every worker of an
image or text model would pay whether or not it is ever asked to explain, and Captum is not a
requirement of zerobatch. So here `ig` and `lig` are `CaptumAttribution` attributes, built
from the handler's model the first time they are read (the import of Captum with them): a
worker that never explains never imports Captum, a worker without Captum still starts, and
its explanations fail with the message of BaseHandler that names `pip install captum`.

A handler may still set its own (`self.lig = LayerIntegratedGradients(...)`, as TorchServe's
examples do in `initialize`); None, what TorchServe's `TextHandler.__init__` sets, means "not
built yet".
"""

from __future__ import annotations

from typing import Any, Callable

from zerobatch.errors import HandlerError


class CaptumAttribution:
    """A handler attribute holding a Captum attribution object, built by `build(handler)` when
    it is first read while unset (or None), then kept; assigning it replaces it."""

    def __init__(self, build: Callable[[Any], Any]) -> None:
        self.build = build
        self.key = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = f"_captum_{name}"

    def __get__(self, handler: Any, owner: type | None = None) -> Any:
        if handler is None:
            return self
        value = handler.__dict__.get(self.key)
        if value is None:
            value = handler.__dict__[self.key] = self.build(handler)
        return value

    def __set__(self, handler: Any, value: Any) -> None:
        handler.__dict__[self.key] = value


def integrated_gradients(handler: Any) -> Any:
    """TorchServe's `VisionHandler.ig`: Integrated Gradients over the whole model."""
    from captum.attr import IntegratedGradients

    return IntegratedGradients(_model(handler))


def layer_integrated_gradients(handler: Any) -> Any:
    """TorchServe's `TextHandler.lig`: Layer Integrated Gradients over the model's
    `embedding` layer."""
    from captum.attr import LayerIntegratedGradients

    model = _model(handler)
    embedding = getattr(model, "embedding", None)
    if embedding is None:
        raise HandlerError(
            f"{type(handler).__name__}'s insights attribute to the model's `embedding` layer, "
            "as TorchServe's text handlers do, and this model has none: set self.lig, or "
            "define get_insights(data_preprocess, inputs, target) on the handler")
    return LayerIntegratedGradients(model, embedding)


def _model(handler: Any) -> Any:
    if handler.model is None:
        raise HandlerError(f"{type(handler).__name__} has no model to explain: initialize it "
                           "first")
    return handler.model
