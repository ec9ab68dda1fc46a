"""What users run on their own accounts and files: `link-user`/`unlink-user` (a user's .condarc, edited with that
user's rights), `extend` (a personal layer on a shared env), `doctor` (this user's and host's setup).

May import: errors, site, outputs, lifecycle.
"""
