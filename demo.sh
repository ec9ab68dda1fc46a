#!/usr/bin/env bash
# `make demo`: a demo site in ./demo-site built from the local test channel, shown step by step.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=${1:-$PWD/demo-site}
PY=.venv/bin/python
CPKGS=".venv/bin/cpkgs --root $ROOT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "building the local test channel (cached per machine)"
CHANNEL=$($PY tests/channel/build_channel.py)
echo "$CHANNEL"

if [ -d "$ROOT" ]; then
  step "removing the previous demo site"
  chmod -R u+w "$ROOT" 2>/dev/null || true
  rm -rf "$ROOT"
fi

step "cpkgs init"
$CPKGS init -c "file://$CHANNEL"
$CPKGS init

step "an admin's spec for family 'demo'"
mkdir -p "$ROOT/specs"
cat > "$ROOT/specs/demo.yml" <<'YML'
# the demo family: python, an app with a dependency chain, prefix-embedding programs, activate.d scripts
dependencies:
  - python
  - cpkgs-test-app
  - cpkgs-test-lib 1.1.*
  - cpkgs-test-textprefix
  - cpkgs-test-binprefix
  - cpkgs-test-activate
YML
cat "$ROOT/specs/demo.yml"

step "cpkgs new-env demo-1.0  (from specs/demo.yml)"
$CPKGS new-env demo-1.0
step "cpkgs new-env demo-2.0 --from demo-1.0 --add 'cpkgs-test-lib 2.0.*'"
$CPKGS new-env demo-2.0 --from demo-1.0 --add 'cpkgs-test-lib 2.0.*'

step "cpkgs list"
$CPKGS list
step "cpkgs diff demo-1.0 demo-2.0"
$CPKGS diff demo-1.0 demo-2.0
step "cpkgs verify"
$CPKGS verify
step "cpkgs retire demo-1.0 --successor demo-2.0"
$CPKGS retire demo-1.0 --successor demo-2.0 --message "lib 2.0 is out"
$CPKGS list --all

if [ -f "$ROOT/etc/profile.d/conda.sh" ] && grep -q 'conda()' "$ROOT/etc/profile.d/conda.sh"; then
  step "a user's shell: source conda.sh, conda activate demo-2.0, run its programs"
  bash -c "
    source '$ROOT/etc/profile.d/conda.sh'
    conda env list
    conda activate demo-2.0
    echo \"CONDA_PREFIX=\$CONDA_PREFIX  CPKGS_TEST_ACTIVATED=\${CPKGS_TEST_ACTIVATED:-}\"
    cpkgs-test-app
    cpkgs-test-lib-version
    python -c 'import sys; print(\"python from\", sys.prefix)'
    conda deactivate
  "
fi

step "done: the demo site is in $ROOT"
