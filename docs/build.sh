#!/usr/bin/env bash
# Build the tutorials site: bash docs/build.sh OUT_DIR [--full] [--reuse DIR]
#   OUT_DIR/index.html  the course (8 executed notebooks), the glossary and the API reference, offline from file://
#   --full              execute the notebooks with their own (full-size) defaults instead of docs/ci_parameters.json
#   --reuse DIR         take already executed notebooks (DIR/<name>.executed.ipynb or DIR/<name>.ipynb) where present
#   --keep-executed DIR copy the executed notebooks into DIR (e.g. for a later --reuse)
# Needs the `docs` extra (pip install -e '.[docs]') and npm (MathJax is vendored from the npm registry once,
# then cached in ${SKELLAB_DOCS_CACHE:-~/.cache/skellab-docs}).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: bash docs/build.sh OUT_DIR [--full] [--reuse DIR] [--keep-executed DIR]" >&2
  exit 2
fi
OUT=$1
shift
PY=${PYTHON:-python3}
CACHE=${SKELLAB_DOCS_CACHE:-$HOME/.cache/skellab-docs}
MATHJAX_VERSION=3.2.2
MATHJAX="$CACHE/mathjax-$MATHJAX_VERSION/tex-svg-full.js"
if [ ! -s "$MATHJAX" ]; then
  command -v npm >/dev/null || { echo "docs/build.sh: npm is needed once to vendor MathJax (apt-get install npm)" >&2; exit 1; }
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "mathjax@$MATHJAX_VERSION" >/dev/null && tar -xzf "mathjax-$MATHJAX_VERSION.tgz" package/es5/tex-svg-full.js)
  mkdir -p "$(dirname "$MATHJAX")"
  mv "$tmp/package/es5/tex-svg-full.js" "$MATHJAX"
  rm -rf "$tmp"
fi
start=$(date +%s)
"$PY" docs/build_site.py "$OUT" --mathjax "$MATHJAX" "$@"
echo "site: $OUT/index.html ($(( $(date +%s) - start )) s)"
