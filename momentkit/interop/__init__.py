"""Interoperability with other codebases, one module per source.

- :mod:`~momentkit.interop.safe_pickle`: reading foreign pickles (official checkpoints, Caffe2
  weights) through an allow-list, never executing code from a file.
- :mod:`~momentkit.interop.convert`: the checkpoint-conversion framework (source registry,
  tensor-map tables, conversion report) behind ``momentkit convert``.
- one module per official source: ``lighthouse`` (Moment-DETR, QD-DETR), ``ld_detr``,
  ``ms_detr``, ``unimd``.
"""
