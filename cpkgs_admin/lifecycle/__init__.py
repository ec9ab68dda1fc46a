"""The site and its envs after publish: listing, diff and export; seal, unseal, retire, remove, purge; `verify`;
`pack` and `mirror`; `refresh` and `init`.

May import: errors, site, integrity, outputs, pipeline.
"""
