"""Measuring, drawing and sampling trained models, one module per model: :mod:`.vae` and :mod:`.gan`.

Each reads a run folder (its config and latest checkpoint) and writes results into it through
:mod:`mnistgen.runs`; the training loops in :mod:`mnistgen.train` import none of this.
"""
