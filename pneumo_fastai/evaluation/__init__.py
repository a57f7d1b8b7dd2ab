"""Evaluation of an export on a test folder: metrics with CIs, Grad-CAM, plots and reports."""
