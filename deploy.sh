#!/usr/bin/env bash
# Shared by deploy_cpu.sh and deploy_gpu.sh: stages the function folder
# (serverless/sam2_tracker/nuclio: its code and nothing else, no bytecode caches), writes
# the spec for the chosen model size into it as function.yaml, and runs `nuctl deploy`
# into CVAT's project with the Redis settings CVAT gives its trackers
# (cvat_redis_ondisk:6666 on the cvat_cvat network).
#
#   SAM2_MODEL_SIZE=tiny|small|base_plus|large   (default tiny) which SAM 2.1 checkpoint the
#                                               image fetches and the function loads
set -euo pipefail
spec="${1:?usage: deploy.sh function.yaml|function-gpu.yaml}"
here="$(cd "$(dirname "$0")" && pwd)"
function_dir="$here/serverless/sam2_tracker/nuclio"
: "${SAM2_MODEL_SIZE:=tiny}"
: "${CVAT_FUNCTIONS_REDIS_HOST:=cvat_redis_ondisk}"
: "${CVAT_FUNCTIONS_REDIS_PORT:=6666}"
: "${CVAT_FUNCTIONS_REDIS_PASSWORD:=}"
: "${CVAT_NETWORK:=cvat_cvat}"
: "${NUCTL:=nuctl}"

# Checkpoint sam2.1_hiera_<size>.pt goes with config sam2.1_hiera_<letter>.yaml.
case "$SAM2_MODEL_SIZE" in
  tiny) letter=t ;;
  small) letter=s ;;
  base_plus) letter=b+ ;;
  large) letter=l ;;
  *) echo "SAM2_MODEL_SIZE must be tiny, small, base_plus or large, not '$SAM2_MODEL_SIZE'" >&2
     exit 2 ;;
esac
# The shipped specs are for tiny. Other sizes get their own function name and image, so
# several sizes can be deployed side by side (Nuclio names allow no underscore).
rename=()
if [ "$SAM2_MODEL_SIZE" != tiny ]; then
  dns_size="${SAM2_MODEL_SIZE//_/-}"
  rename=(-e "s/sam2-tracker/sam2-$dns_size-tracker/g"
          -e "s/Segment Anything 2.1 Tracker/Segment Anything 2.1 Tracker ($SAM2_MODEL_SIZE)/")
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp -r "$function_dir"/. "$stage"/
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
rm -f "$stage"/function*.yaml
sed -e "s/sam2\.1_hiera_tiny\.pt/sam2.1_hiera_$SAM2_MODEL_SIZE.pt/g" \
    -e "s/sam2\.1_hiera_t\.yaml/sam2.1_hiera_$letter.yaml/g" \
    "${rename[@]}" "$function_dir/$spec" > "$stage/function.yaml"

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
