#!/bin/sh
# The release tags a rollback may go to. A real one would run: git tag --list 'v*'
printf '%s\n' v1.0 v1.1 v1.2 v1.3
