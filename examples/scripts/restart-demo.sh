#!/bin/sh
# A harmless stand-in for restarting a service.
set -eu
echo "Restarting $1 (demo: nothing is changed)"
sleep 0.5
echo "$1 is back: 3/3 instances healthy"
