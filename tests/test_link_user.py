"""`cpkgs link-user` / `cpkgs unlink-user`: the real CLI on real condarc files in a tmp HOME.

The user's file is theirs: every test that changes a file checks that all lines but the one item stay byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from conftest import ENVS, as_nobody, make_site, run_cpkgs, world_traversable
from cpkgs_admin.site.paths import open_site
from cpkgs_admin.users.condarc import link_user, link_warnings, parse_condarc, shared_envs_entry, unlink_user
from cpkgs_admin.users.mounts import Mount

BACKUP = re.compile(r"\.condarc\.cpkgs-backup-\d{8}T\d{6}(-\d+)?\Z")


@pytest.fixture(scope="module")
def usite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site without envs (link-user only needs the tree and cpkgs.yaml), both default installations; shared by
    this module's tests, which write only in their own HOME."""
    return make_site(tmp_path_factory.mktemp("link") / "site", None, "--platform", "linux-64", "--platform", "osx-arm64")


def entry_of(root: Path) -> str:
    return f"{root}/${{CPKGS_INSTALLATION}}/envs"


def condarc(home: Path) -> Path:
    return home / ".condarc"


def backups(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if BACKUP.match(p.name))


def settings(path: Path) -> dict:
    return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8")) or {}


def one_line_inserted(old: bytes, new: bytes) -> bytes:
    """The single line `new` holds beyond `old`, asserting every other line is byte-identical and in place."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    assert len(b) == len(a) + 1, (old, new)
    i = next((n for n in range(len(a)) if a[n] != b[n]), len(a))
    assert b[:i] == a[:i] and b[i + 1 :] == a[i:], (old, new)
    return b[i]


# ------------------------------------------------------------------------------------------ files users really have

RICH_BLOCK = """\
# ~/.condarc — managed by hand, ünïcödé comments stay
channels: &chans   # anchor used below
  - conda-forge
  - 'bioconda'     # quoted
ssl_verify: "yes"
custom_multichannels:
  mine: *chans
envs_dirs:
    -   ~/my-envs        # my own, first
    - "/scratch/$USER/envs"
proxy_servers: {http: "http://proxy:3128",  https: 'http://proxy:3128'}
report_errors:    false
# trailing comment: ünïcödé ✓
"""

RICH_FLOW = """\
channels: [conda-forge,  defaults]   # two spaces on purpose
envs_dirs: [ ~/envs,'/data/envs' ]  # flow, odd spacing
auto_activate_base: false
"""

NO_KEY = """\
# only channels here
channels:
- conda-forge
- defaults
changeps1: False
"""

def test_missing_file_is_created_with_just_the_entry(usite: Path, _home: Path) -> None:
    r = run_cpkgs("link-user", root=usite)
    assert r.returncode == 0, r
    path = condarc(_home)
    assert path.read_text() == f"envs_dirs:  # added by cpkgs link-user\n  - {entry_of(usite)}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert backups(_home) == []  # nothing existed, nothing to back up
    assert f"created {path}" in r.stdout
    assert settings(path) == {"envs_dirs": [entry_of(usite)]}
    # no lock or temp file left beside it
    assert sorted(p.name for p in _home.iterdir()) == [".condarc"]


def test_block_list_gets_one_line_in_its_own_style(usite: Path, _home: Path) -> None:
    path = condarc(_home)
    path.write_text(RICH_BLOCK, encoding="utf-8")
    old = path.read_bytes()
    r = run_cpkgs("link-user", root=usite)
    assert r.returncode == 0, r
    new = path.read_bytes()
    line = one_line_inserted(old, new)
    # after the user's items, with their indentation and quoting (the last item was double-quoted)
    assert line == f'    - "{entry_of(usite)}"\n'.encode()
    assert new.index(line) > new.index(b"/scratch/$USER/envs")
    data = settings(path)
    assert data["envs_dirs"] == ["~/my-envs", "/scratch/$USER/envs", entry_of(usite)]
    assert data["custom_multichannels"]["mine"] == ["conda-forge", "bioconda"]  # the anchor still works
    [b] = backups(_home)
    assert b.read_bytes() == old


def test_flow_list_stays_flow(usite: Path, _home: Path) -> None:
    path = condarc(_home)
    path.write_text(RICH_FLOW, encoding="utf-8")
    old = path.read_bytes()
    assert run_cpkgs("link-user", root=usite).returncode == 0
    new = path.read_bytes()
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    assert [a[0], a[2]] == [b[0], b[2]]  # every other line byte for byte
    # one item appended inside the brackets, quoted like its neighbour, the rest of the line as it was
    assert b[1] == f"envs_dirs: [ ~/envs,'/data/envs','{entry_of(usite)}' ]  # flow, odd spacing\n".encode()
    assert settings(path)["envs_dirs"] == ["~/envs", "/data/envs", entry_of(usite)]


def test_absent_key_is_appended_in_the_files_style(usite: Path, _home: Path) -> None:
    path = condarc(_home)
    path.write_text(NO_KEY, encoding="utf-8")
    old = path.read_bytes()
    assert run_cpkgs("link-user", root=usite).returncode == 0
    new = path.read_bytes()
    assert new.startswith(old)
    # this file writes block lists at column 0 under their key: so does the new one
    assert new[len(old) :] == f"envs_dirs:  # added by cpkgs link-user\n- {entry_of(usite)}\n".encode()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("channels:\r\n  - conda-forge\r\nenvs_dirs:\r\n  - /a\r\n", id="crlf"),
        pytest.param("envs_dirs:\n  - /a", id="no-final-newline"),
        pytest.param("envs_dirs: []\n", id="empty-flow"),
        pytest.param("envs_dirs: &mine\n  - /a  # c\nfoo: bar\n", id="anchored-unshared"),
        pytest.param("# nothing but a comment\n", id="comment-only"),
        pytest.param("", id="empty-file"),
        pytest.param("envs_path:\n  - /a\n", id="alias-envs_path"),
    ],
)
def test_odd_layouts_link_and_unlink_round_trip(usite: Path, _home: Path, text: str) -> None:
    """In-process (the core functions the CLI calls), to keep the matrix fast."""
    path = condarc(_home)
    path.write_bytes(text.encode())
    assert link_user(usite).written
    new = path.read_bytes()
    data = settings(path)
    key = "envs_path" if "envs_path" in text else "envs_dirs"
    assert data[key][-1] == entry_of(usite) and data[key].count(entry_of(usite)) == 1
    assert "envs_dirs" not in data or key == "envs_dirs"  # never both: conda rejects that
    if "\r\n" in text:
        assert b"\r\n" in new and b"\n" not in new.replace(b"\r\n", b"")
    assert unlink_user(usite).written
    back = path.read_bytes()
    if text.endswith("\n") or not text:
        assert back == text.encode()  # exactly what was there
    else:
        assert back == text.encode() + b"\n"  # the missing final newline is the one byte that stays


def test_second_run_changes_nothing(usite: Path, _home: Path) -> None:
    path = condarc(_home)
    path.write_text(RICH_BLOCK, encoding="utf-8")
    assert run_cpkgs("link-user", root=usite).returncode == 0
    st, data, baks = path.stat(), path.read_bytes(), backups(_home)
    r = run_cpkgs("link-user", root=usite)
    assert r.returncode == 0, r
    assert "already linked" in r.stdout and "nothing changed" in r.stdout
    st2 = path.stat()
    assert (st2.st_ino, st2.st_mtime_ns, path.read_bytes()) == (st.st_ino, st.st_mtime_ns, data)
    assert backups(_home) == baks


def test_mode_is_kept(usite: Path, _home: Path) -> None:
    path = condarc(_home)
    path.write_text(RICH_FLOW)
    path.chmod(0o600)
    assert run_cpkgs("link-user", root=usite).returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [b] = backups(_home)
    assert stat.S_IMODE(b.stat().st_mode) == 0o600  # the backup is no more readable than the file


def test_symlinked_condarc_is_edited_at_its_target(usite: Path, _home: Path) -> None:
    dotfiles = _home / "dotfiles"
    dotfiles.mkdir()
    real = dotfiles / "condarc"
    real.write_text(RICH_FLOW)
    link = condarc(_home)
    link.symlink_to("dotfiles/condarc")  # relative, as dotfile managers make them
    r = run_cpkgs("link-user", root=usite)
    assert r.returncode == 0, r
    assert link.is_symlink() and os.readlink(link) == "dotfiles/condarc"
    assert settings(real)["envs_dirs"][-1] == entry_of(usite)
    assert [b.name for b in dotfiles.iterdir() if b.name != "condarc"][0].startswith("condarc.cpkgs-backup-")
    assert backups(_home) == []
    r = run_cpkgs("unlink-user", root=usite)
    assert r.returncode == 0, r
    assert link.is_symlink() and real.read_text() == RICH_FLOW


def test_dry_run_prints_a_unified_diff_and_writes_nothing(usite: Path, _home: Path) -> None:
    path = condarc(_home)
    path.write_text(RICH_BLOCK, encoding="utf-8")
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    r = run_cpkgs("link-user", "--dry-run", root=usite)
    assert r.returncode == 0, r
    assert r.stdout.startswith(f"--- {path}\n+++ {path}\n@@ ")
    added = [ln for ln in r.stdout.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    assert added == [f'+    - "{entry_of(usite)}"']
    assert not [ln for ln in r.stdout.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert backups(_home) == []
    # missing file: the diff creates it, nothing is created
    path.unlink()
    r = run_cpkgs("link-user", "--dry-run", root=usite)
    assert r.returncode == 0 and r.stdout.startswith(f"--- /dev/null\n+++ {path}\n"), r
    assert not path.exists()


def test_condarc_env_var_and_option_choose_the_file(usite: Path, _home: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.yml"
    r = run_cpkgs("link-user", root=usite, env={"CONDARC": str(other)})
    assert r.returncode == 0, r
    assert settings(other)["envs_dirs"] == [entry_of(usite)]
    assert not condarc(_home).exists()
    third = tmp_path / "third.yml"
    r = run_cpkgs("link-user", "--condarc", str(third), root=usite, env={"CONDARC": str(other)})
    assert r.returncode == 0 and third.exists(), r


# ------------------------------------------------------------------------------------------ bad files: untouched


BAD = {
    "invalid-yaml": ("channels: [a, b\nenvs_dirs: x\n", "invalid YAML"),
    "tab-indent": ("envs_dirs:\n\t- /a\n", "invalid YAML"),
    "duplicate-key": ("envs_dirs: [/a]\nenvs_dirs: [/b]\n", "invalid YAML"),
    "a-list": ("- /a\n- /b\n", "not a mapping"),
    "a-string": ("just some text\n", "not a mapping"),
    "envs_dirs-string": ("envs_dirs: /a:/b\n", "envs_dirs is a string, not a list"),
    "envs_dirs-mapping": ("envs_dirs: {a: 1}\n", "envs_dirs is a mapping, not a list"),
    "envs_dirs-null": ("envs_dirs:\n", "envs_dirs is empty (null), not a list"),
    "both-aliases": ("envs_dirs: [/a]\nenvs_path: [/b]\n", "both envs_dirs and its alias envs_path"),
    "shared-anchor": ("envs_dirs: &d [/a]\npkgs_dirs: *d\n", "shares its list with another key"),
    "not-utf8": (b"channels: [caf\xe9]\n", "not UTF-8"),
    "self-alias-list": ("a: &x [*x]\n", "a YAML alias refers to the list or mapping it is in"),
    "self-alias-map": ("envs_dirs: [/a]\nb: &y {c: *y}\n", "a YAML alias refers to the list or mapping it is in"),
    "alias-bomb": ("".join([f"a0: &a0 [{', '.join(['x'] * 10)}]\n"] + [
        f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]\n" for n in range(1, 10)]),
        "its YAML aliases expand to more than 100000 items"),
}


# unlink-user reads through the same parser: a few cases show it stops the same way.
BAD_RUNS = [(n, "link-user") for n in sorted(BAD)] + [
    (n, "unlink-user") for n in ("invalid-yaml", "a-list", "envs_dirs-string", "shared-anchor")
]


@pytest.mark.parametrize(("name", "command"), BAD_RUNS)
def test_bad_file_is_one_line_and_untouched(usite: Path, _home: Path, name: str, command: str) -> None:
    content, problem = BAD[name]
    path = condarc(_home)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = sorted(os.listdir(_home)), path.read_bytes(), path.stat().st_mtime_ns
    r = run_cpkgs(command, root=usite)
    assert r.returncode == 1, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r
    assert lines[0].startswith(f"cpkgs: {path}:") and problem in lines[0], r
    assert (sorted(os.listdir(_home)), path.read_bytes(), path.stat().st_mtime_ns) == before


def test_unreadable_file(usite: Path, tmp_path: Path) -> None:
    """Root reads anything: the unreadable case runs as uid 65534 against a root-owned 0600 file."""
    home = tmp_path / "nobody-home"
    home.mkdir()
    path = home / ".condarc"
    path.write_text("channels: [a]\n")
    path.chmod(0o600)
    world_traversable(home)
    os.chown(home, 65534, 65534)
    r = run_cpkgs("link-user", root=usite, user=True, env={"HOME": str(home)})
    assert r.returncode == 1, r
    assert r.stderr.strip() == f"cpkgs: {path}: cannot read: permission denied"
    assert path.read_text() == "channels: [a]\n" and sorted(os.listdir(home)) == [".condarc"]


def test_directory_instead_of_file(usite: Path, _home: Path) -> None:
    condarc(_home).mkdir()
    r = run_cpkgs("link-user", root=usite)
    assert r.returncode == 1 and r.stderr.strip() == f"cpkgs: {condarc(_home)}: is a directory, not a file", r


def test_missing_directory_for_condarc_option(usite: Path, tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "condarc"
    r = run_cpkgs("link-user", "--condarc", str(target), root=usite)
    assert r.returncode == 1 and "does not exist" in r.stderr and str(target) in r.stderr, r
    assert not (tmp_path / "no").exists()


# ------------------------------------------------------------------------------------------ concurrency


@pytest.mark.parametrize("existing", [True, False], ids=["existing-file", "missing-file"])
def test_eight_concurrent_runs_leave_the_entry_once(usite: Path, _home: Path, existing: bool) -> None:
    path = condarc(_home)
    if existing:
        path.write_text(RICH_BLOCK, encoding="utf-8")
    cmd = [sys.executable, "-m", "cpkgs_admin", "--root", str(usite), "link-user"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(8)
    ]
    outs = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert all(rc == 0 for rc, _, _ in outs), outs
    changed = [o for _, o, _ in outs if "already linked" not in o]
    assert len(changed) == 1, outs  # exactly one run wrote; the seven others found the entry under the lock
    data = settings(path)
    assert data["envs_dirs"].count(entry_of(usite)) == 1
    if existing:
        assert one_line_inserted(RICH_BLOCK.encode(), path.read_bytes())
        assert len(backups(_home)) == 1
    leftovers = [p.name for p in _home.iterdir() if p.name != ".condarc" and not BACKUP.match(p.name)]
    assert leftovers == []  # no lock, owner record or temp file left


# ------------------------------------------------------------------------------------------ unlink-user


def test_unlink_removes_exactly_the_entry(usite: Path, _home: Path) -> None:
    e = entry_of(usite)
    path = condarc(_home)
    text = textwrap.dedent(f"""\
        envs_dirs: ['/a', '{e}', "/b"]   # keep me
        pkgs_dirs:
          - /local/pkgs
          - {e}
        """)
    path.write_text(text)
    r = run_cpkgs("unlink-user", root=usite)
    assert r.returncode == 0, r
    # the item in envs_dirs goes with one separator; the same text under another key is not ours
    assert path.read_text() == text.replace(f", '{e}'", "")
    r = run_cpkgs("unlink-user", root=usite)
    assert r.returncode == 0 and "not linked" in r.stdout and "nothing changed" in r.stdout, r


def test_unlink_keeps_a_key_the_user_wrote(usite: Path, _home: Path) -> None:
    path = condarc(_home)
    path.write_text(f"channels: [a]\nenvs_dirs:   # mine\n  - {entry_of(usite)}\nquiet: true\n")
    assert run_cpkgs("unlink-user", root=usite).returncode == 0
    assert path.read_text() == "channels: [a]\nenvs_dirs: []   # mine\nquiet: true\n"


def test_unlink_removes_the_key_link_user_created_even_after_user_edits(usite: Path, _home: Path) -> None:
    path = condarc(_home)
    path.write_text(NO_KEY)
    assert run_cpkgs("link-user", root=usite).returncode == 0
    with path.open("a") as fh:
        fh.write("auto_update_conda: false\n")  # the user edits the file in between
    assert run_cpkgs("unlink-user", root=usite).returncode == 0
    assert path.read_text() == NO_KEY + "auto_update_conda: false\n"


def test_unlink_missing_file(usite: Path, _home: Path) -> None:
    r = run_cpkgs("unlink-user", root=usite)
    assert r.returncode == 0 and "does not exist" in r.stdout, r
    assert not condarc(_home).exists()


# ------------------------------------------------------------------------------------------ shared homes


FAKE_UNAME = """\
#!/bin/sh
# uname for a {s} {m} host, with uname's field order whatever the option order.
s=0 n=0 r=0 m=0 p=0
[ $# -eq 0 ] && s=1
for a in "$@"; do
  case "$a" in
    --kernel-name) s=1 ;; --nodename) n=1 ;; --kernel-release) r=1 ;; --machine) m=1 ;; --processor) p=1 ;;
    --all) s=1 n=1 r=1 m=1 p=1 ;;
    -*) o=${{a#-}}
        while [ -n "$o" ]; do
          c=${{o%"${{o#?}}"}}; o=${{o#?}}
          case "$c" in s) s=1 ;; n) n=1 ;; r) r=1 ;; m) m=1 ;; p) p=1 ;; a) s=1 n=1 r=1 m=1 p=1 ;; esac
        done ;;
  esac
done
out=
[ $s = 1 ] && out="$out {s}"
[ $n = 1 ] && out="$out testhost"
[ $r = 1 ] && out="$out {r}"
[ $m = 1 ] && out="$out {m}"
[ $p = 1 ] && out="$out {p}"
echo "${{out# }}"
"""

HOSTS = {
    "linux": {"s": "Linux", "m": "x86_64", "r": "6.1.0", "p": "unknown"},
    "mac": {"s": "Darwin", "m": "arm64", "r": "23.4.0", "p": "arm"},
}

# conda's resolution of envs_dirs, stated once: conda/common/configuration.py expands each raw value with
# os.path.expandvars (ParameterLoader(..., expandvars=True) in conda/base/context.py) and
# mockable_context_envs_dirs passes every item through conda/common/path.py expand() =
# abspath(expanduser(expandvars(path))): expandvars twice, as in conda. The condarc is read with ruamel.yaml, as
# conda reads it.
CONDA_RESOLUTION = """\
import json, os, sys
from os.path import abspath, expanduser, expandvars
from ruamel.yaml import YAML
with open(sys.argv[1]) as fh:
    rc = YAML(typ="rt").load(fh) or {}
dirs = [abspath(expanduser(expandvars(expandvars(p)))) for p in rc.get("envs_dirs", [])]
print(json.dumps({"dirs": dirs, "installation": os.environ.get("CPKGS_INSTALLATION")}))
"""


def fake_host(tmp_path: Path, host: str) -> Path:
    bindir = tmp_path / f"fakebin-{host}"
    bindir.mkdir()
    uname = bindir / "uname"
    uname.write_text(FAKE_UNAME.format(**HOSTS[host]))
    uname.chmod(0o755)
    return bindir


def resolve_as_conda(profile: Path, bindir: Path, rc: Path, tmp_path: Path) -> dict:
    """Source the site's real profile in real bash on a faked OS, then resolve envs_dirs as conda would."""
    script = tmp_path / "conda_resolution.py"
    script.write_text(CONDA_RESOLUTION)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    for var in ("CPKGS_ROOT", "CPKGS_INSTALLATION", "CONDA_PKGS_DIRS"):
        env.pop(var, None)
    proc = subprocess.run(
        ["bash", "-c", '. "$1" && exec "$2" "$3" "$4"', "bash", str(profile), sys.executable, str(script), str(rc)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc
    return json.loads(proc.stdout.splitlines()[-1])


def test_each_os_sharing_the_home_resolves_to_its_own_envs(usite: Path, _home: Path, tmp_path: Path) -> None:
    """Boundary: no real conda can run here (no conda package, no network). What conda does with the file is
    emulated faithfully (CONDA_RESOLUTION above); what sets the variable is the site's real conda.sh, sourced in
    real bash under a fake `uname` first on PATH."""
    profile = usite / "etc" / "profile.d" / "conda.sh"
    if "CPKGS_INSTALLATION" not in profile.read_text():
        pytest.skip("the site's conda.sh does not export CPKGS_INSTALLATION yet (issue 4 lands it)")
    assert run_cpkgs("link-user", root=usite).returncode == 0
    rc = condarc(_home)
    linux_envs, mac_envs = usite / ENVS, usite / "anaconda3_macOS" / "envs"
    assert linux_envs.is_dir() and mac_envs.is_dir()

    linux = resolve_as_conda(profile, fake_host(tmp_path, "linux"), rc, tmp_path)
    mac = resolve_as_conda(profile, fake_host(tmp_path, "mac"), rc, tmp_path)
    assert linux["installation"] == "anaconda3_linux" and mac["installation"] == "anaconda3_macOS"
    assert linux["dirs"] == [str(linux_envs)]
    assert mac["dirs"] == [str(mac_envs)]


def test_unset_variable_resolves_to_a_dir_nobody_can_create(usite: Path, _home: Path) -> None:
    """Without the profile, conda keeps `${CPKGS_INSTALLATION}` literally: that dir does not exist, and a user
    (uid 65534 here) cannot create it, so conda neither lists nor creates envs there."""
    assert run_cpkgs("link-user", root=usite).returncode == 0
    [item] = settings(condarc(_home))["envs_dirs"]
    env = {k: v for k, v in os.environ.items() if k != "CPKGS_INSTALLATION"}
    literal = subprocess.run(
        [sys.executable, "-c", "import os,sys; print(os.path.abspath(os.path.expanduser(os.path.expandvars(sys.argv[1]))))", item],
        capture_output=True, text=True, env=env, check=True,
    ).stdout.strip()  # fmt: skip
    assert literal == f"{usite}/${{CPKGS_INSTALLATION}}/envs"
    assert not os.path.exists(literal)
    proc = as_nobody(["mkdir", "-p", literal])
    assert proc.returncode != 0 and "Permission denied" in proc.stderr, proc
    assert not os.path.exists(os.path.dirname(literal))


# ------------------------------------------------------------------------------------------ warnings


def test_warnings_name_hard_coded_dirs_and_nfs_package_caches(usite: Path, tmp_path: Path) -> None:
    """Boundary: NFS cannot be mounted here; the mount table handed to the check says /net/home is nfs4."""
    site = open_site(usite)
    e = shared_envs_entry(site)
    text = f"envs_dirs: [{usite}/anaconda3_macOS/envs, '{e}']\npkgs_dirs: [/net/home/me/pkgs, /var/tmp/pkgs]\n"
    doc = parse_condarc(text, "rc")
    mounts = [Mount("/", "ext4"), Mount("/net/home", "nfs4", "filer:/home")]
    warns = link_warnings(site, doc, e, environ={"HOME": str(tmp_path)}, mounts=mounts)
    assert any("CPKGS_INSTALLATION is not set" in w for w in warns)
    assert any(f"{usite}/anaconda3_macOS/envs, the osx-arm64 envs" in w for w in warns)
    nfs = [w for w in warns if "pkgs_dirs" in w]
    assert len(nfs) == 1 and "/net/home/me/pkgs is on nfs4" in nfs[0]
    quiet = link_warnings(site, parse_condarc(f"envs_dirs: ['{e}']\n", "rc"), e,
                          environ={"CPKGS_INSTALLATION": "anaconda3_linux"}, mounts=mounts)  # fmt: skip
    assert quiet == []


def test_cli_prints_warnings_on_stderr(usite: Path, _home: Path) -> None:
    r = run_cpkgs("link-user", root=usite)
    assert r.returncode == 0 and "cpkgs: warning: CPKGS_INSTALLATION is not set" in r.stderr, r
    r = run_cpkgs("link-user", root=usite, env={"CPKGS_INSTALLATION": "anaconda3_linux"})
    assert r.returncode == 0 and r.stderr == "", r


def test_layout_the_splice_does_not_handle_falls_back_to_ruamel_round_trip(usite: Path, _home: Path) -> None:
    """A whole file in flow style has no line to add a key on: ruamel's own round trip writes it, checked the same
    way (settings equal to the old ones plus the entry); unlink-user removes the item. No line carries the
    link-user marker here, so the key stays, empty: conda reads `envs_dirs: []` as no entries."""
    path = condarc(_home)
    path.write_text("{channels: [conda-forge, 'bioconda'], ssl_verify: true}  # one line\n")
    assert link_user(usite).written
    assert settings(path) == {
        "channels": ["conda-forge", "bioconda"],
        "ssl_verify": True,
        "envs_dirs": [entry_of(usite)],
    }
    assert "'bioconda'" in path.read_text() and "# one line" in path.read_text()  # quotes and comment kept
    assert unlink_user(usite).written
    assert settings(path) == {"channels": ["conda-forge", "bioconda"], "ssl_verify": True, "envs_dirs": []}
