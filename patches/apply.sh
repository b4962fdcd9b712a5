#!/usr/bin/env bash
# Apply patches/series to a DINOv2 checkout at the pinned commit (patches/UPSTREAM).
#   patches/apply.sh <dinov2-checkout>
# Refuses, with a message saying why, when the checkout is not at the pin (another commit, or the series
# already applied) or has local changes; so applying twice fails instead of half-applying.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tree="${1:?usage: patches/apply.sh <dinov2-checkout>}"
pin="$(sed -n 's/^commit=//p' "$here/UPSTREAM")"

git -C "$tree" rev-parse --git-dir >/dev/null 2>&1 || { echo "apply.sh: $tree is not a git checkout of DINOv2" >&2; exit 2; }
head="$(git -C "$tree" rev-parse HEAD)"
if [ "$head" != "$pin" ]; then
  if git -C "$tree" merge-base --is-ancestor "$pin" "$head" 2>/dev/null && \
     git -C "$tree" log --format=%s "$pin..$head" | grep -q "^train: choose meta-architecture"; then
    echo "apply.sh: the patch series is already applied in $tree (HEAD $head is on top of the pin $pin)." >&2
    echo "          Start from a fresh checkout of $pin (make dinov2 does this)." >&2
  else
    echo "apply.sh: $tree is at commit $head, but the patches are made for the pinned commit $pin" >&2
    echo "          (patches/UPSTREAM). Check out the pin first: git -C $tree checkout $pin" >&2
  fi
  exit 3
fi
if [ -n "$(git -C "$tree" status --porcelain --untracked-files=no)" ]; then
  echo "apply.sh: $tree has uncommitted changes; the patches need a clean checkout of $pin." >&2
  exit 4
fi
while read -r p; do
  [ -z "$p" ] && continue
  case "$p" in \#*) continue;; esac
  if ! git -C "$tree" -c user.name=dinov2-eqcoh -c user.email=eqcoh@localhost am -q --keep-cr "$here/$p" 2>/tmp/apply.$$; then
    git -C "$tree" am --abort >/dev/null 2>&1 || true
    echo "apply.sh: patch $p does not apply to $tree:" >&2; cat /tmp/apply.$$ >&2; rm -f /tmp/apply.$$
    exit 5
  fi
  echo "applied $p"
done < "$here/series"
rm -f /tmp/apply.$$
