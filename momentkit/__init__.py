"""momentkit: moment retrieval, highlight detection and temporal action detection.

Layout (each sub-package has one job):

- ``momentkit.structures``  span arithmetic (start/end <-> centre/width, temporal IoU, clip ids)
- ``momentkit.data``        annotation/prediction records, dataset loaders, synthetic benchmark
- ``momentkit.features``    feature stores (``.npz`` directories, packed memory-mapped store)
- ``momentkit.evaluation``  evaluators (official QVHighlights metrics, grounding recall, HD mAP)
- ``momentkit.modeling``    shared blocks (transformer layers, matcher, criterion, post-processing)
- ``momentkit.models``      the papers' models as compositions of the shared blocks
- ``momentkit.training``    configs, trainer, checkpoints
- ``momentkit.inference``   predictors for videos and feature files
- ``momentkit.serving``     web API and page
- ``momentkit.cli``         the ``momentkit`` command
"""

__version__ = "0.1.0"
