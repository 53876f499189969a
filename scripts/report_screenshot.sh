#!/usr/bin/env bash
# Reproduce docs/report.png: a 16-image run of the bundled digits model, scored with the digits classifier,
# its `dsample report`, rendered by headless Chromium (Debian: apt-get install -y chromium); and
# docs/report-search.png: the report of an 8-image SMC search run (8 particles, guidance 1, digits reward), which shows
# the search curves (best reward against NFE per image, and their mean) and the reward-against-NFE scatter.
# Usage: scripts/report_screenshot.sh [OUTPUT_PNG [SEARCH_PNG]]
#   (defaults docs/report.png and docs/report-search.png; run from the repository root)
set -euo pipefail
out_png=${1:-docs/report.png}
search_png=${2:-docs/report-search.png}
dsample=${DSAMPLE:-.venv/bin/dsample}
chromium=${CHROMIUM:-chromium}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$dsample" generate --prompt 3 --prompt 8 --num-images 8 --steps 6 --out "$work/digits-3-and-8" --quiet > /dev/null
"$dsample" score "$work/digits-3-and-8" --reward digits --quiet > /dev/null
report=$("$dsample" report "$work/digits-3-and-8")
"$dsample" generate --prompt 3 --prompt 8 --num-images 4 --steps 10 --guidance 1 --search smc --particles 8 \
  --reward digits --out "$work/search" --quiet > /dev/null
search_report=$("$dsample" report "$work/search")

screenshot() {  # REPORT_HTML OUTPUT_PNG HEIGHT
  mkdir -p "$(dirname "$2")"
  # the flags keep Chromium off the network (no background, component or sync requests)
  "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/profile" --hide-scrollbars --window-size="1280,$3" \
    --screenshot="$(realpath -m "$2")" "file://$(realpath "$1")" 2> "$work/chromium.log" \
    || { cat "$work/chromium.log" >&2; exit 1; }
  echo "$2"
}
screenshot "$report" "$out_png" 1600
screenshot "$search_report" "$search_png" 1900
