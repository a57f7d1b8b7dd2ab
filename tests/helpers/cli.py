"""The console entry point, run in this process."""

from __future__ import annotations

import sys

import pytest


def run_main(monkeypatch: pytest.MonkeyPatch, *args: object) -> int:
    """`pneumo-fastai ARGS` through `main()` as the console script runs it: its exit code (what it
    printed is in capsys)."""
    from pneumo_fastai.cli import main

    monkeypatch.setattr(sys, "argv", ["pneumo-fastai", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code
