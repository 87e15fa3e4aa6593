#!/usr/bin/env bash
# Shared by deploy_cpu.sh and deploy_gpu.sh: stages the function folder
# (serverless/sam2_tracker/nuclio: its code and nothing else, no bytecode caches), writes
# the spec for the chosen model size into it as function.yaml, and runs `nuctl deploy`
# into CVAT's project "cvat": on Docker (Nuclio's "local" platform) with the Redis
# settings CVAT gives its trackers (cvat_redis_ondisk:6666 on the cvat_cvat network), or
# on Kubernetes next to a CVAT Helm release.
#
#   SAM2_MODEL_SIZE=tiny|small|base_plus|large   (default tiny) which SAM 2.1 checkpoint the
#                   image fetches and the function loads; sizes other than tiny get their
#                   own function name, image and staging folder, so sizes run side by side
#   TRACKER_BACKEND=sam2|deaot  (default sam2) deaot deploys the DeAOT function (specs in
#                   deploy/deaot/), a second function beside SAM 2's
#   DEAOT_MODEL=deaott|deaots|deaotb|deaotl|r50_deaotl|swinb_deaotl  (default deaott)
#   SAM2_MAX_OBJECTS_PER_CALL=N  objects per call (CPU default: per size, so that a call
#                   fits in half of CVAT's 120 s; see docs/benchmarks.md; GPU: 32)
#   SAM2_DEVICE=cuda:N  (GPU) which GPU: on Docker every GPU function sees all GPUs and
#                   would use the first
#   TORCH_CUDA=cu130|cu126  (GPU, default cu130) the CUDA build of torch: cu130 is PyPI's
#                   wheel (NVIDIA driver R580 or newer, Turing or newer GPUs); cu126 comes
#                   from download.pytorch.org (drivers from R525)
#   STAGE_DIR=DIR   write the staged function to DIR/<function>/nuclio instead of
#                   deploying it: CVAT's serverless/deploy_cpu.sh (or _gpu.sh) DIR deploys it
#   NUCLIO_PLATFORM=local|kube  (default local) kube deploys into a Kubernetes cluster:
#     CVAT_RELEASE (default cvat) and CVAT_NAMESPACE (default cvat): CVAT's Helm release
#       and its namespace (the functions' namespace CVAT calls); Kvrocks is then
#       <release>-kvrocks:6666 unless CVAT_FUNCTIONS_REDIS_HOST/_PORT say otherwise
#     KVROCKS_SECRET (default <release>-kvrocks-secret; empty: no password) and
#       KVROCKS_SECRET_KEY (default password): the Kubernetes secret holding Kvrocks's
#       password, read by the pod itself (never on the command line or in the spec)
#     REGISTRY (required) where nuctl pushes the image; RUN_REGISTRY where nodes pull it
#     MIN_REPLICAS, MAX_REPLICAS (default 1, 1); CPU_REQUEST, MEMORY_REQUEST (CPU spec:
#       4 and 4Gi, also its CPU limit; GPU spec: 2 and 8Gi); GPU_TOLERATION (default
#       nvidia.com/gpu: the taint GPU nodes usually carry; empty: none)
set -euo pipefail
spec="${1:?usage: deploy.sh function.yaml|function-gpu.yaml}"
here="$(cd "$(dirname "$0")" && pwd)"
function_dir="$here/serverless/sam2_tracker/nuclio"
: "${SAM2_MODEL_SIZE:=tiny}"
: "${TRACKER_BACKEND:=sam2}"
: "${DEAOT_MODEL:=deaott}"
: "${STAGE_DIR:=}"
: "${NUCLIO_PLATFORM:=local}"
: "${CVAT_RELEASE:=cvat}"
: "${CVAT_NAMESPACE:=cvat}"
if [ "$NUCLIO_PLATFORM" = kube ]; then
  : "${CVAT_FUNCTIONS_REDIS_HOST:=$CVAT_RELEASE-kvrocks}"
else
  : "${CVAT_FUNCTIONS_REDIS_HOST:=cvat_redis_ondisk}"
fi
: "${CVAT_FUNCTIONS_REDIS_PORT:=6666}"
: "${CVAT_FUNCTIONS_REDIS_PASSWORD:=}"
: "${CVAT_NETWORK:=cvat_cvat}"
: "${SAM2_DEVICE:=}"
: "${TORCH_CUDA:=cu130}"
: "${NUCTL:=nuctl}"
gpu=false
[ "$spec" = function-gpu.yaml ] && gpu=true
case "$NUCLIO_PLATFORM" in
  local|kube) ;;
  *) echo "NUCLIO_PLATFORM must be local or kube, not '$NUCLIO_PLATFORM'" >&2; exit 2 ;;
esac
case "$TORCH_CUDA" in
  cu130|cu126) ;;
  *) echo "TORCH_CUDA must be cu130 or cu126, not '$TORCH_CUDA'" >&2; exit 2 ;;
esac

# Checkpoint sam2.1_hiera_<size>.pt goes with config sam2.1_hiera_<letter>.yaml; its
# SHA-256 (tracking/model_loading.py OFFICIAL_CHECKSUMS) is checked when the image is built.
# CPU objects per call: what fits in 60 s at one thread per worker (bench/call_budget.py).
tiny_sha256=7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69
case "$SAM2_MODEL_SIZE" in
  tiny) letter=t; cpu_objects=7
        sha256=$tiny_sha256 ;;
  small) letter=s; cpu_objects=7
         sha256=6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38 ;;
  base_plus) letter=b+; cpu_objects=6
             sha256=a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5 ;;
  large) letter=l; cpu_objects=4
         sha256=2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318 ;;
  *) echo "SAM2_MODEL_SIZE must be tiny, small, base_plus or large, not '$SAM2_MODEL_SIZE'" >&2
     exit 2 ;;
esac
# The shipped specs are for tiny. Other sizes get their own function name and image, so
# several sizes can be deployed side by side (Nuclio names allow no underscore).
rename=(-e "s/$tiny_sha256/$sha256/g")
function_name=sam2_tracker
if [ "$SAM2_MODEL_SIZE" != tiny ]; then
  dns_size="${SAM2_MODEL_SIZE//_/-}"
  rename+=(-e "s/sam2-tracker/sam2-$dns_size-tracker/g"
           -e "s/Segment Anything 2.1 Tracker/Segment Anything 2.1 Tracker ($SAM2_MODEL_SIZE)/")
  function_name="sam2_${SAM2_MODEL_SIZE}_tracker"  # a folder per size when staging
fi

spec_source="$function_dir/$spec"
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
# A value in the spec's env list: set_env NAME VALUE (sed edits of the line after the name).
set_env() { rename+=(-e "/name: $1\$/{" -e n -e "s|value: .*|value: \"$2\"|" -e "}"); }
if [ "$TRACKER_BACKEND" = sam2 ] && [ "$gpu" = false ]; then
  set_env SAM2_MAX_OBJECTS_PER_CALL "${SAM2_MAX_OBJECTS_PER_CALL:-$cpu_objects}"
elif [ -n "${SAM2_MAX_OBJECTS_PER_CALL:-}" ]; then
  set_env SAM2_MAX_OBJECTS_PER_CALL "$SAM2_MAX_OBJECTS_PER_CALL"
fi
[ -n "$SAM2_DEVICE" ] && set_env SAM2_DEVICE "$SAM2_DEVICE"
if [ "$gpu" = true ] && [ "$TORCH_CUDA" != cu130 ]; then
  rename+=(-e "s|pip install --no-cache-dir torch==|pip install --no-cache-dir --index-url https://download.pytorch.org/whl/$TORCH_CUDA torch==|")
fi
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

if [ "$NUCLIO_PLATFORM" = kube ]; then
  : "${REGISTRY:?NUCLIO_PLATFORM=kube needs REGISTRY: where nuctl pushes the function image}"
  : "${KVROCKS_SECRET=$CVAT_RELEASE-kvrocks-secret}"
  : "${KVROCKS_SECRET_KEY:=password}"
  : "${MIN_REPLICAS:=1}"
  : "${MAX_REPLICAS:=1}"
  : "${GPU_TOLERATION=nvidia.com/gpu}"
  if [ "$gpu" = true ]; then
    : "${CPU_REQUEST:=2}" "${MEMORY_REQUEST:=8Gi}"
  else
    : "${CPU_REQUEST:=4}" "${MEMORY_REQUEST:=4Gi}"
  fi
  # The store and its password (from the secret, read by the pod), after the spec's env.
  kube_env="$stage.env"
  {
    echo "    - name: CVAT_FUNCTIONS_REDIS_HOST"
    echo "      value: \"$CVAT_FUNCTIONS_REDIS_HOST\""
    echo "    - name: CVAT_FUNCTIONS_REDIS_PORT"
    echo "      value: \"$CVAT_FUNCTIONS_REDIS_PORT\""
    if [ -n "$KVROCKS_SECRET" ]; then
      echo "    - name: CVAT_FUNCTIONS_REDIS_PASSWORD"
      echo "      valueFrom:"
      echo "        secretKeyRef:"
      echo "          name: \"$KVROCKS_SECRET\""
      echo "          key: \"$KVROCKS_SECRET_KEY\""
    fi
  } > "$kube_env"
  sed -i.bak -e "/^  env:\$/r $kube_env" "$stage/function.yaml"
  # Replicas, requests (the CPU spec also limits its CPUs: the quota its threads are
  # split from), GPU tolerations: spec: is the specs' last top-level key.
  if [ "$gpu" = true ]; then
    sed -i.bak -e "s|^  resources:\$|  resources:\\
    requests:\\
      cpu: \"$CPU_REQUEST\"\\
      memory: \"$MEMORY_REQUEST\"|" "$stage/function.yaml"
  else
    {
      echo "  resources:"
      echo "    requests:"
      echo "      cpu: \"$CPU_REQUEST\""
      echo "      memory: \"$MEMORY_REQUEST\""
      echo "    limits:"
      echo "      cpu: \"$CPU_REQUEST\""
    } >> "$stage/function.yaml"
  fi
  {
    echo "  minReplicas: $MIN_REPLICAS"
    echo "  maxReplicas: $MAX_REPLICAS"
    if [ "$gpu" = true ] && [ -n "$GPU_TOLERATION" ]; then
      echo "  tolerations:"
      echo "    - key: \"$GPU_TOLERATION\""
      echo "      operator: Exists"
      echo "      effect: NoSchedule"
    fi
  } >> "$stage/function.yaml"
  rm -f "$stage/function.yaml.bak" "$kube_env"
  # Nuclio refuses a function whose project does not exist ("Project does not exist");
  # projects live per namespace. An existing project is kept.
  "$NUCTL" get project cvat --platform kube --namespace "$CVAT_NAMESPACE" >/dev/null 2>&1 ||
    "$NUCTL" create project cvat --platform kube --namespace "$CVAT_NAMESPACE"
  registry_args=(--registry "$REGISTRY")
  [ -n "${RUN_REGISTRY:-}" ] && registry_args+=(--run-registry "$RUN_REGISTRY")
  "$NUCTL" deploy --project-name cvat \
    --path "$stage" --file "$stage/function.yaml" \
    --platform kube --namespace "$CVAT_NAMESPACE" \
    "${registry_args[@]}"
  "$NUCTL" get function --platform kube --namespace "$CVAT_NAMESPACE"
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
