"""The pip part of an env (environment.yml's `pip:` section), self-contained: parse, lock, install, record, verify.

What the new-env pipeline calls, step by step (DESIGN.md "Environment lifecycle"):

1. spec         requirements.parse_pip_section(items, spec_file) -> PipRequest
                config.pypi_config_from_mapping(data.get("pypi"), source) -> PypiConfig   (cpkgs.yaml)
2. solve+stage  target.target_python(staging, final) -> TargetPython      (after rattler installed the conda part)
                resolve.lock_pip(request, target, config, store=, cache_dir=, work_dir=) -> PipLock
                resolve.lock_from_file(record.read_lock_text(path), target, config, ...) -> PipLock   (--lock)
4. pip part     install.install_pip(lock, target, cache_dir=, work_dir=, hard_links=) -> list[PypiPackage]
5. post-process record.lock_text(packages, lock.options, name) -> the companion requirements file
                PypiPackage.to_json() -> the env record's `"kind": "pypi"` entries
6. verify       verify.pip_expected_files(prefix) -> entries to merge with verify.expected_files
                verify.records_digest(prefix) -> keep beside meta_sha256
export/mirror   record.mirror_wheels(packages, store, dest, layout="find-links"|"simple") -> IndexOptions
kernels etc.    inventory.provides(prefix, "ipykernel") / provides(prefix, "IPython", module=True)

Nothing here imports click or exits; every failure is a PipError (a SpecError) with one line naming what is wrong.
`packaging` is imported inside the functions that parse requirements, versions and file names: 35 ms to import
(packaging.requirements; python -X importtime), which no spec without a `pip:` part needs.
"""
