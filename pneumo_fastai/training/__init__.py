"""Training: balanced sampling, callbacks, processes, `train(config)` and its export.

Nothing outside this package imports it: inference and evaluation work on exports.
"""
