#!/bin/bash
# The stub's files (see recipe.yaml: the one fake at the macOS boundary).
set -euo pipefail
V="$CPKGS_PY_SHORT"
mkdir -p "$PREFIX/bin" "$PREFIX/lib/python$V/site-packages"
cat > "$PREFIX/bin/python$V" <<'SH'
#!/bin/sh
echo "cpkgs test stub: the osx-arm64 python of the test channel is no interpreter; nothing may run it" >&2
exit 127
SH
chmod 755 "$PREFIX/bin/python$V"
ln -s "python$V" "$PREFIX/bin/python3"
ln -s "python$V" "$PREFIX/bin/python"
echo "# cpkgs test stub: not CPython's os module" > "$PREFIX/lib/python$V/os.py"
echo "This directory exists so that 3rd party packages can be installed here." \
    > "$PREFIX/lib/python$V/site-packages/README.txt"
