"""What cpkgs generates for users from the records: shell profiles, modulefiles, Jupyter kernels and the activation
they carry, the files written inside envs, the catalog pages, usage records' hook and reports, views of records.

May import: errors, site.
"""
