# cpkgs site profile for csh and tcsh. Users: source @ROOT@/etc/profile.d/conda.csh
# Placeholder until the shell profile lands: it only records the site root.
setenv CPKGS_ROOT "@ROOT@"
