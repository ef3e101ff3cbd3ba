#!/bin/sh
# A harmless stand-in for rolling the gateway back: it says what a real one would do.
# A real one would, e.g.: kubectl -n edge rollout undo deployment/gateway --to-revision=...
# or: helm rollback gateway "$(helm history gateway | awk -v t="$1" '$0 ~ t {print $1}')"
set -eu
tag="$1"
echo "Rolling the gateway back to $tag (demo: nothing is changed)"
for step in "draining one zone" "deploying $tag" "checking /health" "restoring traffic"; do
    echo "  $step..."
    sleep 0.2
done
echo "gateway is on $tag"
