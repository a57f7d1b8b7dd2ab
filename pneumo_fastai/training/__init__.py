"""Training: balanced sampling, callbacks, processes, `train(config)` and its export.

Only the command line (and the package's lazy `train`, `train_ensemble`) imports it: inference,
evaluation and serve work on exports. It uses inference's export tools (pooled features, the OOD
maths, the ONNX exporter) to write one.
"""
