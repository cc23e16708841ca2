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

from knn_cli.sweeps.config_runs import run_config_sweep
from knn_cli.sweeps.folder import (
    DONE_STATUSES,
    SWEEP_FILE,
    TrialRecord,
    attempt_dirs,
    load_sweep,
    start_sweep,
    trial_record,
)
from knn_cli.sweeps.init_grid import run_init_sensitivity
from knn_cli.sweeps.lambda_search import (
    LambdaSearchResult,
    best_note,
    fine_range,
    ranked_records,
    run_lambda_search,
    source_records,
)
from knn_cli.sweeps.plan import (
    CONFIG_SWEEP,
    INIT_SENSITIVITY,
    LAMBDA_SEARCH,
    GridSpec,
    LambdaSearchSpec,
    Trial,
    TrialJob,
    final_trials,
    grid_trials,
    lambda_trials,
    sample_log_lambda,
    trial_config,
)
from knn_cli.sweeps.running import prepare_data, run_trial, run_trials
from knn_cli.sweeps.tables import final_summary_line, final_test_summary

__all__ = [
    "CONFIG_SWEEP",
    "DONE_STATUSES",
    "INIT_SENSITIVITY",
    "LAMBDA_SEARCH",
    "SWEEP_FILE",
    "GridSpec",
    "LambdaSearchResult",
    "LambdaSearchSpec",
    "Trial",
    "TrialJob",
    "TrialRecord",
    "attempt_dirs",
    "best_note",
    "final_summary_line",
    "final_test_summary",
    "final_trials",
    "fine_range",
    "grid_trials",
    "lambda_trials",
    "load_sweep",
    "prepare_data",
    "ranked_records",
    "run_config_sweep",
    "run_init_sensitivity",
    "run_lambda_search",
    "run_trial",
    "run_trials",
    "sample_log_lambda",
    "source_records",
    "start_sweep",
    "trial_config",
    "trial_record",
]
