"""The package's wire protocols, named once.

- ``trial_results``: what a trial reports to Tune each iteration (``rp_*`` keys), the metrics
  Tune ranks trials by, and the files a trial checkpoint holds.
- ``mlflow_layout``: the MLflow run tree: run kinds, ``rp.*`` tags, param and summary-metric
  names, the artifact names, and the one default tracking URI every command uses.

Writers (trainables, the MLflow callback, the store, the runner) and readers (compare, replay,
Grad-CAM, export) import these names; neither side spells a key as a literal. Plain Python: no
import beyond the standard library.
"""
