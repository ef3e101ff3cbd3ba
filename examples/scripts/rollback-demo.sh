#!/bin/sh
# A harmless stand-in for a real rollback: it says what a real one would do, slowly
# enough that you see the job acknowledged, its progress, then its result.
set -eu
tag="$1"
echo "Rolling back web to $tag (demo: nothing is changed)"
for step in "draining traffic" "deploying $tag" "running health checks" "restoring traffic"; do
    echo "  $step..."
    sleep 1
done
# The demo web service (scripts/web-demo.py, started by examples/demo.sh) reports this
# tag on /version from now on: what the rollback runbook verifies.
echo "$tag" > "$(dirname "$0")/.web-demo-version"
echo "web is on $tag"
