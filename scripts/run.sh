#!/usr/bin/env bash
# The one entry point a newcomer needs: `bash scripts/run.sh <npm script> [args]`.
# fieldmesh runs on a Node.js that runs TypeScript as is (24 LTS; 22.18+). When the system Node
# cannot (this fleet ships 20), Node 24 comes from the npm registry (the `node@24` package) into
# .toolchain/, used only by this project.
set -euo pipefail
cd "$(dirname "$0")/.."

system_node=$( (node -p 'process.features.typescript ? "ok" : process.version' 2>/dev/null) || echo absent)
if [ "$system_node" != ok ]; then
  if [ ! -x .toolchain/node_modules/node/bin/node ]; then
    echo "fieldmesh: system Node ($system_node) does not run TypeScript, installing Node 24 into .toolchain/ (npm package node@24)" >&2
    mkdir -p .toolchain
    npm install --prefix .toolchain --no-save --no-audit --no-fund --loglevel=error node@24 >&2
  fi
  export PATH="$PWD/.toolchain/node_modules/node/bin:$PATH"
fi

# Install dependencies when they are missing or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error >&2
fi

if [ "$#" -eq 0 ]; then set -- start; fi
script=$1; shift
exec npm run --silent "$script" -- "$@"
