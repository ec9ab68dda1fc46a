#!/bin/bash
# Runs inside a test-nfs guest, chrooted into this machine's root (read-only 9p); NFS at /mnt/nfs, /mnt/ctl, /mnt/sq.
ROLE=$1 HOST=$2 RUN=$3
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 TMPDIR=/tmp
unset CPKGS_ROOT
cd /tmp || exit 1
. /mnt/ctl/config.sh
echo "guest $ROLE on $(hostname): $(grep -c nfs4 /proc/mounts) nfs4 mounts; $(nproc) cpu"
/work/main/.venv/bin/python /work/main/nfs/scenarios/run.py "$ROLE" "$CHANNEL" "$ONLY"
