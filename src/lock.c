/*
 * lock.c - the lock: acquire, release, holder records and status.
 *
 * Platform-neutral; the system calls live behind os.h (os-unix.c,
 * os-win.c).  Read heavylock.h first: it is the contract.
 */
#include "admit.h"
#include "kind.h"
#include "os.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The handle: what every kind shares.  The kind's own state (descriptors,
 * watches, queue entries) is behind `state`. */
struct hl_lock_s {
  char *target;           /* as given to hl_lock_open                    */
  const hl__kind_t *kind;
  void *state;
  hl__ask_t ask;
  int held;
  long owner_pid;         /* the process that opened the handle          */
  uintptr_t thread;       /* the thread acquiring or holding             */
  int registered;         /* in the registry below                       */
  uint64_t id[2];         /* the kind's identity of what it locks        */
  hl_wait_cb cb;          /* "who is in the way" notices                 */
  void *cb_arg;
  double cb_first, cb_every;
  struct hl_lock_s *next; /* registry of handles busy in this process */
};

/* The flock kind's state: one descriptor on one inode. */
typedef struct flock_state_s {
  char *path;
  intptr_t fd;            /* open only while acquiring or held, else -1 */
  int readonly;           /* no holder record can be written            */
  int held;
  hl__fileid_t id;
  hl__watch_t *watch;     /* for timed waits; kept until close (see os.h) */
  int watching;           /* the watch is armed for this wait            */
  int poll_ms;            /* backoff when there is no watch              */
  int may_block;          /* the last try found it held, and it was ours to take */
  hl__blocker_t *blocker; /* a thread in flock(2) on fd while we wait     */
  int rearm;              /* the last wait timed out: point the watch anew */
  int other;              /* the file won holds someone else's content    */
  int flags;              /* HL_FLAG_* of the current or last hold       */
#ifdef HL_HAVE_SLOTS
  hl__queue_t *queue;     /* our ticket while waiting (first come first) */
  int queue_failed;       /* no table here (read-only dir): wait unqueued */
#endif
  hl_record_t self;       /* this process's identity, read once per pid   */
  hl__fileid_t dir;       /* the directory that holds the path (vouching) */
  int have_dir;
} flock_state_t;

/* Without a watch, poll with backoff from 1 ms up to this. */
#define POLL_MAX_MS 50
/* Longer timeouts are clamped to this (about 31 years): the arithmetic on
 * deadlines stays exact, and "forever" is spelled -1 or infinity. */
#define TIMEOUT_MAX 1e9
/* The first line of every holder record: a file that starts otherwise is
 * not ours to write. */
#define RECORD_MAGIC "heavylock-holder 1\n"
#define RECORD_MAGIC_LEN 19

const char *hl_version(void) { return HL_VERSION_STRING; }

const char *hl_strerror(int err) {
  switch (err) {
  case 0: return "success";
  case HL_EBUSY: return "lock is held by another process";
  case HL_ETIMEDOUT: return "timed out waiting for the lock";
  case HL_ENOTREG: return "lock path is not a regular file";
  case HL_ESYMLINK: return "lock path is a symbolic link (refused)";
  case HL_EENV: return "bad environment value";
  case HL_EFORKED: return "lock handle belongs to the parent process";
  case HL_ENOTHELD: return "lock is not held by this handle";
  case HL_EFORMAT: return "file is not in the expected format";
  case HL_ELOST:
    return "the lock was lost while held (its file was deleted or replaced, or the "
           "connection to the lock server broke)";
  case HL_ESELF:
    return "held by this process through another descriptor, or by its parent: "
           "waiting would never end";
  case -EDEADLK: return "this thread already holds or waits for this lock";
  case HL_EFULL: return "slot table full (1024 holders)"; /* HL_SLOTS_TABLE_MAX */
  case HL_ENOBUDGET:
    return "memory admission on a remote lock needs a budget (--budget SIZE)";
  }
  if (err < 0 && err > -4096)
    return strerror(-err);
  return "unknown error";
}

/* ---- the registry: which handles of this process are busy on which lock --
 * flock(2) locks belong to open file descriptions, so two handles on one
 * path in one process exclude each other.  From different threads that is
 * right (the second waits for the first); from the same thread the wait
 * could never end, so it is reported as -EDEADLK at once (filelock #315). */
static hl_lock_t *registry;

static int same_id(const uint64_t a[2], const uint64_t b[2]) {
  return a[0] == b[0] && a[1] == b[1];
}

/* Enter `lk` (its id is set).  With `busy`, refuse when another handle of
 * this thread is busy on the same lock: waiting for ourselves never ends. */
static int registry_enter(hl_lock_t *lk, int busy) {
  int rc = 0;
  hl__os_registry_lock();
  if (busy) {
    for (hl_lock_t *o = registry; o; o = o->next) {
      if (o != lk && o->owner_pid == lk->owner_pid && o->thread == lk->thread &&
          same_id(o->id, lk->id)) {
        rc = -EDEADLK;
        break;
      }
    }
  }
  if (rc == 0 && !lk->registered) {
    lk->next = registry;
    registry = lk;
    lk->registered = 1;
  }
  hl__os_registry_unlock();
  return rc;
}

static void registry_leave(hl_lock_t *lk) {
  hl__os_registry_lock();
  for (hl_lock_t **pp = &registry; *pp; pp = &(*pp)->next) {
    if (*pp == lk) {
      *pp = lk->next;
      break;
    }
  }
  lk->next = NULL;
  lk->registered = 0;
  hl__os_registry_unlock();
}

/* Handles of this process between their first try and their registration:
 * the kernel may already name this process as the holder while the registry
 * does not know it yet. */
static int inflight;

static void inflight_add(int d) {
  hl__os_registry_lock();
  inflight += d;
  hl__os_registry_unlock();
}

/* Could the kernel's "held by this process" be another handle of ours (one
 * of another thread, holding, waiting, or about to register)?  Such a holder
 * releases in time, so waiting for it is no deadlock. */
static int registry_busy(const hl_lock_t *lk) {
  int found = 0;
  hl__os_registry_lock();
  found = inflight > 0;
  for (hl_lock_t *o = registry; o && !found; o = o->next)
    if (o != lk && o->owner_pid == lk->owner_pid && same_id(o->id, lk->id))
      found = 1;
  hl__os_registry_unlock();
  return found;
}

/* ---- the handle ---- */

static int open_state(hl_lock_t *lk) {
  const hl__kind_t *k = hl__kind_pick(lk->target, &lk->ask);
  if (k == NULL)
    return hl__kind_none(lk->target);
  if (k->version < 1 || k->version > HL__KIND_VERSION)
    return -ENOSYS;
  void *state = NULL;
  int rc = k->open(lk->target, &state);
  if (rc < 0)
    return rc;
  if (lk->state)
    lk->kind->close(lk->state, 1);
  lk->kind = k;
  lk->state = state;
  return 0;
}

int hl_lock_open(hl_lock_t **lockp, const char *target) {
  *lockp = NULL;
  if (target == NULL || target[0] == '\0')
    return -EINVAL;
  if (strlen(target) >= HL_PATH_MAX)
    return -ENAMETOOLONG; /* never cut: a cut path names another file */
  hl_lock_t *lk = calloc(1, sizeof(*lk));
  if (lk == NULL)
    return -ENOMEM;
  lk->target = strdup(target);
  if (lk->target == NULL) {
    free(lk);
    return -ENOMEM;
  }
  lk->ask.slots = 1;
  lk->owner_pid = hl__os_getpid();
  /* The kind opens now so that a bad target is reported here. */
  int rc = open_state(lk);
  if (rc < 0) {
    free(lk->target);
    free(lk);
    return rc;
  }
  *lockp = lk;
  return 0;
}

/* Re-pick the kind after the ask changed (slots, weight, budget). */
static int repick(hl_lock_t *lk) {
  if (lk->held)
    return -EBUSY;
  if (hl__kind_pick(lk->target, &lk->ask) == lk->kind)
    return 0;
  return open_state(lk);
}

int hl_lock_set_slots(hl_lock_t *lk, int n) {
  if (n < 0)
    return -EINVAL;
  if (lk->held)
    return -EBUSY;
  int old = lk->ask.slots;
  lk->ask.slots = n;
  int rc = repick(lk);
  if (rc < 0)
    lk->ask.slots = old;
  return rc;
}

int hl_lock_set_weight(hl_lock_t *lk, uint64_t bytes, const char *source) {
  if (lk->held)
    return -EBUSY;
  lk->ask.weight = bytes;
  snprintf(lk->ask.weight_source, sizeof(lk->ask.weight_source), "%s", source ? source : "");
  return 0;
}

int hl_lock_set_budget(hl_lock_t *lk, uint64_t bytes) {
  if (lk->held)
    return -EBUSY;
  lk->ask.budget = bytes;
  return 0;
}

int hl_lock_set_wait_callback(hl_lock_t *lk, hl_wait_cb cb, void *arg, double first_after,
                              double every) {
  if (cb && (isnan(first_after) || isnan(every)))
    return -EINVAL;
  lk->cb = cb;
  lk->cb_arg = arg;
  lk->cb_first = first_after > 0 ? first_after : 0;
  lk->cb_every = every;
  return 0;
}

const char *hl_lock_kind(const hl_lock_t *lk) { return lk->kind->name; }

/* ---- the one wait loop ---- */

/* While a wait is under way and nothing woke us, look again this often: a
 * holder that unlocks without closing (flock -u) sends no event, and memory
 * admission depends on numbers that change without events. */
#define RECHECK_MS 100
static int recheck_ms = RECHECK_MS;

void hl__lock_set_recheck_ms(int ms) { recheck_ms = ms > 0 ? ms : RECHECK_MS; }

/*
 * Is `pid` one of our ancestors, with every process from our parent up to it
 * blocked waiting for a child (wait4/waitid)?  Then it waits for us while we
 * would wait for it: `flock L heavylock run --lock L`, or a test that holds
 * the lock and runs a command that takes it.  A parent that holds the lock
 * and is busy with something else (it may still release) is waited for.
 */
/* 1: yes; 2: an ancestor, not (yet) waiting for us; 0: not an ancestor;
 * -EINTR: a signal arrived (pass it out: the host's handler must run). */
static int ancestor_waits_for_us(long pid) {
  long p = hl__os_parent_pid(hl__os_getpid());
  int waiting = 1;
  for (int depth = 0; p > 1 && depth < 64; depth++) {
    if (waiting) {
      int w = hl__os_in_child_wait(p, 1);
      if (w < 0)
        return w;
      waiting = w;
    }
    if (p == pid)
      return waiting ? 1 : 2;
    p = hl__os_parent_pid(p);
  }
  return 0;
}

/*
 * The same question asked of each process's own descriptors (the kind's
 * held_by), never of the kernel's whole lock table: that read costs
 * milliseconds and this check runs on every contended acquisition.  Walk up
 * from our parent while each process sits in wait() (one look, no sleep);
 * only an ancestor that holds the lock gets the confirmed look.  -ENOSYS:
 * a process on the way cannot be looked at (another user's): ask status().
 */
static int held_by_self_fast(hl_lock_t *lk) {
  const hl__kind_t *k = lk->kind;
  long me = hl__os_getpid();
  int busy = registry_busy(lk);
  int r = k->held_by(lk->state, me);
  if (r < 0)
    return -ENOSYS;
  if (r == 1) /* see held_by_self for the registry asked twice */
    return !busy && !registry_busy(lk);
  long p = hl__os_parent_pid(me);
  for (int depth = 0; p > 1 && depth < 64; depth++) {
    r = k->held_by(lk->state, p);
    if (r == 1)
      return ancestor_waits_for_us(p);
    int w = hl__os_in_child_wait(p, 0);
    if (w <= 0)
      return w; /* it does not wait for us: nobody above it can deadlock us */
    if (r < 0)
      return -ENOSYS;
    p = hl__os_parent_pid(p);
  }
  return 0;
}

/*
 * A holder that is this process through a descriptor that is none of our
 * handles (a conftest's filelock on the same file), or an ancestor waiting
 * for us (see above): waiting would never end.  1 so, 2 the holder is an
 * ancestor that does not wait for us (yet), 0 no, -EINTR.
 */
static int held_by_self(hl_lock_t *lk) {
  if (lk->kind->held_by) {
    int fast = held_by_self_fast(lk);
    if (fast != -ENOSYS)
      return fast;
  }
  hl_status_t *st = malloc(sizeof(*st));
  if (st == NULL)
    return 0;
  memset(st, 0, sizeof(*st));
  st->held_for = -1;
  int self = 0;
  /* Asked before and after the kernel's answer: a handle of another thread
   * that takes or lets go of the lock in between must not look like a
   * descriptor that is none of ours. */
  int busy = registry_busy(lk);
  if (lk->kind->status(lk->target, st, HL__STATUS_QUICK) == 0 && st->held && st->holder_pid > 0) {
    if (st->holder_pid == hl__os_getpid())
      self = !busy && !registry_busy(lk);
    else
      self = ancestor_waits_for_us(st->holder_pid);
  }
  free(st);
  return self;
}

static int notify(hl_lock_t *lk, double waited) {
  hl_status_t *st = malloc(sizeof(*st));
  if (st == NULL)
    return 0;
  if (hl_status(lk->target, st) < 0) {
    memset(st, 0, sizeof(*st));
    st->held = 1;
    st->held_for = -1;
  }
  int rc = lk->cb(lk->cb_arg, st, waited);
  free(st);
  return rc;
}

static int wait_loop(hl_lock_t *lk, double start, double deadline) {
  const hl__kind_t *k = lk->kind;
  double next_cb = lk->cb ? start + lk->cb_first : INFINITY;
  /* The self-deadlock check again, backing off: a parent that forked us
   * may reach its waitpid() only after our first look. */
  double self_every = 0.05, next_self = start + self_every;
  for (;;) {
    double t = hl__os_monotonic();
    if (t >= next_self) {
      int self = held_by_self(lk);
      if (self < 0)
        return self;
      if (self == 1)
        return HL_ESELF;
      self_every = self_every < 1.0 ? self_every * 2 : 2.0;
      next_self = t + self_every;
    }
    if (t >= next_cb) {
      int rc = notify(lk, t - start);
      if (rc != 0)
        return rc;
      next_cb = lk->cb_every > 0 ? t + lk->cb_every : INFINITY;
      t = hl__os_monotonic();
    }
    if (t >= deadline)
      return HL_ETIMEDOUT;
    double until = t + recheck_ms / 1000.0;
    if (deadline < until)
      until = deadline;
    if (next_cb < until)
      until = next_cb;
    int ms = (int)((until - t) * 1000.0 + 0.999); /* bounded by recheck_ms */
    if (ms < 0)
      ms = 0;
    int rc = k->wait(lk->state, ms);
    if (rc < 0)
      return rc; /* -EINTR: the caller checks its signals */
    rc = k->try_acquire(lk->state, &lk->ask, 1);
    if (rc != HL_EBUSY)
      return rc;
  }
}

int hl_lock_acquire(hl_lock_t *lk, double timeout) {
  if (lk->owner_pid != hl__os_getpid())
    return HL_EFORKED;
  if (lk->held)
    return -EDEADLK;
  if (isnan(timeout))
    return -EINVAL;
  if (timeout > TIMEOUT_MAX && !isinf(timeout))
    timeout = TIMEOUT_MAX;
  const hl__kind_t *k = lk->kind;
  int forever = timeout < 0 || isinf(timeout);
  double start = hl__os_monotonic();
  double deadline = forever ? INFINITY : start + (timeout > 0 ? timeout : 0);
  lk->thread = hl__os_thread_self();
  lk->ask.deadline = deadline > 0 ? deadline : 1e-9; /* 0 means none under way */
  hl__detail_set("%s", ""); /* a stuck slot table says so again if it still is */

  /* No deadline and no notices: a kind that can block in the kernel does
   * (the flock kind: flock(2), so that /proc/locks shows the waiter). */
  int block = forever && lk->cb == NULL && k->acquire_blocking != NULL;
  inflight_add(1);
  int rc = k->try_acquire(lk->state, &lk->ask, timeout != 0 && !block);
  if (rc == 0 || rc == HL_EBUSY) {
    int idrc = k->identity(lk->state, lk->id);
    int reg = idrc < 0 ? idrc : registry_enter(lk, rc == HL_EBUSY);
    if (reg < 0) {
      if (rc == 0 && idrc < 0)
        k->release(lk->state);
      k->cancel(lk->state);
      inflight_add(-1);
      return reg;
    }
  }
  inflight_add(-1);
  if (rc == HL_EBUSY && timeout != 0) {
    int self = held_by_self(lk);
    if (self < 0) {
      rc = self;
    } else if (self == 1) {
      rc = HL_ESELF;
    } else if (block) {
      /* Held by a parent that may be about to wait for us (it forked us a
       * moment ago): wait a little while as a timed wait does (woken by
       * the release, the self-deadlock check repeated), then block in the
       * kernel, where no check can reach us. */
      if (self == 2) {
        rc = wait_loop(lk, start, start + 0.2);
        if (rc == HL_ETIMEDOUT) {
          k->cancel(lk->state); /* out of line: the kernel's queue is next */
          self = held_by_self(lk);
          rc = self < 0 ? self : self == 1 ? HL_ESELF : HL_EBUSY;
        }
      }
      if (rc == HL_EBUSY)
        rc = k->acquire_blocking(lk->state, &lk->ask);
    } else {
      rc = wait_loop(lk, start, deadline);
    }
  }
  lk->ask.deadline = 0;
  if (rc == 0) {
    lk->held = 1;
    return 0;
  }
  k->cancel(lk->state);
  if (lk->registered)
    registry_leave(lk);
  return rc;
}

int hl_lock_release(hl_lock_t *lk) {
  if (lk->owner_pid != hl__os_getpid())
    return HL_EFORKED;
  if (!lk->held)
    return HL_ENOTHELD;
  int rc = lk->kind->release(lk->state);
  lk->held = 0;
  registry_leave(lk);
  return rc;
}

void hl_lock_close(hl_lock_t *lk) {
  if (lk == NULL)
    return;
  int owner = lk->owner_pid == hl__os_getpid();
  if (owner && lk->held)
    (void)hl_lock_release(lk);
  if (lk->registered)
    registry_leave(lk);
  lk->kind->close(lk->state, owner);
  free(lk->target);
  free(lk);
}

int hl_lock_set_label(hl_lock_t *lk, const char *label) {
  /* Cut at a character boundary, never inside a UTF-8 sequence. */
  snprintf(lk->ask.label, sizeof(lk->ask.label), "%s", label ? label : "");
  hl__utf8_clean(lk->ask.label, ' ');
  if (lk->held && lk->owner_pid == hl__os_getpid())
    return lk->kind->relabel(lk->state, &lk->ask);
  return 0;
}

int hl_lock_flags(const hl_lock_t *lk) {
  return lk->kind->flags ? lk->kind->flags(lk->state) : 0;
}

int hl_lock_held(const hl_lock_t *lk) { return lk->held; }

int hl_lock_check(hl_lock_t *lk) {
  if (!lk->held)
    return HL_ENOTHELD;
  return lk->kind->check ? lk->kind->check(lk->state) : 0;
}

const char *hl_error_detail(void) { return hl__kind_detail(); }
const char *hl_lock_path(const hl_lock_t *lk) { return lk->target; }
intptr_t hl_lock_fd(const hl_lock_t *lk) { return lk->held ? lk->kind->fd(lk->state) : -1; }

int hl_lock_fds(const hl_lock_t *lk, intptr_t *fds, int max) {
  if (!lk->held || max <= 0)
    return 0;
  if (lk->kind->fds)
    return lk->kind->fds(lk->state, fds, max);
  fds[0] = lk->kind->fd(lk->state);
  return fds[0] >= 0 ? 1 : 0;
}

/* A text field that came from a file or a server: terminated inside its
 * buffer, valid UTF-8, no control bytes (the one sanitizer, utf8.c). */
#define CLEAN_FIELD(f) ((f)[sizeof(f) - 1] = '\0', hl__utf8_clean((f), '?'))

/* Everything in a status that a kind read from a table, a record or a
 * server, made safe before any caller (the CLI, Python, the plugin, wait
 * callbacks, hl_holder_describe) sees it: whoever could write the file or
 * the row chose those bytes. */
static void status_clean(hl_status_t *st) {
  CLEAN_FIELD(st->record.host);
  CLEAN_FIELD(st->record.boot_id);
  CLEAN_FIELD(st->record.label);
  CLEAN_FIELD(st->record.cmd);
  if (st->nholders < 0 || st->nholders > HL_MAX_HOLDERS)
    st->nholders = st->nholders < 0 ? 0 : HL_MAX_HOLDERS;
  if (st->nwaiters < 0 || st->nwaiters > HL_MAX_WAITERS)
    st->nwaiters = st->nwaiters < 0 ? 0 : HL_MAX_WAITERS;
  if (!isfinite(st->held_for))
    st->held_for = -1;
  for (int i = 0; i < st->nholders; i++) {
    hl_holder_t *h = &st->holders[i];
    CLEAN_FIELD(h->weight_source);
    CLEAN_FIELD(h->host);
    CLEAN_FIELD(h->label);
    if (!isfinite(h->held_for))
      h->held_for = -1;
  }
  for (int i = 0; i < st->nwaiters; i++) {
    CLEAN_FIELD(st->waiters[i].weight_source);
    CLEAN_FIELD(st->waiters[i].label);
  }
}

int hl_status(const char *target, hl_status_t *st) {
  memset(st, 0, sizeof(*st));
  st->held_for = -1;
  const hl__kind_t *k = hl__kind_pick(target, NULL);
  if (k == NULL)
    return hl__kind_none(target);
  st->kind = k->name;
  int rc = k->status(target, st, 0);
  status_clean(st);
  return rc;
}

/* ---- the flock kind: an exclusive flock(2) on the whole lock file ----
 * Today's lock, and what flock(1), filelock and portalocker take: each
 * excludes the others.  The record (who holds) lives in the file itself. */

static int flock_claims(const char *target, const hl__ask_t *ask) {
  return !hl__is_url(target) && (ask == NULL || ask->slots == 1);
}

static int flock_open(const char *path, void **statep) {
  flock_state_t *fs = calloc(1, sizeof(*fs));
  if (fs == NULL)
    return -ENOMEM;
  fs->path = strdup(path);
  if (fs->path == NULL) {
    free(fs);
    return -ENOMEM;
  }
  /* Open once now so that a bad path is reported here, not at first use. */
  int rc = hl__os_open(path, &fs->fd, &fs->readonly);
  if (rc < 0) {
    free(fs->path);
    free(fs);
    return rc;
  }
  hl__os_close(fs->fd);
  fs->fd = -1;
  fs->have_dir = hl__os_fileid_dir(path, &fs->dir) == 0;
  *statep = fs;
  return 0;
}

/* Make `s` fit on one record line, as valid UTF-8: control bytes become
 * spaces, bytes that are not UTF-8 become '?', and a sequence cut at the end
 * of the buffer is dropped (status readers decode records strictly). */
static void one_line(char *s) {
  hl__utf8_clean(s, ' ');
}

/* The line by which a lock file vouches for itself (see flock_vouched):
 * its own device and inode, and the directory and name it was locked at.
 * Its length, or 0 when this handle cannot vouch (no directory identity). */
static int vouch_line(const flock_state_t *fs, char *buf, size_t len) {
  if (!fs->have_dir)
    return 0;
  const char *slash = strrchr(fs->path, HL__SEP);
  char name[256];
  snprintf(name, sizeof(name), "%s", slash ? slash + 1 : fs->path);
  hl__utf8_clean(name, ' ');
  int n = snprintf(buf, len, "file=%llu:%llu:%llu:%llu:%s\n", (unsigned long long)fs->id.dev,
                   (unsigned long long)fs->id.ino, (unsigned long long)fs->dir.dev,
                   (unsigned long long)fs->dir.ino, name);
  return n > 0 && (size_t)n < len ? n : 0;
}

/* Write the holder record (`ask`), or with ask NULL the record of a free
 * lock: only the vouching line, so that the next taker need not look for
 * ghosts.  `vouch`: this hold has established that no holder of a deleted
 * or replaced file with our path runs (see flock_vouched). */
static void write_record(flock_state_t *lk, const hl__ask_t *ask, int vouch) {
  if (lk->readonly || (lk->flags & HL_FLAG_OTHER_CONTENT))
    return;
  char vl[400];
  int vn = vouch ? vouch_line(lk, vl, sizeof(vl)) : 0;
  vl[vn] = '\0';
  if (ask == NULL) {
    char buf[RECORD_MAGIC_LEN + sizeof(vl)];
    int n = snprintf(buf, sizeof(buf), "%s%s", vn ? RECORD_MAGIC : "", vl);
    (void)hl__os_write_all(lk->fd, buf, (size_t)n);
    (void)hl__os_fd_written_last(lk->fd); /* see flock_vouched: a later rename moves ctime */
    return;
  }
  /* Reading /proc for our identity is done once (per pid: a forked child
   * that acquires has its own), not on every handoff. */
  if (lk->self.pid != hl__os_getpid()) {
    memset(&lk->self, 0, sizeof(lk->self));
    hl__os_self_record(&lk->self);
    one_line(lk->self.cmd);
    one_line(lk->self.host);
  }
  hl_record_t rec = lk->self;
  char buf[HL_LABEL_MAX + HL_CMD_MAX + HL_HOST_MAX + 256 + sizeof(vl)];
  snprintf(rec.label, sizeof(rec.label), "%s", ask->label);
  one_line(rec.label);
  int n = snprintf(buf, sizeof(buf),
                   "heavylock-holder 1\n%spid=%ld\nstart=%llu\nacquired=%.6f\n"
                   "host=%s\nboot_id=%s\nlabel=%s\ncmd=%s\n",
                   vl, rec.pid, rec.start, hl__os_wallclock(), rec.host, rec.boot_id,
                   rec.label, rec.cmd);
  if (n < 0)
    return;
  if ((size_t)n >= sizeof(buf))
    n = (int)sizeof(buf) - 1;
  /* A record is a courtesy for `status`; failing to write one (disk full)
   * must not cost the caller the lock it holds. */
  (void)hl__os_write_all(lk->fd, buf, (size_t)n);
  (void)hl__os_fd_written_last(lk->fd); /* see flock_vouched: a later rename moves ctime */
}

static int same_file(const hl__fileid_t *a, const hl__fileid_t *b) {
  return a->dev == b->dev && a->ino == b->ino;
}

/* The blocker first: it is in flock(2) on the descriptor. */
static void flock_stop_blocker(flock_state_t *fs) {
  hl__os_blocker_stop(fs->blocker);
  fs->blocker = NULL;
}

static void flock_drop_fd(flock_state_t *fs) {
  flock_stop_blocker(fs);
  if (fs->fd >= 0)
    hl__os_close(fs->fd);
  fs->fd = -1;
}

/* Let go of a lock we won but may not keep, and of its descriptor. */
static void flock_let_go(flock_state_t *fs) {
  flock_stop_blocker(fs);
  hl__os_unlock(fs->fd);
  flock_drop_fd(fs);
}

/* After winning the inode we opened: if the path no longer names it (a tool
 * deleted or replaced the file while we waited), the lock excludes nobody.
 * 1 = good, 0 = let go (done here), start over on the new file. */
static int flock_still_ours(flock_state_t *fs) {
  hl__fileid_t now;
  if (hl__os_fileid_path(fs->path, &now) == 0 && same_file(&now, &fs->id))
    return 1;
  flock_let_go(fs);
  return 0;
}

/* The path names our file; but if an older holder still holds the file that
 * had this path before it was deleted or replaced, the two of us would run
 * at once.  The kernel still knows it (see os.h).  1 = such a holder runs:
 * let go (done here) and wait for it. */
static int flock_ghost(flock_state_t *fs) {
  long ghost = 0;
  if (hl__os_ghost_holder(fs->path, &fs->id, &ghost) <= 0)
    return 0;
  flock_let_go(fs);
  return 1;
}

/*
 * Does the lock file vouch that no such older holder can exist?  Asking the
 * kernel (flock_ghost) reads /proc/locks, which costs milliseconds on some
 * kernels; so it is asked only when something unusual happened to the file.
 *
 * The vouch: a record that starts with the file's own device, inode,
 * directory and name (vouch_line), written by a holder of this very inode
 * that had established that no older holder ran, and a file whose last
 * change was a content write (ctime == mtime: a rename, link or unlink
 * moves only the ctime; writers fstat after writing so that on kernels with
 * multigrain timestamps a later rename gets a distinct ctime).
 *
 * Why that suffices.  A ghost is a process holding an inode X that no
 * longer is at the path, while the path names another inode I.  It can
 * only arise when the path is switched away from X while X is held (an
 * unlink and re-create, or a rename over it); a heavylock taker that wins X
 * after the switch sees the path name another inode and lets go at once
 * (flock_still_ours).  Now suppose we hold I, the path names I, and I
 * vouches.  The vouching write W was made by a holder of I that had
 * verified, at its own acquisition, that the path named I and no ghost
 * ran (by asking the kernel or, inductively, by an earlier vouch), and it
 * wrote a vouch at release or relabel only if I had not been renamed or
 * linked during its hold (ctime == mtime still: flock_release).  Since W,
 * ctime == mtime says I was neither renamed nor linked nor unlinked, so
 * the path named I without a break from W until now: no inode other than
 * I was at the path in that time, so no ghost can have been made since;
 * and none ran at W.  Every file that does not vouch -- created new after
 * a delete (empty), renamed over the path (another inode, name or
 * directory in its record, or a ctime past its mtime), someone else's
 * content, a record from an older heavylock -- gets the full check.
 *
 * What no check at acquisition can see, before or now: a foreign tool
 * (flock(1)) that opened X before the switch and locks it later; a switch
 * made within one coarse clock tick of the last write on kernels without
 * multigrain timestamps (the name and directory in the vouch still catch a
 * rename of another lock file over ours); and a lock file renamed away
 * (not deleted) while held, which the kernel's table cannot name either.
 */
static int flock_vouched(flock_state_t *fs) {
  char want[400], head[RECORD_MAGIC_LEN + sizeof(want)];
  int n = vouch_line(fs, want, sizeof(want));
  /* One read serves both questions: does it vouch, and is it ours at all. */
  long got = hl__os_read_fd(fs->fd, head, RECORD_MAGIC_LEN + (size_t)n);
  int magic = got >= RECORD_MAGIC_LEN && memcmp(head, RECORD_MAGIC, RECORD_MAGIC_LEN) == 0;
  fs->other = got != 0 && !magic;
  return n > 0 && magic && got == RECORD_MAGIC_LEN + n &&
         memcmp(head + RECORD_MAGIC_LEN, want, (size_t)n) == 0 && hl__os_fd_written_last(fs->fd);
}

/* Won the inode that the path names: is an older holder in the way? */
static int flock_in_the_way(flock_state_t *fs) {
  return !flock_vouched(fs) && flock_ghost(fs);
}

/* A lock file that is neither empty nor a holder record belongs to someone
 * else: HEAVYLOCK_PATH=model.gguf is an easy slip, and flock(1) and filelock
 * leave such a file alone.  Lock it, but never truncate or write it.  Judged
 * by flock_vouched (fs->other) from a read through the locked descriptor,
 * so what is judged is what would be written. */

/* Does the path still name the file this handle holds?  If not, someone
 * deleted or replaced it while we held it, and newcomers may lock the new
 * file: the holder is told (HL_FLAG_LOST), since it is the one to warn. */
static int check_lost(flock_state_t *fs) {
  hl__fileid_t now;
  if (hl__os_fileid_path(fs->path, &now) == 0 && same_file(&now, &fs->id))
    return 0;
  fs->flags |= HL_FLAG_LOST;
  return HL_ELOST;
}

/* Won: the record, unless the file is someone else's. */
static void flock_won(flock_state_t *fs, const hl__ask_t *ask) {
  fs->held = 1;
  fs->flags = (!fs->readonly && fs->other) ? HL_FLAG_OTHER_CONTENT : 0;
  write_record(fs, ask, 1);
}

/* Wait, polling, until no holder of a deleted/replaced file with our path is
 * left (its release sends no event on the new file).  -EINTR passes out. */
static int wait_ghost(flock_state_t *fs) {
  int poll_ms = 1;
  for (;;) {
    long pid = 0;
    if (hl__os_ghost_holder(fs->path, NULL, &pid) <= 0)
      return 0;
    int rc = hl__os_sleep_ms(poll_ms);
    if (rc == -EINTR)
      return rc;
    if (poll_ms < POLL_MAX_MS)
      poll_ms *= 2;
  }
}

static int flock_ensure_open(flock_state_t *fs) {
  if (fs->fd >= 0)
    return 0;
  int rc = hl__os_open(fs->path, &fs->fd, &fs->readonly);
  if (rc < 0) {
    fs->fd = -1;
    return rc;
  }
  if ((rc = hl__os_fileid_fd(fs->fd, &fs->id)) < 0) {
    flock_drop_fd(fs);
    return rc;
  }
  return 0;
}

static void flock_unqueue(flock_state_t *fs) {
#ifdef HL_HAVE_SLOTS
  hl__queue_leave(fs->queue);
  fs->queue = NULL;
  fs->queue_failed = 0;
#else
  (void)fs;
#endif
}

static int flock_try(void *state, const hl__ask_t *ask, int waiting) {
  flock_state_t *fs = state;
  for (int round = 0; round < 8; round++) {
    int rc = flock_ensure_open(fs);
    if (rc < 0)
      return rc;
    /* Our blocker won it for us (flock_wait): the lock is ours already,
     * the try-lock below only says so. */
    int blocker_won = round == 0 && hl__os_blocker_won(fs->blocker);
    if (waiting && !blocker_won && (!fs->watching || fs->rearm || round > 0)) {
      /* Armed before the try: a release after it wakes us.  Once armed it
       * stays, and events queue up; it is pointed anew (at what the path
       * names now) when the file changed under us or a wait timed out. */
      if (fs->watch == NULL)
        fs->watch = hl__os_watch_open();
      fs->watching = fs->watch && hl__os_watch_arm(fs->watch, fs->path) == 0;
      fs->rearm = 0;
      if (!fs->watching && fs->poll_ms == 0)
        fs->poll_ms = 1;
    }
    fs->may_block = 0;
#ifdef HL_HAVE_SLOTS
    /* Waiting: take a ticket after the first miss, then try only when no
     * earlier heavylock waiter is still waiting. */
    if (!blocker_won && fs->queue && !hl__queue_first(fs->queue)) {
      if (fs->blocker) { /* no longer first (a ticket table rebuilt): what
                          * the blocker may have won is not ours to keep */
        flock_stop_blocker(fs);
        hl__os_unlock(fs->fd);
      }
      return HL_EBUSY;
    }
#endif
    rc = hl__os_trylock(fs->fd);
    /* Held elsewhere, and ours to take next: the wait may block in the
     * kernel (flock_wait), which wakes us however the holder lets go. */
    fs->may_block = rc == HL_EBUSY && waiting;
#ifdef HL_HAVE_SLOTS
    if (rc == HL_EBUSY && waiting && fs->queue == NULL && !fs->queue_failed &&
        !fs->readonly && hl__queue_join(fs->path, ask, &fs->queue) < 0)
      fs->queue_failed = 1;
#endif
    if (rc < 0)
      return rc; /* HL_EBUSY or an error; the descriptor stays for the wait */
#ifdef HL_HAVE_SLOTS
    /* Got it without a ticket while others queue for it (we came back
     * between a release and the first in line): no barging, go in line. */
    if (rc == 0 && fs->queue == NULL && !fs->queue_failed && !fs->readonly &&
        hl__queue_others(fs->path)) {
      /* Close, not just unlock: the close is the event the first in line
       * may be waiting for (it may have tried while we held). */
      flock_let_go(fs);
      if (!waiting)
        return HL_EBUSY;
      if (hl__queue_join(fs->path, ask, &fs->queue) < 0)
        fs->queue_failed = 1;
      return HL_EBUSY;
    }
#endif
    if (flock_still_ours(fs)) {
      if (flock_in_the_way(fs)) {
        /* The ghost's release sends no event on our file: poll for it. */
        fs->watching = 0;
        if (fs->poll_ms == 0)
          fs->poll_ms = 1;
        return HL_EBUSY;
      }
      /* The watch is disarmed at release (flock_cancel), not here: one
       * system call less between the release and our return, and status
       * does not count a holder among the waiters. */
      flock_unqueue(fs);
      flock_won(fs, ask);
      return 0;
    }
  }
  return HL_EBUSY;
}

static int flock_wait(void *state, int ms) {
  flock_state_t *fs = state;
  /* First in line: a thread blocks in flock(2) on our descriptor, so that
   * an unlock without a close (flock -u, which sends no inotify event)
   * wakes us at kernel speed; the watch still sees closes, deletes and
   * renames.  The thread lives until the wait ends (flock_drop_fd, or the
   * release after a win: its flock(2) then returns at once, the lock being
   * our descriptor's). */
  if (fs->may_block && fs->blocker == NULL && fs->fd >= 0)
    fs->blocker = hl__os_blocker_start(fs->fd);
  if (fs->blocker || fs->watching) {
    int rc = hl__os_wait_events(fs->watching ? fs->watch : NULL, fs->blocker, ms);
    fs->rearm = rc == 0;
    return rc;
  }
  /* No watch here: poll with backoff from 1 ms up to POLL_MAX_MS. */
  if (ms > fs->poll_ms)
    ms = fs->poll_ms;
  if (fs->poll_ms < POLL_MAX_MS)
    fs->poll_ms *= 2;
  int rc = hl__os_sleep_ms(ms);
  return rc < 0 ? rc : 1;
}

static int flock_blocking(void *state, const hl__ask_t *ask) {
  flock_state_t *fs = state;
  for (;;) {
    int rc = flock_ensure_open(fs);
    if (rc < 0)
      return rc;
    if ((rc = hl__os_lock_wait(fs->fd)) < 0)
      return rc;
    if (flock_still_ours(fs)) {
      if (flock_in_the_way(fs)) {
        if ((rc = wait_ghost(fs)) < 0)
          return rc;
        continue;
      }
      flock_won(fs, ask);
      return 0;
    }
  }
}

static void flock_cancel(void *state) {
  flock_state_t *fs = state;
  flock_unqueue(fs);
  if (fs->watch)
    hl__os_watch_disarm(fs->watch);
  fs->watching = 0;
  fs->poll_ms = 0;
  if (!fs->held)
    flock_drop_fd(fs);
}

static int flock_release(void *state) {
  flock_state_t *fs = state;
  flock_stop_blocker(fs); /* done or about to be: we hold the lock */
  /* Not renamed or linked while we held it (flock_vouched): asked first,
   * since check_lost's own look does not change the file. */
  int vouch = hl__os_fd_written_last(fs->fd);
  (void)check_lost(fs); /* the caller reads HL_FLAG_LOST and warns */
  if (!(fs->flags & HL_FLAG_LOST))
    write_record(fs, NULL, vouch); /* clear our record while we hold it */
  int rc = hl__os_unlock(fs->fd);
  /* The close is what wakes waiters that use inotify. */
  flock_drop_fd(fs);
  fs->held = 0;
  flock_cancel(fs);
  return rc;
}

static int flock_relabel(void *state, const hl__ask_t *ask) {
  flock_state_t *fs = state;
  int vouch = hl__os_fd_written_last(fs->fd); /* as in flock_release */
  if (check_lost(fs) < 0)
    return HL_ELOST;
  write_record(fs, ask, vouch);
  return 0;
}

static int flock_held_by(void *state, long pid) {
  flock_state_t *fs = state;
  return hl__os_pid_holds(pid, &fs->id, pid == hl__os_getpid() ? fs->fd : -1);
}

static int flock_flags(void *state) { return ((flock_state_t *)state)->flags; }

static int flock_identity(void *state, uint64_t id[2]) {
  flock_state_t *fs = state;
  if (fs->id.dev == 0 && fs->id.ino == 0)
    return -EBADF; /* never opened (the last file's id stays valid) */
  id[0] = fs->id.dev;
  id[1] = fs->id.ino;
  return 0;
}

static intptr_t flock_fd(void *state) { return ((flock_state_t *)state)->fd; }

static void flock_close(void *state, int owner) {
  flock_state_t *fs = state;
  if (owner && fs->held)
    (void)flock_release(fs);
  /* A forked child drops its reference to the descriptor without
   * unlocking; the parent's lock stays. */
  flock_drop_fd(fs);
#ifdef HL_HAVE_SLOTS
  if (fs->queue) {
    if (owner) {
      flock_unqueue(fs);
    } else { /* a forked child: drop the descriptor, not the parent's ticket */
      free(fs->queue);
    }
  }
#endif
  hl__os_watch_close(fs->watch);
  free(fs->path);
  free(fs);
}

static int flock_status(const char *path, hl_status_t *st, int flags);

const hl__kind_t hl__kind_flock = {
    .version = HL__KIND_VERSION,
    .name = "flock",
    .claims = flock_claims,
    .open = flock_open,
    .try_acquire = flock_try,
    .wait = flock_wait,
    .acquire_blocking = flock_blocking,
    .cancel = flock_cancel,
    .release = flock_release,
    .relabel = flock_relabel,
    .identity = flock_identity,
    .fd = flock_fd,
    .status = flock_status,
    .close = flock_close,
    .flags = flock_flags,
    .held_by = flock_held_by,
};

/* ---- records ---- */

static void copy_value(char *dst, size_t n, const char *v, size_t len) {
  if (len >= n)
    len = n - 1;
  memcpy(dst, v, len);
  dst[len] = '\0';
}

int hl_record_read(const char *path, hl_record_t *rec) {
  char buf[8192];
  memset(rec, 0, sizeof(*rec));
  long n = hl__os_read_head(path, buf, sizeof(buf) - 1);
  if (n < 0)
    return (int)n;
  buf[n] = '\0';
  if (strncmp(buf, "heavylock-holder 1\n", 19) != 0)
    return HL_EFORMAT;
  int have_pid = 0;
  for (char *line = buf + 19; *line;) {
    char *end = strchr(line, '\n');
    size_t len = end ? (size_t)(end - line) : strlen(line);
    char *eq = memchr(line, '=', len);
    if (eq) {
      size_t klen = (size_t)(eq - line), vlen = len - klen - 1;
      const char *v = eq + 1;
      char num[64];
      copy_value(num, sizeof(num), v, vlen);
      if (klen == 3 && !strncmp(line, "pid", 3)) {
        char *e;
        rec->pid = strtol(num, &e, 10);
        have_pid = e != num && rec->pid > 0;
      } else if (klen == 5 && !strncmp(line, "start", 5)) {
        rec->start = strtoull(num, NULL, 10);
      } else if (klen == 8 && !strncmp(line, "acquired", 8)) {
        rec->acquired = strtod(num, NULL);
      } else if (klen == 4 && !strncmp(line, "host", 4)) {
        copy_value(rec->host, sizeof(rec->host), v, vlen);
      } else if (klen == 7 && !strncmp(line, "boot_id", 7)) {
        copy_value(rec->boot_id, sizeof(rec->boot_id), v, vlen);
      } else if (klen == 5 && !strncmp(line, "label", 5)) {
        copy_value(rec->label, sizeof(rec->label), v, vlen);
      } else if (klen == 3 && !strncmp(line, "cmd", 3)) {
        copy_value(rec->cmd, sizeof(rec->cmd), v, vlen);
      }
    }
    if (end == NULL)
      break;
    line = end + 1;
  }
  /* A record is text from whoever could write the file: make every field
   * safe to show and to decode (valid UTF-8, no control bytes, a cut
   * sequence at the field's end dropped) and every number finite. */
  hl__utf8_clean(rec->host, '?');
  hl__utf8_clean(rec->boot_id, '?');
  hl__utf8_clean(rec->label, '?');
  hl__utf8_clean(rec->cmd, '?');
  if (!isfinite(rec->acquired))
    rec->acquired = 0;
  return have_pid ? 0 : HL_EFORMAT;
}

/* The flock kind's status; also the first half of the slots kind's. */
int hl__flock_status(const char *path, hl_status_t *st, int flags) {
  hl__fileid_t id;
  long ghost = 0;
  int rc = hl__os_fileid_path(path, &id);
  if (rc == -ENOENT) {
    /* No file; but a holder may still hold the one that was deleted. */
    if (hl__os_ghost_holder(path, NULL, &ghost) > 0) {
      st->held = 1, st->holder_pid = ghost, st->deleted_file = 1;
      st->method = "proc-locks";
    }
    return 0;
  }
  if (rc < 0)
    return rc;
  st->method = "proc-locks";
  rc = hl__os_lock_table(&id, st, flags & HL__STATUS_QUICK);
  if (rc == -ENOSYS) {
    st->method = "probe";
    rc = hl__os_probe_held(path);
    if (rc < 0)
      return rc;
    st->held = rc;
  } else if (rc < 0) {
    return rc;
  }
  if (!st->held && hl__os_ghost_holder(path, &id, &ghost) > 0) {
    /* The file at the path is free, but the lock was deleted or replaced
     * under a holder that still runs: newcomers wait for it (lock.c). */
    st->held = 1, st->holder_pid = ghost, st->deleted_file = 1;
    return 0;
  }

  if (st->held && st->holder_pid) {
    st->holders[0].pid = st->holder_pid;
    st->holders[0].exclusive = 1;
    st->holders[0].held_for = -1;
    st->nholders = 1;
  }
  hl_record_t rec;
  rc = hl_record_read(path, &rec);
  if (rc == HL_EFORMAT) {
    /* A free lock's record (only the vouching line) is ours, not "other". */
    char head[RECORD_MAGIC_LEN];
    long n = hl__os_read_head(path, head, sizeof(head));
    st->other_content = n > 0 && (n != RECORD_MAGIC_LEN || memcmp(head, RECORD_MAGIC, (size_t)n) != 0);
  }
  if (rc != 0)
    return 0;
  st->other_content = 0;
  /* Trust the record only if the kernel agrees on who holds the lock and the
   * process is the one that wrote it: same pid and same start time.  A
   * record without a start time is not trusted where start times are known
   * (anyone who can write the file could name the holder's pid). */
  unsigned long long real_start = hl__os_proc_start(rec.pid);
  int live = st->held && hl__os_proc_alive(rec.pid) &&
             (st->holder_pid == 0 || st->holder_pid == rec.pid) &&
             (real_start == 0 || rec.start == real_start);
  if (live) {
    st->has_record = 1;
    st->record = rec;
    st->held_for = rec.acquired > 0 ? hl__os_wallclock() - rec.acquired : -1;
    if (st->holder_pid == 0)
      st->holder_pid = rec.pid;
    hl_holder_t *h = &st->holders[0];
    h->pid = rec.pid;
    h->exclusive = 1;
    h->held_for = st->held_for;
    snprintf(h->host, sizeof(h->host), "%.63s", rec.host);
    hl__utf8_clean(h->host, '?');
    snprintf(h->label, sizeof(h->label), "%s", rec.label);
    st->nholders = 1;
  } else {
    st->stale_record = 1;
    st->record = rec;
  }
  return 0;
}

static int flock_status(const char *path, hl_status_t *st, int flags) {
  return hl__flock_status(path, st, flags);
}

int hl_holder_describe(const hl_status_t *st, char *buf, size_t len) {
  if (len == 0)
    return st->held;
  if (!st->held) {
    snprintf(buf, len, "free now");
    return 0;
  }
  if (st->shared && st->nholders > 0 && st->holder_pid == 0) {
    size_t n = (size_t)snprintf(buf, len, "held by %d slot holder%s:", st->nholders,
                                st->nholders > 1 ? "s" : "");
    for (int i = 0; i < st->nholders && i < 4 && n < len; i++) {
      const hl_holder_t *h = &st->holders[i];
      n += (size_t)snprintf(buf + n, len - n, "%s pid %ld", i ? "," : "", h->pid);
      char safe[2 * HL_LABEL_MAX + 4]; /* masked before it is cut (a cut could hide the '@') */
      if (n < len && h->label[0])
        n += (size_t)snprintf(buf + n, len - n, " (%.80s)",
                              hl_redact(h->label, safe, sizeof(safe)));
      if (n < len && h->held_for >= 0)
        n += (size_t)snprintf(buf + n, len - n, " for %.0f s", h->held_for);
    }
    if (n < len && st->nholders > 4)
      snprintf(buf + n, len - n, ", ...");
    hl__utf8_clean(buf, ' ');
    return 1;
  }
  char raw[HL_CMD_MAX] = "", safe[2 * HL_CMD_MAX + 4], what[160];
  if (st->has_record && st->record.label[0])
    snprintf(raw, sizeof(raw), "%s", st->record.label);
  else if (st->holder_pid && hl_proc_cmdline(st->holder_pid, raw, sizeof(raw)) < 0)
    raw[0] = '\0';
  /* Passwords masked before the cut to 150 bytes (a cut could hide the '@'). */
  snprintf(what, sizeof(what), "%.150s", hl_redact(raw, safe, sizeof(safe)));
  size_t n = 0;
  if (st->holder_pid)
    n += (size_t)snprintf(buf, len, "held by pid %ld", st->holder_pid);
  else
    n += (size_t)snprintf(buf, len, "held by another process");
  if (n < len && what[0])
    n += (size_t)snprintf(buf + n, len - n, " (%s)", what);
  if (n < len && st->held_for >= 0)
    snprintf(buf + n, len - n, " for %.0f s", st->held_for);
  hl__utf8_clean(buf, ' '); /* a cut above may have split a character */
  return 1;
}
