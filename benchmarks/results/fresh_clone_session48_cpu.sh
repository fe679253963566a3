#!/usr/bin/env bash
# Session 48: what CI does, from a fresh clone and a fresh venv: the README's two commands.
set -u
rm -rf /tmp/fc48 && git clone -q /work/main /tmp/fc48 && cd /tmp/fc48 && git log --oneline -1
date; bash scripts/setup.sh > /work/runs/s48/fc_setup.log 2>&1; echo "setup rc=$?"
date; timeout 1200 .venv/bin/python -m pytest -q 2>&1 | tail -2
date; timeout 1500 .venv/bin/sdsat demo 2>&1 | grep -v -i warn | tail -22
echo "demo rc=${PIPESTATUS[0]}"; date
