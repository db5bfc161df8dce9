#!/usr/bin/env bash
# Vendor the web pages' JS libraries into the package (docs/dashboard.md): npm at build time only,
# nothing from a CDN at run time. Change a version here, run `make web-assets`, check the pages
# (tests/api/test_dashboard.py) and commit veloxserve/api/static/.
set -euo pipefail
UPLOT=1.6.32            # https://www.npmjs.com/package/uplot (MIT): the dashboard's charts
SWAGGER_UI=5.35.0       # https://www.npmjs.com/package/swagger-ui-dist (Apache-2.0): /docs

static="$(cd "$(dirname "$0")/.." && pwd)/veloxserve/api/static"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent "uplot@$UPLOT" "swagger-ui-dist@$SWAGGER_UI" >/dev/null
mkdir uplot swagger
tar xzf "uplot-$UPLOT.tgz" -C uplot
tar xzf "swagger-ui-dist-$SWAGGER_UI.tgz" -C swagger
cp uplot/package/dist/uPlot.iife.min.js uplot/package/dist/uPlot.min.css "$static/"
cp uplot/package/LICENSE "$static/uPlot.LICENSE.txt"
cp swagger/package/swagger-ui-bundle.js swagger/package/swagger-ui.css swagger/package/swagger-ui-bundle.js.LICENSE.txt "$static/"
cat swagger/package/NOTICE swagger/package/LICENSE > "$static/swagger-ui.LICENSE.txt"
printf '{\n  "uplot": "%s",\n  "swagger-ui-dist": "%s"\n}\n' "$UPLOT" "$SWAGGER_UI" > "$static/vendored.json"
echo "vendored uplot $UPLOT and swagger-ui-dist $SWAGGER_UI into $static"
