/*
 * heavylock - run heavy commands one at a time under a crash-safe lock.
 *
 * Modelled on util-linux flock(1): getopt_long with a leading '+' so the
 * wrapped command's arguments pass untouched, usage to stdout, bad usage
 * exits 64 with "Try 'heavylock --help'", the conflict/timeout exit code is
 * the user's (-E, default 1), and the child's status is passed through
 * (128+signal when it died of a signal).
 */
#define _GNU_SOURCE
#include "heavylock.h"
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* sysexits.h values, as flock(1) uses them */
#define EX_USAGE 64
#define EX_NOINPUT 66
#define EX_UNAVAILABLE 69
#define EX_OSERR 71
#define EX_CANTCREAT 73
#define EX_TEMPFAIL 75

static const char *prog = "heavylock";


/* One message, one write(2): stderr is unbuffered, so stdio would write the
 * prefix, the text and the newline apart, and two heavylock processes
 * sharing a terminal (make -j) could interleave inside a line. */
static void warnx(const char *fmt, ...) {
  /* a path and a detail (up to 8 KiB: a CREATE TABLE); no password, ever */
  char raw[HL_PATH_MAX + 12288], line[sizeof(raw) + 64];
  int n = snprintf(raw, sizeof(raw), "%s: ", prog);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(raw + n, sizeof(raw) - (size_t)n - 1, fmt, ap);
  va_end(ap);
  (void)m;
  cli_term_text(raw, line, sizeof(line) - 1);
  n = (int)strlen(line);
  line[n++] = '\n';
  if (write(STDERR_FILENO, line, (size_t)n) < 0) {
    /* nowhere to say it */
  }
}

static int usage_error(const char *fmt, ...) {
  char raw[HL_PATH_MAX + 1024], line[sizeof(raw) + 64];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(raw, sizeof(raw), fmt, ap); /* it quotes the bad value as given */
  va_end(ap);
  fprintf(stderr, "%s: %s\nTry '%s --help' for more information.\n", prog,
          cli_term_text(raw, line, sizeof(line)), prog);
  return EX_USAGE;
}

static void usage(void) { cli_usage(); }

int cli_is_url(const char *target) { return hl_target_kind(target) != HL_TARGET_FILE; }

const char *cli_show_target(const char *target, char *buf, size_t len) {
  return hl_redact(target, buf, len);
}

/* What the library knew beyond an error code (a server's words), as " (...)",
 * with any URL password hidden; "" when nothing. */
static const char *error_detail(char *buf, size_t len) {
  const char *d = hl_error_detail();
  if (d == NULL || d[0] == '\0') {
    buf[0] = '\0';
    return buf;
  }
  char shown[8192];
  cli_show_target(d, shown, sizeof(shown));
  for (char *p = shown; *p; p++) /* one line */
    if ((unsigned char)*p < 0x20)
      *p = ' ';
  snprintf(buf, len, ": %s", shown);
  return buf;
}

static int open_error_code(int rc) {
  if (rc == HL_EFULL) /* 1024 holders and waiters: a moment later it may not be */
    return EX_TEMPFAIL;
  return (rc == -EROFS || rc == -ENOSPC) ? EX_CANTCREAT : EX_NOINPUT;
}

/* Opening a target: a URL that cannot be used as written (a bad lock name,
 * a bad parameter) is the user's to fix: a usage error. */
static int open_target_error_code(const char *target, int rc) {
  return rc == -EINVAL && cli_is_url(target) ? EX_USAGE : open_error_code(rc);
}

/* Where the lock is: --lock, else the policy.  Returns 0 or an exit code.
 * `create`: the caller will create the lock file; an explicit --lock into a
 * directory that does not exist is more likely a typo than a wish, so it
 * fails like flock(1) (66); the policy's own directories are created. */
/* The lock's target from --lock, else the path policy; `how` (may be NULL)
 * gets where it came from: its source and why, as `heavylock path` says. */
static int lock_path(const char *opt, const char *root, char *out, size_t len, int create,
                     hl_path_t *how) {
  if (opt) {
    if (how) {
      how->source = "--lock";
      snprintf(how->why, sizeof(how->why), "given with --lock");
    }
    size_t n = strlen(opt);
    if (n >= len || n >= HL_PATH_MAX)
      return usage_error("lock path is %zu bytes long; the limit is %d", n, HL_PATH_MAX - 1);
    memcpy(out, opt, n + 1);
    if (n == 0) /* as HEAVYLOCK_PATH="" is (hl_path_resolve) */
      return usage_error("--lock is empty; name a lock file or a lock server's URL");
    if (hl_target_kind(opt) == HL_TARGET_UNKNOWN) {
      char shown[HL_PATH_MAX + 64];
      return usage_error("--lock '%s' is a URL of no known lock server; supported: "
                         HL_TARGET_SCHEMES, hl_redact(opt, shown, sizeof(shown)));
    }
    if (create && !cli_is_url(opt)) {
      char dir[HL_PATH_MAX];
      memcpy(dir, opt, n + 1);
      char *slash = strrchr(dir, '/');
      struct stat st;
      if (slash && slash != dir) {
        *slash = '\0';
        if (stat(dir, &st) < 0) {
          warnx("cannot open lock file %s: directory %s: %s", opt, dir, strerror(errno));
          return EX_NOINPUT;
        }
      }
    }
    return 0;
  }
  hl_path_t p;
  int rc = hl_path_resolve(root, &p);
  if (rc == HL_EENV) {
    warnx("%s", p.why);
    return EX_USAGE;
  }
  if (rc < 0) {
    warnx("cannot resolve the lock path: %s", hl_strerror(rc));
    return EX_NOINPUT;
  }
  snprintf(out, len, "%s", p.path);
  if (how)
    *how = p;
  return 0;
}

/* "held by pid 4242 (label) for 12 s" into buf */
static void describe_holder(const char *path, char *buf, size_t len) {
  hl_status_t st;
  if (hl_status(path, &st) < 0)
    snprintf(buf, len, "held by another process");
  else
    hl_holder_describe(&st, buf, len);
}

static double now_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The wait notice, from the library's one wait loop.  One write(2) per
 * line: two waiters under make -j share stderr, and stdio could split a
 * line between them. */
static int on_wait(void *arg, const hl_status_t *st, double waited) {
  const char *path = arg;
  char who[600], line[HL_PATH_MAX + 9000], why[8300]; /* the detail: up to 8 KiB */
  hl_holder_describe(st, who, sizeof(who));
  /* A stuck admission table is in the way too (the library's detail); no
   * password, ever (the target, a holder's label). */
  char raw[sizeof(line)];
  snprintf(raw, sizeof(raw), "%s: waiting for %s, %s%s (waited %.0f s)", prog, path, who,
           error_detail(why, sizeof(why)), waited);
  size_t n = strlen(cli_term_text(raw, line, sizeof(line) - 1));
  line[n++] = '\n';
  if (write(STDERR_FILENO, line, n) < 0) {
    /* nowhere to say it: keep waiting */
  }
  return 0;
}

/* Acquire with notices: a waiter never hangs silently unless told to.
 * First notice after 1 s (at once with --verbose), then every 10 s. */
static int acquire_noisy(hl_lock_t *lk, double timeout, int verbose, int quiet) {
  double start = now_mono();
  if (!quiet)
    hl_lock_set_wait_callback(lk, on_wait, (void *)hl_lock_path(lk), verbose ? 0 : 1.0, 10.0);
  int rc;
  double left = timeout; /* the whole of it for the first try: -w 1e-9 on a
                            free lock timed out before it tried */
  for (;;) {
    rc = hl_lock_acquire(lk, left);
    if (rc != -EINTR)
      break; /* a signal we do not handle: wait on */
    if (timeout > 0) {
      left = timeout - (now_mono() - start);
      if (left <= 0)
        return HL_ETIMEDOUT;
    }
  }
  if (rc == 0 && verbose)
    warnx("getting lock took %.6f seconds", now_mono() - start);
  return rc;
}

/* --slots N|auto: 1.. or 0 for auto.  -1 when bad. */
static int parse_slots(const char *v) {
  if (!strcmp(v, "auto"))
    return 0;
  char *end;
  errno = 0;
  long n = strtol(v, &end, 10);
  if (end == v || *end || errno || n < 1 || n > 1000000)
    return -1;
  return (int)n;
}

static int cmd_run(int argc, char **argv) {
  struct option opts[32];
  char shorts[64];
  cli_getopt_args("run", opts, 32, shorts, sizeof(shorts));
  double timeout = -1;
  int slots = -1; /* not given */
  uint64_t mem = 0, budget = 0;
  int mem_given = 0, budget_given = 0;
  int conflict = 1, verbose = 0, quiet = 0, close_fd = 0, c;
  const char *label = NULL, *lockopt = NULL, *root = NULL;
  char *end;
  while ((c = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
    switch (c) {
    case 'n': timeout = 0; break;
    case 'w':
      timeout = strtod(optarg, &end);
      if (end == optarg || *end || timeout < 0 || isnan(timeout))
        return usage_error("invalid timeout value: '%s'", optarg);
      if (isinf(timeout))
        timeout = -1; /* inf: wait as long as it takes */
      break;
    case 'E': {
      long v = strtol(optarg, &end, 10);
      if (end == optarg || *end || v < 0 || v > 255)
        return usage_error("invalid exit code: '%s' (expected 0-255)", optarg);
      conflict = (int)v;
      break;
    }
    case 'l': label = optarg; break;
    case 'o': close_fd = 1; break;
    case 'v': verbose = 1; break;
    case 'q': quiet = 1; break;
    case 'L': lockopt = optarg; break;
    case 'r': root = optarg; break;
    case 'S':
      if ((slots = parse_slots(optarg)) < 0)
        return usage_error("invalid --slots value: '%s' (expected a number >= 1, or auto)",
                           optarg);
      break;
    case 'M':
      if (hl_size_parse(optarg, &mem) < 0)
        return usage_error("invalid --mem value: '%s' (expected a size such as 512M, 2G, "
                           "1.5GiB, or bytes)", optarg);
      mem_given = 1;
      break;
    case 'B':
      if (!strcmp(optarg, "auto"))
        budget = 0;
      else if (hl_size_parse(optarg, &budget) < 0 || budget == 0)
        return usage_error("invalid --budget value: '%s' (expected auto, or a size such as "
                           "8G)", optarg);
      budget_given = 1;
      break;
    case 'h': usage(); return 0;
    default: return usage_error("bad usage");
    }
  }
  if (optind >= argc)
    return usage_error("run: no command given (heavylock run -- <command>)");
  /* A weight or a budget asks for admission by memory: --slots auto unless
   * a number of slots was given. */
  if (slots < 0)
    slots = (mem_given || (budget_given && budget > 0)) ? 0 : 1;
  char **cmd = argv + optind;

  char path[HL_PATH_MAX];
  int rc = lock_path(lockopt, root, path, sizeof(path), 1, NULL);
  if (rc)
    return rc;
  char shown[HL_PATH_MAX + 8], detail[8300];
  cli_show_target(path, shown, sizeof(shown));
  hl_lock_t *lk;
  if ((rc = hl_lock_open(&lk, path)) < 0) {
    warnx("cannot open lock %s%s: %s%s", cli_is_url(path) ? "" : "file ", shown,
            hl_strerror(rc), error_detail(detail, sizeof(detail)));
    return open_target_error_code(path, rc);
  }
  if (label)
    hl_lock_set_label(lk, label);
  if (slots != 1 && (rc = hl_lock_set_slots(lk, slots)) < 0) {
    warnx("cannot use slots on %s: %s", path, hl_strerror(rc));
    hl_lock_close(lk);
    return open_error_code(rc);
  }
  hl_lock_set_weight(lk, mem, mem_given ? "declared" : NULL);
  hl_lock_set_budget(lk, budget);
  rc = acquire_noisy(lk, timeout, verbose, quiet);
  if (rc == HL_EBUSY || rc == HL_ETIMEDOUT) {
    /* A stuck admission table (see hl_error_detail) is said even for -n:
     * it is not the everyday "busy". */
    error_detail(detail, sizeof(detail));
    if (rc == HL_ETIMEDOUT && !quiet) {
      char who[600];
      describe_holder(path, who, sizeof(who));
      warnx("timeout while waiting for %s, %s%s", path, who, detail);
    } else if (verbose || (detail[0] && !quiet)) {
      warnx("%s is busy%s", path, detail);
    }
    hl_lock_close(lk);
    return conflict;
  }
  if (rc < 0) {
    warnx("cannot lock %s: %s%s", shown, hl_strerror(rc), error_detail(detail, sizeof(detail)));
    hl_lock_close(lk);
    return open_error_code(rc);
  }
  if (verbose && (hl_lock_flags(lk) & HL_FLAG_OTHER_CONTENT))
    warnx("lock file has other content: no holder record written (%s)", path);

  /* A remote lock can be lost while the command runs (the server
   * restarted, the network broke): look every second, so SIGCHLD is taken
   * by sigtimedwait instead of a blocking waitpid. */
  int remote = strcmp(hl_lock_kind(lk), "pg") == 0;
  sigset_t chld, old_mask;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  if (remote)
    sigprocmask(SIG_BLOCK, &chld, &old_mask);
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    warnx("fork failed: %s", strerror(errno));
    hl_lock_close(lk);
    return EX_OSERR;
  }
  if (pid == 0) {
    if (remote)
      sigprocmask(SIG_SETMASK, &old_mask, NULL);
    /* Like flock(1): the command inherits the lock, so it stays held while
     * the command runs even if this process is killed.  Every descriptor
     * that carries it (slots: the table's entry lock too). */
    intptr_t fds[4];
    int nfds = hl_lock_fds(lk, fds, 4);
    for (int i = 0; i < nfds; i++) {
      if (!close_fd)
        fcntl((int)fds[i], F_SETFD, 0);
      else
        close((int)fds[i]);
    }
    execvp(cmd[0], cmd);
    warnx("failed to execute %s: %s", cmd[0], strerror(errno));
    _exit(errno == ENOMEM ? EX_OSERR : EX_UNAVAILABLE);
  }
  int status, lost = 0;
  for (;;) {
    pid_t r = waitpid(pid, &status, remote ? WNOHANG : 0);
    if (r == pid)
      break;
    if (r < 0 && errno != EINTR) {
      status = EX_OSERR << 8;
      break;
    }
    if (!remote)
      continue;
    struct timespec second = {1, 0};
    if (sigtimedwait(&chld, NULL, &second) < 0 && errno == EAGAIN && !lost &&
        hl_lock_check(lk) == HL_ELOST) {
      lost = 1;
      warnx("LOST THE LOCK %s while %s runs%s: others may now hold it; the command goes on "
            "unprotected", shown, cmd[0], error_detail(detail, sizeof(detail)));
    }
  }
  if (remote)
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
  hl_lock_release(lk);
  if (hl_lock_flags(lk) & HL_FLAG_LOST)
    warnx("warning: lock file %s was deleted or replaced while the command ran; "
          "tools other than heavylock (flock(1), filelock) may have locked the new file "
          "meanwhile", path);
  hl_lock_close(lk);
  if (WIFEXITED(status))
    /* A command that succeeded without the lock it asked for did not do
     * what was asked: EX_TEMPFAIL, run it again. */
    return lost && WEXITSTATUS(status) == 0 ? EX_TEMPFAIL : WEXITSTATUS(status);
  if (WIFSIGNALED(status))
    return 128 + WTERMSIG(status);
  return EX_OSERR;
}

/* Length of a valid UTF-8 sequence at s, 0 if it is not one. */
static int utf8_len(const unsigned char *s) {
  int n = s[0] < 0x80 ? 1 : s[0] >= 0xc2 && s[0] <= 0xdf ? 2 : s[0] >= 0xe0 && s[0] <= 0xef ? 3
        : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : 0;
  for (int i = 1; i < n; i++)
    if ((s[i] & 0xc0) != 0x80)
      return 0;
  if ((n == 3 && ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] > 0x9f))) ||
      (n == 4 && ((s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] > 0x8f))))
    return 0;
  return n;
}

/* A JSON string that always parses: control bytes escaped, bytes that are
 * not UTF-8 (a path from the environment can hold any) as U+FFFD. */
static void json_str_raw(const char *str);
/* Every string shown goes through hl_redact first: a holder's command line
 * or label may carry a URL with its password. */
static void json_str(const char *str) {
  size_t n = strlen(str) * 2 + 4; /* "***" for each password of 1 byte or more */
  char *safe = malloc(n);
  json_str_raw(safe ? hl_redact(str, safe, n) : "?");
  free(safe);
}

static void json_str_raw(const char *str) {
  const unsigned char *s = (const unsigned char *)str;
  putchar('"');
  while (*s) {
    int n = utf8_len(s);
    if (n == 0) {
      fputs("\\ufffd", stdout);
      s++;
    } else if (*s == '"' || *s == '\\') {
      printf("\\%c", *s++);
    } else if (*s < 0x20 || *s == 0x7f) {
      printf("\\u%04x", *s++);
    } else {
      fwrite(s, 1, (size_t)n, stdout);
      s += (size_t)n;
    }
  }
  putchar('"');
}

/* JSON has no NaN or infinity. */
static void json_num(double v, int prec) {
  if (isfinite(v))
    printf("%.*f", prec, v);
  else
    fputs("null", stdout);
}

/* Text for a terminal: control characters (C0, DEL, C1) and bytes that are
 * not UTF-8 are shown as \xHH, never passed through. */
static void term_str_raw(const char *str);
/* Every string shown goes through hl_redact first: a holder's command line
 * or label may carry a URL with its password. */
static void term_str(const char *str) {
  size_t n = strlen(str) * 2 + 4; /* "***" for each password of 1 byte or more */
  char *safe = malloc(n);
  term_str_raw(safe ? hl_redact(str, safe, n) : "?");
  free(safe);
}

const char *cli_term_text(const char *text, char *buf, size_t len) {
  if (len == 0)
    return buf;
  size_t rlen = strlen(text) * 2 + 4; /* "***" for each password of 1 byte or more */
  char *red = malloc(rlen);
  const unsigned char *s = (const unsigned char *)(red ? hl_redact(text, red, rlen) : "?");
  size_t o = 0;
  while (*s) {
    int n = utf8_len(s);
    if (n == 0 || *s < 0x20 || *s == 0x7f || (n == 2 && s[0] == 0xc2 && s[1] < 0xa0)) {
      int k = n ? n : 1;
      if (o + 4 * (size_t)k >= len)
        break;
      for (int i = 0; i < k; i++, o += 4)
        snprintf(buf + o, 5, "\\x%02x", *s++);
    } else {
      if (o + (size_t)n >= len)
        break;
      memcpy(buf + o, s, (size_t)n);
      o += (size_t)n;
      s += n;
    }
  }
  buf[o] = '\0';
  free(red);
  return buf;
}

static void term_str_raw(const char *str) {
  const unsigned char *s = (const unsigned char *)str;
  while (*s) {
    int n = utf8_len(s);
    if (n == 0 || *s < 0x20 || *s == 0x7f || (n == 2 && s[0] == 0xc2 && s[1] < 0xa0)) {
      for (int i = 0; i < (n ? n : 1); i++)
        printf("\\x%02x", *s++);
    } else {
      fwrite(s, 1, (size_t)n, stdout);
      s += (size_t)n;
    }
  }
}

static int cmd_status(int argc, char **argv) {
  struct option opts[32];
  char shorts[64];
  cli_getopt_args("status", opts, 32, shorts, sizeof(shorts));
  const char *lockopt = NULL, *root = NULL;
  int json = 0, c;
  while ((c = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
    switch (c) {
    case 'L': lockopt = optarg; break;
    case 'r': root = optarg; break;
    case 'j': json = 1; break;
    case 'h': usage(); return 0;
    default: return usage_error("bad usage");
    }
  }
  if (optind < argc)
    return usage_error("status: unexpected argument '%s'", argv[optind]);
  char path[HL_PATH_MAX];
  hl_path_t how;
  int rc = lock_path(lockopt, root, path, sizeof(path), 0, &how);
  if (rc)
    return rc;
  /* "free" for a file that is not there is true but says little: a
   * lock taken from another directory is likely another file */
  struct stat sb;
  int exists = cli_is_url(path) || lstat(path, &sb) == 0;
  hl_status_t st;
  if ((rc = hl_status(path, &st)) < 0) {
    char detail[8300];
    warnx("cannot read %s%s: %s%s", cli_is_url(path) ? "the lock's status from " : "lock file ",
          path, hl_strerror(rc), cli_is_url(path) ? error_detail(detail, sizeof(detail)) : "");
    return open_target_error_code(path, rc);
  }
  char cmd[HL_CMD_MAX];
  if (st.holder_pid && hl_proc_cmdline(st.holder_pid, cmd, sizeof(cmd)) < 0)
    cmd[0] = '\0';
  if (!st.holder_pid)
    cmd[0] = '\0';
  if (json) {
    printf("{\"path\": ");
    json_str(path);
    printf(", \"exists\": %s, \"path_source\": ", exists ? "true" : "false");
    json_str(how.source);
    printf(", \"path_why\": ");
    json_str(how.why);
    printf(", \"held\": %s, \"method\": ", st.held ? "true" : "false");
    json_str(st.method ? st.method : "none");
    if (st.held && !(st.shared && !st.holder_pid)) { /* one exclusive holder */
      printf(", \"holder\": {\"pid\": %ld, \"command\": ", st.holder_pid);
      json_str(cmd);
      printf(", \"record\": %s", st.has_record ? "true" : "false");
      if (st.has_record) {
        printf(", \"label\": ");
        json_str(st.record.label);
        printf(", \"host\": ");
        json_str(st.record.host);
        printf(", \"acquired\": ");
        json_num(st.record.acquired, 6);
        printf(", \"held_for\": ");
        json_num(st.held_for, 3);
      }
      printf(", \"deleted_file\": %s}", st.deleted_file ? "true" : "false");
    }
    printf(", \"other_content\": %s", st.other_content ? "true" : "false");
    printf(", \"kind\": ");
    json_str(st.kind ? st.kind : "flock");
    printf(", \"shared\": %s, \"holders\": [", st.shared ? "true" : "false");
    for (int i = 0; i < st.nholders; i++) {
      const hl_holder_t *h = &st.holders[i];
      printf("%s{\"pid\": %ld, \"label\": ", i ? ", " : "", h->pid);
      json_str(h->label);
      printf(", \"host\": ");
      json_str(h->host);
      printf(", \"exclusive\": %s, \"weight\": %llu, \"weight_source\": ",
             h->exclusive ? "true" : "false", (unsigned long long)h->weight);
      json_str(h->weight_source);
      printf(", \"rss\": %llu, \"held_for\": ", (unsigned long long)h->rss);
      if (h->held_for >= 0)
        json_num(h->held_for, 3);
      else
        fputs("null", stdout);
      printf("}");
    }
    printf("], \"budget\": ");
    if (st.budget)
      printf("%llu", (unsigned long long)st.budget);
    else
      json_str("auto");
    printf(", \"free\": ");
    if (st.free_known)
      printf("%llu", (unsigned long long)st.free_bytes);
    else
      fputs("null", stdout);
    printf(", \"stale_record\": %s, \"waiters\": [", st.stale_record ? "true" : "false");
    for (int i = 0; i < st.nwaiters; i++) {
      const hl_waiter_t *w = &st.waiters[i];
      char wcmd[HL_CMD_MAX];
      if (hl_proc_cmdline(w->pid, wcmd, sizeof(wcmd)) < 0)
        wcmd[0] = '\0';
      printf("%s{\"pid\": %ld, \"how\": \"%s\", \"command\": ", i ? ", " : "", w->pid,
             w->how == 'b' ? "flock" : w->how == 'q' ? "queue" : "watch");
      json_str(wcmd);
      if (w->ticket) {
        printf(", \"ticket\": %llu, \"exclusive\": %s, \"weight\": %llu, \"weight_source\": ",
               (unsigned long long)w->ticket, w->exclusive ? "true" : "false",
               (unsigned long long)w->weight);
        json_str(w->weight_source);
        printf(", \"label\": ");
        json_str(w->label);
      }
      printf("}");
    }
    printf("]}\n");
    return st.held ? 1 : 0;
  }
  term_str(path);
  printf(": %s%s\n", st.held ? (st.shared ? "held (shared)" : "held") : "free",
         exists ? "" : " (the file does not exist: no one has locked it here)");
  printf("  path:    ");
  term_str(how.why);
  if (strcmp(how.source, "--lock") != 0)
    printf(" (decided by %s)", how.source);
  printf("\n");
  if (st.held && !(st.shared && !st.holder_pid)) {
    /* A server names its holder even on another machine (its row, or its
     * application_name): pid there and host. */
    int pg = st.kind && strcmp(st.kind, "pg") == 0;
    const hl_holder_t *remote = pg && !st.has_record && st.nholders > 0 ? &st.holders[0] : NULL;
    if (remote && remote->pid > 0) {
      printf("  holder:  pid %ld on ", remote->pid);
      term_str(remote->host[0] ? remote->host : "an unknown host");
    } else if (st.holder_pid)
      printf("  holder:  pid %ld", st.holder_pid);
    else
      printf("  holder:  unknown pid");
    if (st.held_for >= 0)
      printf(", held for %.1f s", st.held_for);
    printf("\n");
    if (st.has_record && st.record.label[0]) {
      printf("  label:   ");
      term_str(st.record.label);
      printf("\n");
    }
    if (cmd[0]) {
      printf("  command: ");
      term_str(cmd);
      printf("\n");
    }
    if (st.deleted_file)
      printf("  (the holder holds a lock file that was deleted or replaced at this path;\n"
             "   newcomers wait for it)\n");
    else if (!st.has_record && st.stale_record && st.record.pid != st.holder_pid)
      printf("  (the record names pid %ld, which is gone: the holder inherited the lock,\n"
             "   e.g. the command of a heavylock run whose parent was killed)\n",
             st.record.pid);
    else if (remote && remote->pid > 0) {
      if (remote->label[0]) {
        printf("  label:   ");
        term_str(remote->label);
        printf("\n");
      }
    } else if (pg && !st.has_record)
      printf("  (held by a session that is not heavylock's: see pg_locks on the server)\n");
    else if (!st.has_record)
      printf("  (no holder record: the holder is another tool, e.g. flock(1) or filelock)\n");
  } else if (st.stale_record) {
    printf("  (stale record left by pid %ld, which no longer holds the lock)\n", st.record.pid);
  }
  if (st.other_content)
    printf("  (the lock file has other content: it is locked but never written)\n");
  char sz[32], sz2[32];
  if (st.shared) {
    printf("  slot holders: %d\n", st.nholders);
    for (int i = 0; i < st.nholders; i++) {
      const hl_holder_t *h = &st.holders[i];
      printf("    pid %ld", h->pid);
      if (h->weight)
        printf(", weight %s (%s)", hl_size_format(h->weight, sz, sizeof(sz)),
               h->weight_source[0] ? h->weight_source : "declared");
      else
        printf(", weight unknown");
      if (h->rss)
        printf(", rss %s", hl_size_format(h->rss, sz, sizeof(sz)));
      printf(", held for %.1f s", h->held_for);
      if (h->label[0]) {
        printf(": ");
        term_str(h->label);
      }
      printf("\n");
    }
  }
  if (st.shared || st.free_known) {
    printf("  budget:  %s", st.budget ? hl_size_format(st.budget, sz, sizeof(sz)) : "auto");
    if (st.free_known)
      printf(", free now %s", hl_size_format(st.free_bytes, sz2, sizeof(sz2)));
    printf("\n");
  }
  if (st.nwaiters) {
    printf("  waiters: %d\n", st.nwaiters);
    for (int i = 0; i < st.nwaiters; i++) {
      const hl_waiter_t *w = &st.waiters[i];
      char wcmd[HL_CMD_MAX];
      if (hl_proc_cmdline(w->pid, wcmd, sizeof(wcmd)) < 0)
        wcmd[0] = '\0';
      printf("    pid %ld: ", w->pid);
      if (w->ticket) {
        printf("[#%llu, asks %s] ", (unsigned long long)w->ticket,
               w->weight ? hl_size_format(w->weight, sz, sizeof(sz))
                         : (w->exclusive ? "to hold alone" : "a slot"));
        if (w->label[0]) {
          term_str(w->label);
          printf(" ");
        }
      }
      term_str(wcmd);
      printf("\n");
    }
  }
  return st.held ? 1 : 0;
}

static int cmd_path(int argc, char **argv) {
  struct option opts[32];
  char shorts[64];
  cli_getopt_args("path", opts, 32, shorts, sizeof(shorts));
  const char *root = NULL;
  int c;
  while ((c = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
    switch (c) {
    case 'r': root = optarg; break;
    case 'h': usage(); return 0;
    default: return usage_error("bad usage");
    }
  }
  if (optind < argc)
    return usage_error("path: unexpected argument '%s'", argv[optind]);
  hl_path_t p;
  int rc = hl_path_resolve(root, &p);
  if (rc == HL_EENV) {
    warnx("%s", p.why);
    return EX_USAGE;
  }
  if (rc < 0) {
    warnx("cannot resolve the lock path: %s", hl_strerror(rc));
    return EX_NOINPUT;
  }
  printf("%s\n", p.path);
  fprintf(stderr, "%s: %s (decided by %s)\n", prog, p.why, p.source);
  return 0;
}

static int cmd_gguf(int argc, char **argv) {
  struct option opts[32];
  char shorts[64];
  cli_getopt_args("gguf", opts, 32, shorts, sizeof(shorts));
  unsigned long long ctx = 0; /* 0: the model's own context length */
  int c;
  char *end;
  while ((c = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
    switch (c) {
    case 'c':
      errno = 0;
      ctx = strtoull(optarg, &end, 10);
      if (end == optarg || *end || errno || ctx < 1 || ctx > (1ull << 32) || optarg[0] == '-')
        return usage_error("invalid --ctx value: '%s' (expected a number of tokens, 1 to %llu)",
                           optarg, 1ull << 32);
      break;
    case 'h': usage(); return 0;
    default: return usage_error("bad usage");
    }
  }
  if (argc - optind != 1)
    return usage_error("gguf: expected one model file");
  argv += optind - 1; /* argv[1]: the model */
  hl_gguf_estimate_t e;
  hl_gguf_t g;
  int rc = hl_gguf_read(argv[1], &g); /* a FIFO is refused, not waited on */
  if (rc < 0) {
    warnx("cannot read GGUF file %s: %s", argv[1], hl_strerror(rc));
    return EX_NOINPUT;
  }
  printf("file:           %s\nversion:        %u\narchitecture:   %s\nname:           %s\n"
         "context_length: %llu\ntensors:        %llu\nmetadata keys:  %llu\n"
         "file size:      %llu bytes\ntensor data:    %llu bytes\n",
         argv[1], g.version, g.architecture, g.name, (unsigned long long)g.context_length,
         (unsigned long long)g.n_tensors, (unsigned long long)g.n_kv,
         (unsigned long long)g.file_size, (unsigned long long)g.tensor_bytes);
  if (hl_gguf_estimate(argv[1], ctx, &e) == 0) {
    char a[32], b[32], c[32], d[32], o[32]; /* one buffer per figure: all are printed at once */
    printf("layers:         %llu\nheads:          %llu (kv %llu)\nembedding:      %llu\n"
           "kv cache (f16, %llu tokens): %llu bytes (%s)\n"
           "estimate:       %llu bytes (%s = weights %s + kv cache %s + compute %s)\n",
           (unsigned long long)e.block_count, (unsigned long long)e.head_count,
           (unsigned long long)e.head_count_kv, (unsigned long long)e.embedding_length,
           (unsigned long long)e.context_length, (unsigned long long)e.kv_cache,
           hl_size_format(e.kv_cache, a, sizeof(a)), (unsigned long long)e.total,
           hl_size_format(e.total, b, sizeof(b)), hl_size_format(e.weights, c, sizeof(c)),
           hl_size_format(e.kv_cache, d, sizeof(d)), hl_size_format(e.overhead, o, sizeof(o)));
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2)
    return usage_error("no command given");
  const char *sub = argv[1];
  if (!strcmp(sub, "-h") || !strcmp(sub, "--help")) {
    usage();
    return 0;
  }
  if (!strcmp(sub, "-V") || !strcmp(sub, "--version")) {
    printf("%s from heavylock %s\n", prog, hl_version());
    return 0;
  }
  argv++, argc--;
  optind = 1;
  if (!strcmp(sub, "run"))
    return cmd_run(argc, argv);
  if (!strcmp(sub, "status"))
    return cmd_status(argc, argv);
  if (!strcmp(sub, "path"))
    return cmd_path(argc, argv);
  if (!strcmp(sub, "gguf"))
    return cmd_gguf(argc, argv);
  if (!strcmp(sub, "doctor"))
    return cmd_doctor(argc, argv);
  return usage_error("unknown command '%s'", sub);
}
