# Written by `cpkgs extend`: this personal layer sits on the shared env @BASE_NAME@.
# When a conda other than the site's own deactivates the layer: the base's deactivate.d scripts (CONDA_PREFIX set to
# the base), then the base's bin off PATH. cpkgs' own conda (conda.csh) does that itself: it marks the scripts it
# runs with _cpkgs_busy.
if ( ! $?_cpkgs_busy ) then
    set _cpkgs_lp = "$CONDA_PREFIX"
    setenv CONDA_PREFIX @BASE@
@SOURCES@
    setenv CONDA_PREFIX "$_cpkgs_lp"
    set _cpkgs_np = ( )
    foreach _cpkgs_d ( $path:q )
        if ( "$_cpkgs_d" != @BASE_BIN@ ) set _cpkgs_np = ( $_cpkgs_np:q "$_cpkgs_d" )
    end
    set path = ( $_cpkgs_np:q )
    unset _cpkgs_np _cpkgs_d _cpkgs_lp
endif
