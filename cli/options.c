/*
 * options.c - the CLI's options and exit codes, in one table each.
 *
 * getopt's arguments and `heavylock --help` are built from these tables, so
 * an option the CLI parses is an option the help lists.  The man page
 * (docs/heavylock.1) and the completions (completions/) are written by hand;
 * tests/python/test_cli_docs.py fails when one of them misses an option or
 * an exit code that the help lists.
 */
#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

/* Commands are named as a space-separated list; "*" is every command. */
const cli_option_t cli_options[] = {
    {"run", 'n', 1, "nonblock", "nb", NULL, "fail rather than wait"},
    {"run", 'w', 1, "timeout", "wait", "<secs>", "wait at most this long (inf: as long as it takes)"},
    {"run", 'E', 1, "conflict-exit-code", NULL, "<number>",
     "exit code after conflict or timeout (default 1)"},
    {"run", 'l', 1, "label", NULL, "<text>", "label for the holder record (shown by status)"},
    {"run", 'o', 1, "close", NULL, NULL, "do not pass the lock to the command"},
    {"run", 'v', 1, "verbose", NULL, NULL,
     "say who holds the lock while waiting, and how\nlong it took"},
    {"run", 'q', 1, "quiet", NULL, NULL, "do not say anything while waiting"},
    {"run", 'S', 0, "slots", NULL, "<n>|auto",
     "up to n holders at once (default 1: exclusive);\nauto: as many as memory admits"},
    {"run", 'M', 0, "mem", NULL, "<size>",
     "this command's expected peak memory (512M, 2G,\n1.5GiB, bytes); implies --slots auto"},
    {"run", 'B', 0, "budget", NULL, "<size>|auto",
     "memory for all holders (default auto: live free\nmemory minus what loading holders "
     "still need)"},
    {"run status doctor", 'L', 1, "lock", NULL, "<path>|<url>",
     "the lock file, or a lock server's URL:\npostgresql://user@host/db?name=llm_load"},
    {"run status path doctor", 'r', 1, "root", NULL, "<dir>",
     "project root for the default lock path"},
    {"status", 'j', 1, "json", NULL, NULL, "status as JSON"},
    {"gguf", 'c', 0, "ctx", NULL, "<tokens>",
     "the context length the model will run with\n(default: the model's own, often far more)"},
    {"*", 'h', 1, "help", NULL, NULL, "display this help"},
    {"", 'V', 1, "version", NULL, NULL, "display version (before a command)"},
    {NULL, 0, 0, NULL, NULL, NULL, NULL},
};

/* The exit codes, by command ("*": every command). */
const cli_exit_t cli_exits[] = {
    {"run", -1, "the command's status, or 128+N if it died of signal N"},
    {"run", -2, "the -E code (default 1) on conflict or timeout"},
    {"status", 0, "free"},
    {"status", 1, "held"},
    {"doctor", 0, "all is well"},
    {"doctor", 1, "a problem was found (each one named)"},
    {"*", 64, "bad usage"},
    {"run status path gguf", 66, "cannot open the lock file (or the model)"},
    {"run", 69, "cannot run the command"},
    {"run", 71, "fork failed"},
    {"run", 73, "read-only file system or disk full (the lock file cannot be created)"},
    {"run", 75, "try again later: the slot table is full (1024 holders), or the lock (on a server) was lost while the command ran and it exited 0"},
    {NULL, 0, NULL},
};

int cli_option_for(const cli_option_t *o, const char *cmd) {
  if (!strcmp(o->commands, "*"))
    return 1;
  size_t n = strlen(cmd);
  for (const char *p = o->commands; (p = strstr(p, cmd)) != NULL; p += n)
    if ((p == o->commands || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
      return 1;
  return 0;
}

void cli_getopt_args(const char *cmd, struct option *longs, size_t nlongs, char *shorts,
                     size_t nshorts) {
  size_t l = 0, s = 0;
  shorts[s++] = '+'; /* stop at the first non-option: the wrapped command's arguments */
  for (const cli_option_t *o = cli_options; o->name; o++) {
    if (!cli_option_for(o, cmd))
      continue;
    const char *names[2] = {o->name, o->alias};
    for (int i = 0; i < 2; i++)
      if (names[i] && l + 1 < nlongs)
        longs[l++] = (struct option){names[i], o->arg ? required_argument : no_argument, NULL,
                                     o->val};
    if (o->has_short && s + 3 < nshorts) {
      shorts[s++] = (char)o->val;
      if (o->arg)
        shorts[s++] = ':';
    }
  }
  longs[l] = (struct option){NULL, 0, NULL, 0};
  shorts[s] = '\0';
}

/* " -w, --timeout, --wait <secs>   text", continuation lines indented. */
static void print_option(const cli_option_t *o) {
  char head[80];
  int n = snprintf(head, sizeof(head), " %c%c%s--%s%s%s%s%s", o->has_short ? '-' : ' ',
                   o->has_short ? o->val : ' ', o->has_short ? ", " : "  ", o->name,
                   o->alias ? ", --" : "", o->alias ? o->alias : "", o->arg ? " " : "",
                   o->arg ? o->arg : "");
  const int col = 30;
  printf("%s", head);
  if (n >= col - 1)
    printf("\n%*s", col, "");
  else
    printf("%*s", col - n, "");
  for (const char *p = o->help; *p; p++) {
    putchar(*p);
    if (*p == '\n')
      printf("%*s", col, "");
  }
  putchar('\n');
}

void cli_usage(void) {
  static const char *const groups[] = {"run", "status", "path", "gguf", "doctor", "*", ""};
  static const char *const titles[] = {"run", "status", "path", "gguf", "doctor",
                                       "every command", "heavylock itself"};
  printf("Usage:\n"
         " heavylock run [options] -- <command> [<argument>...]\n"
         " heavylock status [--lock <path>|<url>] [--json]\n"
         " heavylock path [--root <dir>]\n"
         " heavylock gguf [--ctx <tokens>] <model.gguf>\n"
         " heavylock doctor [--root <dir>] [<lock path>|<url>]\n"
         "\n"
         "Run heavy commands (model loads) one at a time across processes, under an\n"
         "exclusive flock(2) on a lock file that flock(1) and Python's filelock share,\n"
         "or under a PostgreSQL advisory lock across machines (a postgresql:// URL).\n"
         "\n"
         "The lock is --lock, else $HEAVYLOCK_URL, else $HEAVYLOCK_PATH, else\n"
         ".llm_load.lock next to $LOCAL_MODEL_PATH, else models/.llm_load.lock under\n"
         "--root (default: .).  A postgresql:// (or postgres://) URL works wherever a\n"
         "path does; passwords belong in ~/.pgpass or $PGPASSWORD, not in the URL.\n");
  /* Each option once, under the first command it is for (the table's
   * order); an option of several commands names them. */
  for (size_t g = 0; g < sizeof(groups) / sizeof(groups[0]); g++) {
    int header = 0;
    size_t n = strlen(groups[g]);
    for (const cli_option_t *o = cli_options; o->name; o++) {
      if (strncmp(o->commands, groups[g], n) || (o->commands[n] != ' ' && o->commands[n]))
        continue;
      if (!header)
        printf("\nOptions for %s:\n", titles[g]);
      header = 1;
      cli_option_t shown = *o;
      char text[400];
      if (o->commands[n] == ' ') {
        snprintf(text, sizeof(text), "%s\n(%s)", o->help, o->commands);
        shown.help = text;
      }
      print_option(&shown);
    }
  }
  printf("\nExit status:\n");
  for (const cli_exit_t *e = cli_exits; e->commands; e++) {
    char code[16];
    snprintf(code, sizeof(code), "%d", e->code);
    printf(" %-4s %s (%s)\n", e->code == -1 ? "*" : e->code == -2 ? "-E" : code, e->meaning,
           !strcmp(e->commands, "*") ? "every command" : e->commands);
  }
}
