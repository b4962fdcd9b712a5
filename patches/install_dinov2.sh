#!/usr/bin/env bash
# Obtain DINOv2 at the pinned commit, apply patches/series and install it into $PYTHON's environment.
#
#   DINOV2_SRC   git URL or local repository (bare or not) holding the pin; default: the URL in patches/UPSTREAM
#   PYTHON       interpreter of the target environment (default: python3)
#   BUILD_DIR    where the patched tree is assembled (default: build/dinov2)
#
# The clone is kept in ${XDG_CACHE_HOME:-~/.cache}/dinov2_eqcoh/dinov2 and reused when DINOV2_SRC is unset and
# the default URL is unreachable, so offline machines (HPC compute nodes) install from the cache.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
url="$(sed -n 's/^url=//p' "$here/UPSTREAM")"
pin="$(sed -n 's/^commit=//p' "$here/UPSTREAM")"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/dinov2_eqcoh/dinov2"
build="${BUILD_DIR:-$root/build/dinov2}"
python="${PYTHON:-python3}"

die() { echo "make dinov2: $*" >&2; exit 2; }
hint="Set DINOV2_SRC to a git URL or a local clone of facebookresearch/dinov2 that contains commit $pin, e.g.
    make dinov2 DINOV2_SRC=/path/to/dinov2        (a clone made on a machine with network access)
    make dinov2 DINOV2_SRC=$url"

fetch_into_cache() {  # $1: source
  local src="$1"
  if [ -d "$cache/.git" ] || [ -f "$cache/HEAD" ]; then
    echo "updating the cached clone $cache from $src"
    GIT_TERMINAL_PROMPT=0 timeout 600 git -C "$cache" fetch -q --tags "$src" '+refs/heads/*:refs/remotes/src/*' || return 1
  else
    echo "cloning $src into $cache"
    mkdir -p "$(dirname "$cache")"
    GIT_TERMINAL_PROMPT=0 timeout 600 git clone -q --no-checkout "$src" "$cache.tmp.$$" || { rm -rf "$cache.tmp.$$"; return 1; }
    mv "$cache.tmp.$$" "$cache"
  fi
}

if [ -n "${DINOV2_SRC:-}" ]; then
  case "$DINOV2_SRC" in
    *://*|git@*) ;;
    *) [ -e "$DINOV2_SRC" ] || die "DINOV2_SRC=$DINOV2_SRC does not exist.
$hint"
       git -C "$DINOV2_SRC" rev-parse --git-dir >/dev/null 2>&1 || die "DINOV2_SRC=$DINOV2_SRC is not a git repository.
$hint";;
  esac
  fetch_into_cache "$DINOV2_SRC" || die "could not read DINOV2_SRC=$DINOV2_SRC.
$hint"
elif GIT_TERMINAL_PROMPT=0 timeout 20 git ls-remote -q "$url" HEAD >/dev/null 2>&1; then
  fetch_into_cache "$url" || die "could not fetch $url.
$hint"
elif [ -d "$cache" ]; then
  echo "$url is unreachable and DINOV2_SRC is unset: using the cached clone $cache"
else
  die "DINOV2_SRC is unset, $url is unreachable and there is no cached clone at $cache.
$hint"
fi

git -C "$cache" cat-file -e "$pin^{commit}" 2>/dev/null || die "the DINOv2 source does not contain the pinned commit $pin
(patches/UPSTREAM). $hint"

digest="$(cat "$here/UPSTREAM" "$here/series" $(sed "s|^|$here/|" "$here/series") | sha256sum | cut -c1-16)"
echo "assembling the patched tree in $build (pin ${pin:0:12}, patch digest $digest)"
rm -rf "$build"
mkdir -p "$(dirname "$build")"
git clone -q --no-checkout "$cache" "$build"
git -C "$build" -c advice.detachedHead=false checkout -q "$pin"
"$here/apply.sh" "$build"
echo "$digest" > "$build/.eqcoh_patch_digest"

echo "installing the patched DINOv2 into $("$python" -c 'import sys; print(sys.prefix)') (--no-deps: its requirements pin torch 2.0)"
"$python" -m pip install -q --no-deps --no-build-isolation "$build"
"$python" - <<PY
import dinov2.utils.config as c, dinov2, os
assert hasattr(c, "resolve_component"), "installed dinov2 is not the patched tree"
print("dinov2 installed from", os.path.dirname(dinov2.__file__))
PY
mkdir -p "$root/build" && echo "$pin $digest" > "$root/build/dinov2.stamp"
