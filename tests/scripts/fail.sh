#!/bin/bash
# Says why on stderr and fails with exit status 3.
echo "rolling back"
echo "release v0.0 not found" >&2
exit 3
