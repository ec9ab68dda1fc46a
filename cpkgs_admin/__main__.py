from __future__ import annotations

from cpkgs_admin.cli import main

if __name__ == "__main__":
    main()
