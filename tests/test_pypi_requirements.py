"""The pip lines of a spec as conda hands them to pip, and the `pypi:` section of cpkgs.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpkgs_admin.errors import ConfigError, CpkgsError, PipError, SpecError
from cpkgs_admin.pipeline.pypi.requirements import IndexOptions, logical_lines, parse_pip_section
from cpkgs_admin.site.pypi_config import PYPI_INDEX, PypiConfig, pypi_config_from_mapping


def spec(tmp_path: Path) -> Path:
    p = tmp_path / "specs" / "demo.yml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("dependencies: [python]\n")
    return p


def one_line_error(exc: pytest.ExceptionInfo[PipError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    assert isinstance(exc.value, SpecError) and isinstance(exc.value, CpkgsError) and exc.value.exit_code == 1
    return msg


def test_specifiers_extras_markers(tmp_path: Path) -> None:
    req = parse_pip_section(["rich>=13,<16", "requests[socks] ; python_version >= '3.8'", "Py_YAML==6.*"],
                            spec(tmp_path))
    r0, r1, r2 = req.requirements
    assert (r0.name, r0.kind, r0.line) == ("rich", "index", "rich<16,>=13")
    assert r1.name == "requests" and r1.line == 'requests[socks] ; python_version >= "3.8"'
    assert r2.name == "py-yaml" and r2.line == "Py_YAML==6.*"
    assert req.options == IndexOptions()


def test_options_and_relative_files(tmp_path: Path) -> None:
    s = spec(tmp_path)
    (s.parent / "wheels").mkdir()
    (s.parent / "extra.txt").write_text("# a comment\n"
                                        "click \\\n  ==8.5.1  # pinned\n"
                                        "--extra-index-url https://mirror.example.org/simple/\n"
                                        "-c constraints.txt\n")
    (s.parent / "constraints.txt").write_text("urllib3<3\n")
    req = parse_pip_section(["--index-url https://pypi.example.org/simple", "-r extra.txt", "--find-links ./wheels",
                             "--pre", "--no-index", "tqdm"], s)
    assert [r.name for r in req.requirements] == ["click", "tqdm"]
    assert req.requirements[0].line == "click==8.5.1"
    assert req.requirements[0].where == f"{s.parent / 'extra.txt'} line 2"
    assert [c.line for c in req.constraints] == ["urllib3<3"]
    assert req.options == IndexOptions(index_url="https://pypi.example.org/simple",
                                       extra_index_urls=("https://mirror.example.org/simple",),
                                       find_links=(str(s.parent / "wheels"),), no_index=True, pre=True)
    assert req.files == (str(s.parent / "extra.txt"), str(s.parent / "constraints.txt"))


def test_wheel_urls_and_paths_with_hashes(tmp_path: Path) -> None:
    s = spec(tmp_path)
    whl = s.parent / "dist" / "toolz-1.2.0-py3-none-any.whl"
    whl.parent.mkdir()
    whl.write_bytes(b"x")
    h = "a" * 64
    req = parse_pip_section([
        f"https://files.example.org/six-1.17.0-py2.py3-none-any.whl#sha256={h}",
        f"./dist/toolz-1.2.0-py3-none-any.whl --hash=sha256:{'b' * 64}",
        "mypkg @ https://files.example.org/mypkg-2.0.tar.gz",
    ], s)
    six, toolz, mypkg = req.requirements
    assert (six.name, six.kind, six.hashes) == ("six", "url", (h,))
    assert six.line == "six @ https://files.example.org/six-1.17.0-py2.py3-none-any.whl"
    assert toolz.name == "toolz" and toolz.line == f"toolz @ {whl.as_uri()}" and toolz.hashes == ("b" * 64,)
    assert mypkg.sdist and mypkg.kind == "url"


def test_git_urls(tmp_path: Path) -> None:
    req = parse_pip_section(["git+https://example.org/x/tinytool.git@v1#egg=tinytool",
                             "other @ git+file:///srv/repos/other@main", "git+https://example.org/y/anon.git"],
                            spec(tmp_path))
    a, b, c = req.requirements
    assert (a.kind, a.name) == ("vcs", "tinytool")
    assert (b.kind, b.name, b.line) == ("vcs", "other", "other @ git+file:///srv/repos/other@main")
    assert (c.kind, c.name, c.line) == ("vcs", None, "git+https://example.org/y/anon.git")


@pytest.mark.parametrize(("line", "expect"), [
    ("-e .", "editable install points into a source tree outside the env"),
    ("--editable=git+https://example.org/x.git#egg=x", "editable install"),
    ("./src", "is a local source directory"),
    ("rich>=>1", "invalid requirement 'rich>=>1'"),
    ("--trusted-host example.org", "unknown pip option '--trusted-host'"),
    ("rich --global-option=x", "option '--global-option=x' after a requirement is not supported"),
    ("rich --hash=md5:abc", "only sha256:<64 hex digits> hashes"),
    ("hg+https://example.org/repo#egg=x", "hg URLs are not supported"),
    ("https://example.org/thing.exe", "names neither a wheel"),
    ("-r missing.txt", "missing.txt does not exist"),
    ("https://${TOKEN}@example.org/x-1.0-py3-none-any.whl", "environment variables are not expanded"),
    ("--index-url ftp://example.org/simple", "is not an http://, https:// or file:// URL"),
    ("./nothing-1.0-py3-none-any.whl", "no such file"),
])
def test_bad_lines_are_one_line_naming_the_item(tmp_path: Path, line: str, expect: str) -> None:
    s = spec(tmp_path)
    (s.parent / "src").mkdir()
    with pytest.raises(PipError) as exc:
        parse_pip_section(["click", line], s)
    msg = one_line_error(exc)
    assert expect in msg, msg
    assert f"{s}: pip[1]" in msg


def test_include_cycle_and_line_numbers(tmp_path: Path) -> None:
    s = spec(tmp_path)
    (s.parent / "a.txt").write_text("click\n-r b.txt\n")
    (s.parent / "b.txt").write_text("\n\n-r a.txt\n")
    with pytest.raises(PipError) as exc:
        parse_pip_section(["-r a.txt"], s)
    msg = one_line_error(exc)
    assert f"{s.parent / 'b.txt'} line 3" in msg and "-r cycle" in msg


def test_not_a_list_and_no_requirements(tmp_path: Path) -> None:
    s = spec(tmp_path)
    with pytest.raises(PipError, match="'pip' must be a list"):
        parse_pip_section("rich", s)
    with pytest.raises(PipError, match="lists no requirements"):
        parse_pip_section(["--pre"], s)
    with pytest.raises(PipError, match=r"pip\[0\]: must be a string"):
        parse_pip_section([{"rich": 1}], s)


def test_logical_lines_follow_pip() -> None:
    text = "a \\\n  b # c\n# only comment\nurl#frag\n\nlast \\\n"
    assert logical_lines(text) == [(1, "a b"), (4, "url#frag"), (6, "last")]


# ----------------------------------------------------------------------------------------------- cpkgs.yaml pypi:


def test_config_defaults_and_a_mirror_in_one_line() -> None:
    assert pypi_config_from_mapping(None, "cpkgs.yaml") == PypiConfig()
    assert PypiConfig().index_url == PYPI_INDEX
    cfg = pypi_config_from_mapping({"index_url": "https://mirror.example.org/pypi/simple/"}, "cpkgs.yaml")
    assert cfg.index_url == "https://mirror.example.org/pypi/simple" and cfg.enabled
    full = {"enabled": False, "index_url": None, "extra_index_urls": ["file:///srv/idx"],
            "find_links": ["/srv/wheels"], "spec_indexes": False, "build_from_source": False}
    cfg = pypi_config_from_mapping(full, "cpkgs.yaml")
    assert cfg.to_yaml_dict() == full


@pytest.mark.parametrize(("data", "expect"), [
    ("yes", "key 'pypi' must be a mapping"),
    ({"index": "x"}, "key 'pypi.index' is unknown"),
    ({"enabled": "yes"}, "key 'pypi.enabled' must be bool, got str"),
    ({"index_url": "pypi.org/simple"}, "key 'pypi.index_url' 'pypi.org/simple' is not an http://"),
    ({"extra_index_urls": ["https://ok.example.org", "file://relative"]}, "key 'pypi.extra_index_urls[1]'"),
    ({"find_links": ["wheels"]}, "key 'pypi.find_links[0]' 'wheels' must be an absolute directory or a URL"),
    ({"find_links": "/srv/wheels"}, "key 'pypi.find_links' must be list, got str"),
    ({"spec_indexes": 1}, "key 'pypi.spec_indexes' must be bool, got int"),
])
def test_config_problems_name_the_key(data: object, expect: str) -> None:
    with pytest.raises(ConfigError) as exc:
        pypi_config_from_mapping(data, "/site/cpkgs.yaml")
    assert str(exc.value).startswith("/site/cpkgs.yaml: key 'pypi")
    assert expect in str(exc.value)
    assert "\n" not in str(exc.value)
