#!/bin/bash
# Runs inside a test-nfs guest, chrooted into this machine's root (read-only 9p); NFS at /mnt/nfs, /mnt/ctl, /mnt/sq.
ROLE=$1 HOST=$2 RUN=$3
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 TMPDIR=/tmp
unset CPKGS_ROOT
cd /tmp || exit 1
. /mnt/ctl/config.sh
echo "guest $ROLE on $(hostname): $(grep -c nfs4 /proc/mounts) nfs4 mounts; $(nproc) cpu"

# watchdog: every WATCH s, show what the scenario processes wait on (a hung NFS call shows up on the console)
watchdog() {
    while sleep "${WATCH:-120}"; do
        for p in /proc/[0-9]*; do
            cmd=$(tr '\0\n' '  ' < "$p/cmdline" 2>/dev/null | cut -c1-110)
            case "$cmd" in *python*|*cpkgs*|*bash\ -c*) ;; *) continue ;; esac
            case "$cmd" in *nfs/scenarios/run.py*|*nfs/guest.sh*) continue ;; esac
            st=$(awk '/^State:/{print $2}' "$p/status" 2>/dev/null)
            echo "WATCHDOG $ROLE pid ${p#/proc/} state $st wchan $(cat "$p/wchan" 2>/dev/null): $cmd"
            [ "$st" = D ] && tr '\n' ' ' < "$p/stack" 2>/dev/null | cut -c1-400 && echo
        done
    done
}
watchdog &
WD=$!
REPO=$(cd "$(dirname "$0")/.." && pwd)   # the clone the harness runs from (passed on the kernel command line)
"$REPO/.venv/bin/python" "$REPO/nfs/scenarios/run.py" "$ROLE" "$CHANNEL" "$ONLY"
rc=$?
kill $WD 2>/dev/null
exit $rc
