#!/bin/sh
# Makes the seed corpus for the `walk` target: small images made by mke2fs (and e2fsck -D for
# indexed directories). Seeds are generated, never committed.
set -eu
out="${1:-$(dirname "$0")/corpus/walk}"
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tree="$tmp/tree"
mkdir -p "$tree/dir/sub" "$tree/big"
printf 'hello\n' > "$tree/small"
head -c 5000 /dev/urandom > "$tree/dir/five-k"
printf 'x' | dd of="$tree/sparse" bs=1 seek=40000 2>/dev/null
ln -s small "$tree/fast"
ln -s "$(printf 'l%.0s' $(seq 1 80))" "$tree/slow"
ln "$tree/small" "$tree/dir/hardlink"
for i in $(seq 1 60); do printf '%s' "$i" > "$tree/big/entry-number-$i"; done
python3 -c "import os,sys; os.setxattr(sys.argv[1], 'user.k', b'v'*40); os.setxattr(sys.argv[1], 'user.big', b'B'*300)" "$tree/small" 2>/dev/null || true
mk() { # name size args...
    name=$1; size=$2; shift 2
    truncate -s "$size" "$tmp/$name"
    mke2fs -q -F "$@" -d "$tree" "$tmp/$name"
    e2fsck -fyD "$tmp/$name" >/dev/null 2>&1 || true
    cp "$tmp/$name" "$out/$name"
}
mk ext4-csum 256K -t ext4 -b 1024 -N 128 -O ^has_journal,metadata_csum -I 256
mk ext4-plain 256K -t ext4 -b 1024 -N 128 -O ^has_journal,^metadata_csum,^64bit -I 128
mk ext2 256K -t ext2 -b 1024 -N 128
mk ext4-inline 256K -t ext4 -b 1024 -N 128 -O ^has_journal,inline_data -I 256
ls -l "$out"

# A seed whose journal needs recovery (needs root and loop devices): fsync'd transactions,
# copied while mounted. Fuzz it on its own (it is 3 MiB): corpus/walk-journal, -max_len=3145728.
if [ "$(id -u)" = 0 ] && [ -e /dev/loop-control ]; then
    jout="$(dirname "$out")/walk-journal"
    mkdir -p "$jout" "$tmp/m"
    truncate -s 3M "$tmp/j.img"
    mke2fs -q -F -t ext4 -b 1024 -N 64 -J size=1 -O ^resize_inode "$tmp/j.img"
    mount -o loop "$tmp/j.img" "$tmp/m"
    mkdir "$tmp/m/d"
    for i in $(seq 1 20); do echo "$i" > "$tmp/m/d/f$i"; done
    python3 -c "
import os, sys
d = sys.argv[1]
for n in sorted(os.listdir(d)) + ['.']:
    fd = os.open(os.path.join(d, n), os.O_RDONLY); os.fsync(fd); os.close(fd)
os.unlink(os.path.join(d, 'f1'))
fd = os.open(d, os.O_RDONLY); os.fsync(fd); os.close(fd)
" "$tmp/m/d"
    cp "$tmp/j.img" "$jout/ext4-needs-recovery"
    umount "$tmp/m"
    ls -l "$jout"
fi
