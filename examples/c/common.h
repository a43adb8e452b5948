/* What both examples share: parsing a device name and failing with the library's message. */
#ifndef STAG_EXAMPLE_COMMON_H
#define STAG_EXAMPLE_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stagformer.h"

/* Exits with the call's name and the thread's last error unless `status` is STAG_STATUS_OK. */
static void check(stag_status status, const char *call) {
    if (status != STAG_STATUS_OK) {
        fprintf(stderr, "%s failed (status %d): %s\n", call, (int)status, stag_last_error());
        exit(1);
    }
}

/* "cpu", "emu", "cuda" or "auto" as a stag_device; anything else exits. */
static stag_device parse_device(const char *name) {
    static const char *const names[] = {"cpu", "emu", "cuda", "auto"};
    for (stag_device d = 0; d < 4; d++) {
        if (strcmp(name, names[d]) == 0) {
            return d;
        }
    }
    fprintf(stderr, "unknown device %s (cpu, emu, cuda or auto)\n", name);
    exit(2);
}

#endif
