# Written by `cpkgs extend`: this personal layer sits on the shared env @BASE_NAME@.
# When a conda other than the site's own activates the layer, the base comes along: its bin right after the
# layer's, its activate.d scripts run with CONDA_PREFIX set to the base (as with the base activated on its own).
# cpkgs' own conda (conda.sh, conda.csh) does that itself: it marks the scripts it runs with _cpkgs_busy.
if [ -z "${_cpkgs_busy-}" ] && [ ! -d @BASE@ ]; then
    echo "cpkgs: "@LAYER@" is a personal layer on @BASE_NAME@ ("@BASE@"), which no longer exists; rebuild the layer on a current env" >&2
elif [ -z "${_cpkgs_busy-}" ]; then
    _cpkgs_lb=@LAYER_BIN@ _cpkgs_bb=@BASE_BIN@ _cpkgs_p=:$PATH:
    # The base's bin once, right after the layer's (a reactivation finds it there already).
    while :; do
        case $_cpkgs_p in
        *":$_cpkgs_bb:"*) _cpkgs_p=${_cpkgs_p%%":$_cpkgs_bb:"*}:${_cpkgs_p#*":$_cpkgs_bb:"} ;;
        *) break ;;
        esac
    done
    case $_cpkgs_p in
    *":$_cpkgs_lb:"*) _cpkgs_p=${_cpkgs_p%%":$_cpkgs_lb:"*}:$_cpkgs_lb:$_cpkgs_bb:${_cpkgs_p#*":$_cpkgs_lb:"} ;;
    *) _cpkgs_p=:$_cpkgs_bb$_cpkgs_p ;;
    esac
    _cpkgs_p=${_cpkgs_p#:}
    PATH=${_cpkgs_p%:}
    export PATH
    _cpkgs_lp=$CONDA_PREFIX
    CONDA_PREFIX=@BASE@
@SOURCES@
    CONDA_PREFIX=$_cpkgs_lp
    unset _cpkgs_lb _cpkgs_bb _cpkgs_p _cpkgs_lp
fi
