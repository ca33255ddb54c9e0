#!/bin/sh
# Record real cgroup v2 files for the tests (tests/fixtures/cgroup2/<name>/), on a real cgroup-v2
# kernel: Debian 12's own kernel booted in a throw-away KVM guest whose only program is
# tests/fixtures/cgroup2/guest-init.sh (busybox). Nothing is hand-written: every file under
# <name>/a and <name>/b is what that kernel printed (see guest-init.sh for what ran).
#
# Why a guest: this test host runs cgroup v1 (its v2 mount has no controllers), and moving its
# controllers to v2 would disturb everything else on it. Needs: root, qemu-system-x86
# (Debian: qemu-system-x86), apt-get download access; not /dev/kvm (the guest runs emulated). Usage:
#   scripts/record-cgroup2-fixtures.sh [NAME]      (default NAME: debian12-6.1)
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
NAME=${1:-debian12-6.1}
OUT=$HERE/tests/fixtures/cgroup2/$NAME
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
apt-get download "$KPKG" busybox-static >/dev/null 2>&1
dpkg-deb -x "$KPKG"_*.deb k
dpkg-deb -x busybox-static_*.deb bb
KVER=$(ls k/lib/modules)
mkdir -p root/bin root/sbin root/proc root/sys root/dev root/mnt root/out root/tmp
cp bb/bin/busybox root/bin/busybox
for a in $(root/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "root/bin/$a"; done
cp "k/lib/modules/$KVER/kernel/drivers/block/brd.ko" root/brd.ko
cp "$HERE/tests/fixtures/cgroup2/guest-init.sh" root/init
chmod +x root/init
(cd root && find . | ../bb/bin/busybox cpio -o -H newc 2>/dev/null | gzip -9) > initrd.gz
# TCG (emulation), not KVM: about 25 s, and it works inside VMs without nested virtualisation
# (on the Firecracker VM the first fixtures were made on, a KVM guest hung before the kernel printed).
timeout 600 qemu-system-x86_64 -accel tcg -smp 2 -m 512 -nographic -no-reboot \
    -kernel "k/boot/vmlinuz-$KVER" -initrd initrd.gz \
    -append "console=ttyS0 panic=-1 quiet" > console.log 2>&1 || true
sed -n '/=====BEGIN FIXTURES=====/,/=====END FIXTURES=====/p' console.log | tr -d '\r' \
    | sed '1d;$d' | base64 -d > fixtures.tar.gz
rm -rf "$OUT" && mkdir -p "$OUT"
tar xzf fixtures.tar.gz -C "$OUT"
{
    echo "# Recorded cgroup v2 files: $NAME"
    echo
    echo "Made by \`scripts/record-cgroup2-fixtures.sh $NAME\` on $(date -u +%Y-%m-%dT%H:%M:%SZ), on $(uname -n)"
    echo "($(uname -r)), in a QEMU guest (\`$(qemu-system-x86_64 --version | head -1)\`) booting Debian's kernel"
    echo "package \`$KPKG\` ($(dpkg-deb -f "$KPKG"_*.deb Version), sha256 $(sha256sum "$KPKG"_*.deb | cut -c1-16)…) with a"
    echo "busybox-static ($(dpkg-deb -f busybox-static_*.deb Version)) initramfs whose /init is"
    echo "\`tests/fixtures/cgroup2/guest-init.sh\`: cgroup2 mounted at /sys/fs/cgroup with the cpu, cpuset,"
    echo "io, memory and pids controllers, and a service held at its limits two levels down (that script"
    echo "says what ran). \`a/\` and \`b/\` are two readings (a second of sleep apart, their \`uptime\` files say exactly) of"
    echo "every readable file of \`/\`, \`/gh.slice\` and \`/gh.slice/app.service\`, with \`/proc/<busy pid>/cgroup\`, \`/proc/self/mountinfo\` and"
    echo "\`/proc/uptime\` at each reading; \`guest.txt\` holds the busy pid and the guest's uname; \`dmesg.txt\`"
    echo "the guest's kernel log (the OOM kill between the readings). Nothing here was edited by hand."
} > "$OUT/README.md"
echo "recorded into $OUT"
