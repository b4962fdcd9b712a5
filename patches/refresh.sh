#!/usr/bin/env bash
# Regenerate patches/*.patch from a branch of commits on top of the pin, byte-stable:
#   patches/refresh.sh <dinov2-checkout> [branch]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tree="${1:?usage: patches/refresh.sh <dinov2-checkout> [branch]}"; branch="${2:-HEAD}"
pin="$(sed -n 's/^commit=//p' "$here/UPSTREAM")"
rm -f "$here"/0*.patch
git -C "$tree" format-patch -q --zero-commit --no-signature --no-stat --base="$pin" -o "$here" "$pin..$branch"
(cd "$here" && ls 0*.patch > series)
echo "wrote $(wc -l < "$here/series") patches to $here"
