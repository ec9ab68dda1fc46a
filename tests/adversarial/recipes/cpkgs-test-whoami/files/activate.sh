# Who runs the activate.d scripts when cpkgs measures them at publish, and may it write outside the env?
MEASURED_UID="$(id -u)"
export MEASURED_UID
if (: > "$CONDA_PREFIX/../measured-wrote-here") 2>/dev/null; then
    MEASURED_WROTE=yes
else
    MEASURED_WROTE=no
fi
export MEASURED_WROTE
