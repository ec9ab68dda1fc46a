"""`cpkgs new-env`: the build as a pipeline of steps (spec, solve, stage, post-process, check, seal, publish), each a
module passing one Job along; the package cache it builds from; the pip step (pypi/).

May import: errors, site, integrity, outputs.
"""
