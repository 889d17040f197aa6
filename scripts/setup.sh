#!/usr/bin/env bash
# Install what the B2BUA needs on a Debian machine, idempotently:
#   Debian packages (compiler, swig, the codec and resampler libraries pjsua2 links; with --test
#   also sipp and the database servers), a virtualenv in .venv with the project, and pjsua2 built
#   from pjproject source (cached wheel; rebuilt when scripts/build-pjsua2.sh's configuration changed).
# Usage: scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."

TEST=0
[ "${1:-}" = "--test" ] && TEST=1
say() { printf '[setup] %s\n' "$*" >&2; }

# libopus-dev (Opus), libbcg729-dev (G.729), libspeexdsp-dev (resampler), libssl-dev (SIP over TLS),
# libsrtp2-dev (SRTP): see scripts/build-pjsua2.sh
packages=(build-essential dpkg-dev swig xz-utils ca-certificates libopus-dev libbcg729-dev libspeexdsp-dev libssl-dev
          libsrtp2-dev)
# sipvicious: svmap/svwar, the scanners tests/e2e/test_wire_input.py runs against the B2BUA;
# redis-server: the cluster tests start their own (tests/redisserver.py); kamailio: the edge proxy in
# front of the cluster (docs/examples/edge/kamailio-edge.cfg, tests/e2e/test_cluster_edge.py);
# chromium, chromium-driver: the headless browser tests/e2e/test_web.py drives (Selenium);
# openssl: the test certificates of SIP over TLS (tests/e2e/tlscerts.py)
[ $TEST = 1 ] && packages+=(sip-tester sipvicious mariadb-server mariadb-client postgresql redis-server kamailio openssl
                            chromium chromium-driver)
# The interpreter: Debian's own python3 unless PYTHON names another. Debian builds it with
# profile-guided optimisation and LTO, the interpreter linked statically; a default pyenv /
# python-build CPython (no --enable-optimizations, libpython shared) runs the B2BUA's Python code
# 13-17 % slower and costs a call ~8 % more instructions (docs/performance.md, "The interpreter").
# Its venv and headers (for the pjsua2 build) are Debian packages. An older Debian's (3.9) is
# passed over for python3 on the PATH.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  PY=python3
  if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    PY=/usr/bin/python3
    packages+=(python3-venv python3-dev)
  fi
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || { say "missing Debian packages: ${missing[*]} (no apt-get here)"; exit 1; }
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -q >/dev/null
  # servers must not start at install time on a CI box: the tests start their own
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { say "Python 3.10+ is needed ($PY is older)"; exit 1; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
extras=""
[ $TEST = 1 ] && extras="[test]"
say "installing the project into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras" 2>&1 | grep -v '^WARNING: Location' >&2 || true
.venv/bin/python -c 'import pluggy, sqlalchemy, loguru' || { say "Python dependencies failed to install"; exit 1; }

# The installed pjsua2 must be the one scripts/build-pjsua2.sh builds today: its version's local
# label carries a hash of the build's configuration (codecs, call slots, source, patches). Any other one
# (PyPI's, or an older build) is replaced by the cached wheel of today's configuration, built first
# if no checkout has built it yet.
label=$(scripts/build-pjsua2.sh --key "$PWD/.venv/bin/python")
installed=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("pjsua2"))' 2>/dev/null || true)
if [ "${installed#*+}" != "$label" ] || ! .venv/bin/python -c 'import pjsua2' 2>/dev/null; then
  say "pjsua2 ${installed:-not installed}: want +$label"
  wheel=$(scripts/build-pjsua2.sh "$PWD/.venv/bin/python" | tail -n 1)
  say "installing $wheel"
  .venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel" 2>&1 | grep -v '^WARNING: Location' >&2 || true
fi
.venv/bin/python -c 'import pjsua2' || { say "pjsua2 does not import"; exit 1; }
say "ready"
