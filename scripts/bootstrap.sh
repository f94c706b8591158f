#!/usr/bin/env bash
# Set up attractor on a fresh Debian machine and run it.
#   bash scripts/bootstrap.sh demo   install tmux, git and attractor; run pipelines/demo.dot
#   bash scripts/bootstrap.sh test   install the test dependencies (with the pinned agent CLIs the
#                                    tests run for real: Claude Code, Codex, Aider); run the suite
#   bash scripts/bootstrap.sh lint   ruff and mypy --strict over the sources
# The virtual environment is .venv in the checkout (override with ATTRACTOR_VENV).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
venv=${ATTRACTOR_VENV:-$here/.venv}
python=${PYTHON:-python3}

need_apt=()
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
command -v git >/dev/null 2>&1 || need_apt+=(git)
"$python" -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
[ "${1:-demo}" != test ] || command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# the dashboard's browser tests drive the system's chromium (never Playwright's own download)
[ "${1:-demo}" != test ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: installing ${need_apt[*]} with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating virtual environment $venv" >&2
  "$python" -m venv "$venv"
fi
extras=""
case "${1:-demo}" in test|lint) extras="[test]" ;; esac
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".$extras" 2>&1 \
  | grep -v "^WARNING: Location" >&2 || true
"$venv/bin/python" -c 'import attractor' || { echo "bootstrap: install failed" >&2; exit 1; }

case "${1:-demo}" in
  demo)
    shift || true
    exec "$venv/bin/attractor" demo "$@"
    ;;
  test)
    shift || true
    # the real agent CLIs, at pinned versions, in a cache kept between runs
    bin_dirs=$(bash "$here/scripts/install_agent_clis.sh")
    while IFS= read -r bin_dir; do
      PATH="$bin_dir:$PATH"
    done <<<"$bin_dirs"
    export PATH
    exec "$venv/bin/python" -m pytest "$@"
    ;;
  lint)
    "$venv/bin/ruff" check src tests scripts bench
    "$venv/bin/mypy" --strict src/
    ;;
  *)
    echo "usage: bash scripts/bootstrap.sh demo|test|lint" >&2
    exit 2
    ;;
esac
