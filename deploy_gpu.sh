#!/usr/bin/env bash
# Deploy the SAM 2 tracker into CVAT's Nuclio (docker "local" platform), GPU image.
# Usage: ./deploy_gpu.sh   (variables below may be overridden from the environment)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/deploy.sh" function-gpu.yaml
