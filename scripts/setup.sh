#!/usr/bin/env bash
# Installs what the build and the tests need, idempotently (Debian packages).
#   sipp (sip-tester), kamailio: end-to-end SIP tests and benchmarks; libopus-dev, cmake,
#   pkg-config: the opus crate; libsrtp2-dev: SRTP interop; tshark: capture
#   checks; dnsmasq: DNS SRV tests; fonts-dejavu-core: plot labels; chromium: WebRTC tests;
#   npm: SIP.js for the web phone (web/package.json)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
need_norec=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
# Kamailio 5.6: loadgen is tested against a proxy nobody here wrote; side-by-side benches.
command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
# libopus for the `opus` crate (loadgen --codec opus): pkg-config finds the system library,
# cmake builds it from source when it is missing.
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists opus 2>/dev/null || need+=(libopus-dev)
# libsrtp2: the SRTP interoperability test's peer.
[ -f /usr/include/srtp2/srtp.h ] || need+=(libsrtp2-dev)
# A private DNS server for RFC 3263 (SRV) tests.
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq)
# tshark: the media test checks the relay ports on the wire in a capture.
command -v tshark >/dev/null 2>&1 || need+=(tshark)
# A font for the labels of loadgen's PNG plots.
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
# Headless Chromium (fake camera/microphone): WHIP/WHEP and meeting tests with a real browser.
command -v chromium >/dev/null 2>&1 || need_norec+=(chromium)
# Node.js and npm: the web phone's SIP.js comes from the npm registry (web/package.json).
command -v npm >/dev/null 2>&1 || need_norec+=(npm)
# promtool (Debian `prometheus`, without its recommended web assets): lints /metrics.
command -v promtool >/dev/null 2>&1 || need_norec+=(prometheus)
if [ ${#need[@]} -gt 0 ] || [ ${#need_norec[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  [ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  [ ${#need_norec[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_norec[@]}" >/dev/null
fi
# schemathesis (PyPI): fuzzes the admin API from its OpenAPI document.
command -v schemathesis >/dev/null 2>&1 || python3 -m pip install -q --disable-pip-version-check schemathesis >/dev/null
# aiortc (PyPI): an independent WebRTC stack for the WHIP/WHEP interop test.
python3 -c "import aiortc" >/dev/null 2>&1 || python3 -m pip install -q --disable-pip-version-check aiortc >/dev/null
# SIP.js for the web phone page (/phone), pinned by web/package-lock.json.
[ -f web/node_modules/sip.js/lib/index.js ] || (cd web && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
