#!/usr/bin/env bash
# Reproduce docs/report.png: a 16-image run of the bundled digits model, scored with the digits classifier,
# its `dsample report`, rendered by headless Chromium (Debian: apt-get install -y chromium).
# Usage: scripts/report_screenshot.sh [OUTPUT_PNG]   (default docs/report.png; run from the repository root)
set -euo pipefail
out_png=${1:-docs/report.png}
dsample=${DSAMPLE:-.venv/bin/dsample}
chromium=${CHROMIUM:-chromium}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$dsample" generate --prompt 3 --prompt 8 --num-images 8 --steps 6 --out "$work/digits-3-and-8" --quiet > /dev/null
"$dsample" score "$work/digits-3-and-8" --reward digits --quiet > /dev/null
report=$("$dsample" report "$work/digits-3-and-8")
# the flags keep Chromium off the network (no background, component or sync requests)
"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/profile" --hide-scrollbars --window-size=1280,1600 \
  --screenshot="$(realpath -m "$out_png")" "file://$(realpath "$report")" 2> "$work/chromium.log" \
  || { cat "$work/chromium.log" >&2; exit 1; }
echo "$out_png"
