# cpkgs-test-activate: sourced by conda activate (csh/tcsh)
setenv CPKGS_TEST_ACTIVATED yes
if ( $?CONDA_PREFIX ) then
    setenv CPKGS_TEST_ACT_PREFIX "$CONDA_PREFIX"
else
    setenv CPKGS_TEST_ACT_PREFIX ""
endif
