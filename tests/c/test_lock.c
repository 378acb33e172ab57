/*
 * test_lock.c - one test per behaviour of libheavylock, with real processes.
 *
 * Run as `test_lock NAME`.  Multi-process tests fork real holders, kill
 * them, and judge exclusion from recorded intervals (CLOCK_MONOTONIC, shared
 * through an anonymous mapping), never from sleeps.
 */
#define _GNU_SOURCE
#include "heavylock.h"
#include "os.h"
#include "kind.h"
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[256];
static char lockpath[320];

static void setup(const char *name) {
  (void)name;
  test_tmpdir(dir, sizeof(dir), lockpath, sizeof(lockpath), "hl-test");
}

static void cleanup(void) { test_rmtree(dir); }

/* A child that takes the lock, says so through a pipe, then holds it until
 * killed (or for `hold` seconds).  Returns its pid. */
static pid_t spawn_holder(const char *path, const char *label, double hold) {
  int ready;
  pid_t pid = test_fork_ready(&ready);
  if (pid == 0) {
    hl_lock_t *lk;
    if (hl_lock_open(&lk, path) < 0)
      _exit(10);
    if (label)
      hl_lock_set_label(lk, label);
    if (hl_lock_acquire(lk, -1) < 0)
      _exit(11);
    test_say_ready(ready);
    test_hold(hold);
    hl_lock_close(lk);
    _exit(0);
  }
  return pid;
}

/* Poll status until at least `n` waiters are seen (bounded): orders a test
 * by what the lock table says, not by a sleep. */
static void wait_waiters(const char *path, int n) {
  hl_status_t st;
  double end = now() + 10;
  do {
    ASSERT_EQ(hl_status(path, &st), 0);
    if (st.nwaiters >= n)
      return;
    usleep(5000);
  } while (now() < end);
  ASSERT(!"waiters never showed up in status");
}

/* ---------------------------------------------------------------- tests */

static void test_basic(void) {
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, lockpath), 0);
  ASSERT_EQ(hl_lock_held(lk), 0);
  ASSERT_EQ(hl_lock_fd(lk), -1);
  ASSERT_EQ(hl_lock_acquire(lk, 0), 0);
  ASSERT_EQ(hl_lock_held(lk), 1);
  ASSERT(hl_lock_fd(lk) >= 0);
  ASSERT_EQ(hl_lock_release(lk), 0);
  ASSERT_EQ(hl_lock_release(lk), HL_ENOTHELD);
  ASSERT_EQ(hl_lock_acquire(lk, 1.0), 0);
  ASSERT_EQ(hl_lock_release(lk), 0);
  ASSERT_EQ(hl_lock_acquire(lk, -1), 0);
  hl_lock_close(lk); /* releases */
  /* The file stays (never unlinked) and names no holder after release: only
   * the line by which it vouches for itself (lock.c, flock_vouched). */
  struct stat st;
  ASSERT_EQ(stat(lockpath, &st), 0);
  hl_record_t rec;
  ASSERT_EQ(hl_record_read(lockpath, &rec), HL_EFORMAT);
  char head[64] = "";
  int fd = open(lockpath, O_RDONLY);
  ASSERT(fd >= 0);
  ASSERT(read(fd, head, sizeof(head) - 1) > 0);
  close(fd);
  ASSERT(strncmp(head, "heavylock-holder 1\nfile=", 24) == 0);
  ASSERT(strstr(head, "pid=") == NULL);
  hl_status_t hs;
  ASSERT_EQ(hl_status(lockpath, &hs), 0);
  ASSERT_EQ(hs.held, 0);
  ASSERT_EQ(hs.other_content, 0);
  ASSERT_EQ(hs.stale_record, 0);
  ASSERT_EQ(hl_lock_open(&lk, ""), -EINVAL);
  ASSERT(lk == NULL);
}

static void test_record(void) {
  hl_lock_t *lk;
  hl_record_t rec;
  ASSERT_EQ(hl_lock_open(&lk, lockpath), 0);
  hl_lock_set_label(lk, "tests/test_chat.py::test_reply\nwith newline");
  ASSERT_EQ(hl_lock_acquire(lk, 0), 0);
  ASSERT_EQ(hl_record_read(lockpath, &rec), 0);
  ASSERT_EQ(rec.pid, getpid());
  ASSERT_STR(rec.label, "tests/test_chat.py::test_reply with newline");
  ASSERT(strstr(rec.cmd, "test_lock") != NULL);
  ASSERT(rec.start > 0);
  ASSERT(rec.host[0] != '\0');
  ASSERT(strlen(rec.boot_id) == 36);
  double wall = (double)time(NULL);
  ASSERT(rec.acquired > wall - 5 && rec.acquired < wall + 5);
  /* Relabel while held rewrites the record at once. */
  hl_lock_set_label(lk, "second");
  ASSERT_EQ(hl_record_read(lockpath, &rec), 0);
  ASSERT_STR(rec.label, "second");
  ASSERT_EQ(hl_lock_release(lk), 0);
  ASSERT_EQ(hl_record_read(lockpath, &rec), HL_EFORMAT); /* cleared */
  hl_lock_close(lk);
}

static void test_busy_and_timeout(void) {
  pid_t holder = spawn_holder(lockpath, "holder", 30);
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, lockpath), 0);
  double t0 = now();
  ASSERT_EQ(hl_lock_acquire(lk, 0), HL_EBUSY);
  ASSERT(now() - t0 < 0.5);
  t0 = now();
  ASSERT_EQ(hl_lock_acquire(lk, 0.3), HL_ETIMEDOUT);
  double waited = now() - t0;
  ASSERT(waited >= 0.29 && waited < 0.3 + test_slack(0.7)); /* not a second late */
  ASSERT_EQ(hl_lock_held(lk), 0);
  kill(holder, SIGKILL);
  reap(holder);
  ASSERT_EQ(hl_lock_acquire(lk, 5), 0);
  hl_lock_close(lk);
}

static void test_same_thread_deadlock(void) {
  hl_lock_t *a, *b;
  ASSERT_EQ(hl_lock_open(&a, lockpath), 0);
  ASSERT_EQ(hl_lock_open(&b, lockpath), 0);
  ASSERT_EQ(hl_lock_acquire(a, 0), 0);
  double t0 = now();
  ASSERT_EQ(hl_lock_acquire(b, -1), -EDEADLK); /* at once, not a silent hang */
  ASSERT_EQ(hl_lock_acquire(a, -1), -EDEADLK);
  ASSERT(now() - t0 < 1.0);
  ASSERT_EQ(hl_lock_release(a), 0);
  ASSERT_EQ(hl_lock_acquire(b, 0), 0); /* b is usable afterwards */
  hl_lock_close(b);
  hl_lock_close(a);
}

struct thread_arg {
  double got_at;
  int rc;
};

static void *thread_acquire(void *p) {
  struct thread_arg *arg = p;
  hl_lock_t *lk;
  arg->rc = hl_lock_open(&lk, lockpath);
  if (arg->rc == 0) {
    arg->rc = hl_lock_acquire(lk, 10);
    arg->got_at = now();
    hl_lock_close(lk);
  }
  return NULL;
}

static void test_other_thread_waits(void) {
  hl_lock_t *a;
  ASSERT_EQ(hl_lock_open(&a, lockpath), 0);
  ASSERT_EQ(hl_lock_acquire(a, 0), 0);
  struct thread_arg arg = {0, -1};
  pthread_t t;
  ASSERT_EQ(pthread_create(&t, NULL, thread_acquire, &arg), 0);
  usleep(200000);
  double released_at = now();
  ASSERT_EQ(hl_lock_release(a), 0);
  ASSERT_EQ(pthread_join(t, NULL), 0);
  ASSERT_EQ(arg.rc, 0); /* it waited, then got it: not -EDEADLK */
  ASSERT(arg.got_at >= released_at);
  hl_lock_close(a);
}

static void test_fork_child_cannot_release(void) {
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, lockpath), 0);
  ASSERT_EQ(hl_lock_acquire(lk, 0), 0);
  pid_t pid = fork();
  if (pid == 0) {
    int rc = hl_lock_release(lk);
    int rc2 = hl_lock_acquire(lk, 0);
    hl_lock_close(lk); /* must not unlock the parent's lock */
    _exit(rc == HL_EFORKED && rc2 == HL_EFORKED ? 0 : 1);
  }
  int st = reap(pid);
  ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  /* Still held by us: another process cannot take it. */
  pid = fork();
  if (pid == 0) {
    hl_lock_t *o;
    if (hl_lock_open(&o, lockpath) < 0)
      _exit(2);
    _exit(hl_lock_acquire(o, 0) == HL_EBUSY ? 0 : 1);
  }
  st = reap(pid);
  ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  hl_lock_close(lk);
}

static void test_killed_holder(void) {
  pid_t holder = spawn_holder(lockpath, "doomed", 60);
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, lockpath), 0);
  ASSERT_EQ(hl_lock_acquire(lk, 0), HL_EBUSY);
  double t0 = now();
  kill(holder, SIGKILL);
  ASSERT_EQ(hl_lock_acquire(lk, 10), 0);
  ASSERT(now() - t0 < 2.0); /* promptly, no stale lock */
  reap(holder);
  hl_lock_close(lk);
}

#define NPROC 6
#define NITER 40

static void test_mutual_exclusion(void) {
  size_t n = NPROC * NITER;
  struct interval *iv = shared(n * sizeof(*iv));
  pid_t kids[NPROC];
  for (int k = 0; k < NPROC; k++) {
    kids[k] = fork();
    if (kids[k] == 0) {
      hl_lock_t *lk;
      if (hl_lock_open(&lk, lockpath) < 0)
        _exit(1);
      for (int i = 0; i < NITER; i++) {
        /* half the processes wait in the kernel, half with a deadline */
        if (hl_lock_acquire(lk, k % 2 ? 30.0 : -1) < 0)
          _exit(2);
        struct interval *me = &iv[k * NITER + i];
        me->from = now();
        me->pid = getpid();
        for (volatile int spin = 0; spin < 20000; spin++) {
        }
        me->to = now();
        hl_lock_release(lk);
      }
      hl_lock_close(lk);
      _exit(0);
    }
  }
  for (int k = 0; k < NPROC; k++) {
    int st = reap(kids[k]);
    ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  /* Sort by start; any interval starting before the previous one ended is an
   * overlap. */
  for (size_t i = 1; i < n; i++)
    for (size_t j = i; j > 0 && iv[j].from < iv[j - 1].from; j--) {
      struct interval t = iv[j];
      iv[j] = iv[j - 1];
      iv[j - 1] = t;
    }
  int overlaps = 0;
  for (size_t i = 0; i < n; i++) {
    ASSERT(iv[i].pid != 0);
    if (i && iv[i].from < iv[i - 1].to)
      overlaps++;
  }
  ASSERT_EQ(overlaps, 0);
  munmap(iv, n * sizeof(*iv));
}

static void test_hostile_paths(void) {
  hl_lock_t *lk;
  char target[400], link[400], fifo[400], sub[400];
  snprintf(target, sizeof(target), "%s/victim", dir);
  snprintf(link, sizeof(link), "%s/link.lock", dir);
  snprintf(fifo, sizeof(fifo), "%s/fifo.lock", dir);
  snprintf(sub, sizeof(sub), "%s/dir.lock", dir);
  FILE *f = fopen(target, "w");
  ASSERT(f != NULL);
  fputs("precious data\n", f);
  fclose(f);
  ASSERT_EQ(symlink(target, link), 0);
  ASSERT_EQ(hl_lock_open(&lk, link), HL_ESYMLINK);
  ASSERT(lk == NULL);
  ASSERT_EQ(mkfifo(fifo, 0600), 0);
  double t0 = now();
  ASSERT_EQ(hl_lock_open(&lk, fifo), HL_ENOTREG); /* refused, did not hang */
  ASSERT(now() - t0 < 1.0);
  ASSERT_EQ(mkdir(sub, 0700), 0);
  ASSERT_EQ(hl_lock_open(&lk, sub), HL_ENOTREG);
  /* a dangling symlink is refused too, and nothing is created at its target */
  char dangling[400], nowhere[400];
  snprintf(dangling, sizeof(dangling), "%s/dangling.lock", dir);
  snprintf(nowhere, sizeof(nowhere), "%s/nowhere", dir);
  ASSERT_EQ(symlink(nowhere, dangling), 0);
  ASSERT_EQ(hl_lock_open(&lk, dangling), HL_ESYMLINK);
  ASSERT(access(nowhere, F_OK) != 0);
  /* status and records refuse them as well */
  hl_status_t st;
  hl_record_t rec;
  ASSERT_EQ(hl_status(link, &st), HL_ESYMLINK);
  ASSERT_EQ(hl_record_read(link, &rec), HL_ESYMLINK);
  ASSERT_EQ(hl_record_read(fifo, &rec), HL_ENOTREG);
  /* the symlink's target is untouched */
  char buf[64] = {0};
  f = fopen(target, "r");
  ASSERT(f != NULL);
  ASSERT(fgets(buf, sizeof(buf), f) != NULL);
  fclose(f);
  ASSERT_STR(buf, "precious data\n");
}

static void test_creates_parent_dirs(void) {
  char deep[400];
  snprintf(deep, sizeof(deep), "%s/a/b/c/.llm_load.lock", dir);
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, deep), 0);
  ASSERT_EQ(hl_lock_acquire(lk, 0), 0);
  struct stat st;
  ASSERT_EQ(stat(deep, &st), 0);
  ASSERT(S_ISREG(st.st_mode));
  hl_lock_close(lk);
}

/* Fake syscalls for fault injection. */
static int fake_open_rofs(const char *path, int flags, ...) {
  if ((flags & O_ACCMODE) != O_RDONLY) {
    errno = EROFS;
    return -1;
  }
  return open(path, flags);
}
static int fake_flock_enolck(int fd, int op) {
  (void)fd;
  (void)op;
  errno = ENOLCK;
  return -1;
}
static ssize_t fake_pwrite_enospc(int fd, const void *b, size_t n, off_t off) {
  /* write a little, then fail: the record must not be left half written */
  if (n > 8 && pwrite(fd, b, 8, off) == 8) {
    errno = ENOSPC;
    return -1;
  }
  errno = ENOSPC;
  return -1;
}

static void test_readonly_fallback(void) {
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, lockpath), 0); /* creates it */
  hl_lock_close(lk);
  hl__os_set_syscall("open", (void (*)(void))fake_open_rofs);
  ASSERT_EQ(hl_lock_open(&lk, lockpath), 0);
  ASSERT_EQ(hl_lock_acquire(lk, 0), 0);
  /* Held through the read-only descriptor: others are excluded. */
  pid_t pid = fork();
  if (pid == 0) {
    hl__os_set_syscall("open", NULL);
    hl_lock_t *o;
    if (hl_lock_open(&o, lockpath) < 0)
      _exit(2);
    _exit(hl_lock_acquire(o, 0) == HL_EBUSY ? 0 : 1);
  }
  int st = reap(pid);
  ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  hl_record_t rec;
  ASSERT_EQ(hl_record_read(lockpath, &rec), HL_EFORMAT); /* no record written */
  hl_lock_close(lk);
  /* A missing file on a read-only file system is an error that names it. */
  char other[400];
  snprintf(other, sizeof(other), "%s/models/missing.lock", dir);
  ASSERT_EQ(hl_lock_open(&lk, other), -EROFS);
  hl__os_set_syscall("open", NULL);
}

static void test_flock_failure_injected(void) {
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, lockpath), 0);
  ASSERT_EQ(hl__os_set_syscall("flock", (void (*)(void))fake_flock_enolck), 0);
  ASSERT_EQ(hl_lock_acquire(lk, 0), -ENOLCK);
  ASSERT_EQ(hl_lock_acquire(lk, 1), -ENOLCK); /* at once, not after a timeout */
  ASSERT_EQ(hl_lock_acquire(lk, -1), -ENOLCK);
  ASSERT_EQ(hl_lock_held(lk), 0);
  ASSERT_EQ(hl__os_set_syscall("flock", NULL), 0);
  ASSERT_EQ(hl_lock_acquire(lk, 0), 0); /* nothing was left half-taken */
  hl_lock_close(lk);
  ASSERT_EQ(hl__os_set_syscall("nosuch", NULL), -ENOENT);
}

static void test_write_failure_injected(void) {
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, lockpath), 0);
  hl_lock_set_label(lk, "a label long enough to need more than eight bytes");
  hl__os_set_syscall("pwrite", (void (*)(void))fake_pwrite_enospc);
  ASSERT_EQ(hl_lock_acquire(lk, 0), 0); /* disk full costs the record, not the lock */
  hl__os_set_syscall("pwrite", NULL);
  struct stat st;
  ASSERT_EQ(stat(lockpath, &st), 0);
  ASSERT_EQ(st.st_size, 0); /* no half record left */
  ASSERT_EQ(hl_lock_held(lk), 1);
  hl_lock_close(lk);
}

static void test_replaced_file(void) {
  /* A waiter is queued on the old inode; the holder's side replaces the file
   * (as an old unlink-on-release tool would) and releases.  The waiter must
   * notice it locked a file the path no longer names, and lock the new one. */
  pid_t holder = spawn_holder(lockpath, NULL, 0.5);
  int p[2];
  ASSERT(pipe(p) == 0);
  pid_t waiter = fork();
  if (waiter == 0) {
    close(p[0]);
    hl_lock_t *lk;
    if (hl_lock_open(&lk, lockpath) < 0 || hl_lock_acquire(lk, 10) < 0)
      _exit(1);
    struct stat a, b;
    fstat((int)hl_lock_fd(lk), &a);
    stat(lockpath, &b);
    char ok = (a.st_ino == b.st_ino) ? 'y' : 'n';
    if (write(p[1], &ok, 1) != 1)
      _exit(2);
    usleep(300000);
    hl_lock_close(lk);
    _exit(0);
  }
  close(p[1]);
  wait_waiters(lockpath, 1); /* the waiter is queued on the old inode */
  char tmp[400];
  snprintf(tmp, sizeof(tmp), "%s.new", lockpath);
  FILE *f = fopen(tmp, "w");
  ASSERT(f != NULL);
  fclose(f);
  ASSERT_EQ(rename(tmp, lockpath), 0);
  char ok = 0;
  ASSERT_EQ(read(p[0], &ok, 1), 1);
  ASSERT_EQ(ok, 'y');
  /* And while it holds the new file, we are excluded from it. */
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, lockpath), 0);
  ASSERT_EQ(hl_lock_acquire(lk, 0), HL_EBUSY);
  reap(waiter);
  reap(holder);
  hl_lock_close(lk);
}

static void test_status(void) {
  hl_status_t st;
  ASSERT_EQ(hl_status(lockpath, &st), 0); /* missing file: free, not created */
  ASSERT_EQ(st.held, 0);
  ASSERT(access(lockpath, F_OK) != 0);

  pid_t holder = spawn_holder(lockpath, "tests/test_x.py::test_y", 30);
  /* a waiter blocked in the kernel and one with a deadline */
  pid_t w1 = fork();
  if (w1 == 0) {
    hl_lock_t *lk;
    if (hl_lock_open(&lk, lockpath) < 0)
      _exit(1);
    _exit(hl_lock_acquire(lk, -1) == 0 ? 0 : 1);
  }
  pid_t w2 = fork();
  if (w2 == 0) {
    hl_lock_t *lk;
    if (hl_lock_open(&lk, lockpath) < 0)
      _exit(1);
    _exit(hl_lock_acquire(lk, 30) == 0 ? 0 : 1);
  }
  /* wait until both are seen waiting (bounded) */
  double end = now() + 5;
  do {
    ASSERT_EQ(hl_status(lockpath, &st), 0);
    if (st.nwaiters >= 2)
      break;
    usleep(20000);
  } while (now() < end);
  ASSERT_EQ(st.held, 1);
  ASSERT_STR(st.method, "proc-locks");
  ASSERT_EQ(st.holder_pid, holder);
  ASSERT_EQ(st.has_record, 1);
  ASSERT_STR(st.record.label, "tests/test_x.py::test_y");
  ASSERT(st.held_for >= 0 && st.held_for < 30);
  ASSERT_EQ(st.nwaiters, 2);
  int saw_b = 0, saw_w = 0;
  for (int i = 0; i < st.nwaiters; i++) {
    if (st.waiters[i].pid == w1 && st.waiters[i].how == 'b')
      saw_b = 1;
    if (st.waiters[i].pid == w2 && st.waiters[i].how == 'w')
      saw_w = 1;
  }
  ASSERT(saw_b && saw_w);
  char cmd[256];
  ASSERT_EQ(hl_proc_cmdline(holder, cmd, sizeof(cmd)), 0);
  ASSERT(strstr(cmd, "test_lock") != NULL);

  /* SIGKILL the holder: its record stays but is recognised as stale once
   * the waiters are gone too. */
  kill(holder, SIGKILL);
  reap(holder);
  reap(w1);
  reap(w2);
  ASSERT_EQ(hl_status(lockpath, &st), 0);
  ASSERT_EQ(st.held, 0);
  ASSERT_EQ(st.has_record, 0);
}

static void write_file(const char *path, const char *data, size_t n) {
  FILE *f = fopen(path, "wb");
  ASSERT(f != NULL);
  ASSERT_EQ(fwrite(data, 1, n, f), n);
  fclose(f);
}

static void test_record_garbage(void) {
  hl_record_t rec;
  char path[400];
  snprintf(path, sizeof(path), "%s/garbage.lock", dir);
  ASSERT_EQ(hl_record_read(path, &rec), -ENOENT);
  write_file(path, "", 0);
  ASSERT_EQ(hl_record_read(path, &rec), HL_EFORMAT);
  write_file(path, "12345\n", 6); /* a pid file from another tool */
  ASSERT_EQ(hl_record_read(path, &rec), HL_EFORMAT);
  write_file(path, "heavylock-holder 1\npid=abc\n", 27);
  ASSERT_EQ(hl_record_read(path, &rec), HL_EFORMAT);
  /* huge, no newlines: bounded read, no crash */
  size_t big = 1 << 20;
  char *junk = malloc(big);
  ASSERT(junk != NULL);
  memset(junk, 'A', big);
  memcpy(junk, "heavylock-holder 1\npid=77\nlabel=", 32);
  write_file(path, junk, big);
  free(junk);
  ASSERT_EQ(hl_record_read(path, &rec), 0);
  ASSERT_EQ(rec.pid, 77);
  ASSERT_EQ(strlen(rec.label), HL_LABEL_MAX - 1);
  /* a foreign holder's stale content is reported, not trusted */
  hl_status_t st;
  ASSERT_EQ(hl_status(path, &st), 0);
  ASSERT_EQ(st.held, 0);
  ASSERT_EQ(st.stale_record, 1);
}

static void test_path_policy(void) {
  hl_path_t p;
  char model[400], cwd[300];
  ASSERT(getcwd(cwd, sizeof(cwd)) != NULL);
  unsetenv("HEAVYLOCK_PATH");
  unsetenv("LOCAL_MODEL_PATH");
  ASSERT_EQ(hl_path_resolve(dir, &p), 0);
  ASSERT_STR(p.source, "default");
  ASSERT_STR(p.path, lockpath);

  snprintf(model, sizeof(model), "%s/store", dir);
  mkdir(model, 0755);
  snprintf(model, sizeof(model), "%s/store/phi.gguf", dir);
  write_file(model, "GGUF", 4);
  setenv("LOCAL_MODEL_PATH", model, 1);
  ASSERT_EQ(hl_path_resolve(dir, &p), 0);
  ASSERT_STR(p.source, "LOCAL_MODEL_PATH");
  char want[500];
  snprintf(want, sizeof(want), "%s/store/.llm_load.lock", dir);
  ASSERT_STR(p.path, want);

  /* relative model path resolves against the current directory */
  ASSERT_EQ(chdir(dir), 0);
  setenv("LOCAL_MODEL_PATH", "./store/phi.gguf", 1);
  ASSERT_EQ(hl_path_resolve("/elsewhere", &p), 0);
  ASSERT(strstr(p.path, "/store/.llm_load.lock") != NULL);
  ASSERT(p.path[0] == '/');
  ASSERT_EQ(chdir(cwd), 0);

  setenv("LOCAL_MODEL_PATH", "", 1);
  ASSERT_EQ(hl_path_resolve(dir, &p), HL_EENV);
  ASSERT(strstr(p.why, "LOCAL_MODEL_PATH is set but empty") != NULL);
  /* a model not downloaded yet: the lock goes where it will be (the seed) */
  setenv("LOCAL_MODEL_PATH", "/no/such/model.gguf", 1);
  ASSERT_EQ(hl_path_resolve(dir, &p), 0);
  ASSERT_STR(p.path, "/no/such/.llm_load.lock");
  ASSERT(strstr(p.why, "not there yet") != NULL);
  setenv("LOCAL_MODEL_PATH", dir, 1);
  ASSERT_EQ(hl_path_resolve(dir, &p), HL_EENV);
  ASSERT(strstr(p.why, "is a directory") != NULL);

  /* HEAVYLOCK_PATH wins over everything, even a bad LOCAL_MODEL_PATH */
  setenv("HEAVYLOCK_PATH", "/tmp/custom.lock", 1);
  ASSERT_EQ(hl_path_resolve(dir, &p), 0);
  ASSERT_STR(p.source, "HEAVYLOCK_PATH");
  ASSERT_STR(p.path, "/tmp/custom.lock");
  setenv("HEAVYLOCK_PATH", "", 1);
  ASSERT_EQ(hl_path_resolve(dir, &p), HL_EENV);
  ASSERT(strstr(p.why, "HEAVYLOCK_PATH is set but empty") != NULL);
  setenv("HEAVYLOCK_PATH", dir, 1);
  ASSERT_EQ(hl_path_resolve(dir, &p), HL_EENV);
  ASSERT(strstr(p.why, "is a directory") != NULL);
  unsetenv("HEAVYLOCK_PATH");
  unsetenv("LOCAL_MODEL_PATH");
}

/* Build a small GGUF v3 file in memory. */
static size_t put(char *b, size_t o, const void *p, size_t n) {
  memcpy(b + o, p, n);
  return o + n;
}
static size_t put_str(char *b, size_t o, const char *s) {
  uint64_t n = strlen(s);
  o = put(b, o, &n, 8);
  return put(b, o, s, n);
}
static size_t put_u32(char *b, size_t o, uint32_t v) { return put(b, o, &v, 4); }
static size_t put_u64(char *b, size_t o, uint64_t v) { return put(b, o, &v, 8); }

static void test_gguf(void) {
  char b[4096];
  memset(b, 0, sizeof(b));
  size_t o = put(b, 0, "GGUF", 4);
  o = put_u32(b, o, 3);
  o = put_u64(b, o, 1); /* tensors */
  o = put_u64(b, o, 4); /* kv */
  o = put_str(b, o, "general.architecture");
  o = put_u32(b, o, 8);
  o = put_str(b, o, "llama");
  o = put_str(b, o, "general.name");
  o = put_u32(b, o, 8);
  o = put_str(b, o, "Tiny Test");
  o = put_str(b, o, "tokenizer.ggml.tokens"); /* array of strings, skipped */
  o = put_u32(b, o, 9);
  o = put_u32(b, o, 8);
  o = put_u64(b, o, 2);
  o = put_str(b, o, "a");
  o = put_str(b, o, "bc");
  o = put_str(b, o, "llama.context_length");
  o = put_u32(b, o, 4);
  o = put_u32(b, o, 2048);
  o = put_str(b, o, "tok_embd"); /* tensor info */
  o = put_u32(b, o, 2);
  o = put_u64(b, o, 4);
  o = put_u64(b, o, 8);
  o = put_u32(b, o, 0);
  o = put_u64(b, o, 0);
  size_t data = (o + 31) / 32 * 32;
  size_t total = data + 128;
  char path[400];
  snprintf(path, sizeof(path), "%s/tiny.gguf", dir);
  write_file(path, b, total);
  hl_gguf_t g;
  ASSERT_EQ(hl_gguf_read(path, &g), 0);
  ASSERT_EQ(g.version, 3);
  ASSERT_EQ(g.n_tensors, 1);
  ASSERT_EQ(g.n_kv, 4);
  ASSERT_STR(g.architecture, "llama");
  ASSERT_STR(g.name, "Tiny Test");
  ASSERT_EQ(g.context_length, 2048);
  ASSERT_EQ(g.file_size, total);
  ASSERT_EQ(g.tensor_bytes, 128);
  /* truncated inside the metadata, wrong magic, absurd counts */
  write_file(path, b, 60);
  ASSERT_EQ(hl_gguf_read(path, &g), HL_EFORMAT);
  write_file(path, "GGML....", 8);
  ASSERT_EQ(hl_gguf_read(path, &g), HL_EFORMAT);
  memset(b + 8, 0xff, 8); /* n_tensors = 2^64-1 */
  write_file(path, b, total);
  ASSERT_EQ(hl_gguf_read(path, &g), HL_EFORMAT);
  ASSERT_EQ(hl_gguf_read("/no/such.gguf", &g), -ENOENT);
}

/* A first key longer than the reader takes (1 MiB + 1, 2^63, 2^64 - 1):
 * refused, and the key buffer is never compared before anything was read
 * into it (valgrind: make test-gguf-valgrind; the fuzz corpus has these). */
static void test_gguf_key_lengths(void) {
  static const uint64_t lengths[] = {(1ull << 20) + 1, 1ull << 63, UINT64_MAX};
  char path[400];
  snprintf(path, sizeof(path), "%s/keylen.gguf", dir);
  for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
    char b[64];
    memset(b, 0, sizeof(b));
    size_t o = put(b, 0, "GGUF", 4);
    o = put_u32(b, o, 3);
    o = put_u64(b, o, 0); /* tensors */
    o = put_u64(b, o, 1); /* kv */
    o = put_u64(b, o, lengths[i]);
    o = put_u32(b, o, 8);
    write_file(path, b, o + 8);
    hl_gguf_t g;
    ASSERT_EQ(hl_gguf_read(path, &g), HL_EFORMAT);
  }
}

static void test_memory(void) {
  uint64_t avail = 0, rss = 0, rss2 = 0;
  ASSERT_EQ(hl_mem_available(&avail), 0);
  ASSERT(avail > 16u << 20);
  ASSERT_EQ(hl_mem_tree_rss(getpid(), &rss), 0);
  ASSERT(rss > 0);
  /* a child that touches 64 MiB shows up in the tree */
  int p[2];
  ASSERT(pipe(p) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    size_t n = 64u << 20;
    volatile char *m = malloc(n);
    for (size_t i = 0; m && i < n; i += 4096)
      m[i] = 1; /* touch every page: resident, and not optimised away */
    if (write(p[1], "x", 1) != 1)
      _exit(1);
    pause();
    _exit(0);
  }
  char c;
  ASSERT_EQ(read(p[0], &c, 1), 1);
  int rc = hl_mem_tree_rss(getpid(), &rss2);
  kill(pid, SIGKILL);
  reap(pid);
  ASSERT_EQ(rc, 0);
  ASSERT(rss2 >= rss + (60u << 20));
  ASSERT_EQ(hl_mem_tree_rss(999999999, &rss), -ESRCH);
}

static void on_alarm(int sig) { (void)sig; }

static void test_eintr(void) {
  pid_t holder = spawn_holder(lockpath, NULL, 30);
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_alarm; /* no SA_RESTART, as Python installs its handlers */
  sigaction(SIGALRM, &sa, NULL);
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, lockpath), 0);
  alarm(1);
  ASSERT_EQ(hl_lock_acquire(lk, -1), -EINTR);
  alarm(1);
  ASSERT_EQ(hl_lock_acquire(lk, 20), -EINTR);
  ASSERT_EQ(hl_lock_held(lk), 0);
  kill(holder, SIGKILL);
  reap(holder);
  ASSERT_EQ(hl_lock_acquire(lk, 5), 0);
  hl_lock_close(lk);
}


/* ---- hardening (issue 8) ---- */

static void read_all(const char *path, char **data, size_t *n) {
  FILE *f = fopen(path, "rb");
  ASSERT(f != NULL);
  fseek(f, 0, SEEK_END);
  *n = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  *data = malloc(*n + 1);
  ASSERT(*data != NULL);
  ASSERT_EQ(fread(*data, 1, *n, f), *n);
  fclose(f);
}

/* A file with content at the lock path (a model named by mistake) is locked
 * but never truncated or written, through a whole acquire/label/release. */
static void test_other_content(void) {
  char path[400];
  snprintf(path, sizeof(path), "%s/model.gguf", dir);
  size_t n = 1 << 20;
  char *orig = malloc(n);
  ASSERT(orig != NULL);
  for (size_t i = 0; i < n; i++)
    orig[i] = (char)(i * 7 + 3);
  write_file(path, orig, n);
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, path), 0);
  ASSERT_EQ(hl_lock_acquire(lk, 0), 0);
  ASSERT(hl_lock_flags(lk) & HL_FLAG_OTHER_CONTENT);
  ASSERT_EQ(hl_lock_set_label(lk, "relabel"), 0);
  hl_status_t st;
  ASSERT_EQ(hl_status(path, &st), 0);
  ASSERT_EQ(st.held, 1);
  ASSERT_EQ(st.other_content, 1);
  ASSERT_EQ(hl_lock_release(lk), 0);
  ASSERT_EQ(hl_lock_acquire(lk, 1.0), 0);
  hl_lock_close(lk);
  char *now_data;
  size_t now_n;
  read_all(path, &now_data, &now_n);
  ASSERT_EQ(now_n, n);
  ASSERT(memcmp(now_data, orig, n) == 0);
  free(now_data);
  /* an empty file and a stale record of ours are still written */
  write_file(path, "heavylock-holder 1\npid=1\n", 25);
  ASSERT_EQ(hl_lock_open(&lk, path), 0);
  ASSERT_EQ(hl_lock_acquire(lk, 0), 0);
  ASSERT_EQ(hl_lock_flags(lk), 0);
  hl_record_t rec;
  ASSERT_EQ(hl_record_read(path, &rec), 0);
  ASSERT_EQ(rec.pid, getpid());
  hl_lock_close(lk);
  free(orig);
}

struct ivl {
  double from, to;
  int flags, rc;
};

/* The lock file is deleted (or replaced) while held: a newcomer must not get
 * the lock until the old holder lets go; status names the old holder; the
 * holder learns that its file was lost.  Judged from recorded intervals. */
static void deleted_or_replaced(int replace) {
  struct ivl *iv = shared(2 * sizeof(*iv));
  int go[2], ready[2];
  ASSERT(pipe(go) == 0 && pipe(ready) == 0);
  pid_t holder = fork();
  if (holder == 0) {
    hl_lock_t *lk;
    char c;
    close(go[1]); /* so that the parent's death (a failed assertion) ends us */
    close(ready[0]);
    if (hl_lock_open(&lk, lockpath) < 0 || hl_lock_acquire(lk, -1) < 0)
      _exit(1);
    iv[0].from = now();
    if (write(ready[1], "x", 1) != 1 || read(go[0], &c, 1) != 1)
      _exit(2);
    usleep(300000); /* still in the critical section while the newcomer tries */
    iv[0].to = now();
    iv[0].rc = hl_lock_release(lk);
    iv[0].flags = hl_lock_flags(lk);
    hl_lock_close(lk);
    _exit(0);
  }
  char c;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  if (replace) {
    char tmp[400];
    snprintf(tmp, sizeof(tmp), "%s.new", lockpath);
    write_file(tmp, "", 0);
    ASSERT_EQ(rename(tmp, lockpath), 0);
  } else {
    ASSERT_EQ(unlink(lockpath), 0);
  }
  /* status still sees the holder, on the file that is gone */
  hl_status_t st;
  ASSERT_EQ(hl_status(lockpath, &st), 0);
  ASSERT_EQ(st.held, 1);
  ASSERT_EQ(st.holder_pid, holder);
  ASSERT_EQ(st.deleted_file, 1);
  /* a try-once newcomer is told it is busy */
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, lockpath), 0);
  ASSERT_EQ(hl_lock_acquire(lk, 0), HL_EBUSY);
  hl_lock_close(lk);
  /* a waiting newcomer gets it only after the holder released */
  pid_t newcomer = fork();
  if (newcomer == 0) {
    hl_lock_t *o;
    if (hl_lock_open(&o, lockpath) < 0)
      _exit(1);
    iv[1].rc = hl_lock_acquire(o, replace ? 20.0 : -1);
    iv[1].from = now();
    iv[1].to = now();
    hl_lock_close(o);
    _exit(0);
  }
  usleep(50000);
  ASSERT_EQ(write(go[1], "x", 1), 1);
  ASSERT_EQ(reap(holder), 0);
  ASSERT_EQ(reap(newcomer), 0);
  ASSERT_EQ(iv[1].rc, 0);
  ASSERT(iv[1].from >= iv[0].to); /* no overlap */
  ASSERT_EQ(iv[0].rc, 0);
  ASSERT(iv[0].flags & HL_FLAG_LOST); /* the holder was told */
  munmap(iv, 2 * sizeof(*iv));
}

/* The lock file at the path vouches for itself (lock.c, flock_vouched) so
 * that ordinary takers need not read /proc/locks.  An old lock file renamed
 * back over the path carries a record that names its own inode, name and
 * directory, yet a holder of the file it replaced still runs: the vouch must
 * not be trusted.  `while_held`: the old file was held while it was moved
 * away and back, and its holder releases after (its release must not write
 * a vouch: flock_release); else it was free (a taker must see that it was
 * renamed since its last write: flock_vouched). */
static void old_lock_file_renamed_back(int while_held) {
  char old[400];
  snprintf(old, sizeof(old), "%s.old", lockpath);
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, lockpath), 0);
  int go[2];
  ASSERT(pipe(go) == 0);
  pid_t first = 0;
  if (while_held) {
    int ready;
    first = test_fork_ready(&ready);
    if (first == 0) {
      hl_lock_t *f;
      char c;
      close(go[1]);
      if (hl_lock_open(&f, lockpath) < 0 || hl_lock_acquire(f, -1) < 0)
        _exit(11);
      test_say_ready(ready);
      if (read(go[0], &c, 1) != 1)
        _exit(12);
      _exit(hl_lock_release(f) == 0 ? 0 : 13);
    }
  } else {
    ASSERT_EQ(hl_lock_acquire(lk, 0), 0); /* a free lock file that vouches */
    ASSERT_EQ(hl_lock_release(lk), 0);
  }
  close(go[0]);
  ASSERT_EQ(rename(lockpath, old), 0);
  pid_t ghost = spawn_holder(lockpath, "new file", 60); /* takes a new file */
  ASSERT_EQ(rename(old, lockpath), 0); /* the new file is gone: its holder is a ghost */
  if (while_held) {
    ASSERT_EQ(write(go[1], "x", 1), 1);
    reap_ok(first);
  }
  close(go[1]);
  ASSERT_EQ(hl_lock_acquire(lk, 0), HL_EBUSY);
  kill(ghost, SIGKILL);
  reap(ghost);
  ASSERT_EQ(hl_lock_acquire(lk, 0), 0); /* and it is free once the ghost is gone */
  hl_lock_close(lk);
}

static void test_old_lock_file_renamed_back(void) { old_lock_file_renamed_back(0); }
static void test_held_lock_file_renamed_back(void) { old_lock_file_renamed_back(1); }

static void test_deleted_while_held(void) { deleted_or_replaced(0); }
static void test_replaced_while_held(void) { deleted_or_replaced(1); }

/* A holder that unlocks without closing (flock -u) sends no close event;
 * the timed waiter is woken by its blocker thread in flock(2) (lock.c,
 * flock_wait), not by the wait loop's re-check, which is stretched to a
 * minute here.  Fails if the blocker is gone (a wake after 60 s). */
static void test_unlock_without_close(void) {
  double *t = shared(2 * sizeof(double));
  int go[2], ready[2];
  ASSERT(pipe(go) == 0 && pipe(ready) == 0);
  pid_t holder = fork();
  if (holder == 0) {
    hl_lock_t *lk;
    char c;
    close(go[1]); /* so that the parent's death (a failed assertion) ends us */
    close(ready[0]);
    if (hl_lock_open(&lk, lockpath) < 0 || hl_lock_acquire(lk, -1) < 0)
      _exit(1);
    if (write(ready[1], "x", 1) != 1 || read(go[0], &c, 1) != 1)
      _exit(2);
    t[0] = now();
    flock((int)hl_lock_fd(lk), LOCK_UN); /* unlock, keep the file open */
    while (read(go[0], &c, 1) > 0) { /* until the parent closes or dies */
    }
    _exit(0);
  }
  char c;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  pid_t waiter = fork();
  if (waiter == 0) {
    hl_lock_t *lk;
    hl__lock_set_recheck_ms(60000);
    if (hl_lock_open(&lk, lockpath) < 0 || hl_lock_acquire(lk, 90) < 0)
      _exit(1);
    t[1] = now();
    hl_lock_close(lk);
    _exit(0);
  }
  wait_waiters(lockpath, 1); /* it watches the file */
  usleep(150000);            /* and is in its wait (either way it must wake) */
  ASSERT_EQ(write(go[1], "x", 1), 1);
  ASSERT_EQ(reap(waiter), 0);
  close(go[1]);
  reap(holder);
  ASSERT(t[1] >= t[0]);
  ASSERT(t[1] - t[0] < 5.0); /* generous: the blocker wakes within microseconds */
  munmap(t, 2 * sizeof(double));
}

static int fake_inotify_init1_enosys(int flags) {
  (void)flags;
  errno = ENOSYS;
  return -1;
}

static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Timeouts: NaN refused, infinity is forever, a timeout of 30 days (above
 * the 24.8 days where milliseconds overflow an int) still sleeps and wakes
 * on release, with a watch and without one (polling). */
static void test_huge_timeouts(void) {
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, lockpath), 0);
  ASSERT_EQ(hl_lock_acquire(lk, 0.0 / 0.0), -EINVAL);
  ASSERT_EQ(hl_lock_acquire(lk, 1.0 / 0.0), 0);
  ASSERT_EQ(hl_lock_release(lk), 0);
  ASSERT_EQ(hl_lock_acquire(lk, 1e300), 0);
  ASSERT_EQ(hl_lock_release(lk), 0);
  hl_lock_close(lk);
  for (int nowatch = 0; nowatch < 2; nowatch++) {
    double *t = shared(3 * sizeof(double));
    int go[2];
    ASSERT(pipe(go) == 0);
    pid_t holder = spawn_holder(lockpath, NULL, 1.0);
    pid_t waiter = fork();
    if (waiter == 0) {
      if (nowatch)
        hl__os_set_syscall("inotify_init1", (void (*)(void))fake_inotify_init1_enosys);
      hl_lock_t *o;
      if (hl_lock_open(&o, lockpath) < 0)
        _exit(1);
      double c0 = cpu_now();
      if (hl_lock_acquire(o, 30.0 * 86400) < 0)
        _exit(2);
      t[1] = now();
      t[2] = cpu_now() - c0;
      hl_lock_close(o);
      _exit(0);
    }
    ASSERT_EQ(reap(holder), 0);
    t[0] = now(); /* released by now */
    ASSERT_EQ(reap(waiter), 0);
    ASSERT(t[1] - t[0] < 3.0); /* woke on release */
    ASSERT(t[2] < 0.5);        /* slept: it did not spin a CPU for the second */
    munmap(t, 3 * sizeof(double));
  }
}

static int has_bad_byte(const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p < 0x20 || *p == 0x7f)
      return 1;
  return 0;
}

/* Valid UTF-8 (a strict decoder's view). */
static int valid_utf8(const char *str) {
  const unsigned char *s = (const unsigned char *)str;
  while (*s) {
    int n = *s < 0x80 ? 1 : (*s & 0xe0) == 0xc0 ? 2 : (*s & 0xf0) == 0xe0 ? 3
            : (*s & 0xf8) == 0xf0 ? 4 : 0;
    if (n == 0 || (n == 2 && *s < 0xc2))
      return 0;
    for (int i = 1; i < n; i++)
      if ((s[i] & 0xc0) != 0x80)
        return 0;
    s += n;
  }
  return 1;
}

/* Hostile records: control bytes, bytes that are not UTF-8, labels cut in
 * the middle of a character, and a record that names the live holder's pid
 * with start=0 (a forgery: it must not be trusted). */
static void test_hostile_records(void) {
  hl_record_t rec;
  char path[400], buf[2048];
  snprintf(path, sizeof(path), "%s/forged.lock", dir);
  int n = snprintf(buf, sizeof(buf),
                   "heavylock-holder 1\npid=%ld\nstart=0\nacquired=nan\nhost=h\x1b]0;pwn\x07\n"
                   "label=\x1b[2J\xff\xfe bad \xc2\x9b x\ncmd=rm -rf \xe2\x82\n",
                   (long)getpid());
  write_file(path, buf, (size_t)n);
  ASSERT_EQ(hl_record_read(path, &rec), 0);
  ASSERT(!has_bad_byte(rec.host) && !has_bad_byte(rec.label) && !has_bad_byte(rec.cmd));
  ASSERT(valid_utf8(rec.host) && valid_utf8(rec.label) && valid_utf8(rec.cmd));
  ASSERT(strstr(rec.label, "bad") != NULL);
  ASSERT(rec.acquired == 0);
  /* a 511-byte cut through 3-byte characters ends on a boundary */
  char label[2048] = "heavylock-holder 1\npid=77\nlabel=";
  size_t o = strlen(label);
  for (int i = 0; i < 400; i++)
    o += (size_t)snprintf(label + o, sizeof(label) - o, "\xe2\x82\xac"); /* euro signs */
  write_file(path, label, o);
  ASSERT_EQ(hl_record_read(path, &rec), 0);
  ASSERT(valid_utf8(rec.label));
  ASSERT_EQ(strlen(rec.label), 510); /* 170 whole characters */
  /* the holder description cuts the label too (at 150 bytes): whole characters */
  hl_status_t dst;
  memset(&dst, 0, sizeof(dst));
  dst.held = dst.has_record = 1;
  dst.holder_pid = 77;
  dst.record = rec;
  dst.held_for = -1;
  char dbuf[256];
  for (size_t cut = 20; cut <= sizeof(dbuf); cut += 7) {
    hl_holder_describe(&dst, dbuf, cut);
    ASSERT(valid_utf8(dbuf));
  }
  /* and through set_label */
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, lockpath), 0);
  ASSERT_EQ(hl_lock_set_label(lk, label + 32), 0);
  ASSERT_EQ(hl_lock_acquire(lk, 0), 0);
  ASSERT_EQ(hl_record_read(lockpath, &rec), 0);
  ASSERT(valid_utf8(rec.label));
  ASSERT(strlen(rec.label) >= 500);
  hl_lock_set_label(lk, "\x1b[31mred\xff");
  ASSERT_EQ(hl_record_read(lockpath, &rec), 0);
  ASSERT(!has_bad_byte(rec.label) && valid_utf8(rec.label));
  hl_lock_close(lk);
  /* forgery: a holder (pid known to the kernel) with a record that has its
   * pid but start=0, written behind its back */
  pid_t holder = spawn_holder(lockpath, "genuine", 30);
  n = snprintf(buf, sizeof(buf), "heavylock-holder 1\npid=%ld\nstart=0\nlabel=forged\n",
               (long)holder);
  int fd = open(lockpath, O_WRONLY | O_TRUNC);
  ASSERT(fd >= 0);
  ASSERT_EQ(write(fd, buf, (size_t)n), n);
  close(fd);
  hl_status_t st;
  ASSERT_EQ(hl_status(lockpath, &st), 0);
  ASSERT_EQ(st.held, 1);
  ASSERT_EQ(st.holder_pid, holder);
  ASSERT_EQ(st.has_record, 0); /* not trusted */
  char desc[256];
  hl_holder_describe(&st, desc, sizeof(desc));
  ASSERT(strstr(desc, "forged") == NULL);
  kill(holder, SIGKILL);
  reap(holder);
}

/* Paths: over HL_PATH_MAX refused whole (nothing created), a symlink in a
 * parent directory followed (the lock is the real file), a FIFO given to the
 * GGUF reader refused without hanging. */
static void test_path_kinds(void) {
  size_t n = HL_PATH_MAX + 100;
  char *longp = malloc(n + 1);
  ASSERT(longp != NULL);
  snprintf(longp, n + 1, "%s/", dir);
  for (size_t i = strlen(longp); i < n; i++)
    longp[i] = (i % 100 == 0) ? '/' : 'a';
  longp[n] = '\0';
  hl_lock_t *lk;
  ASSERT_EQ(hl_lock_open(&lk, longp), -ENAMETOOLONG);
  ASSERT(lk == NULL);
  char first[400];
  snprintf(first, sizeof(first), "%.*s", (int)(strchr(longp + strlen(dir) + 1, '/') - longp),
           longp);
  ASSERT(access(first, F_OK) != 0); /* no directory was created for it */
  free(longp);

  char real[400], link[400], via[420], direct[420];
  snprintf(real, sizeof(real), "%s/realdir", dir);
  snprintf(link, sizeof(link), "%s/linkdir", dir);
  ASSERT_EQ(mkdir(real, 0755), 0);
  ASSERT_EQ(symlink(real, link), 0);
  snprintf(via, sizeof(via), "%s/x.lock", link);
  snprintf(direct, sizeof(direct), "%s/x.lock", real);
  ASSERT_EQ(hl_lock_open(&lk, via), 0);
  ASSERT_EQ(hl_lock_acquire(lk, 0), 0);
  pid_t pid = fork();
  if (pid == 0) {
    hl_lock_t *o;
    if (hl_lock_open(&o, direct) < 0)
      _exit(2);
    _exit(hl_lock_acquire(o, 0) == HL_EBUSY ? 0 : 1);
  }
  ASSERT_EQ(reap(pid), 0);
  hl_status_t st;
  ASSERT_EQ(hl_status(direct, &st), 0);
  ASSERT_EQ(st.held, 1);
  hl_lock_close(lk);

  char fifo[400];
  snprintf(fifo, sizeof(fifo), "%s/model.gguf", dir);
  ASSERT_EQ(mkfifo(fifo, 0600), 0);
  hl_gguf_t g;
  double t0 = now();
  ASSERT_EQ(hl_gguf_read(fifo, &g), HL_ENOTREG);
  ASSERT(now() - t0 < 1.0);
}

/* A holder that took the lock and died after passing the descriptor to a
 * child (heavylock run whose parent was killed): status names the child. */
static void test_inherited_holder(void) {
  int p[2], life[2];
  ASSERT(pipe(p) == 0 && pipe(life) == 0);
  pid_t taker = fork();
  if (taker == 0) {
    hl_lock_t *lk;
    close(life[1]);
    if (hl_lock_open(&lk, lockpath) < 0 || hl_lock_acquire(lk, -1) < 0)
      _exit(1);
    pid_t child = fork();
    if (child == 0) {
      char c; /* holds the inherited descriptor until we close life[1] or die */
      while (read(life[0], &c, 1) > 0) {
      }
      _exit(0);
    }
    if (write(p[1], &child, sizeof(child)) != sizeof(child))
      _exit(2);
    _exit(0); /* dies without releasing: the child keeps the lock */
  }
  pid_t child;
  ASSERT_EQ(read(p[0], &child, sizeof(child)), sizeof(child));
  ASSERT_EQ(reap(taker), 0);
  hl_status_t st;
  ASSERT_EQ(hl_status(lockpath, &st), 0);
  ASSERT_EQ(st.held, 1);
  ASSERT_EQ(st.holder_pid, child);
  ASSERT_EQ(st.has_record, 0);
  ASSERT_EQ(st.stale_record, 1);
  close(life[1]); /* the grandchild (not ours to reap) exits */
  close(life[0]);
  double end = now() + 5;
  while (now() < end && hl_status(lockpath, &st) == 0 && st.held)
    usleep(10000);
  ASSERT_EQ(st.held, 0);
}

static const struct test_entry tests[] = {
#define T(n) {#n, test_##n}
    T(basic), T(record), T(busy_and_timeout), T(same_thread_deadlock), T(other_thread_waits),
    T(fork_child_cannot_release), T(killed_holder), T(mutual_exclusion), T(hostile_paths),
    T(creates_parent_dirs), T(readonly_fallback), T(flock_failure_injected),
    T(write_failure_injected), T(replaced_file), T(status), T(record_garbage), T(path_policy),
    T(gguf), T(gguf_key_lengths), T(memory), T(eintr), T(other_content), T(deleted_while_held),
    T(replaced_while_held), T(old_lock_file_renamed_back), T(held_lock_file_renamed_back),
    T(unlock_without_close), T(huge_timeouts), T(hostile_records),
    T(path_kinds), T(inherited_holder),
#undef T
};

int main(int argc, char **argv) {
  return test_main(argc, argv, tests, sizeof(tests) / sizeof(tests[0]), setup, cleanup);
}
