/*
 * cli.h - what the CLI's files share.
 */
#ifndef HEAVYLOCK_CLI_H
#define HEAVYLOCK_CLI_H

#include <stddef.h>

struct option;

/* One option of the CLI (options.c): getopt's arguments and --help are
 * built from the table, and a test checks the man page and completions
 * against --help. */
typedef struct cli_option {
  const char *commands; /* space-separated; "*" every command; "" heavylock itself */
  int val;              /* what getopt_long returns: the short letter when has_short */
  int has_short;        /* -<val> exists */
  const char *name;     /* --name */
  const char *alias;    /* another long name (flock(1)'s --nb, --wait) or NULL */
  const char *arg;      /* its argument as the help shows it, NULL: none */
  const char *help;     /* lines separated by '\n' */
} cli_option_t;

typedef struct cli_exit {
  const char *commands; /* as in cli_option_t */
  int code;             /* -1: the command's own status; -2: the -E code */
  const char *meaning;
} cli_exit_t;

extern const cli_option_t cli_options[]; /* ends with a NULL name */
extern const cli_exit_t cli_exits[];     /* ends with NULL commands */

/* 1 when option `o` is one of command `cmd`'s. */
int cli_option_for(const cli_option_t *o, const char *cmd);

/* getopt_long's long options and optstring ("+" first) for command `cmd`. */
void cli_getopt_args(const char *cmd, struct option *longs, size_t nlongs, char *shorts,
                     size_t nshorts);

/* The whole help (heavylock --help), from the tables. */
void cli_usage(void);

/* `heavylock doctor` (doctor.c). */
int cmd_doctor(int argc, char **argv);

/* A lock target as it may be shown: a URL's password replaced by "***"
 * ("postgresql://ci:***@db/x"); a path unchanged.  Returns buf. */
const char *cli_show_target(const char *target, char *buf, size_t len);

/* Text for a terminal, from text that may hold anything from outside (a
 * lock path from the environment, an option's value, a command's name):
 * passwords masked (hl_redact), then control characters (C0, DEL, C1) and
 * bytes that are not UTF-8 shown as \xHH, never passed through; cut at a
 * whole character or escape when buf is full.  Returns buf. */
const char *cli_term_text(const char *text, char *buf, size_t len);

/* 1 when `target` names a lock server ("scheme://..."), not a file. */
int cli_is_url(const char *target);

#endif
