#!/bin/bash
# One line of 115 000-odd characters, no blanks, with $DEPLOY_TOKEN inside: "across"
# puts it where a 64 KiB cut would fall; "late" sends its first 6 characters just past
# 64 KiB and the rest 0.2 s later, while the line is still arriving.
run_of() { head -c "$1" /dev/zero | tr '\0' "$2"; }
case ${1:-across} in
    across)
        run_of 65530 x
        printf '%s' "$DEPLOY_TOKEN"
        ;;
    late)
        run_of 65533 x
        printf '%s' "${DEPLOY_TOKEN:0:6}"
        sleep 0.2
        printf '%s' "${DEPLOY_TOKEN:6}"
        ;;
esac
run_of 50000 y
echo
