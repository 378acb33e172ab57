/*
 * test.h - what the C tests share, in the style of libuv's test/task.h:
 * assertions that say what failed and abort, and the small helpers every
 * multi-process test needs.  Static inline, so a program that does not use
 * one does not warn about it.
 *
 * A file may define TEST_DETAIL() before including this header: a string
 * ASSERT_EQ prints after a failed comparison (test_pg.c: the server's last
 * error), "" by default.
 */
#ifndef HL_TEST_H
#define HL_TEST_H

#include "heavylock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef TEST_DETAIL
#define TEST_DETAIL() ""
#endif

/* The expression, where it stands, then abort (a core, a stack in gdb). */
#define ASSERT(expr)                                                                    \
  do {                                                                                  \
    if (!(expr)) {                                                                      \
      fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #expr);      \
      abort();                                                                          \
    }                                                                                   \
  } while (0)

/* Both values, and for a negative one (an HL_E* or -errno) what it means. */
#define ASSERT_EQ(a, b)                                                                 \
  do {                                                                                  \
    long long a_ = (long long)(a), b_ = (long long)(b);                                 \
    if (a_ != b_) {                                                                     \
      fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld (%s)%s%s\n", __FILE__,      \
              __LINE__, #a, #b, a_, b_, a_ < 0 ? hl_strerror((int)a_) : "",             \
              TEST_DETAIL()[0] ? " " : "", TEST_DETAIL());                              \
      abort();                                                                          \
    }                                                                                   \
  } while (0)

/* Both strings. */
#define ASSERT_STR(a, b)                                                                \
  do {                                                                                  \
    if (strcmp((a), (b)) != 0) {                                                        \
      fprintf(stderr, "%s:%d: \"%s\" != \"%s\"\n", __FILE__, __LINE__, (a), (b));       \
      abort();                                                                          \
    }                                                                                   \
  } while (0)

/* Seconds on CLOCK_MONOTONIC: deadlines and recorded intervals, which must
 * compare across processes and never jump. */
static inline double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* How much slower this run may be than a plain one: HEAVYLOCK_TEST_TIME_FACTOR
 * (make test-valgrind sets it), 1 by default.  A bound on how long something
 * may take is written for a plain run with its slack scaled by this, so that
 * valgrind's slowness widens it there and nowhere else. */
static inline double test_time_factor(void) {
  const char *s = getenv("HEAVYLOCK_TEST_TIME_FACTOR");
  if (s == NULL || *s == '\0')
    return 1.0;
  char *end;
  double f = strtod(s, &end);
  if (*end != '\0' || !(f >= 1.0 && f <= 1000.0)) {
    fprintf(stderr, "HEAVYLOCK_TEST_TIME_FACTOR='%s' (from the environment): not a number "
            "from 1 to 1000\n", s);
    abort();
  }
  return f;
}

/* `s` seconds of slack for a time bound, scaled by test_time_factor(). */
static inline double test_slack(double s) {
  return s * test_time_factor();
}

/* Zeroed memory that forked children write and the parent reads (recorded
 * intervals, timestamps, results): the only channel tests judge from. */
static inline void *shared(size_t n) {
  void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT(p != MAP_FAILED);
  memset(p, 0, n);
  return p;
}

/* One hold of the lock as a child saw it: taken after acquire returned and
 * before release, so inside the true hold.  pid 0: never filled. */
struct interval {
  double from, to;
  long pid;
};

/* Most filled intervals open at one instant (1: exclusion held). */
static inline int max_concurrent(const struct interval *iv, size_t n) {
  int best = 0;
  for (size_t i = 0; i < n; i++) {
    if (iv[i].pid == 0)
      continue;
    int c = 0;
    for (size_t j = 0; j < n; j++)
      if (iv[j].pid && iv[j].from <= iv[i].from && iv[i].from < iv[j].to)
        c++;
    if (c > best)
      best = c;
  }
  return best;
}

/* Wait for a child; its raw wait status. */
static inline int reap(pid_t pid) {
  int st;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  return st;
}

/* Wait for a child that must have exited 0 (a child reports failure by its
 * exit code, since its aborts do not reach the test). */
static inline void reap_ok(pid_t pid) {
  int st = reap(pid);
  if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
    fprintf(stderr, "child %d: status 0x%x\n", (int)pid, st);
    abort();
  }
}

/* fork() for a child that must get somewhere (hold the lock, say) before
 * the test goes on.  In the child: 0, with *ready the pipe end to tell the
 * parent on (test_say_ready).  In the parent: the child's pid, once told; a
 * child that exits without telling fails the assertion. */
static inline pid_t test_fork_ready(int *ready) {
  int p[2];
  ASSERT(pipe(p) == 0);
  pid_t pid = fork();
  ASSERT(pid >= 0);
  if (pid == 0) {
    close(p[0]);
    *ready = p[1];
    return 0;
  }
  close(p[1]);
  char c;
  ASSERT_EQ(read(p[0], &c, 1), 1);
  close(p[0]);
  return pid;
}

/* In a test_fork_ready child: tell the parent (or _exit(12)). */
static inline void test_say_ready(int ready) {
  if (write(ready, "x", 1) != 1)
    _exit(12);
}

/* Keep doing nothing (holding a lock) for `s` seconds of CLOCK_MONOTONIC. */
static inline void test_hold(double s) {
  double end = now() + s;
  while (now() < end)
    usleep(1000);
}

/* A fresh directory /tmp/PREFIX-PID-XXXXXX for one test (dir: 256 bytes)
 * and the lock path an application would use in it (lockpath: 320 bytes). */
static inline void test_tmpdir(char *dir, size_t dirlen, char *lockpath, size_t pathlen,
                               const char *prefix) {
  snprintf(dir, dirlen, "/tmp/%s-%ld-XXXXXX", prefix, (long)getpid());
  ASSERT(mkdtemp(dir) != NULL);
  snprintf(lockpath, pathlen, "%s/models/.llm_load.lock", dir);
}

/* Remove a test's directory (a failure is said, not fatal). */
static inline void test_rmtree(const char *dir) {
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "cleanup of %s failed\n", dir);
}

/* Run as `PROGRAM NAME`: each test a process of its own, so that meson
 * reports it by name. */
struct test_entry {
  const char *name;
  void (*fn)(void);
};

/* Runs the test named argv[1] (all without one) between before(name) and
 * after() (either may be NULL); 1 when no test has that name. */
static inline int test_main(int argc, char **argv, const struct test_entry *tests, size_t n,
                            void (*before)(const char *name), void (*after)(void)) {
  int ran = 0;
  for (size_t i = 0; i < n; i++) {
    if (argc > 1 && strcmp(argv[1], tests[i].name) != 0)
      continue;
    if (before)
      before(tests[i].name);
    tests[i].fn();
    if (after)
      after();
    printf("ok %s\n", tests[i].name);
    ran++;
  }
  if (ran == 0) {
    fprintf(stderr, "no test named %s\n", argc > 1 ? argv[1] : "");
    return 1;
  }
  return 0;
}

#endif
