#!/bin/busybox sh
# /init of the test-nfs guests' initramfs (busybox-static + the kernel modules listed in /modules.list).
# Sets the hostname, brings up qemu's user network, mounts the harness's NFS exports and this machine's root
# (read-only 9p), then chroots into it and runs nfs/guest.sh; powers off when that returns.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
arg() { sed -n "s/.*\bcpkgs\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
HOST=$(arg host); ROLE=$(arg role); RUN=$(arg run); REPO=$(arg repo)
die() { echo "GUEST-FATAL[$HOST]: $*"; poweroff -f; sleep 5; }

KV=$(uname -r)
while read -r mod params; do
    insmod "/lib/modules/$KV/$mod" $params || die "insmod $mod failed"
done < /modules.list

hostname "$HOST"   # before the NFS mount: the NFSv4 client id is derived from it
ip link set lo up
ip link set eth0 up || die "no eth0"
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

R=/newroot
mkdir -p $R
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot $R || die "9p mount failed"
# python (pyenv) lives under /root, which is 0700 on the host: keep it reachable for non-root users by mounting a
# 0755 tmpfs over /root with the host's .pyenv moved back into it.
if [ -d $R/root/.pyenv ]; then
    mkdir -p /pyenv && mount --bind $R/root/.pyenv /pyenv
fi
# The clone may sit under a directory the tmpfs mounts below hide (/tmp, /root, /run, /mnt): keep it reachable.
mkdir -p /repo && mount --bind "$R$REPO" /repo || die "repository $REPO not visible over 9p"
mount -t tmpfs -o mode=0755 tmpfs $R/root
if [ -d /pyenv/bin ] || [ -d /pyenv/versions ]; then
    mkdir $R/root/.pyenv && mount --move /pyenv $R/root/.pyenv
fi
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm 2>/dev/null
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs -o mode=1777 tmpfs $R/tmp
mount -t tmpfs -o mode=0755 tmpfs $R/run
mount -t tmpfs -o mode=0755 tmpfs $R/mnt
mkdir -p $R/mnt/nfs $R/mnt/ctl $R/mnt/sq
mkdir -p "$R$REPO" 2>/dev/null; mount --move /repo "$R$REPO" || die "cannot put the repository back at $REPO"
NFSOPT=addr=10.0.2.2,clientaddr=10.0.2.15,vers=4.1
# the scenarios' mount: default options, as a site would mount it
mount -t nfs4 -o $NFSOPT 10.0.2.2:/export $R/mnt/nfs || die "nfs mount /export failed"
# the harness's control channel (peer barriers, results): no attribute/lookup caching so barriers are prompt
mount -t nfs4 -o $NFSOPT,noac,lookupcache=none,nosharecache 10.0.2.2:/export/ctl $R/mnt/ctl || die "nfs mount ctl failed"
mount -t nfs4 -o $NFSOPT 10.0.2.2:/export-sq $R/mnt/sq || die "nfs mount /export-sq failed"
echo "GUEST-UP $HOST $(cat /proc/uptime)"
chroot $R /bin/bash "$REPO/nfs/guest.sh" "$ROLE" "$HOST" "$RUN"
echo "GUEST-DONE $HOST rc=$?"
sync
umount $R/mnt/sq $R/mnt/ctl $R/mnt/nfs 2>/dev/null
poweroff -f
