#!/usr/bin/env bash
# Builds the precheck simulator image: build.sh [TAG] (default precheck-simulator:latest).
# Prints the image id on stdout; build output goes to stderr.
set -euo pipefail

tag=${1:-precheck-simulator:latest}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() {
    echo "build.sh: $*" >&2
    exit 1
}

# Reads a little-endian unsigned integer of $3 bytes at offset $2 of file $1.
read_uint() {
    od -An -tu"$3" -j"$2" -N"$3" "$1" | tr -d ' \n'
}

# A FROM scratch image has no loader, so busybox must be a static ELF: no PT_INTERP.
is_static_elf() {
    local f=$1 class phoff phentsize phnum i
    [ "$(od -An -tx1 -N4 "$f" | tr -d ' \n')" = 7f454c46 ] || return 1
    class=$(read_uint "$f" 4 1)
    if [ "$class" = 2 ]; then
        phoff=$(read_uint "$f" 32 8) phentsize=$(read_uint "$f" 54 2) phnum=$(read_uint "$f" 56 2)
    else
        phoff=$(read_uint "$f" 28 4) phentsize=$(read_uint "$f" 42 2) phnum=$(read_uint "$f" 44 2)
    fi
    for ((i = 0; i < phnum; i++)); do
        [ "$(read_uint "$f" $((phoff + i * phentsize)) 4)" != 3 ] || return 1
    done
    return 0
}

busybox=$(command -v busybox || true)
[ -n "$busybox" ] || die "busybox not found in PATH; install a static busybox (e.g. the busybox-static package)"
busybox=$(readlink -f "$busybox")
is_static_elf "$busybox" || die "$busybox is not a statically linked executable; a static busybox is required"
command -v docker >/dev/null || die "docker CLI not found"

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

root=$ctx/rootfs
mkdir -p "$root/bin" "$root/input" "$root/output" "$root/tmp" "$root/workspace/gf180mcu"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
install -m 0755 "$here/dev-shell" "$here/python3" "$root/bin/"
install -m 0755 "$here/precheck.py" "$root/workspace/precheck.py"
cp "$here/Dockerfile" "$ctx/Dockerfile"
# Fixed mtimes keep the build cache valid across runs.
find "$ctx" -exec touch -h -d '2000-01-01 00:00:00' {} +

if ! DOCKER_BUILDKIT=0 docker build -t "$tag" "$ctx" >&2; then
    die "docker build failed"
fi
docker image inspect -f '{{.Id}}' "$tag"
