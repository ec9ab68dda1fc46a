"""The site: its tree of paths, cpkgs.yaml, names, records, spec and lock files, and the NFS-safe ways to change them
(lease locks, atomic writes, the audit log). The ground floor every other part stands on.

May import: errors.
"""
