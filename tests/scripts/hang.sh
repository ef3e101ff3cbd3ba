#!/bin/bash
# Starts a background child, prints both pids and sleeps "forever". With "stubborn" it
# and its children ignore SIGTERM (an ignored signal stays ignored across exec), so only
# SIGKILL stops them.
if [[ ${1:-} == stubborn ]]; then trap '' TERM; fi
sleep 300 &
echo "child $!"
echo "main $$"
sleep 300
