#!/bin/sh
# rattler runs this as the builder during the install, with the builder's environment; tests set one of:
# CPKGS_TEST_READONLY=DIR  DIR becomes read-only from here on (a bind mount of itself, remounted ro): the filesystem
#                          fails under the build after the packages are linked (EROFS), like a server gone read-only
# CPKGS_TEST_ABORT=1       the cpkgs process gets SIGABRT, as when rattler panics and aborts
# CPKGS_TEST_APPEND=PATH   a line is appended to PATH (relative to the env) in place, after every package was
#                          linked: a file the build may already have checked changes under it
if [ -n "$CPKGS_TEST_READONLY" ]; then
    mount --bind "$CPKGS_TEST_READONLY" "$CPKGS_TEST_READONLY" &&
        mount -o remount,bind,ro "$CPKGS_TEST_READONLY" || exit 1
fi
if [ -n "$CPKGS_TEST_ABORT" ]; then
    p=$PPID
    while [ "$p" -gt 1 ] && ! tr '\0' ' ' < "/proc/$p/cmdline" | grep -q cpkgs_admin; do
        p=$(cut -d' ' -f4 "/proc/$p/stat")
    done
    [ "$p" -gt 1 ] && kill -ABRT "$p"
    sleep 5
fi
if [ -n "$CPKGS_TEST_APPEND" ]; then
    printf 'changed by a post-link script\n' >> "$PREFIX/$CPKGS_TEST_APPEND" || exit 1
fi
exit 0
