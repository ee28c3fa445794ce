"""Scripts that record TorchServe 0.12.0's answers for the parity tests
(tests/support/torchserve_answers.py says how)."""
