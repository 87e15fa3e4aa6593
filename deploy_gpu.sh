#!/usr/bin/env bash
# Deploy the SAM 2 tracker into CVAT's Nuclio (docker "local" platform), GPU image.
# Usage: [SAM2_MODEL_SIZE=tiny|small|base_plus|large] ./deploy_gpu.sh  (deploy.sh lists the
# variables that may be overridden from the environment)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/deploy.sh" function-gpu.yaml
