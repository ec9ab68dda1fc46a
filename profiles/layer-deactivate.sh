# Written by `cpkgs extend`: this personal layer sits on the shared env @BASE_NAME@.
# When a conda other than the site's own deactivates the layer: the base's deactivate.d scripts (CONDA_PREFIX set to
# the base), then the base's bin off PATH (conda has already taken the layer's off: it sets PATH before it runs
# deactivate.d scripts). cpkgs' own conda does that itself: it marks the scripts it runs with _cpkgs_busy.
if [ -z "${_cpkgs_busy-}" ]; then
    _cpkgs_lp=$CONDA_PREFIX
    CONDA_PREFIX=@BASE@
@SOURCES@
    CONDA_PREFIX=$_cpkgs_lp
    _cpkgs_bb=@BASE_BIN@ _cpkgs_p=:$PATH:
    while :; do
        case $_cpkgs_p in
        *":$_cpkgs_bb:"*) _cpkgs_p=${_cpkgs_p%%":$_cpkgs_bb:"*}:${_cpkgs_p#*":$_cpkgs_bb:"} ;;
        *) break ;;
        esac
    done
    _cpkgs_p=${_cpkgs_p#:}
    PATH=${_cpkgs_p%:}
    export PATH
    unset _cpkgs_bb _cpkgs_p _cpkgs_lp
fi
