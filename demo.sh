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
step "the local test wheelhouse: wheels downloaded from PyPI once per machine (cached), for the pip part"
HOUSES=$($PY tests/wheelhouse/build_wheelhouse.py)
WHEELS=$(echo "$HOUSES" | head -1)/wheels
echo "$WHEELS"
step "the cpkgs tool's wheels (cpkgs' dependencies at this venv's versions; cached), for install-tool"
TOOL_WHEELS=$(echo "$HOUSES" | tail -1)/wheels
echo "$TOOL_WHEELS"

if [ -d "$ROOT" ]; then
  step "removing the previous demo site"
  chmod -R u+w "$ROOT" 2>/dev/null || true
  rm -rf "$ROOT"
fi

step "cpkgs init  (offline: no PyPI index, the wheelhouse as the site's find-links dir)"
$CPKGS init -c "file://$CHANNEL" --pypi-index-url none --pypi-find-links "$WHEELS" --pypi-find-links "$TOOL_WHEELS"
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

step "an env with a pip part: specs/web.yml (conda python + pip; markdown-it-py, cowsay and rich from PyPI)"
cat > "$ROOT/specs/web.yml" <<'YML'
dependencies:
  - python
  - pip
  - pip:
      - markdown-it-py
      - cowsay==6.1
YML
cat "$ROOT/specs/web.yml"
$CPKGS new-env web-1.0 --dry-run
$CPKGS new-env web-1.0
step "cpkgs info web-1.0  (conda and pypi packages; the pip part pinned to wheels by sha256)"
$CPKGS info web-1.0
"$ROOT/anaconda3_linux/envs/web-1.0/bin/cowsay" -t "installed by pip, sealed by cpkgs"
step "cpkgs new-env web-2.0 -f (rich instead of cowsay), then cpkgs diff web-1.0 web-2.0"
sed 's/cowsay==6.1/rich/' "$ROOT/specs/web.yml" > "$ROOT/web-2.yml"
$CPKGS new-env web-2.0 -f "$ROOT/web-2.yml"
rm -f "$ROOT/web-2.yml"
$CPKGS diff web-1.0 web-2.0
step "cpkgs export web-1.0 --format pip  (pip/uv install it with --require-hashes)"
$CPKGS export web-1.0 --format pip
step "cpkgs verify web-1.0 web-2.0  (pip's files against their RECORD, like conda's)"
$CPKGS verify web-1.0 web-2.0

step "a notebook env: python + ipykernel gets Jupyter kernels"
$CPKGS new-env nb-1.0 python pip ipykernel cpkgs-test-activate
step "Jupyter sees the site's kernels (JUPYTER_PATH=$ROOT/share/jupyter)"
JUPYTER_PATH="$ROOT/share/jupyter" .venv/bin/jupyter kernelspec list 2>/dev/null
if [ -f /usr/share/lmod/lmod/init/bash ]; then
  step "Lmod: module avail / load / unload (MODULEPATH=$ROOT/modulefiles)"
  MODULEPATH="$ROOT/modulefiles" bash -c '
    source /usr/share/lmod/lmod/init/bash
    module avail 2>&1
    module load demo/1.0 2>&1     # retired: prints the successor, still loads
    module load demo 2>&1
    echo "CONDA_PREFIX=$CONDA_PREFIX  CPKGS_TEST_ACTIVATED=${CPKGS_TEST_ACTIVATED:-}"
    cpkgs-test-app
    module unload demo 2>&1
    echo "after unload: CONDA_PREFIX=${CONDA_PREFIX:-<unset>}"'
fi
step "pip refuses to install into a shared env (PEP 668)"
"$ROOT/anaconda3_linux/envs/nb-1.0/bin/python" -m pip install --no-index --user foo 2>&1 | head -4 || true
step "cpkgs refresh (idempotent)"
$CPKGS refresh

LAYER="$ROOT-layer"
step "cpkgs extend demo-2.0 $LAYER  (a personal layer; no write access to the site needed)"
chmod -R u+w "$LAYER" "$LAYER.whl.d" 2>/dev/null || true
rm -rf "$LAYER" "$LAYER.whl.d"
$CPKGS extend demo-2.0 "$LAYER"
ls -A "$LAYER" "$LAYER/bin"
step "pip-install a local wheel into the layer (offline: --no-index)"
mkdir -p "$LAYER.whl.d"
$PY - "$LAYER.whl.d" <<'PYW'
import base64, hashlib, sys, zipfile
files = {"hello_layer/__init__.py": "def hello():\n    return 'hello from the layer'\n",
         "hello_layer-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: hello-layer\nVersion: 0.1\n",
         "hello_layer-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: demo\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
rec = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b'=').decode()},{len(t)}"
       for n, t in files.items()]
files["hello_layer-0.1.dist-info/RECORD"] = "\n".join(rec + ["hello_layer-0.1.dist-info/RECORD,,"]) + "\n"
with zipfile.ZipFile(sys.argv[1] + "/hello_layer-0.1-py3-none-any.whl", "w") as zf:
    for n, t in files.items():
        zf.writestr(n, t)
PYW
"$LAYER/bin/python" -m pip install --no-index --disable-pip-version-check "$LAYER.whl.d/hello_layer-0.1-py3-none-any.whl"
"$LAYER/bin/python" -c 'import hello_layer, pip
print(hello_layer.hello(), "->", hello_layer.__file__)
print("pip still comes from the base:", pip.__file__)'
if grep -q 'conda()' "$ROOT/etc/profile.d/conda.sh"; then
  bash -c "source '$ROOT/etc/profile.d/conda.sh'; conda activate '$LAYER'; python -c 'import hello_layer; print(\"activated layer:\", hello_layer.hello())'; cpkgs-test-app; conda deactivate"
fi

if command -v rsyslogd >/dev/null; then
  step "usage records (opt-in): a local rsyslog collector, two programs, then cpkgs usage"
  USAGE="$ROOT-usage"
  rm -rf "$USAGE" && mkdir -p "$USAGE/work"
  PORT=$($PY -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat > "$USAGE/rsyslog.conf" <<CONF
global(workDirectory="$USAGE/work" net.enableDNS="off")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="$PORT")
if \$programname == "cpkgs-usage" or \$programname == "demo-sync" then { action(type="omfile" file="$USAGE/usage.log") stop }
CONF
  rsyslogd -n -f "$USAGE/rsyslog.conf" -i "$USAGE/rsyslogd.pid" 2>"$USAGE/rsyslogd.err" &
  RSYSLOGD=$!
  trap 'kill $RSYSLOGD 2>/dev/null || true' EXIT
  sleep 1
  # cpkgs.yaml's usage section (off by default): on, this collector, its log file.
  sed -i -e 's/^  enabled: false/  enabled: true/' -e "s|^  collector: null|  collector: udp://127.0.0.1:$PORT|" \
      -e "s|^  logs: \[\]|  logs: [$USAGE/usage.log]|" "$ROOT/cpkgs.yaml"
  sed -n '/^usage:/,$p' "$ROOT/cpkgs.yaml"
  $CPKGS refresh >/dev/null   # the switch goes into conda.sh/conda.csh, modulefiles and kernels
  bash -c "source '$ROOT/etc/profile.d/conda.sh'; conda activate demo-2.0; python -c 'import pip; print(\"pip\", pip.__version__)'"
  bash -c "source '$ROOT/etc/profile.d/conda.sh'; conda activate nb-1.0; python -c 'import IPython; print(\"IPython\", IPython.__version__)'"
  logger -n 127.0.0.1 -P "$PORT" -d -t demo-sync "sync" 2>/dev/null || true
  for _ in $(seq 50); do grep -q demo-sync "$USAGE/usage.log" 2>/dev/null && break; sleep 0.1; done
  $CPKGS usage
  kill $RSYSLOGD 2>/dev/null || true
fi

step "cpkgs catalog: the site's static web page (this host's installation)"
$CPKGS catalog

step "cpkgs install-tool  (this cpkgs on the share: python + its wheels, sealed, byte-compiled, run once as nobody)"
$CPKGS install-tool
ls -l "$ROOT/anaconda3_linux/cpkgs-tool/bin"
step "a user with only the profile runs cpkgs from the share"
env -i HOME="${HOME:-/tmp}" PATH=/usr/bin:/bin bash --norc --noprofile -c \
  "source '$ROOT/etc/profile.d/conda.sh'; command -v cpkgs; cpkgs --version; cpkgs list"

step "done: the demo site is in $ROOT"
