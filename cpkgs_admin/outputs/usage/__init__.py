"""Opt-in usage records: which envs and packages users run (issue #18; NOAA's PyRats, seed 004).

    site/usage_config.py   cpkgs.yaml's `usage:` section (validated) and the CPKGS_USAGE_SEND value the profiles,
                modulefiles and kernels export while it is enabled
    hook.py     what new-env writes into every env with python: the sitecustomize hook (template
                profiles/usage_sitecustomize.py, byte-compiled at build) and the top-level-module index
    report.py   `cpkgs usage`: the collector's log files -> runs, users and last use per env, users per package
    chart.py    static SVG and HTML fragments of a report for the catalog page

The switch is an environment variable, not a file: a python start reads nothing on the share to learn whether
records are on, and turning them on or off (`cpkgs refresh`) needs no rebuild of a sealed env.
"""
