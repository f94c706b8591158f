#!/usr/bin/env bash
# Install the agent CLIs the tests run for real, at pinned versions, into one tools directory
# (kept between runs, so a second install is a no-op):
#   $ATTRACTOR_TOOLS/node/node_modules/.bin/{claude,codex}   npm packages
#   $ATTRACTOR_TOOLS/aider/bin/aider                          aider-chat in its own venv
#   $ATTRACTOR_TOOLS/bin/{claude,codex,aider}                 links to the three, nothing else
# The directory defaults to ~/.cache/attractor-tools. Prints the bin directory to put on PATH
# (only the three commands: aider's venv python must not shadow the system's).
set -euo pipefail
tools=${ATTRACTOR_TOOLS:-$HOME/.cache/attractor-tools}
python=${PYTHON:-python3}
CLAUDE_CODE_VERSION=2.1.332
CODEX_VERSION=0.171.0
AIDER_VERSION=0.86.2

mkdir -p "$tools/node"
if ! command -v npm >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "install_agent_clis: installing nodejs and npm with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
fi
want="@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION @openai/codex@$CODEX_VERSION"
stamp="$tools/node/.installed"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "install_agent_clis: npm install $want" >&2
  # shellcheck disable=SC2086
  npm install --prefix "$tools/node" --no-audit --no-fund --loglevel=error $want >&2
  echo "$want" >"$stamp"
fi
if [ "$(cat "$tools/aider/.installed" 2>/dev/null)" != "$AIDER_VERSION" ]; then
  echo "install_agent_clis: pip install aider-chat==$AIDER_VERSION" >&2
  [ -x "$tools/aider/bin/python" ] || "$python" -m venv "$tools/aider"
  "$tools/aider/bin/python" -m pip install -q --disable-pip-version-check "aider-chat==$AIDER_VERSION" >&2
  echo "$AIDER_VERSION" >"$tools/aider/.installed"
fi
mkdir -p "$tools/bin"
ln -sf "$tools/node/node_modules/.bin/claude" "$tools/bin/claude"
ln -sf "$tools/node/node_modules/.bin/codex" "$tools/bin/codex"
ln -sf "$tools/aider/bin/aider" "$tools/bin/aider"
for cli in claude codex aider; do
  "$tools/bin/$cli" --version >/dev/null 2>&1 || { echo "install_agent_clis: $cli does not run" >&2; exit 1; }
done
echo "$tools/bin"
