#!/usr/bin/env bash
# Build the pipeline's two images from this repository, tagged as the modules pin them:
#   ghcr.io/linum-uqam/linumpy-motor:<version>        containers/Dockerfile       (CPU)
#   ghcr.io/linum-uqam/linumpy-motor:<version>-cuda   containers/Dockerfile.cuda  (CUDA 12 + CuPy)
# <version> is linumpy_motor.__version__.
#
# Usage: containers/build.sh [--push] [--names] [cpu] [cuda]     (default: both images)
#   --names  print the image names, one per line, and build nothing
#   --push   push each image after building it (docker login ghcr.io first)
# Environment: IMAGE (default ghcr.io/linum-uqam/linumpy-motor), DOCKER (default docker).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-ghcr.io/linum-uqam/linumpy-motor}
DOCKER=${DOCKER:-docker}
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' linumpy_motor/__init__.py)
if [[ -z "$VERSION" ]]; then
    echo "containers/build.sh: no __version__ in linumpy_motor/__init__.py" >&2
    exit 2
fi

push=false names=false kinds=()
for arg in "$@"; do
    case "$arg" in
        --push) push=true ;;
        --names) names=true ;;
        cpu|cuda) kinds+=("$arg") ;;
        *) echo "containers/build.sh: unknown argument '$arg' (use --push, --names, cpu, cuda)" >&2; exit 2 ;;
    esac
done
[[ ${#kinds[@]} -gt 0 ]] || kinds=(cpu cuda)

for kind in "${kinds[@]}"; do
    if [[ "$kind" == cpu ]]; then
        tag="$IMAGE:$VERSION" dockerfile=containers/Dockerfile
    else
        tag="$IMAGE:$VERSION-cuda" dockerfile=containers/Dockerfile.cuda
    fi
    if $names; then
        echo "$tag"
        continue
    fi
    "$DOCKER" build -f "$dockerfile" -t "$tag" .
    if $push; then
        "$DOCKER" push "$tag"
    fi
done
