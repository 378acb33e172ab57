/*
 * client.c - the stress test's C client and interval recorder.
 *
 *   client api LOCK LOG N MODE HOLD_US
 *       N acquisitions through libheavylock (MODE: block, timed, try).
 *   client cmd LOG N MODE HOLD_US -- ARGV...
 *       N acquisitions through another tool (heavylock run, flock(1)):
 *       runs ARGV until it exits 0, counting exit 1 as "busy, try again";
 *       "{T}" in ARGV becomes the time of the first attempt.
 *   client record LOG KIND MODE T_REQ HOLD_US
 *       the critical section of a `cmd` acquisition.
 *
 * Every critical section appends two lines to LOG (O_APPEND, one write each):
 *   A KIND MODE PID T_REQ T_ACQ        when the lock is had
 *   R PID T_ACQ T_REL                  just before it is let go
 * on CLOCK_MONOTONIC, which Python's time.monotonic() shares.  A killed
 * holder leaves an A without its R; the driver ends it at the kill time.
 */
#define _GNU_SOURCE
#include "heavylock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_us(long us) {
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

static void append(const char *log, const char *line) {
  int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, line, strlen(line)) != (ssize_t)strlen(line)) {
    perror(log);
    exit(3);
  }
  close(fd);
}

/* The critical section: say we have it, hold, say we let go. */
static void section(const char *log, const char *kind, const char *mode, double t_req,
                    long hold_us) {
  char line[256];
  double t_acq = now();
  snprintf(line, sizeof(line), "A %s %s %ld %.9f %.9f\n", kind, mode, (long)getpid(), t_req,
           t_acq);
  append(log, line);
  sleep_us(hold_us);
  snprintf(line, sizeof(line), "R %ld %.9f %.9f\n", (long)getpid(), t_acq, now());
  append(log, line);
}

static int run_api(char **a) {
  const char *lock = a[0], *log = a[1], *mode = a[3];
  long n = atol(a[2]), hold = atol(a[4]);
  hl_lock_t *lk;
  int rc = hl_lock_open(&lk, lock);
  if (rc < 0) {
    fprintf(stderr, "client: cannot open %s: %s\n", lock, hl_strerror(rc));
    return 2;
  }
  for (long i = 0; i < n; i++) {
    double t_req = now();
    long backoff = 1000; /* try-once users retry with backoff (1-16 ms), not a spin */
    for (;;) {
      if (!strcmp(mode, "block"))
        rc = hl_lock_acquire(lk, -1);
      else if (!strcmp(mode, "timed"))
        rc = hl_lock_acquire(lk, 0.05);
      else
        rc = hl_lock_acquire(lk, 0);
      if (rc == 0)
        break;
      if (rc == HL_EBUSY) {
        sleep_us(backoff);
        backoff = backoff < 16000 ? backoff * 2 : backoff;
      }
      else if (rc != HL_ETIMEDOUT) {
        fprintf(stderr, "client: acquire: %s\n", hl_strerror(rc));
        return 2;
      }
    }
    section(log, "c-api", mode, t_req, hold);
    hl_lock_release(lk);
  }
  hl_lock_close(lk);
  return 0;
}

static int run_cmd(char **a, int argc) {
  /* a: cmd LOG N MODE HOLD_US -- ARGV... (the recorder in ARGV logs) */
  long n = atol(a[2]);
  char **argv = a + 6;
  int nargs = argc - 6;
  char **v = calloc((size_t)nargs + 1, sizeof(char *));
  char tbuf[64];
  for (long i = 0; i < n; i++) {
    snprintf(tbuf, sizeof(tbuf), "%.9f", now());
    for (int k = 0; k < nargs; k++)
      v[k] = strcmp(argv[k], "{T}") ? argv[k] : tbuf;
    long backoff = 1000;
    for (;;) {
      pid_t pid = fork();
      if (pid == 0) {
        execvp(v[0], v);
        _exit(127);
      }
      int st;
      while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
      }
      if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        break;
      if (WIFEXITED(st) && WEXITSTATUS(st) == 1) { /* busy or timed out: again */
        sleep_us(backoff);
        backoff = backoff < 16000 ? backoff * 2 : backoff;
        continue;
      }
      fprintf(stderr, "client: %s failed (status %d)\n", v[0], st);
      return 2;
    }
  }
  free(v);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 7 && !strcmp(argv[1], "api"))
    return run_api(argv + 2);
  if (argc >= 8 && !strcmp(argv[1], "cmd") && !strcmp(argv[6], "--"))
    return run_cmd(argv + 1, argc - 1);
  if (argc == 7 && !strcmp(argv[1], "record")) {
    section(argv[2], argv[3], argv[4], atof(argv[5]), atol(argv[6]));
    return 0;
  }
  fprintf(stderr, "usage: client api|cmd|record ... (see bench/stress/client.c)\n");
  return 64;
}
