#!/bin/bash
# Exits at once, leaving a background child that holds the output pipe open. With
# "escape" a second one leaves the process group too (its own session), so killing the
# group cannot reach it.
sleep 300 &
echo "child $!"
if [[ ${1:-} == escape ]]; then
    setsid bash -c 'echo "escaped $$"; exec sleep 300' &
    sleep 0.2 # let it say its pid first
fi
echo "main done"
