#!/usr/bin/env bash
# Installs what the build and the tests need, idempotently (Debian packages).
#   sipp (sip-tester): end-to-end SIP tests and benchmarks
set -euo pipefail
need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
if [ "${WITH_BENCH_PEERS:-0}" = 1 ]; then
  command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
