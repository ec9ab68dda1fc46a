#!/usr/bin/env python3
"""`make test-nfs`: cpkgs on a real NFS server with two real NFS client hosts, all on this machine.

- server: nfs-ganesha (userspace, VFS FSAL) in the foreground on 127.0.0.1:2049, config nfs/ganesha.conf.in,
  two exports of dirs under the run dir: /export (no root squash) and /export-sq (root squash);
- clients: two QEMU (TCG) guests running Debian's kernel (fetched with `apt-get download`, unpacked with
  `dpkg -x`, never installed) and a busybox initramfs (nfs/init.sh). Each guest has its own hostname and NFS
  client, mounts the exports from 10.0.2.2 (qemu's user network -> 127.0.0.1 here), mounts this machine's root
  read-only over 9p and chroots into it, so it runs this repo's .venv and nfs/scenarios/run.py;
- the two guests run the scenarios side by side, meeting at barrier files on the export; each writes
  PASS/FAIL/PENDING/MEASURE lines to the export, which this script prints and judges.

Kernel, modules and initramfs are cached under ~/.cache/cpkgs-nfs/<kernel package>/.
Exit status: 0 when every scenario passed (PENDING ones are reported, not failures), 1 otherwise.
Stdlib only; must run as root (ganesha binds 2049 and exports with root's rights).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path.home() / ".cache" / "cpkgs-nfs"
RUN = Path(os.environ.get("CPKGS_NFS_RUN", "/var/tmp/cpkgs-nfs-run"))
# modules the guest loads (dependencies are added from modules.dep, in order)
MODULES = ["virtio_pci", "virtio_net", "virtio-rng", "9pnet_virtio", "9p", "nfsv4"]
MOD_PARAMS = {"nfs": "nfs4_disable_idmapping=1"}
GUESTS = (("A", "nfs-host-a"), ("B", "nfs-host-b"))


def log(msg: str) -> None:
    print(f"[harness {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(list(cmd), check=True, text=True, capture_output=True, **kw)


# ------------------------------------------------------------------------------------------------ kernel + initrd


def kernel_package() -> str:
    for attempt in (1, 2):
        p = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], text=True, capture_output=True, check=False)
        for line in p.stdout.splitlines():
            line = line.strip()
            if line.startswith("Depends:") and "linux-image-" in line:
                return line.split()[-1]
        if attempt == 1:
            log("apt knows no linux-image-amd64: apt-get update")
            subprocess.run(["apt-get", "update", "-qq"], check=False)
    raise SystemExit("cannot find the kernel package linux-image-amd64 depends on (apt-get update failed?)")


def ensure_kernel(pkg: str) -> tuple[Path, Path, str]:
    """(vmlinuz, unpacked tree, kernel version): apt-get download + dpkg -x + depmod -b, cached."""
    d = CACHE / pkg
    tree = d / "tree"
    done = d / ".unpacked"
    if not done.exists():
        log(f"fetching {pkg} (apt-get download, dpkg -x; not installed)")
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        os.chmod(d, 0o755)
        sh("apt-get", "download", pkg, cwd=str(d))
        debs = list(d.glob("*.deb"))
        if not debs:
            raise SystemExit(f"apt-get download {pkg} produced no .deb in {d}")
        sh("dpkg", "-x", str(debs[0]), str(tree))
        kv = next((tree / "lib" / "modules").iterdir()).name
        sh("depmod", "-b", str(tree), kv)
        for deb in debs:
            deb.unlink()
        done.write_text(kv)
    kv = done.read_text().strip()
    vmlinuz = tree / "boot" / f"vmlinuz-{kv}"
    return vmlinuz, tree, kv


def module_order(tree: Path, kv: str) -> list[str]:
    moddir = tree / "lib" / "modules" / kv
    deps: dict[str, list[str]] = {}
    byname: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        name = Path(path).name.split(".ko")[0]
        byname[name] = path
        byname[name.replace("-", "_")] = path
    order: list[str] = []

    def add(path: str) -> None:
        if path in order:
            return
        for dep in reversed(deps[path]):  # modules.dep lists deps most-dependent first
            add(dep)
        order.append(path)

    for m in MODULES:
        if m not in byname:
            raise SystemExit(f"kernel module {m} not in {moddir}/modules.dep")
        add(byname[m])
    return order


def ensure_initrd(tree: Path, kv: str) -> Path:
    mods = module_order(tree, kv)
    lines = []
    for m in mods:
        name = Path(m).name.split(".ko")[0]
        lines.append(f"{m} {MOD_PARAMS.get(name, '')}".rstrip())
    modlist = "\n".join(lines) + "\n"
    init = (HERE / "init.sh").read_bytes()
    busybox = Path("/bin/busybox")
    key = hashlib.sha256(init + modlist.encode() + busybox.read_bytes()).hexdigest()[:12]
    out = CACHE / tree.parent.name / f"initrd-{key}.cpio.gz"
    if out.exists():
        return out
    log(f"building initramfs {out.name}")
    for old in out.parent.glob("initrd-*.cpio.gz"):
        old.unlink()
    stage = out.parent / "initrd-stage"
    shutil.rmtree(stage, ignore_errors=True)
    for sub in ("bin", "proc", "sys", "dev", "newroot"):
        (stage / sub).mkdir(parents=True)
    shutil.copy2(busybox, stage / "bin" / "busybox")
    shutil.copy2(HERE / "init.sh", stage / "init")
    os.chmod(stage / "init", 0o755)
    (stage / "modules.list").write_text(modlist)
    for m in mods:
        dst = stage / "lib" / "modules" / kv / m
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree / "lib" / "modules" / kv / m, dst)
    files = sh("find", ".", cwd=str(stage)).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=files.encode(), cwd=str(stage),
                          capture_output=True, check=True).stdout
    tmp = out.with_suffix(".tmp")
    with gzip.open(tmp, "wb", compresslevel=6) as fh:
        fh.write(cpio)
    tmp.replace(out)
    shutil.rmtree(stage)
    return out


# ------------------------------------------------------------------------------------------------ server


def prepare_run_dir() -> None:
    if RUN.exists():
        # a previous run's sealed envs are read-only: make everything removable first
        subprocess.run(["chmod", "-R", "u+rwX", str(RUN)], capture_output=True, check=False)
        shutil.rmtree(RUN)
    for sub in ("export/ctl", "export-sq", "ganesha/recovery"):
        (RUN / sub).mkdir(parents=True)
    os.chmod(RUN, 0o755)
    os.chmod(RUN / "export", 0o755)
    os.chmod(RUN / "export/ctl", 0o1777)
    os.chmod(RUN / "export-sq", 0o755)
    # the root-squash scenario's site root belongs to the non-root admin (uid/gid 1000)
    sq = RUN / "export-sq" / "site"
    sq.mkdir()
    os.chown(sq, 1000, 1000)


def copy_channel() -> Path:
    """Build (cached) the repo's test channel and copy it into the run dir: the guests read it over 9p at the
    same path; a private copy survives a concurrent rebuild of the cache."""
    out = sh(str(REPO / ".venv/bin/python"), str(REPO / "tests/channel/build_channel.py")).stdout.strip()
    src = Path(out.splitlines()[-1])
    dst = RUN / "channel"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.lock"))
    subprocess.run(["chmod", "-R", "a+rX", str(dst)], check=True)
    return dst


def copy_tool_wheels() -> Path:
    """Build (cached) the wheels of `cpkgs install-tool` (tests/wheelhouse/build_wheelhouse.py prints the tool
    wheelhouse last) and copy its find-links dir into the run dir, readable by the guests' users."""
    out = sh(str(REPO / ".venv/bin/python"), str(REPO / "tests/wheelhouse/build_wheelhouse.py")).stdout.strip()
    src = Path(out.splitlines()[-1]) / "wheels"
    dst = RUN / "tool-wheels"
    shutil.copytree(src, dst)
    subprocess.run(["chmod", "-R", "a+rX", str(dst)], check=True)
    return dst


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_ganesha() -> subprocess.Popen[bytes]:
    if port_open(2049):
        raise SystemExit("something already listens on 127.0.0.1:2049 (a leftover ganesha.nfsd?); stop it first")
    conf = RUN / "ganesha" / "ganesha.conf"
    conf.write_text((HERE / "ganesha.conf.in").read_text().replace("@RUN@", str(RUN)))
    logf = RUN / "ganesha" / "ganesha.log"
    p = subprocess.Popen(["ganesha.nfsd", "-F", "-f", str(conf), "-L", str(logf), "-p", str(RUN / "ganesha/pid"),
                          "-N", "NIV_WARN"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(100):
        if port_open(2049):
            log(f"ganesha.nfsd up (pid {p.pid}), exports {RUN}/export and {RUN}/export-sq")
            return p
        if p.poll() is not None:
            break
        time.sleep(0.2)
    tail = logf.read_text()[-3000:] if logf.exists() else ""
    raise SystemExit(f"ganesha.nfsd did not come up (exit {p.poll()}):\n{tail}")


# ------------------------------------------------------------------------------------------------ guests


class Guest:
    def __init__(self, role: str, host: str, vmlinuz: Path, initrd: Path, mem: int) -> None:
        self.role, self.host = role, host
        self.lines: list[str] = []
        self.console = RUN / f"console-{role}.log"
        cmd = [
            "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", str(mem), "-smp", "1",
            "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", str(vmlinuz), "-initrd", str(initrd),
            "-append", f"console=ttyS0 quiet loglevel=3 panic=-1 cpkgs.host={host} cpkgs.role={role} cpkgs.run={RUN} cpkgs.repo={REPO}",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
            "-device", "virtio-rng-pci",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.console.open("w") as fh:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                fh.write(line + "\n")
                fh.flush()
                self.lines.append(line)
                print(f"  [{self.role}] {line}", flush=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 11 scenarios took ~17 min on a quiet 2-CPU host (2026-12-06: the tool scenario builds cpkgs on NFS in TCG)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds for the guests' whole run (default 30 min)")
    ap.add_argument("--mem", type=int, default=1024, help="MiB of RAM per guest")
    ap.add_argument("--only", default="", help="comma-separated scenario names to run (default: all)")
    ap.add_argument("--watch", type=int, default=120, help="seconds between the guests' watchdog reports")
    args = ap.parse_args()
    if any(c.isspace() for c in str(REPO)):
        # The guests learn where the clone is from the kernel command line, which splits on blanks.
        print(f"test-nfs: the repository path {REPO} contains a blank; clone it elsewhere", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if os.geteuid() != 0:
        print("test-nfs: must run as root (ganesha.nfsd serves the exports with root's rights)", file=sys.stderr)
        return 2
    for tool in ("ganesha.nfsd", "qemu-system-x86_64", "cpio", "depmod", "apt-get", "dpkg"):
        if not shutil.which(tool):
            print(f"test-nfs: {tool} not found (make test-nfs installs its Debian packages when root)",
                  file=sys.stderr)
            return 2
    if not Path("/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so").exists():
        print("test-nfs: nfs-ganesha-vfs is not installed", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    pkg = kernel_package()
    vmlinuz, tree, kv = ensure_kernel(pkg)
    initrd = ensure_initrd(tree, kv)
    log(f"kernel {kv} ({pkg}), initramfs {initrd}")
    prepare_run_dir()
    channel = copy_channel()
    wheels = copy_tool_wheels()
    (RUN / "export/ctl/config.sh").write_text(
        f"CHANNEL={channel.as_uri()}\nONLY={args.only}\nWATCH={args.watch}\nexport TOOL_WHEELS={wheels}\n")
    ganesha = start_ganesha()
    guests: list[Guest] = []
    try:
        guests = [Guest(role, host, vmlinuz, initrd, args.mem) for role, host in GUESTS]
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and any(g.proc.poll() is None for g in guests):
            if ganesha.poll() is not None:
                log(f"ganesha.nfsd exited ({ganesha.returncode}) during the run")
                break
            time.sleep(1)
        timed_out = [g.role for g in guests if g.proc.poll() is None]
        if timed_out:
            log(f"timeout after {args.timeout:.0f}s: guest(s) {','.join(timed_out)} still running; killing them")
    except KeyboardInterrupt:
        log("interrupted: stopping the guests and ganesha")
    finally:
        for g in guests:
            g.stop()
            g.thread.join(timeout=5)
        if ganesha.poll() is None:
            os.killpg(ganesha.pid, signal.SIGTERM)
            try:
                ganesha.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(ganesha.pid, signal.SIGKILL)
                ganesha.wait()
    return report(guests, time.monotonic() - t0)


def report(guests: list[Guest], elapsed: float) -> int:
    ctl = RUN / "export" / "ctl"
    results: list[str] = []
    for g in guests:
        f = ctl / f"results-{g.role}.txt"
        if f.exists():
            results += [ln for ln in f.read_text().splitlines() if ln.strip()]
        if not any(ln.startswith("GUEST-DONE") for ln in g.lines):
            results.append(f"FAIL guest-{g.role}: did not finish (console: {g.console})")
    print("\n==================== test-nfs results ====================")
    for ln in results:
        print(ln)
    fails = [ln for ln in results if ln.startswith("FAIL")]
    passes = [ln for ln in results if ln.startswith("PASS")]
    pend = [ln for ln in results if ln.startswith("PENDING")]
    if not passes and not fails:
        fails.append("FAIL no scenario reported")
    print(f"==== {len(passes)} passed, {len(fails)} failed, {len(pend)} pending, {elapsed:.0f}s "
          f"(run dir {RUN}, ganesha log {RUN}/ganesha/ganesha.log) ====")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
