/*
 * cli.h - what the CLI's files share.
 */
#ifndef HEAVYLOCK_CLI_H
#define HEAVYLOCK_CLI_H

#include <stddef.h>

/* `heavylock doctor` (doctor.c). */
int cmd_doctor(int argc, char **argv);

/* A lock target as it may be shown: a URL's password replaced by "***"
 * ("postgresql://ci:***@db/x"); a path unchanged.  Returns buf. */
const char *cli_show_target(const char *target, char *buf, size_t len);

/* 1 when `target` names a lock server ("scheme://..."), not a file. */
int cli_is_url(const char *target);

#endif
