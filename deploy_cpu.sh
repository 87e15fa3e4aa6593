#!/usr/bin/env bash
# Deploy the SAM 2 tracker into CVAT's Nuclio (docker "local" platform), CPU image.
# Usage: ./deploy_cpu.sh   (variables below may be overridden from the environment)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/deploy.sh" function.yaml
