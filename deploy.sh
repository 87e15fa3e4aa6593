#!/usr/bin/env bash
# Shared by deploy_cpu.sh and deploy_gpu.sh: stages the function's files (not .venv,
# tests or caches) and runs `nuctl deploy` into CVAT's project with the Redis settings
# CVAT gives its trackers (cvat_redis_ondisk:6666 on the cvat_cvat network).
set -euo pipefail
spec="${1:?usage: deploy.sh function.yaml|function-gpu.yaml}"
here="$(cd "$(dirname "$0")" && pwd)"
: "${CVAT_FUNCTIONS_REDIS_HOST:=cvat_redis_ondisk}"
: "${CVAT_FUNCTIONS_REDIS_PORT:=6666}"
: "${CVAT_FUNCTIONS_REDIS_PASSWORD:=}"
: "${CVAT_NETWORK:=cvat_cvat}"
: "${NUCTL:=nuctl}"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp -r "$here"/main.py "$here"/model_handler.py "$here"/tracking "$here"/tracker_state "$stage"/
cp "$here/$spec" "$stage/function.yaml"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +

"$NUCTL" create project cvat --platform local 2>/dev/null || true
env_args=(
  --env "CVAT_FUNCTIONS_REDIS_HOST=$CVAT_FUNCTIONS_REDIS_HOST"
  --env "CVAT_FUNCTIONS_REDIS_PORT=$CVAT_FUNCTIONS_REDIS_PORT"
)
if [ -n "$CVAT_FUNCTIONS_REDIS_PASSWORD" ]; then
  env_args+=(--env "CVAT_FUNCTIONS_REDIS_PASSWORD=$CVAT_FUNCTIONS_REDIS_PASSWORD")
fi
"$NUCTL" deploy --project-name cvat \
  --path "$stage" --file "$stage/function.yaml" \
  --platform local \
  "${env_args[@]}" \
  --platform-config "{\"attributes\": {\"network\": \"$CVAT_NETWORK\"}}"
"$NUCTL" get function --platform local
