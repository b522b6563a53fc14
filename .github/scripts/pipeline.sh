#!/usr/bin/env bash
# The CI job's work, run wherever the project's virtual environment is active (tests/test_workflow.py runs it on
# the tiny pipeline): take what the DVC remote holds, reproduce what changed, share the results; given a base
# revision, write the PR report of this change against it.
#
#   .github/scripts/pipeline.sh [BASE_REV [REPORT.md [IMAGE_URL]]]
set -euo pipefail

base="${1:-}"
report="${2:-pr-report.md}"
image_url="${3:-}"

dvc pull --allow-missing   # outputs the remote has for this dvc.lock; a stage whose inputs changed reruns below
dvc repro
dvc push                   # so that the next run, and every teammate, pulls instead of retraining
if [ -n "$base" ]; then
    finetune pr-report --base "$base" --out "$report" ${image_url:+--image-url "$image_url"}
fi
