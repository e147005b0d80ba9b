#!/usr/bin/env bash
# System prerequisites that pip cannot provide. Checks first; installs only what is missing.
set -euo pipefail
JAVA17=/usr/lib/jvm/java-17-openjdk-amd64/bin/java
missing=()
[ -x "$JAVA17" ] || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v kcat >/dev/null || command -v kafkacat >/dev/null || missing+=(kafkacat)
# Headless browser of the web-page test (tests/e2e/test_web_page.py).
command -v chromium >/dev/null || missing+=(chromium)
# Prometheus for `python -m orchestration monitor`; the package brings promtool (rule tests).
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> setup: installing ${missing[*]} with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "error: missing system packages: ${missing[*]} (install them, e.g. apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
