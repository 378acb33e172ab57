/*
 * bench/kernel.c - the C half of bench/kernel.py: handoffs and uncontended
 * acquisitions, heavylock's C API beside raw flock(2), timed in one process
 * tree on CLOCK_MONOTONIC.  Prints one latency in seconds per line; the
 * Python driver interleaves batches, adds the Python and CLI rows, and
 * prints the ratios.  Not a test.
 *
 *   kernel handoff  WAITER HOLDER ROUNDS PATH
 *       WAITER raw | hl | hl-timed   (flock(2); hl_lock_acquire(-1); (60))
 *       HOLDER close | unlock        (how the holder, a raw flock(2) user,
 *                                     lets go: close, or flock -u and keep)
 *   kernel uncontended WHO N SPACING_MS HOLDERS PATH
 *       WHO raw | hl; HOLDERS unrelated processes each holding its own lock
 *       file in PATH's directory meanwhile
 *   kernel now        CLOCK_MONOTONIC seconds (the CLI rows' command)
 */
#define _GNU_SOURCE
#include "heavylock.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
  perror(what);
  exit(2);
}

static int raw_open(const char *path) {
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0666);
  if (fd < 0)
    die(path);
  return fd;
}

static void xwrite(int fd, char c) {
  if (write(fd, &c, 1) != 1)
    die("write");
}

static void xread(int fd) {
  char c;
  if (read(fd, &c, 1) != 1)
    die("read");
}

static int handoff(const char *waiter, const char *holder, int rounds, const char *path) {
  volatile double *t_rel = mmap(NULL, sizeof(double), PROT_READ | PROT_WRITE,
                                MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (t_rel == MAP_FAILED)
    die("mmap");
  int go[2], back[2];
  if (pipe(go) < 0 || pipe(back) < 0)
    die("pipe");
  pid_t w = fork();
  if (w == 0) {
    hl_lock_t *lk = NULL;
    int raw = strcmp(waiter, "raw") == 0;
    double timeout = strcmp(waiter, "hl-timed") == 0 ? 60.0 : -1;
    if (!raw && hl_lock_open(&lk, path) < 0)
      die("hl_lock_open");
    for (int i = 0; i < rounds; i++) {
      xread(go[0]);
      xwrite(back[1], 'w');
      int fd = -1, rc;
      if (raw) {
        fd = raw_open(path);
        rc = flock(fd, LOCK_EX);
      } else {
        rc = hl_lock_acquire(lk, timeout);
      }
      double t = mono();
      if (rc != 0) {
        fprintf(stderr, "acquire: %s\n", hl_strerror(rc));
        exit(3);
      }
      printf("%.9f\n", t - *t_rel);
      if (raw)
        close(fd);
      else
        hl_lock_release(lk);
      xwrite(back[1], 'd');
    }
    fflush(stdout);
    hl_lock_close(lk);
    _exit(0);
  }
  /* The holder is the waiter's sibling, not its parent: a parent that holds
   * the lock is a possible self-deadlock, which heavylock looks at twice. */
  pid_t hp = fork();
  if (hp != 0) {
    int st, ok = 1;
    waitpid(hp, &st, 0);
    ok &= WIFEXITED(st) && WEXITSTATUS(st) == 0;
    waitpid(w, &st, 0);
    ok &= WIFEXITED(st) && WEXITSTATUS(st) == 0;
    return ok ? 0 : 1;
  }
  int unlock = strcmp(holder, "unlock") == 0;
  int fd = unlock ? raw_open(path) : -1;
  srand((unsigned)getpid());
  for (int i = 0; i < rounds; i++) {
    if (!unlock)
      fd = raw_open(path);
    if (flock(fd, LOCK_EX) < 0)
      die("flock");
    xwrite(go[1], 'g');
    xread(back[0]);
    /* Let the waiter block (or arm its watch): 10-20 ms, a random phase. */
    usleep(10000 + (unsigned)(rand() % 10000));
    *t_rel = mono();
    if (unlock)
      flock(fd, LOCK_UN);
    else
      close(fd);
    xread(back[0]);
  }
  _exit(0);
}

static pid_t unrelated_holder(const char *path, int i) {
  char p[4200];
  snprintf(p, sizeof(p), "%s.unrelated.%d", path, i);
  int ready[2];
  if (pipe(ready) < 0)
    die("pipe");
  pid_t pid = fork();
  if (pid == 0) {
    int fd = raw_open(p);
    if (flock(fd, LOCK_EX) < 0)
      die("flock");
    xwrite(ready[1], 'r');
    pause();
    _exit(0);
  }
  xread(ready[0]);
  close(ready[0]);
  close(ready[1]);
  return pid;
}

static int uncontended(const char *who, int n, int spacing_ms, int holders, const char *path) {
  pid_t *h = calloc((size_t)holders + 1, sizeof(*h));
  for (int i = 0; i < holders; i++)
    h[i] = unrelated_holder(path, i);
  hl_lock_t *lk = NULL;
  int raw = strcmp(who, "raw") == 0;
  if (!raw && hl_lock_open(&lk, path) < 0)
    die("hl_lock_open");
  for (int i = 0; i < n; i++) {
    if (spacing_ms)
      usleep((unsigned)spacing_ms * 1000);
    double t0 = mono();
    if (raw) {
      /* What any flock(2) user does per acquisition: open, lock, unlock, close. */
      int fd = raw_open(path);
      if (flock(fd, LOCK_EX | LOCK_NB) < 0)
        die("flock");
      flock(fd, LOCK_UN);
      close(fd);
    } else {
      int rc = hl_lock_acquire(lk, 0);
      if (rc != 0) {
        fprintf(stderr, "acquire: %s\n", hl_strerror(rc));
        exit(3);
      }
      hl_lock_release(lk);
    }
    printf("%.9f\n", mono() - t0);
  }
  hl_lock_close(lk);
  for (int i = 0; i < holders; i++) {
    kill(h[i], SIGKILL);
    waitpid(h[i], NULL, 0);
  }
  free(h);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "now") == 0) {
    printf("%.9f\n", mono());
    return 0;
  }
  if (argc == 6 && strcmp(argv[1], "handoff") == 0)
    return handoff(argv[2], argv[3], atoi(argv[4]), argv[5]);
  if (argc == 7 && strcmp(argv[1], "uncontended") == 0)
    return uncontended(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), argv[6]);
  fprintf(stderr, "usage: see bench/kernel.c\n");
  return 2;
}
