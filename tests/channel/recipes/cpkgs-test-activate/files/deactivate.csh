# cpkgs-test-activate: sourced by conda deactivate (csh/tcsh)
unsetenv CPKGS_TEST_ACTIVATED
unsetenv CPKGS_TEST_ACT_PREFIX
