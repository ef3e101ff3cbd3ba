#!/bin/sh
# Appends "start <epoch seconds> <pid>" to $RECORD, sleeps $1 seconds, then appends the
# same "end" line: the tests that check two runs of one action never overlap read it.
echo "start $(date +%s.%N) $$" >> "$RECORD"
sleep "$1"
echo "end $(date +%s.%N) $$" >> "$RECORD"
