#include <stdio.h>

#ifndef PREFIX
#error "PREFIX must be defined"
#endif

/* Kept in its own array so the installer's binary prefix patching (which pads
 * the shortened string with NULs) is visible through the C string. */
static const char prefix[] = PREFIX;

int main(void) {
    puts(prefix);
    return 0;
}
