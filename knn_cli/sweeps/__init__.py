"""Sweeps: the study's lambda search and init-sensitivity grid as lists of ordinary runs.

A sweep folder holds `sweep.json` and one subfolder per trial, each an ordinary `knn train` run
folder. `--resume` takes the stages already planned from `sweep.json` (a fine range depends on
results, so it is recorded, not recomputed), plans the rest the same way, and skips every trial
whose folder holds a finished (or diverged) summary. The test set is evaluated for the `--final`
retrain and the init-sensitivity runs, never for a search trial.

    plan.py           the trials and the specs (what to run)
    folder.py         sweep.json, attempt folders and trial records (what ran)
    running.py        trials on an executor, with progress
    lambda_search.py  coarse, fine, final
    init_grid.py      depth x batch norm x sigma
    config_runs.py    a plan of configs, each with its seeds (`knn sweep`)
    tables.py         CSV and Markdown
    figures.py        lambda against accuracy, the grid's loss curves
"""
