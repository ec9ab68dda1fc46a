# cpkgs-test-activate: sourced by conda activate (sh/bash/zsh)
export CPKGS_TEST_ACTIVATED=yes
export CPKGS_TEST_ACT_PREFIX="${CONDA_PREFIX:-}"
