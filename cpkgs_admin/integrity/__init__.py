"""An env's tree against what it must be: its files' hashes and owners (conda-meta and cpkgs' manifests), the seal's
modes, the rules for what a package may hold; the engines both new-env and `cpkgs verify` run.

May import: errors, site.
"""
