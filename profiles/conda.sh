# cpkgs site profile for sh, bash, zsh, ksh and dash. Users: source @ROOT@/etc/profile.d/conda.sh
# Placeholder until the shell profile lands: it only records the site root.
CPKGS_ROOT=@ROOT_SH@
export CPKGS_ROOT
