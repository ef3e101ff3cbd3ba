#!/bin/bash
# Prints each argument as "arg:[value]", then its whole environment as "env:NAME=value"
# (as it was given, before bash adds its own), and touches $MARKER, when set, to prove
# that it ran.
if [[ -n ${MARKER:-} ]]; then : >"$MARKER"; fi
for arg in "$@"; do printf 'arg:[%s]\n' "$arg"; done
while IFS= read -r -d '' pair; do printf 'env:%s\n' "$pair"; done </proc/self/environ
