"""What the tests share besides fixtures: data writers, the training factory and guard, CLI and
process helpers (fixtures live in the conftest.py files)."""
