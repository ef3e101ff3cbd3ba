#!/bin/bash
# Lists release tags one a line (with a blank line and padding to strip) after
# $LISTER_DELAY seconds; touches $MARKER, when set, to prove that it ran.
if [[ -n ${MARKER:-} ]]; then : >"$MARKER"; fi
sleep "${LISTER_DELAY:-0}"
printf '%s\n' v1.1 v1.2 '' '  v1.3  '
