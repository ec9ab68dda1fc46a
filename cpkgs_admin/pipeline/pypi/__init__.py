"""The pip part of an env (environment.yml's `pip:` section), self-contained: parse, lock, install, record, verify.

The pipeline's calls (pipeline/pip.py, DESIGN.md "Environment lifecycle") go through part.py:
1. spec         part.plan_pip_part(lines, spec dir, source, cpkgs.yaml pypi:, pip_lock=, pip_index=) -> PipPlan
                (requirements.parse_pip_section, resolve.check_policy; record.read_lock_text for --pip-lock)
2. dry run      part.dry_run_pip_part(plan, target.target_for_paths(...), inventory.distributions_from_paths(...))
4. pip part     part.build_pip_part(plan, target.target_for_prefix(staging, final, platform, native=), store=,
                cache_dir=, work_dir=, hard_links=) -> PipPart: resolve.lock_pip / lock_from_file (uv, for the env's
                python version and platform: target.python_platform), artifacts.wheel_for (download or isolated
                build into store.WheelStore), install.install_pip (uv natively, `installer` for another platform),
                bytecode.compile_pip_part
5. post-process record.lock_text -> conda-meta/cpkgs/pip-lock.txt; verify.pip_manifest -> conda-meta/cpkgs/pypi.json
6. verify       integrity.pipfiles (every RECORD at pypi.json's hash, every file at its RECORD's)
mirror          record.mirror_wheels(packages, store, dest, layout="simple")
When uv fails, availability.missing_requirements names every requirement no location lists.

Nothing here imports click or exits; every failure is a PipError (a SpecError) with one line naming what is wrong.
`packaging` is imported inside the functions that parse requirements, versions and file names: 35 ms to import
(packaging.requirements; python -X importtime), which no spec without a `pip:` part needs.
"""
