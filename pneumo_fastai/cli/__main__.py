"""`python -m pneumo_fastai.cli`: the same as `pneumo-fastai` (torchrun and accelerate use it)."""

from . import main

main()
