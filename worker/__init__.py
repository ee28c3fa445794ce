"""The zerobatch worker process: it loads one model version and runs its handler on batches.

Modules, each owning one thing:

- `__main__`: the entry point (`python -m zerobatch.worker --config '<WorkerConfig JSON>'`),
  logging, signals, exit codes;
- `loop`: the data DEALER socket, READY, BATCH in and W_REPLY out, clean stop;
- `heartbeat`: the heartbeat thread and its own DEALER, broker-loss detection;
- `service`: a loaded model (handler + Context) turning one batch into one reply, no sockets;
- `codec`: request bodies to handler inputs and handler results to reply bodies;
- `model_dir`: reading a TorchServe `no-archive` model directory and its manifest;
- `handler_loader`: resolving the manifest's handler the way TorchServe does;
- `context`: the TorchServe-compatible `Context` handlers receive;
- `base_handler`: a TorchServe-style `BaseHandler`;
- `handlers/`: TorchServe's default handlers (`image_classifier`, ...), without torchvision;
- `compat/`: TorchServe's helper modules (`ts.utils.util`, `ts.handler_utils.*`);
- `ts_alias`: the import hook that makes `ts.*` names resolve to the modules above.

Only `base_handler` and `handlers/` import torch.

This package imports from `zerobatch` only, never from `broker` or `api`, and importing it
does not import torch: a worker whose handler needs no torch starts in a fraction of a second.
"""
