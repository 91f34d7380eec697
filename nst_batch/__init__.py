"""nst-batch: an overnight neural-style-transfer service and its engine.

The packages are layers; each uses only those below it (import-linter checks it in `make test`):

    cli       the command line: run, serve, status, estimate, check, fetch-weights
    daemon    the pipeline: watcher, inbox, intake, store, dispatch, workers, runner, finishing, service
    results   the outbox: result files, job.json, plots, the gallery
    settings  config, sidecars and the wording of their problems
    engine    the style-transfer library: tensors and parameters in, an image and losses out
    util      helpers: atomic writes, errors, image files, names, text
"""

__version__ = "0.1.0"
