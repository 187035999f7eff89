#!/usr/bin/env bash
# The one entry point a newcomer needs: `bash scripts/run.sh <npm script> [args]`.
# fieldmesh runs on Node.js >= 22 (24 LTS). When the system Node is older (this fleet ships 20),
# Node 24 comes from the npm registry (the `node@24` package) into .toolchain/, used only by this project.
set -euo pipefail
cd "$(dirname "$0")/.."

system_major=$( (node -p 'process.versions.node.split(".")[0]' 2>/dev/null) || echo 0)
if [ "$system_major" -lt 22 ]; then
  if [ ! -x .toolchain/node_modules/node/bin/node ]; then
    echo "fieldmesh: system Node is ${system_major:-absent}, installing Node 24 into .toolchain/ (npm package node@24)" >&2
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
