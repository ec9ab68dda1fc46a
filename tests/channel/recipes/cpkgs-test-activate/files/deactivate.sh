# cpkgs-test-activate: sourced by conda deactivate (sh/bash/zsh)
unset CPKGS_TEST_ACTIVATED
unset CPKGS_TEST_ACT_PREFIX
