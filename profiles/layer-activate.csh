# Written by `cpkgs extend`: this personal layer sits on the shared env @BASE_NAME@.
# When a conda other than the site's own activates the layer, the base comes along: its bin right after the
# layer's, its activate.d scripts run with CONDA_PREFIX set to the base (as with the base activated on its own).
# cpkgs' own conda (conda.csh) does that itself: it marks the scripts it runs with _cpkgs_busy.
if ( ! $?_cpkgs_busy && ! -d @BASE@ ) then
    # (csh cannot write to its stderr alone; /dev/stderr fails when it is a socket or another user's pipe)
    /bin/sh -c 'printf "%s\n" "$1" >&2' cpkgs "cpkgs: "@LAYER@" is a personal layer on @BASE_NAME@ ("@BASE@"), which no longer exists; rebuild the layer on a current env"
else if ( ! $?_cpkgs_busy ) then
    set _cpkgs_np = ( )
    set _cpkgs_in = 0
    foreach _cpkgs_d ( $path:q )
        if ( "$_cpkgs_d" == @BASE_BIN@ ) continue
        set _cpkgs_np = ( $_cpkgs_np:q "$_cpkgs_d" )
        if ( "$_cpkgs_d" == @LAYER_BIN@ && $_cpkgs_in == 0 ) then
            set _cpkgs_np = ( $_cpkgs_np:q @BASE_BIN@ )
            set _cpkgs_in = 1
        endif
    end
    if ( $_cpkgs_in == 0 ) set _cpkgs_np = ( @BASE_BIN@ $_cpkgs_np:q )
    set path = ( $_cpkgs_np:q )
    set _cpkgs_lp = "$CONDA_PREFIX"
    setenv CONDA_PREFIX @BASE@
@SOURCES@
    setenv CONDA_PREFIX "$_cpkgs_lp"
    unset _cpkgs_np _cpkgs_in _cpkgs_d _cpkgs_lp
endif
