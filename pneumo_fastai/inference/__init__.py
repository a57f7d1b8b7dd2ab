"""Inference on an export: load it safely, expand inputs, predict, write results."""
