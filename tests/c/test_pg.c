/*
 * test_pg.c - the PostgreSQL kind against a real server, with real processes.
 *
 * Run as `test_pg NAME` with HEAVYLOCK_TEST_PG_URL pointing at a throwaway
 * server (tests/pg-cluster.sh start; eval "$(tests/pg-cluster.sh env)").
 * Without one the test is skipped (exit 77) with the reason, except under
 * CI=true, where a missing server is a failure.  Exclusion is judged from
 * recorded intervals (CLOCK_MONOTONIC, in a shared anonymous mapping).
 */
#define _GNU_SOURCE
#include "heavylock.h"
#include "kind.h"
#include "pq.h" /* libpq, loaded at run time like the kind does */

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* From kind-pg.c (internal). */
const char *hl__pg_errdetail(void);
int hl__pg_check(void *state);
uint64_t hl__pg_key(const char *name, const char *role);

/* What ASSERT_EQ adds after a failed comparison: the server's last error. */
static const char *pg_detail(void) {
  static char buf[600];
  snprintf(buf, sizeof(buf), "[%s]", hl__pg_errdetail());
  return buf;
}
#define TEST_DETAIL() pg_detail()
#include "test.h"

static const char *hl_strerror_pg(int rc) {
  switch (rc) {
  case HL_EBUSY: return "busy";
  case HL_ETIMEDOUT: return "timed out";
  case HL_ELOST: return "lost";
  case HL_ENOBUDGET: return "no budget";
  }
  return rc > -4096 ? strerror(-rc) : "?";
}

static const char *base_url;  /* the server */
static char url[1024];        /* the server + this test's lock name */

/* ---- a handle over the kind's callbacks, acquired the way lock.c does ---- */

typedef struct t_lock_s {
  void *st;
  hl__ask_t ask;
} t_lock;

#define K hl__kind_pg

static int t_open(t_lock *t, const char *target) {
  memset(t, 0, sizeof(*t));
  t->ask.slots = 1;
  return K.open(target, &t->st);
}

static int t_acquire(t_lock *t, double timeout) {
  int rc = K.try_acquire(t->st, &t->ask, timeout != 0);
  if (rc == HL_EBUSY && timeout < 0) {
    rc = K.acquire_blocking(t->st, &t->ask);
  } else if (rc == HL_EBUSY && timeout > 0) {
    double deadline = now() + timeout;
    while (rc == HL_EBUSY) {
      double left = deadline - now();
      if (left <= 0) {
        rc = HL_ETIMEDOUT;
        break;
      }
      int ms = left > 0.1 ? 100 : (int)(left * 1000) + 1;
      if ((rc = K.wait(t->st, ms)) < 0)
        break;
      rc = K.try_acquire(t->st, &t->ask, 1);
    }
  }
  if (rc != 0)
    K.cancel(t->st);
  return rc;
}

static int t_release(t_lock *t) { return K.release(t->st); }
static void t_close(t_lock *t) { K.close(t->st, 1); }
static int t_status(const char *target, hl_status_t *st) {
  memset(st, 0, sizeof(*st));
  st->held_for = -1;
  return K.status(target, st, 0);
}

/* ---- helpers ---- */

/* A plain libpq connection, for what the test does behind the kind's back. */
static PGconn *sql_conn(void) {
  PGconn *c = PQconnectdb(base_url);
  ASSERT(PQstatus(c) == CONNECTION_OK);
  return c;
}

static long sql_long(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    fprintf(stderr, "query failed: %s: %s\n", sql, PQresultErrorMessage(r));
    abort();
  }
  long v = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) ? atol(PQgetvalue(r, 0, 0)) : -1;
  PQclear(r);
  return v;
}

/* The server pid of the session of client process `pid` (from the
 * application_name the kind sets), -1 when there is none. */
static long backend_of(PGconn *c, long pid) {
  char sql[256];
  snprintf(sql, sizeof(sql),
           "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'heavylock %ld@%%'"
           " ORDER BY backend_start LIMIT 1",
           pid);
  return sql_long(c, sql);
}

/* A child that opens the lock (slots, weight, budget), takes it, writes "x"
 * to the pipe, and holds until killed or `hold` seconds passed. */
static pid_t spawn_holder(int slots, uint64_t weight, uint64_t budget, const char *label,
                          double hold) {
  int ready;
  pid_t pid = test_fork_ready(&ready);
  if (pid == 0) {
    t_lock t;
    if (t_open(&t, url) < 0)
      _exit(10);
    t.ask.slots = slots;
    t.ask.weight = weight;
    t.ask.budget = budget;
    snprintf(t.ask.label, sizeof(t.ask.label), "%s", label ? label : "");
    if (t_acquire(&t, 30) < 0)
      _exit(11);
    test_say_ready(ready);
    test_hold(hold);
    t_close(&t);
    _exit(0);
  }
  return pid;
}

/* ---------------------------------------------------------------- tests */

static void test_basic(void) {
  t_lock a, b;
  ASSERT_EQ(t_open(&a, url), 0);
  ASSERT_EQ(t_open(&b, url), 0);
  ASSERT_EQ(t_acquire(&a, 0), 0);
  ASSERT_EQ(t_acquire(&b, 0), HL_EBUSY);
  double t0 = now();
  ASSERT_EQ(t_acquire(&b, 0.3), HL_ETIMEDOUT);
  double waited = now() - t0;
  ASSERT(waited >= 0.29 && waited < 0.3 + test_slack(0.7)); /* not a second late */
  ASSERT_EQ(t_release(&a), 0);
  ASSERT_EQ(t_release(&a), HL_ENOTHELD);
  ASSERT_EQ(t_acquire(&b, 1.0), 0);
  ASSERT_EQ(t_acquire(&a, 0), HL_EBUSY);
  /* A timed-out or busy waiter left nothing behind in the server. */
  PGconn *c = sql_conn();
  char mine[300];
  snprintf(mine, sizeof(mine),
           "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE"
           " l.locktype = 'advisory' AND NOT l.granted AND a.application_name LIKE"
           " 'heavylock %ld@%%'",
           (long)getpid());
  ASSERT_EQ(sql_long(c, mine), 0);
  t_close(&b); /* releases */
  ASSERT_EQ(t_acquire(&a, 0), 0);
  t_close(&a);
  snprintf(mine, sizeof(mine),
           "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE"
           " l.locktype = 'advisory' AND a.application_name LIKE 'heavylock %ld@%%'",
           (long)getpid());
  ASSERT_EQ(sql_long(c, mine), 0);
  char sql[200];
  snprintf(sql, sizeof(sql), "SELECT count(*) FROM heavylock_holders WHERE name = 'test_basic_%ld'",
           (long)getpid());
  ASSERT_EQ(sql_long(c, sql), 0);
  PQfinish(c);
}

static void test_bad_targets(void) {
  void *st = NULL;
  ASSERT_EQ(K.claims("postgresql://h/db", NULL), 1);
  ASSERT_EQ(K.claims("postgres://h/db", NULL), 1);
  ASSERT_EQ(K.claims("models/.llm_load.lock", NULL), 0);
  ASSERT_EQ(K.open("postgresql://[::1/db", &st), -EINVAL);
  ASSERT(strstr(hl__pg_errdetail(), "postgresql://[::1/db") != NULL);
  ASSERT(st == NULL);
  ASSERT_EQ(K.open("postgresql://127.0.0.1:1/db?connect_timeout=2", &st), -ECONNREFUSED);
  ASSERT(strstr(hl__pg_errdetail(), "127.0.0.1") != NULL);
  char u[1100];
  snprintf(u, sizeof(u), "%s%cname=", base_url, strchr(base_url, '?') ? '&' : '?');
  ASSERT_EQ(K.open(u, &st), -EINVAL);
  ASSERT(strstr(hl__pg_errdetail(), "empty lock name") != NULL);
  /* Memory admission needs a budget here: there is no live memory to read. */
  t_lock t;
  ASSERT_EQ(t_open(&t, url), 0);
  t.ask.slots = 0;
  t.ask.weight = 1 << 30;
  ASSERT_EQ(t_acquire(&t, 0), HL_ENOBUDGET);
  ASSERT(strstr(hl__pg_errdetail(), "budget") != NULL);
  t.ask.budget = 4ull << 30;
  ASSERT_EQ(t_acquire(&t, 0), 0);
  t_close(&t);
}

/* The documented key scheme, seen from outside: a session that takes the
 * documented key with plain SQL excludes heavylock, and the hash is the one
 * the header states (a change would split old and new clients). */
static void test_keys(void) {
  /* fnv1a64("heavylock:llm_load"), computed independently. */
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char *c = "heavylock:llm_load"; *c; c++)
    h = (h ^ (unsigned char)*c) * 0x100000001b3ull;
  ASSERT(hl__pg_key("llm_load", NULL) == h);
  ASSERT(hl__pg_key("llm_load", "slot:0") != hl__pg_key("llm_load", "slot:1"));
  ASSERT(hl__pg_key("a", "slot:0") != hl__pg_key("a\x01slot:0", NULL));

  char name[64];
  snprintf(name, sizeof(name), "test_keys_%ld", (long)getpid());
  uint64_t k = hl__pg_key(name, NULL);
  PGconn *c = sql_conn();
  char sql[200];
  snprintf(sql, sizeof(sql), "SELECT 1 FROM pg_advisory_lock(%d, %d)",
           (int32_t)(uint32_t)(k >> 32), (int32_t)(uint32_t)k);
  sql_long(c, sql);
  t_lock t;
  ASSERT_EQ(t_open(&t, url), 0);
  ASSERT_EQ(t_acquire(&t, 0), HL_EBUSY);
  PQfinish(c); /* the outside session ends: its lock goes */
  ASSERT_EQ(t_acquire(&t, 5), 0);
  t_close(&t);
}

/* N processes x M iterations on one name; never more than `slots` at once. */
static void exclusion(int slots, int nproc, int iters, double hold) {
  int n = nproc * iters;
  struct interval *iv = shared(sizeof(struct interval) * (size_t)n);
  pid_t kids[16];
  for (int p = 0; p < nproc; p++) {
    kids[p] = fork();
    ASSERT(kids[p] >= 0);
    if (kids[p] == 0) {
      t_lock t;
      if (t_open(&t, url) < 0)
        _exit(10);
      t.ask.slots = slots;
      for (int i = 0; i < iters; i++) {
        if (t_acquire(&t, 120) < 0)
          _exit(11);
        struct interval *me = &iv[p * iters + i];
        me->from = now();
        double end = me->from + hold;
        while (now() < end)
          ;
        me->to = now();
        me->pid = getpid();
        if (t_release(&t) < 0)
          _exit(12);
      }
      t_close(&t);
      _exit(0);
    }
  }
  for (int p = 0; p < nproc; p++)
    ASSERT_EQ(reap(kids[p]), 0);
  for (int i = 0; i < n; i++)
    ASSERT(iv[i].pid != 0 && iv[i].to > iv[i].from);
  int m = max_concurrent(iv, n);
  printf("  %d processes x %d iterations, slots %d: at most %d at once\n", nproc, iters, slots,
         m);
  ASSERT(m <= slots);
  if (slots > 1)
    ASSERT(m >= 2); /* really more than one: not an exclusive lock in disguise */
  munmap(iv, sizeof(struct interval) * (size_t)n);
}

static void test_exclusion(void) { exclusion(1, 8, 50, 0.001); }
static void test_slots(void) { exclusion(3, 8, 30, 0.005); }

/* A waiter blocked behind a holder that is SIGKILLed gets in within 1 s. */
static void killed_holder(int slots) {
  pid_t holders[3];
  for (int i = 0; i < slots; i++)
    holders[i] = spawn_holder(slots, 0, 0, "doomed", 60);
  double *got = shared(sizeof(double));
  pid_t w = fork();
  if (w == 0) {
    t_lock t;
    if (t_open(&t, url) < 0)
      _exit(10);
    t.ask.slots = slots;
    if (t_acquire(&t, 30) < 0)
      _exit(11);
    *got = now();
    t_close(&t);
    _exit(0);
  }
  /* Kill once the waiter is visibly waiting (status), not after a sleep. */
  hl_status_t *st = malloc(sizeof(*st));
  for (int i = 0; i < 500; i++) {
    ASSERT_EQ(t_status(url, st), 0);
    if (st->nwaiters >= 1)
      break;
    usleep(10000);
  }
  ASSERT_EQ(st->nwaiters, 1);
  ASSERT_EQ(st->nholders, slots);
  free(st);
  double t0 = now();
  kill(holders[0], SIGKILL);
  ASSERT_EQ(reap(w), 0);
  printf("  slots %d: waiter in %.0f ms after the SIGKILL\n", slots, (*got - t0) * 1000);
  ASSERT(*got - t0 < 1.0);
  reap(holders[0]);
  for (int i = 1; i < slots; i++) {
    kill(holders[i], SIGKILL);
    reap(holders[i]);
  }
}

static void test_killed_holder(void) {
  killed_holder(1);
  killed_holder(2);
}

/*
 * pg_terminate_backend of the holder's session: the holder finds out by
 * checking (hl__pg_check every 100 ms, as a caller's loop would) within 2 s,
 * and a waiter gets in.
 */
static void test_terminated(void) {
  double *seen = shared(2 * sizeof(double));
  int p[2];
  ASSERT(pipe(p) == 0);
  pid_t h = fork();
  if (h == 0) {
    close(p[0]);
    t_lock t;
    if (t_open(&t, url) < 0 || t_acquire(&t, 10) < 0)
      _exit(10);
    if (write(p[1], "x", 1) != 1)
      _exit(12);
    double end = now() + 30;
    while (now() < end && hl__pg_check(t.st) == 0)
      usleep(100000);
    seen[0] = now();
    int rc = hl__pg_check(t.st);
    int rel = t_release(&t);
    t_close(&t);
    _exit(rc == HL_ELOST && rel == HL_ELOST ? 0 : 13);
  }
  close(p[1]);
  char c;
  ASSERT_EQ(read(p[0], &c, 1), 1);
  pid_t w = fork();
  if (w == 0) {
    t_lock t;
    if (t_open(&t, url) < 0 || t_acquire(&t, 30) < 0)
      _exit(11);
    seen[1] = now();
    t_close(&t);
    _exit(0);
  }
  PGconn *pc = sql_conn();
  long be = backend_of(pc, h);
  ASSERT(be > 0);
  char sql[100];
  snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%ld)::int", be);
  double t0 = now();
  ASSERT_EQ(sql_long(pc, sql), 1);
  ASSERT_EQ(reap(h), 0);
  ASSERT_EQ(reap(w), 0);
  printf("  holder knew after %.0f ms; waiter in after %.0f ms\n", (seen[0] - t0) * 1000,
         (seen[1] - t0) * 1000);
  ASSERT(seen[0] - t0 < 2.0);
  ASSERT(seen[1] - t0 < 1.0);
  PQfinish(pc);
}

/* A server restart while holding and while waiting: the holder learns it
 * lost the lock, the waiter gets an error (not a hang), and the handles work
 * again once the server is back. */
static void test_restart(void) {
  const char *script = getenv("HEAVYLOCK_TEST_PG_CLUSTER");
  if (script == NULL) {
    printf("  skipped: HEAVYLOCK_TEST_PG_CLUSTER (tests/pg-cluster.sh) is not set\n");
    if (getenv("CI") && strcmp(getenv("CI"), "true") == 0)
      abort();
    return;
  }
  int *res = shared(4 * sizeof(int));
  int p[2];
  ASSERT(pipe(p) == 0);
  pid_t h = fork();
  if (h == 0) {
    close(p[0]);
    t_lock t;
    if (t_open(&t, url) < 0 || t_acquire(&t, 10) < 0)
      _exit(10);
    if (write(p[1], "x", 1) != 1)
      _exit(12);
    double end = now() + 60;
    while (now() < end && hl__pg_check(t.st) == 0)
      usleep(100000);
    res[0] = hl__pg_check(t.st);
    res[3] = t_release(&t); /* the holder lets go of what it lost */
    /* Back in business once the server is. */
    double until = now() + 60;
    int rc;
    while ((rc = t_acquire(&t, 5)) == -ECONNREFUSED && now() < until)
      usleep(200000);
    res[2] = rc;
    t_close(&t);
    _exit(0);
  }
  close(p[1]);
  char c;
  ASSERT_EQ(read(p[0], &c, 1), 1);
  pid_t w = fork();
  if (w == 0) {
    t_lock t;
    if (t_open(&t, url) < 0)
      _exit(11);
    res[1] = t_acquire(&t, 60);
    t_close(&t);
    _exit(0);
  }
  hl_status_t *st = malloc(sizeof(*st));
  for (int i = 0; i < 500; i++) {
    ASSERT_EQ(t_status(url, st), 0);
    if (st->nwaiters >= 1)
      break;
    usleep(10000);
  }
  ASSERT_EQ(st->nwaiters, 1);
  free(st);
  char cmd[1200];
  snprintf(cmd, sizeof(cmd), "'%s' restart", script);
  double t0 = now();
  ASSERT_EQ(system(cmd), 0);
  ASSERT_EQ(reap(w), 0);
  ASSERT_EQ(reap(h), 0);
  printf("  restart took %.1f s; holder: %s; waiter: %s; holder after: %s\n", now() - t0,
         hl_strerror_pg(res[0]), hl_strerror_pg(res[1]), res[2] ? hl_strerror_pg(res[2]) : "ok");
  ASSERT_EQ(res[0], HL_ELOST);
  ASSERT_EQ(res[1], HL_ELOST);
  ASSERT_EQ(res[3], HL_ELOST);
  ASSERT_EQ(res[2], 0);
}

/* Status from the server: the holder's label, host and pid; a blocked
 * exclusive waiter and a queued slot waiter. */
static void test_status(void) {
  hl_status_t *st = malloc(sizeof(*st));
  ASSERT_EQ(t_status(url, st), 0);
  ASSERT_EQ(st->held, 0);
  ASSERT_EQ(st->nholders, 0);
  pid_t h = spawn_holder(1, 0, 0, "tests/test_chat.py::test_reply", 60);
  pid_t w = fork();
  if (w == 0) {
    t_lock t;
    if (t_open(&t, url) < 0)
      _exit(10);
    snprintf(t.ask.label, sizeof(t.ask.label), "the waiter");
    int rc = t_acquire(&t, 30);
    t_close(&t);
    free(st); /* the parent's, inherited: valgrind checks the child's heap too */
    _exit(rc == 0 ? 0 : 11);
  }
  /* The waiter shows itself first, then queues in the server: wait for both. */
  for (int i = 0; i < 500; i++) {
    ASSERT_EQ(t_status(url, st), 0);
    if (st->nwaiters >= 1 && st->waiters[0].how == 'b')
      break;
    usleep(10000);
  }
  char host[64];
  gethostname(host, sizeof(host));
  ASSERT_EQ(st->held, 1);
  ASSERT_EQ(st->nholders, 1);
  ASSERT_EQ(st->holders[0].pid, h);
  ASSERT_EQ(st->holders[0].exclusive, 1);
  ASSERT(strcmp(st->holders[0].label, "tests/test_chat.py::test_reply") == 0);
  ASSERT(strcmp(st->holders[0].host, host) == 0);
  ASSERT(st->holders[0].held_for >= 0 && st->holders[0].held_for < 60);
  ASSERT_EQ(st->holder_pid, h); /* local and exclusive: lock.c's self check sees it */
  ASSERT(strcmp(st->method, "pg_locks") == 0);
  ASSERT_EQ(st->nwaiters, 1);
  ASSERT_EQ(st->waiters[0].how, 'b');
  ASSERT_EQ(st->waiters[0].pid, w);
  ASSERT(strcmp(st->waiters[0].label, "the waiter") == 0);
  /* Same hostname, another machine (CI containers are often all "runner"):
   * its pid is not ours to compare, so holder_pid stays 0. */
  PGconn *c = sql_conn();
  char sql[200];
  snprintf(sql, sizeof(sql),
           "UPDATE heavylock_holders SET machine = 'elsewhere' WHERE pid = %ld AND state = 'h'",
           (long)h);
  PGresult *r = PQexec(c, sql);
  ASSERT(PQresultStatus(r) == PGRES_COMMAND_OK && atoi(PQcmdTuples(r)) == 1);
  PQclear(r);
  PQfinish(c);
  ASSERT_EQ(t_status(url, st), 0);
  ASSERT_EQ(st->holders[0].pid, h);
  ASSERT_EQ(st->holder_pid, 0);
  kill(h, SIGKILL);
  reap(h);
  ASSERT_EQ(reap(w), 0);
  free(st);
}

/* Weights against a budget: never over it; a too-big holder runs alone; a
 * dead holder's row does not count. */
static void test_memory(void) {
  const uint64_t G = 1ull << 30, budget = 3 * G;
  int nproc = 6, iters = 15, n = nproc * iters;
  struct interval *iv = shared(sizeof(struct interval) * (size_t)n);
  pid_t kids[6];
  for (int p = 0; p < nproc; p++) {
    kids[p] = fork();
    if (kids[p] == 0) {
      t_lock t;
      if (t_open(&t, url) < 0)
        _exit(10);
      t.ask.slots = 0;
      t.ask.budget = budget;
      t.ask.weight = G; /* three fit */
      for (int i = 0; i < iters; i++) {
        if (t_acquire(&t, 120) < 0)
          _exit(11);
        struct interval *me = &iv[p * iters + i];
        me->from = now();
        while (now() < me->from + 0.005)
          ;
        me->to = now();
        me->pid = getpid();
        t_release(&t);
      }
      t_close(&t);
      _exit(0);
    }
  }
  for (int p = 0; p < nproc; p++)
    ASSERT_EQ(reap(kids[p]), 0);
  int m = max_concurrent(iv, n);
  printf("  weights 1 GiB, budget 3 GiB: at most %d at once\n", m);
  ASSERT(m <= 3 && m >= 2);

  /* Too big for the budget: admitted alone, and nobody joins it. */
  pid_t big = spawn_holder(0, 5 * G, budget, "big", 60);
  t_lock t;
  ASSERT_EQ(t_open(&t, url), 0);
  t.ask.slots = 0;
  t.ask.budget = budget;
  t.ask.weight = 1;
  ASSERT_EQ(t_acquire(&t, 0), HL_EBUSY);
  kill(big, SIGKILL);
  reap(big);
  /* A 2 GiB holder dies; its row stays behind but does not count. */
  pid_t dead = spawn_holder(0, 2 * G, budget, "dies", 60);
  kill(dead, SIGKILL);
  reap(dead);
  t.ask.weight = 2 * G;
  ASSERT_EQ(t_acquire(&t, 2), 0);
  hl_status_t *st = malloc(sizeof(*st));
  ASSERT_EQ(t_status(url, st), 0);
  ASSERT_EQ(st->nholders, 1);
  ASSERT_EQ(st->holders[0].weight, 2 * G);
  ASSERT_EQ(st->budget, budget);
  ASSERT_EQ(st->free_known, 1);
  ASSERT_EQ(st->free_bytes, G);
  /* Weight unknown: exclusive. */
  t_lock u;
  ASSERT_EQ(t_open(&u, url), 0);
  u.ask.slots = 0;
  u.ask.budget = budget;
  u.ask.weight = 0;
  ASSERT_EQ(t_acquire(&u, 0), HL_EBUSY);
  t_release(&t);
  ASSERT_EQ(t_acquire(&u, 0), 0);
  ASSERT_EQ(t_acquire(&t, 0), HL_EBUSY);
  t_close(&u);
  t_close(&t);
  free(st);
}

static void test_doctor(void) {
  char line[512];
  ASSERT_EQ(hl_pg_doctor(url, line, sizeof(line)), 0);
  printf("  %s\n", line);
  ASSERT(strstr(line, "connected to PostgreSQL") != NULL);
  ASSERT(hl_pg_doctor("postgresql://127.0.0.1:1/x?connect_timeout=2", line, sizeof(line)) < 0);
  ASSERT(strstr(line, "127.0.0.1") != NULL);
}

/* The same kind through the public API: a URL wherever a lock path goes. */
static void test_public_api(void) {
  hl_lock_t *a, *b;
  ASSERT_EQ(hl_lock_open(&a, url), 0);
  ASSERT(strcmp(hl_lock_kind(a), "pg") == 0);
  ASSERT_EQ(hl_lock_open(&b, url), 0);
  ASSERT_EQ(hl_lock_check(a), HL_ENOTHELD);
  hl_lock_set_label(a, "public api");
  ASSERT_EQ(hl_lock_acquire(a, 0), 0);
  ASSERT_EQ(hl_lock_check(a), 0);
  ASSERT_EQ(hl_lock_fd(a), -1);
  /* The same thread asking twice would wait for itself (lock.c's registry,
   * fed by the kind's identity: the key and the server). */
  ASSERT_EQ(hl_lock_acquire(b, 0.2), -EDEADLK);
  pid_t w = fork();
  if (w == 0) {
    hl_lock_t *c;
    if (hl_lock_open(&c, url) < 0)
      _exit(10);
    /* Its parent holds: lock.c's self check (through the kind's status,
     * holder_pid of a local exclusive holder) refuses to wait for it. */
    int rc = hl_lock_acquire(c, 0.2);
    hl_lock_close(c); /* valgrind checks the child's heap too */
    _exit(rc == HL_ESELF ? 0 : (fprintf(stderr, "child: %d\n", rc), 11));
  }
  ASSERT_EQ(reap(w), 0);
  hl_status_t *st = malloc(sizeof(*st));
  ASSERT_EQ(hl_status(url, st), 0);
  ASSERT(strcmp(st->kind, "pg") == 0);
  ASSERT_EQ(st->nholders, 1);
  ASSERT(strcmp(st->holders[0].label, "public api") == 0);
  /* A new label while held shows at once (row and application_name). */
  hl_lock_set_label(a, "relabelled");
  ASSERT_EQ(hl_status(url, st), 0);
  ASSERT(strcmp(st->holders[0].label, "relabelled") == 0);
  /* A forked child that closes its copy of the handle must not end the
   * parent's session (libpq's Terminate on the shared socket would). */
  pid_t kid = fork();
  if (kid == 0) {
    hl_lock_close(a);
    _exit(hl_lock_release(b) == HL_EFORKED ? 0 : 1);
  }
  ASSERT_EQ(reap(kid), 0);
  ASSERT_EQ(hl_lock_check(a), 0);
  ASSERT_EQ(hl_status(url, st), 0);
  ASSERT_EQ(st->nholders, 1);
  ASSERT_EQ(hl_lock_release(a), 0);
  ASSERT_EQ(hl_lock_set_slots(a, 2), 0);
  ASSERT_EQ(hl_lock_set_slots(b, 2), 0);
  ASSERT_EQ(hl_lock_acquire(a, 0), 0);
  ASSERT_EQ(hl_lock_acquire(b, 0), 0); /* two slots, two holders */
  ASSERT_EQ(hl_status(url, st), 0);
  ASSERT_EQ(st->nholders, 2);
  ASSERT_EQ(st->shared, 1);
  ASSERT_EQ(st->holder_pid, 0); /* not exclusive: lock.c's self check must not fire */
  hl_lock_close(a);
  hl_lock_close(b);
  /* Memory admission without a budget: a clear error, not a guess. */
  ASSERT_EQ(hl_lock_open(&a, url), 0);
  ASSERT_EQ(hl_lock_set_slots(a, 0), 0);
  ASSERT_EQ(hl_lock_set_weight(a, 1 << 30, "declared"), 0);
  ASSERT_EQ(hl_lock_acquire(a, 0), HL_ENOBUDGET);
  ASSERT(strstr(hl_strerror(HL_ENOBUDGET), "budget") != NULL);
  hl_lock_close(a);
  ASSERT(hl_lock_open(&a, "postgresql://127.0.0.1:1/x?connect_timeout=2") < 0);
  ASSERT(strstr(hl_error_detail(), "127.0.0.1") != NULL);
  free(st);
}

/* Exclusive and slot holders of one name exclude each other, and a queued
 * exclusive waiter is not starved by newcomers for free slots. */
static void test_mixed(void) {
  t_lock x, s1, s2;
  ASSERT_EQ(t_open(&x, url), 0);
  ASSERT_EQ(t_open(&s1, url), 0);
  ASSERT_EQ(t_open(&s2, url), 0);
  s1.ask.slots = s2.ask.slots = 3;
  ASSERT_EQ(t_acquire(&x, 0), 0);
  ASSERT_EQ(t_acquire(&s1, 0), HL_EBUSY);
  ASSERT_EQ(t_release(&x), 0);
  ASSERT_EQ(t_acquire(&s1, 0), 0);
  ASSERT_EQ(t_acquire(&x, 0), HL_EBUSY);
  /* An exclusive waiter queues behind the slot holder... */
  double *got = shared(sizeof(double));
  pid_t w = fork();
  if (w == 0) {
    t_lock t;
    if (t_open(&t, url) < 0 || t_acquire(&t, 30) < 0)
      _exit(11);
    *got = now();
    t_close(&t);
    _exit(0);
  }
  hl_status_t *st = malloc(sizeof(*st));
  for (int i = 0; i < 500; i++) {
    ASSERT_EQ(t_status(url, st), 0);
    if (st->nwaiters >= 1 && st->waiters[0].how == 'b')
      break;
    usleep(10000);
  }
  ASSERT_EQ(st->waiters[0].how, 'b');
  /* ...and a newcomer for one of the two free slots must not pass it. */
  ASSERT_EQ(t_acquire(&s2, 0), HL_EBUSY);
  double t0 = now();
  ASSERT_EQ(t_release(&s1), 0);
  ASSERT_EQ(reap(w), 0);
  ASSERT(*got >= t0);
  ASSERT_EQ(t_acquire(&s2, 0), 0);
  t_close(&x);
  t_close(&s1);
  t_close(&s2);
  free(st);
}

/* The path policy passes a URL through untouched, and names a bad one. */
static void test_path_url(void) {
  hl_path_t p;
  unsetenv("LOCAL_MODEL_PATH");
  setenv("HEAVYLOCK_PATH", "/tmp/other.lock", 1);
  setenv("HEAVYLOCK_URL", url, 1);
  ASSERT_EQ(hl_path_resolve(NULL, &p), 0);
  ASSERT(strcmp(p.path, url) == 0);
  ASSERT(strcmp(p.source, "HEAVYLOCK_URL") == 0);
  unsetenv("HEAVYLOCK_URL");
  setenv("HEAVYLOCK_PATH", url, 1);
  ASSERT_EQ(hl_path_resolve(NULL, &p), 0);
  ASSERT(strcmp(p.path, url) == 0); /* not made absolute like a file */
  ASSERT(strcmp(p.source, "HEAVYLOCK_PATH") == 0);
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, p.path), 0);
  ASSERT(strcmp(hl_lock_kind(lk), "pg") == 0);
  hl_lock_close(lk);
  setenv("HEAVYLOCK_PATH", "postgresq://h/db", 1);
  ASSERT_EQ(hl_path_resolve(NULL, &p), HL_EENV);
  ASSERT(strstr(p.why, "postgresq://h/db") != NULL);
  setenv("HEAVYLOCK_URL", "db.example:5432", 1);
  ASSERT_EQ(hl_path_resolve(NULL, &p), HL_EENV);
  ASSERT(strstr(p.why, "HEAVYLOCK_URL='db.example:5432' is not a URL") != NULL);
  unsetenv("HEAVYLOCK_URL");
  unsetenv("HEAVYLOCK_PATH");
}

/* The one redaction (hl_redact), exactly: user info of any scheme, anywhere
 * in the text; password= and sslpassword= in a query or a conninfo string,
 * quoted or not; nothing else touched; a short buffer still terminated. */
static void test_redact(void) {
  static const char *const cases[][2] = {
      {"postgresql://bob:s3cret@h:5432/db?name=x", "postgresql://bob:***@h:5432/db?name=x"},
      {"run --lock postgres://u:p@ss@h/db -- true", "run --lock postgres://u:***@h/db -- true"},
      {"postgresql://h/db?password=pw&name=x", "postgresql://h/db?password=***&name=x"},
      {"postgresql://h/db?name=x&sslpassword=k", "postgresql://h/db?name=x&sslpassword=***"},
      {"host=h password='a b\\'c' user=u", "host=h password='***' user=u"},
      {"host=h PASSWORD=x", "host=h PASSWORD=***"},
      {"postgresql://bob@h/db", "postgresql://bob@h/db"},
      {"postgresql://h:5432/db", "postgresql://h:5432/db"},
      {"mypassword=x ./redis:x a://b", "mypassword=x ./redis:x a://b"},
      {"redis://:tok@h/0", "redis://:***@h/0"},
      /* '?' and '#' in a password: libpq's user info runs to the '@' */
      {"postgresql://bob:s?cr#t@h/db", "postgresql://bob:***@h/db"},
      {"x postgresql://bob:pw?@h y", "x postgresql://bob:***@h y"},
      {"postgresql://h:5432?name=x", "postgresql://h:5432?name=x"},
      {"postgresql://h:5432/db?name=a@b", "postgresql://h:5432/db?name=a@b"},
      /* a quote ends the value as it ends a URL in free text (idempotence) */
      {"said \"x=1 password=y' then", "said \"x=1 password=***' then"},
  };
  char out[256];
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    hl_redact(cases[i][0], out, sizeof(out));
    if (strcmp(out, cases[i][1]) != 0)
      fprintf(stderr, "redact(%s) = %s, not %s\n", cases[i][0], out, cases[i][1]);
    ASSERT(strcmp(out, cases[i][1]) == 0);
  }
  ASSERT(strcmp(hl_redact("postgresql://u:pw@h/d", out, 8), "postgre") == 0);
  ASSERT_EQ(hl_target_kind("postgresql://h/d"), HL_TARGET_PG);
  ASSERT_EQ(hl_target_kind("postgres://h/d"), HL_TARGET_PG);
  ASSERT_EQ(hl_target_kind("redis://h/x"), HL_TARGET_UNKNOWN);
  ASSERT_EQ(hl_target_kind("./redis:x"), HL_TARGET_FILE);
  ASSERT_EQ(hl_target_kind("C://x"), HL_TARGET_FILE);
  ASSERT_EQ(hl_target_kind("a/b://c"), HL_TARGET_FILE);
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, "redis://h/x"), -EINVAL);
  ASSERT(strstr(hl_error_detail(), "postgresql://") != NULL);
}

static const struct test_entry tests[] = {
#define T(n) {#n, test_##n}
    T(basic), T(bad_targets), T(keys), T(exclusion), T(slots), T(killed_holder),
    T(terminated), T(restart), T(status), T(memory), T(doctor), T(public_api),
    T(path_url), T(mixed), T(redact),
#undef T
};

/* Each test on its own lock name, so that a failed one leaves nothing in
 * the way of the next. */
static void name_lock(const char *name) {
  snprintf(url, sizeof(url), "%s%cname=test_%s_%ld", base_url,
           strchr(base_url, '?') ? '&' : '?', name, (long)getpid());
}

int main(int argc, char **argv) {
  base_url = getenv("HEAVYLOCK_TEST_PG_URL");
  if (base_url == NULL || base_url[0] == '\0') {
    const char *ci = getenv("CI");
    fprintf(stderr, "no PostgreSQL server: HEAVYLOCK_TEST_PG_URL is not set "
                    "(tests/pg-cluster.sh start; eval \"$(tests/pg-cluster.sh env)\")\n");
    return ci && strcmp(ci, "true") == 0 ? 1 : 77; /* 77: skipped, never in CI */
  }
  const char *why;
  if (hl__pq_load(&why) < 0) { /* the tests' own connections need it too */
    fprintf(stderr, "%s\n", why);
    return 1;
  }
  return test_main(argc, argv, tests, sizeof(tests) / sizeof(tests[0]), name_lock, NULL);
}
