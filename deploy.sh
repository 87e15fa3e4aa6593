#!/usr/bin/env bash
# Shared by deploy_cpu.sh and deploy_gpu.sh: stages the function folder
# (serverless/sam2_tracker/nuclio: its code and nothing else, no bytecode caches), writes
# the spec for the chosen model size into it as function.yaml, and runs `nuctl deploy`
# into CVAT's project with the Redis settings CVAT gives its trackers
# (cvat_redis_ondisk:6666 on the cvat_cvat network).
#
#   SAM2_MODEL_SIZE=tiny|small|base_plus|large   (default tiny) which SAM 2.1 checkpoint the
#                                               image fetches and the function loads
#   TRACKER_BACKEND=sam2|deaot                    (default sam2) deaot deploys the DeAOT
#                                               function (specs in deploy/deaot/), a
#                                               second function beside SAM 2's
#   DEAOT_MODEL=deaott|deaots|deaotb|deaotl|r50_deaotl|swinb_deaotl  (default deaott)
#   STAGE_DIR=DIR   write the staged function to DIR/<function>/nuclio instead of
#                   deploying it: CVAT's serverless/deploy_cpu.sh (or _gpu.sh) DIR deploys it
set -euo pipefail
spec="${1:?usage: deploy.sh function.yaml|function-gpu.yaml}"
here="$(cd "$(dirname "$0")" && pwd)"
function_dir="$here/serverless/sam2_tracker/nuclio"
: "${SAM2_MODEL_SIZE:=tiny}"
: "${TRACKER_BACKEND:=sam2}"
: "${DEAOT_MODEL:=deaott}"
: "${STAGE_DIR:=}"
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

spec_source="$function_dir/$spec"
function_name=sam2_tracker
if [ "$TRACKER_BACKEND" = deaot ]; then
  # Google Drive ids of the PRE_YTB_DAV checkpoints in aot-benchmark's MODEL_ZOO.md.
  case "$DEAOT_MODEL" in
    deaott) drive_id=1ThWIZQS03cYWx1EKNN8MIMnJS5eRowzr ;;
    deaots) drive_id=1YwIAV5tBtn5spSFxKLBQBEQGwPHyQlHi ;;
    deaotb) drive_id=1BHxsonnvJXylqHlZ1zJHHc-ymKyq-CFf ;;
    deaotl) drive_id=18elNz_wi9JyVBcIUYKhRdL08MA-FqHD5 ;;
    r50_deaotl) drive_id=1QoChMkTVxdYZ_eBlZhK2acq9KMQZccPJ ;;
    swinb_deaotl) drive_id=1g4E-F0RPOx9Nd6J7tU9AE1TjsouL4oZq ;;
    *) echo "DEAOT_MODEL must be deaott, deaots, deaotb, deaotl, r50_deaotl or swinb_deaotl, not '$DEAOT_MODEL'" >&2
       exit 2 ;;
  esac
  spec_source="$here/deploy/deaot/$spec"
  dns_model="${DEAOT_MODEL//_/-}"
  function_name="${DEAOT_MODEL}_tracker"
  rename+=(-e "s/pth-deaott-tracker/pth-$dns_model-tracker/g"
           -e "s/cvat\.pth\.deaott-tracker/cvat.pth.$dns_model-tracker/g"
           -e "s/1ThWIZQS03cYWx1EKNN8MIMnJS5eRowzr/$drive_id/g"
           -e "s/deaott/$DEAOT_MODEL/g")
elif [ "$TRACKER_BACKEND" != sam2 ]; then
  echo "TRACKER_BACKEND must be sam2 or deaot, not '$TRACKER_BACKEND'" >&2
  exit 2
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp -r "$function_dir"/. "$stage"/
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
rm -f "$stage"/function*.yaml
sed -e "s/sam2\.1_hiera_tiny\.pt/sam2.1_hiera_$SAM2_MODEL_SIZE.pt/g" \
    -e "s/sam2\.1_hiera_t\.yaml/sam2.1_hiera_$letter.yaml/g" \
    "${rename[@]}" "$spec_source" > "$stage/function.yaml"

if [ -n "$STAGE_DIR" ]; then
  # CVAT's deploy_cpu.sh deploys every function.yaml under its path, deploy_gpu.sh every
  # function-gpu.yaml.
  # The CPU and the GPU spec of one function may be staged into the same folder.
  target="$STAGE_DIR/$function_name/nuclio"
  mkdir -p "$target"
  mv "$stage/function.yaml" "$stage.spec"
  cp -r "$stage"/. "$target"/
  mv "$stage.spec" "$target/$spec"
  echo "staged $target"
  exit 0
fi

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
