"""`adaptkit study`: a grid of training runs over one model and one data mixture, one shared token
store and calibration set, resumable execution, one evaluation and one report.

    spec.py    the study file: validation (with each grid entry's position) and grid expansion
    state.py   the study directory: preparation, each run's config and command, skip / resume
    report.py  evaluation of all final models, the results table, the Pareto frontier, the curves
"""
