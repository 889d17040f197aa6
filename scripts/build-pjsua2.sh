#!/usr/bin/env bash
# Build pjsua2 (the Python binding of pjproject) at B2BUA scale and cache it as a wheel.
#
# The PyPI wheel is compiled with PJSUA_MAX_CALLS=4 and a select() ioqueue of 64 handles:
# two bridged calls per process. This builds pjproject with the config_site.h below
# (2048 call legs, epoll, large transaction/dialog tables) and packs the SWIG module as a wheel
# in the cache, so the next install takes seconds.
#
# Codecs: G.711 (PCMU, PCMA), G.722, Opus (Debian's libopus-dev), G.729 (libbcg729-dev), L16,
# and the Speex resampler (libspeexdsp-dev) that a conference bridge needs to mix legs of
# different clock rates. Debian's DFSG repack of pjproject has no third_party/ codec or resampler
# sources, so each comes from a Debian library; a codec that does not end up in the module is a
# build error, never a silent omission.
#
# Patches: scripts/pjproject-patches/*.patch are applied in order (fixes for crashes we hit that
# upstream fixed after the release we build, and an opt-in RTP source lock of ours; each says which).
#
# The wheel's version is <pjproject>+b2bua<max calls>.h<key>, the key a hash of everything that
# shapes the build (config_site.h, configure options, patches, source). `--key` prints that local
# version label without building: scripts/setup.sh compares it with the installed wheel, so a
# change here rebuilds once (the cache is shared by every checkout) and older wheels stay in the
# cache for checkouts that have not caught up yet.
#
# Source of pjproject, in this order:
#   PJPROJECT_SRC=<dir or .tar.*>   a pjproject tree or release tarball you already have;
#   otherwise the pjproject component of Debian's `asterisk` source package (unstable), fetched
#   with apt through a private sources list built from this machine's own apt mirror.
#
# Usage: scripts/build-pjsua2.sh [PYTHON]      prints the wheel's path on its last line.
#        scripts/build-pjsua2.sh --key         prints the wheel's local version label (b2bua2048.h...).
# Env:   B2BUA_CACHE (default ~/.cache/b2bua), PJPROJECT_SRC, PJ_MAX_CALLS (default 2048).
set -euo pipefail

PATCHES_DIR="$(cd "$(dirname "$0")" && pwd)/pjproject-patches"
KEY_ONLY=0
if [ "${1:-}" = "--key" ]; then KEY_ONLY=1; shift; fi
PYTHON=${1:-python3}
CACHE=${B2BUA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/b2bua}
MAX_CALLS=${PJ_MAX_CALLS:-2048}
JOBS=$(nproc 2>/dev/null || echo 2)
mkdir -p "$CACHE"

say() { printf '[build-pjsua2] %s\n' "$*" >&2; }
die() { printf '[build-pjsua2] error: %s\n' "$*" >&2; exit 1; }

need() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]} (Debian: apt-get install build-essential swig xz-utils patch)"
}

# Every option that shapes the library; part of the cache key. The DFSG tree has no third_party
# codecs (GSM, Speex, iLBC, G.722.1, SILK), no libresample, no libsrtp/libyuv/webrtc: off.
CONFIGURE_ARGS=(
  --disable-sound --disable-video --enable-epoll
  --disable-libwebrtc --disable-ffmpeg --disable-v4l2 --disable-openh264 --disable-libyuv
  --disable-sdl --disable-silk --with-external-srtp
  --disable-gsm-codec --disable-speex-codec --disable-speex-aec --disable-ilbc-codec
  --disable-g7221-codec --disable-webrtc-aec3
  --enable-speex-resample
)
# SIP over TLS ([sip] listen "tls:...") needs OpenSSL (libssl-dev): configure finds it on its own
# and quietly builds without TLS when it is missing, so the log is checked below. SRTP (SDES keys,
# over TLS) uses Debian's libsrtp2 (libsrtp2-dev): the DFSG tree has no third_party/srtp.
# The Speex resampler is linked from libspeexdsp (configure only links it with the Speex codec).
CONFIGURE_LIBS="-lspeexdsp"
# The early screen (patch 0006, pjsua-lib/b2bua_screen.c) is called through ctypes only: nothing in
# the module refers to it, so the static link of the SWIG module would leave it out unless told.
SWIG_LDFLAGS="-Wl,--undefined=b2bua_screen_install"
# Codec ids (pjsua's "name/clock rate") the module must have, and the Debian -dev package of each.
REQUIRED_CODECS="PCMU/8000 PCMA/8000 G722/16000 opus/48000 G729/8000"
DEV_PACKAGES="libopus-dev libbcg729-dev libspeexdsp-dev libssl-dev libsrtp2-dev"

config_site() {
  cat <<CFG
/* Written by scripts/build-pjsua2.sh: B2BUA scale, no video. */
#define PJMEDIA_HAS_VIDEO 0
#define PJSUA_HAS_VIDEO 0
#define PJSUA_MAX_CALLS ${MAX_CALLS}
#define PJSUA_MAX_CONF_PORTS (2*PJSUA_MAX_CALLS+52)
#define PJSUA_MAX_ACC 16
#define PJ_IOQUEUE_MAX_HANDLES 8192
#define PJSIP_MAX_TSX_COUNT (16*1024-1)
#define PJSIP_MAX_DIALOG_COUNT (16*1024-1)
#define PJ_LOG_MAX_LEVEL 5
/* A release build: no debug bookkeeping (PJ_DEBUG named the owner of every mutex on every lock,
   ~500 string copies per bridged call); pj_assert still aborts, as in the debug build. */
#define PJ_DEBUG 0
#include <assert.h>
#define pj_assert(expr) assert(expr)
/* Plain epoll: one thread polls each ioqueue (the loop SIP's, pjmedia's thread RTP's), so
   EPOLLEXCLUSIVE buys nothing and costs an epoll_ctl DEL+ADD pair (not one MOD) each time a
   socket's read interest toggles, around every packet received. */
#define PJ_IOQUEUE_DEFAULT_EPOLL_FLAGS 0
/* A message's print buffer is PJSIP_MAX_PKT_LEN (4000) bytes: with 4000-byte increments it took a
   block of 8000 in every tdata pool. 4200 holds it in one increment: each answered transaction's
   last message held 4-8 KB less while it lingers (-30 MB of heap at 400 calls/s). */
#define PJSIP_POOL_INC_TDATA 4200
/* An incoming TCP connection that sends no SIP message within 10 s is closed. pjsip's default (0)
   keeps it as long as any idle server connection, 600 s: connections opened and left silent
   (scanners, a flood) piled up to PJ_IOQUEUE_MAX_HANDLES, after which pjsip closed every new
   connection at once, legitimate peers' too (docs/security.md, "TCP"). */
#define PJSIP_TRANSPORT_SERVER_IDLE_TIME_FIRST 10
/* Keep up to 8 MB of released memory pools for reuse (patch 0015): pjsua's caching pool kept
   none, so each of a call's ~30 pools (transactions, dialogs, messages, SDP, media) was a
   malloc() and a free() of 1-8 KB, glibc's slow path for blocks over 1 KB. */
#define PJSUA_CACHING_POOL_CAPACITY (8*1024*1024)
/* A call's pools sized for what they hold (with patch 0016): each block past a pool's first is a
   malloc() and a free() (~71 a call with pjsip's sizes). Messages sent use 7-12 KB (the 4000-byte
   print buffer and the message), a dialog ~13 KB, pjsua's copy of the INVITE ~8 KB, the SDP
   negotiator's pools up to 7 KB (one of a call's four ~43 KB), a stream ~15 KB. Memory while a
   call is up stays about as it was: the pools grew that far anyway. */
#define PJSIP_POOL_LEN_TDATA 8000
#define PJSIP_POOL_LEN_DIALOG 16000
#define PJSIP_POOL_RDATA_LEN 12000
#define PJSIP_POOL_INV_LEN 8000
#define PJSIP_POOL_INV_INC 16000
#define PJMEDIA_STREAM_SIZE 16000
CFG
}

pyver=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")') \
  || die "cannot run $PYTHON"
cfg_hash=$( (config_site; echo "${CONFIGURE_ARGS[*]} LIBS=$CONFIGURE_LIBS"; echo "$REQUIRED_CODECS $SWIG_LDFLAGS"
             cat "$PATCHES_DIR"/*.patch 2>/dev/null; echo "${PJPROJECT_SRC:-debian}") | sha256sum | cut -c1-12)
label="b2bua${MAX_CALLS}.h${cfg_hash}"
if [ $KEY_ONLY = 1 ]; then echo "$label"; exit 0; fi
need make gcc g++ swig tar xz patch

marker="$CACHE/pjsua2-$pyver-$cfg_hash.wheel"
# one build of a configuration at a time: two checkouts set up at once would share $work
exec 9>"$CACHE/build-$cfg_hash.lock"
flock 9 || die "cannot lock $CACHE/build-$cfg_hash.lock"
if [ -f "$marker" ] && [ -f "$(cat "$marker")" ]; then
  say "cached: $(cat "$marker")"
  cat "$marker"
  exit 0
fi

work="$CACHE/build-$cfg_hash"
rm -rf "$work"; mkdir -p "$work"

fetch_debian_source() {  # prints the tarball; kept in $CACHE/src for the next build
  local src="$CACHE/src" tarball uri signed
  tarball=$(ls "$src"/asterisk_*.orig-*pjproject*.tar.* 2>/dev/null | head -n1 || true)
  if [ -n "$tarball" ]; then
    say "using the pjproject source fetched before: $tarball"
    echo "$tarball"; return
  fi
  command -v apt-get >/dev/null || die "no apt-get: set PJPROJECT_SRC to a pjproject tree or tarball"
  uri=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 | awk '{print $2}')
  signed=$(grep -h '^Signed-By:' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $2}')
  if [ -z "$uri" ]; then
    uri=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | grep -v security | head -n1 | awk '{print $2}')
  fi
  [ -n "$uri" ] || die "cannot find this machine's Debian mirror in /etc/apt: set PJPROJECT_SRC"
  local apt="$work/apt" lists="$work/apt/lists"
  mkdir -p "$lists/partial" "$src"
  {
    echo "Types: deb-src"; echo "URIs: $uri"; echo "Suites: sid"; echo "Components: main"
    [ -n "$signed" ] && echo "Signed-By: $signed"
  } > "$apt/debian-sid-src.sources"
  local opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt"
              -o "Dir::State::Lists=$lists" -o "Debug::NoLocking=1")
  say "fetching the pjproject component of Debian's asterisk source package (~13 MB)"
  apt-get "${opts[@]}" -q update >&2 || die "apt-get update of Debian's source index failed"
  (cd "$src" && apt-get "${opts[@]}" -q source --download-only asterisk >&2) \
    || die "apt-get source asterisk failed: set PJPROJECT_SRC to a pjproject tree or tarball"
  tarball=$(ls "$src"/asterisk_*.orig-*pjproject*.tar.* 2>/dev/null | head -n1 || true)
  [ -n "$tarball" ] || die "the asterisk source package has no pjproject component"
  echo "$tarball"
}

unpack() {  # $1 = tarball -> prints the pjproject root
  mkdir -p "$work/tree"
  tar -xf "$1" -C "$work/tree"
  local root
  local mak
  mak=$(find "$work/tree" -maxdepth 3 -name version.mak | head -n1)
  [ -n "$mak" ] || die "$1 does not look like pjproject (no version.mak)"
  dirname "$mak"
}

if [ -n "${PJPROJECT_SRC:-}" ]; then
  if [ -d "$PJPROJECT_SRC" ]; then
    say "copying pjproject tree $PJPROJECT_SRC"
    cp -a "$PJPROJECT_SRC" "$work/pjproject"; root="$work/pjproject"
  elif [ -f "$PJPROJECT_SRC" ]; then
    root=$(unpack "$PJPROJECT_SRC")
  else
    die "PJPROJECT_SRC=$PJPROJECT_SRC is neither a directory nor a file"
  fi
else
  root=$(unpack "$(fetch_debian_source)")
fi
[ -f "$root/version.mak" ] || die "no version.mak in $root"
ver=$(awk -F':=' '/^export PJ_VERSION_MAJOR /{ma=$2} /^export PJ_VERSION_MINOR /{mi=$2} END{gsub(/ /,"",ma); gsub(/ /,"",mi); print ma"."mi}' "$root/version.mak")
say "pjproject $ver in $root"

config_site > "$root/pjlib/include/pj/config_site.h"
# Debian's DFSG repack drops the BDIMAD sound device sources; the Makefile still names them.
sed -i 's/ bdimad_dev\.o//' "$root/pjmedia/build/Makefile"
for p in "$PATCHES_DIR"/*.patch; do
  [ -e "$p" ] || continue
  say "patch $(basename "$p")"
  patch -d "$root" -p1 --forward --batch < "$p" >&2 || die "$(basename "$p") does not apply to pjproject $ver"
done

cd "$root"
say "configure"
CFLAGS="-O2 -fPIC" CXXFLAGS="-O2 -fPIC" LIBS="$CONFIGURE_LIBS" ./configure "${CONFIGURE_ARGS[@]}" \
  > "$work/configure.log" 2>&1 || die "configure failed, see $work/configure.log"
# configure turns Opus and bcg729 off quietly when their libraries are missing: insist on them
for feature in "OPUS support enabled" "bcg729 usability... yes" "Speex resample is enabled... yes" \
               "OpenSSL library found, SSL support enabled" "external SRTP devkit is installed... yes"; do
  grep -qF "$feature" "$work/configure.log" \
    || die "configure did not report '$feature' (Debian: apt-get install $DEV_PACKAGES), see $work/configure.log"
done
say "compiling the libraries (about 30 s on 2 cores)"
(make dep && make -j"$JOBS") > "$work/make.log" 2>&1 || { tail -n 30 "$work/make.log" >&2; die "make failed, see $work/make.log"; }
say "compiling the SWIG Python module (about 2 min)"
cd pjsip-apps/src/swig/python
LDFLAGS="$SWIG_LDFLAGS" make PYTHON_EXE="$PYTHON" > "$work/swig.log" 2>&1 || { tail -n 30 "$work/swig.log" >&2; die "SWIG build failed, see $work/swig.log"; }
so=$(find build -name '_pjsua2*.so' | head -n1)
[ -n "$so" ] || die "the SWIG build produced no _pjsua2*.so"

# The module must have every codec this build promises (a library missing at link time would
# only show when a call needs it).
codecs=$(PYTHONPATH="$PWD/$(dirname "$so"):$PWD" "$PYTHON" - <<'PY'
import ctypes
import pjsua2 as pj
ctypes.CDLL(pj._pjsua2.__file__).b2bua_screen_install  # the early screen was linked in
ep = pj.Endpoint()
ep.libCreate()
cfg = pj.EpConfig()
cfg.uaConfig.threadCnt = 0
cfg.medConfig.threadCnt = 0
cfg.logConfig.level = 0
cfg.logConfig.consoleLevel = 0
ep.libInit(cfg)
print("codecs:", " ".join(sorted({c.codecId.rsplit("/", 1)[0] for c in ep.codecEnum2()})))
ep.libDestroy()
PY
) || die "the built module does not start"
codecs=$(printf '%s\n' "$codecs" | sed -n 's/^codecs: //p')
for codec in $REQUIRED_CODECS; do
  case " $codecs " in *" $codec "*) ;; *) die "the built module lacks $codec (it has: $codecs)";; esac
done
say "codecs: $codecs"

# Pack the module as a wheel of our own (a zip with dist-info): nothing to compile again.
say "packing the wheel"
mkdir -p "$CACHE/wheels"
whl=$("$PYTHON" - "$so" pjsua2.py "$ver" "$label" "$CACHE/wheels" "$MAX_CALLS" "$codecs" <<'PY'
import base64, hashlib, sys, sysconfig, zipfile, pathlib
so, py, ver, label, out, max_calls, codecs = sys.argv[1:]
tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
version = f"{ver}.0+{label}"
dist = f"pjsua2-{version}.dist-info"
summary = f"pjsua2 built by b2bua scripts/build-pjsua2.sh (PJSUA_MAX_CALLS={max_calls}, epoll; codecs {codecs})"
files = {pathlib.Path(so).name: pathlib.Path(so).read_bytes(), "pjsua2.py": pathlib.Path(py).read_bytes(),
         f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: pjsua2\nVersion: {version}\nSummary: {summary}\n".encode(),
         f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: b2bua-build-pjsua2\nRoot-Is-Purelib: false\nTag: {tag}-{tag}-{plat}\n".encode()}
record = []
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(data)}")
record.append(f"{dist}/RECORD,,")
path = pathlib.Path(out) / f"pjsua2-{version}-{tag}-{tag}-{plat}.whl"
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    for name, data in files.items():
        z.writestr(name, data)
    z.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
print(path)
PY
) || die "packing the wheel failed"
echo "$whl" > "$marker"
say "done: $whl"
echo "$whl"
