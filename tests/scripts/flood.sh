#!/bin/bash
# "lines N": N bytes of a short repeated line; "long N": N bytes with no newline at all.
case ${1:-lines} in
    lines) yes 'all work and no play 0123456789' | head -c "${2:-20000000}" ;;
    long) head -c "${2:-5000000}" /dev/zero | tr '\0' x ;;
esac
