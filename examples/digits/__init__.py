"""The demo model: a small CNN for scikit-learn's bundled 8x8 digits, served by zerobatch.

- `train.py` trains it (a few seconds of CPU, no download) and saves TorchScript into `model/`;
- `make_samples.py` renders `sample_3.png`, a dataset digit, as a real PNG request body;
- `model/` is a TorchServe `no-archive` model directory: `MAR-INF/MANIFEST.json`,
  `digits_handler.py`, `index_to_name.json` and the trained `digits_cnn.pt` (not in git).
"""
