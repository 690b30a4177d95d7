#!/usr/bin/env bash
# Set everything up on a fresh machine and run the main job on the embedded demo faces:
# a virtual environment in .venv, fercurate with its dependencies, then
# `fercurate run recipes/quickstart.yaml`: draw the demo faces as a fer2013.csv, ingest and audit them.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/fercurate run recipes/quickstart.yaml
