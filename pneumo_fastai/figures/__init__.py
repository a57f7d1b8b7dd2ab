"""The figures that describe a model: metrics, calibration, the epoch metrics' functions.

Pure functions of arrays and labels (numpy, scipy, scikit-learn; no torch, no fastai), below
`model` on the road, so that training, inference, evaluation and bench/ share them.
"""
