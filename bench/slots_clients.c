/*
 * slots_clients.c - N client processes on a lock with S slots for a fixed
 * time, each holding H ms per turn; prints turns per second and the most
 * holders seen at once.  Driven by bench/pg.py (the Python API has no slots
 * setter yet); works for any target: a lock file or a postgresql:// URL.
 *
 *   slots_clients TARGET SLOTS CLIENTS SECONDS HOLD_MS
 */
#define _GNU_SOURCE
#include "heavylock.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s TARGET SLOTS CLIENTS SECONDS HOLD_MS\n", argv[0]);
    return 64;
  }
  const char *target = argv[1];
  int slots = atoi(argv[2]), clients = atoi(argv[3]);
  double seconds = atof(argv[4]), hold = atof(argv[5]) / 1000.0;
  /* inside[0]: holders now, [1]: most at once, [2 + i]: turns of client i */
  volatile long *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                               -1, 0);
  if (shared == MAP_FAILED)
    return 1;
  double end = now() + seconds;
  for (int c = 0; c < clients; c++) {
    if (fork() == 0) {
      hl_lock_t *lk;
      int rc = hl_lock_open(&lk, target);
      if (rc == 0)
        rc = hl_lock_set_slots(lk, slots);
      if (rc < 0) {
        fprintf(stderr, "%s: %s %s\n", target, hl_strerror(rc), hl_error_detail());
        _exit(1);
      }
      while (now() < end) {
        if ((rc = hl_lock_acquire(lk, 60)) < 0) {
          fprintf(stderr, "acquire: %s %s\n", hl_strerror(rc), hl_error_detail());
          _exit(2);
        }
        long in = __atomic_add_fetch(&shared[0], 1, __ATOMIC_SEQ_CST);
        long best = shared[1];
        while (in > best && !__atomic_compare_exchange_n(&shared[1], &best, in, 0,
                                                         __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
          ;
        double until = now() + hold;
        while (now() < until)
          usleep(200);
        __atomic_sub_fetch(&shared[0], 1, __ATOMIC_SEQ_CST);
        shared[2 + c]++;
        hl_lock_release(lk);
      }
      hl_lock_close(lk);
      _exit(0);
    }
  }
  int failed = 0, st;
  for (int c = 0; c < clients; c++)
    if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
      failed = 1;
  long turns = 0;
  for (int c = 0; c < clients; c++)
    turns += shared[2 + c];
  printf("{\"turns\": %ld, \"per_second\": %.1f, \"max_at_once\": %ld, \"ideal_per_second\": %.1f}\n",
         turns, turns / seconds, shared[1], slots / hold);
  return failed;
}
