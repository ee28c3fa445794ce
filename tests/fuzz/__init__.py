"""Coverage-guided fuzz targets (atheris) for every decoder that sees bytes from a peer.

One module per decoder family, each runnable as a libFuzzer program
(`python -m tests.fuzz.<target> [libFuzzer flags] [corpus dir...]`) and importable without
atheris, since the hypothesis tests (tests/unit/test_fuzz_*.py) drive the same logic:

- `broker_frames`: client and worker messages fed to `BrokerCore` (envelopes, request heads,
  rids, routes, controls, READY, W_REPLY, W_PARTIAL, LOAD_FAILED), which must then still
  answer a well-formed request; everything it sends must parse.
- `client_replies`: REPLIES messages fed to the clients' sans-IO core and its reply decoding.
- `worker_requests`: BATCH messages fed to the worker's `Service` (request metas, form bodies
  of worker.forms, bodies of worker.codec).
- `tensors`: Open Inference Protocol requests (/v2 bodies, gRPC ModelInferRequest bytes),
  checked by the front end and decoded by the worker.
- `archives`: bytes extracted as a `.mar` / `.tar.gz` model archive (broker.archive) and read
  by the CLI (api.archiver.read_archive_manifest): only ArchiveError/ConfigError, nothing
  written outside the extraction directory.

`python -m tests.fuzz` is the driver: it runs each target in turn for a while, with its corpus
and crash files under `.fuzz/<target>/` (docs/fuzzing.md).
"""

#: the targets, in the order the driver runs them
TARGETS = ("broker_frames", "client_replies", "worker_requests", "archives", "tensors")
