"""TorchServe's default handlers, on torch, Pillow and numpy (no torchvision; Captum only
for explanations, imported at the first).

One handler a module, each a `BaseHandler` subclass named as in TorchServe, selectable by
name in the manifest (`"handler": "image_classifier"`) and importable as
`ts.torch_handler.<name>` inside a worker:

- `vision_handler`: images (bytes, or base64 text) to a batch tensor, `image_processing`;
- `image_classifier`: resize 256, center crop 224, ImageNet normalization, softmax, top-k;
- `image_segmenter`: per-pixel [class index, probability] maps;
- `object_detector`: boxes, labels and scores above a threshold;
- `text_handler`, `text_classifier`: text cleanup, token ids, class probabilities;
- `transforms`: the few image transforms the handlers need, as torchvision computes them.
- `insights`: the Captum objects of the explanations (`get_insights`), built when first used.
"""
