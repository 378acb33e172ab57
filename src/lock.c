/*
 * lock.c - the lock: acquire, release, holder records and status.
 *
 * Platform-neutral; the system calls live behind os.h (os-unix.c,
 * os-win.c).  Read heavylock.h first: it is the contract.
 */
#include "os.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct hl_lock_s {
  char *path;
  intptr_t fd;          /* open only while acquiring or held, else -1 */
  int readonly;         /* no holder record can be written            */
  int held;
  int flags;            /* HL_FLAG_* of the current or last hold      */
  long owner_pid;       /* the process that opened the handle         */
  uintptr_t thread;     /* the thread acquiring or holding            */
  hl__fileid_t id;
  hl__watch_t *watch;   /* for timed waits; kept until close (see os.h) */
  hl_record_t self;     /* this process's identity, read once per pid   */
  char label[HL_LABEL_MAX];
  struct hl_lock_s *next; /* registry of handles busy in this process */
};

/* While a wait is under way and no close event came, look again this often:
 * a holder that unlocks without closing (flock -u) sends no event. */
#define RECHECK_MS 100
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
  case HL_ELOST: return "lock file was deleted or replaced while held";
  case -EDEADLK: return "this thread already holds or waits for this lock";
  }
  if (err < 0 && err > -4096)
    return strerror(-err);
  return "unknown error";
}

/* ---- the registry: which handles of this process are busy on which file --
 * flock(2) locks belong to open file descriptions, so two handles on one
 * path in one process exclude each other.  From different threads that is
 * right (the second waits for the first); from the same thread the wait
 * could never end, so it is reported as -EDEADLK at once (filelock #315). */
static hl_lock_t *registry;

static int registry_enter(hl_lock_t *lk) {
  int rc = 0;
  hl__os_registry_lock();
  for (hl_lock_t *o = registry; o; o = o->next) {
    if (o->owner_pid == lk->owner_pid && o->thread == lk->thread &&
        o->id.dev == lk->id.dev && o->id.ino == lk->id.ino) {
      rc = -EDEADLK;
      break;
    }
  }
  if (rc == 0) {
    lk->next = registry;
    registry = lk;
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
  hl__os_registry_unlock();
}

int hl_lock_open(hl_lock_t **lockp, const char *path) {
  *lockp = NULL;
  if (path == NULL || path[0] == '\0')
    return -EINVAL;
  if (strlen(path) >= HL_PATH_MAX)
    return -ENAMETOOLONG; /* never cut: a cut path names another file */
  hl_lock_t *lk = calloc(1, sizeof(*lk));
  if (lk == NULL)
    return -ENOMEM;
  lk->path = strdup(path);
  if (lk->path == NULL) {
    free(lk);
    return -ENOMEM;
  }
  /* Open once now so that a bad path is reported here, not at first use. */
  int rc = hl__os_open(path, &lk->fd, &lk->readonly);
  if (rc < 0) {
    free(lk->path);
    free(lk);
    return rc;
  }
  hl__os_close(lk->fd);
  lk->fd = -1;
  lk->owner_pid = hl__os_getpid();
  *lockp = lk;
  return 0;
}

/* Make `s` fit on one record line, as valid UTF-8: control bytes become
 * spaces, bytes that are not UTF-8 become '?', and a sequence cut at the end
 * of the buffer is dropped (status readers decode records strictly). */
static void one_line(char *s) {
  hl__utf8_clean(s, ' ');
}

static void write_record(hl_lock_t *lk) {
  if (lk->readonly || (lk->flags & HL_FLAG_OTHER_CONTENT))
    return;
  /* Reading /proc for our identity is done once (per pid: a forked child
   * that acquires has its own), not on every handoff. */
  if (lk->self.pid != hl__os_getpid()) {
    memset(&lk->self, 0, sizeof(lk->self));
    hl__os_self_record(&lk->self);
    one_line(lk->self.cmd);
    one_line(lk->self.host);
  }
  hl_record_t rec = lk->self;
  char buf[HL_LABEL_MAX + HL_CMD_MAX + HL_HOST_MAX + 256];
  snprintf(rec.label, sizeof(rec.label), "%s", lk->label);
  one_line(rec.label);
  int n = snprintf(buf, sizeof(buf),
                   "heavylock-holder 1\npid=%ld\nstart=%llu\nacquired=%.6f\n"
                   "host=%s\nboot_id=%s\nlabel=%s\ncmd=%s\n",
                   rec.pid, rec.start, hl__os_wallclock(), rec.host, rec.boot_id,
                   rec.label, rec.cmd);
  if (n < 0)
    return;
  if ((size_t)n >= sizeof(buf))
    n = (int)sizeof(buf) - 1;
  /* A record is a courtesy for `status`; failing to write one (disk full)
   * must not cost the caller the lock it holds. */
  (void)hl__os_write_all(lk->fd, buf, (size_t)n);
}

static int same_file(const hl__fileid_t *a, const hl__fileid_t *b) {
  return a->dev == b->dev && a->ino == b->ino;
}

/* A lock file that is neither empty nor a holder record belongs to someone
 * else: HEAVYLOCK_PATH=model.gguf is an easy slip, and flock(1) and filelock
 * leave such a file alone.  Lock it, but never truncate or write it.  Read
 * through the locked descriptor, so what is judged is what would be written. */
static int other_content(hl_lock_t *lk) {
  char head[RECORD_MAGIC_LEN];
  long n = hl__os_read_fd(lk->fd, head, sizeof(head));
  if (n == 0)
    return 0;
  return n != RECORD_MAGIC_LEN || memcmp(head, RECORD_MAGIC, RECORD_MAGIC_LEN) != 0;
}

/* Does the path still name the file this handle holds?  If not, someone
 * deleted or replaced it while we held it, and newcomers may lock the new
 * file: the holder is told (HL_FLAG_LOST), since it is the one to warn. */
static int check_lost(hl_lock_t *lk) {
  hl__fileid_t now;
  if (hl__os_fileid_path(lk->path, &now) == 0 && same_file(&now, &lk->id))
    return 0;
  lk->flags |= HL_FLAG_LOST;
  return HL_ELOST;
}

/* A newcomer won a lock on a fresh inode while an older holder still holds
 * the deleted or replaced file that had this path (see os.h): wait, polling,
 * until that holder lets go.  deadline < 0 waits as long as it takes. */
static int wait_ghost(hl_lock_t *lk, double deadline) {
  int poll_ms = 1;
  for (;;) {
    long pid = 0;
    if (hl__os_ghost_holder(lk->path, NULL, &pid) <= 0)
      return 0;
    double left = deadline - hl__os_monotonic();
    if (deadline >= 0 && left <= 0)
      return HL_ETIMEDOUT;
    int ms = poll_ms;
    if (deadline >= 0 && left * 1000.0 < (double)ms)
      ms = (int)(left * 1000.0) + 1;
    int rc = hl__os_sleep_ms(ms);
    if (rc == -EINTR)
      return rc;
    if (poll_ms < POLL_MAX_MS)
      poll_ms *= 2;
  }
}

/* Wait for the lock on lk->fd until `deadline` (monotonic seconds). */
static int wait_until(hl_lock_t *lk, double deadline) {
  if (lk->watch == NULL)
    lk->watch = hl__os_watch_open();
  hl__watch_t *w = lk->watch;
  int rc, poll_ms = 1;
  for (;;) {
    /* The watch is armed before this try: a release after it wakes us. */
    if (w && hl__os_watch_arm(w, lk->path) < 0)
      w = NULL; /* fall back to polling */
    rc = hl__os_trylock(lk->fd);
    if (rc != HL_EBUSY)
      break;
    double left = deadline - hl__os_monotonic();
    if (left <= 0) {
      rc = HL_ETIMEDOUT;
      break;
    }
    /* Bound the wait in floating point before converting: left may be
     * years, and (int)(left * 1000) would overflow (UB) into a negative
     * time that poll() takes as "forever" and nanosleep() refuses. */
    int cap = w ? RECHECK_MS : poll_ms;
    int ms = left * 1000.0 < (double)cap ? (int)(left * 1000.0) + 1 : cap;
    if (w) {
      rc = hl__os_watch_wait(w, ms);
      if (rc == -EINTR)
        break;
    } else {
      rc = hl__os_sleep_ms(ms); /* no watch here: poll with backoff */
      if (rc == -EINTR)
        break;
      if (poll_ms < POLL_MAX_MS)
        poll_ms *= 2;
    }
  }
  if (w)
    hl__os_watch_disarm(w);
  return rc;
}

int hl_lock_acquire(hl_lock_t *lk, double timeout) {
  if (lk->owner_pid != hl__os_getpid())
    return HL_EFORKED;
  if (lk->held)
    return -EDEADLK;
  if (isnan(timeout))
    return -EINVAL;
  if (isinf(timeout) && timeout > 0)
    timeout = -1; /* infinity means forever */
  if (timeout > TIMEOUT_MAX)
    timeout = TIMEOUT_MAX;
  double deadline = hl__os_monotonic() + (timeout > 0 ? timeout : 0);
  for (;;) {
    int rc = hl__os_open(lk->path, &lk->fd, &lk->readonly);
    if (rc < 0) {
      lk->fd = -1;
      return rc;
    }
    if ((rc = hl__os_fileid_fd(lk->fd, &lk->id)) < 0)
      goto fail;
    lk->thread = hl__os_thread_self();
    if ((rc = registry_enter(lk)) < 0)
      goto fail;

    if (timeout == 0)
      rc = hl__os_trylock(lk->fd);
    else if (timeout < 0)
      rc = hl__os_lock_wait(lk->fd);
    else
      rc = wait_until(lk, deadline);
    if (rc < 0) {
      registry_leave(lk);
      goto fail;
    }

    /* We hold a lock on the inode we opened.  If the path no longer names
     * it (a tool deleted or replaced the file while we waited), the lock
     * excludes nobody: let it go and start over on the new file. */
    hl__fileid_t now;
    if (hl__os_fileid_path(lk->path, &now) == 0 && same_file(&now, &lk->id)) {
      /* The path names our file; but if an older holder still holds the
       * file that had this path before it was deleted or replaced, the two
       * of us would run at once.  The kernel still knows it: wait for it. */
      long ghost = 0;
      if (hl__os_ghost_holder(lk->path, &lk->id, &ghost) <= 0) {
        lk->held = 1;
        lk->flags = (!lk->readonly && other_content(lk)) ? HL_FLAG_OTHER_CONTENT : 0;
        write_record(lk);
        return 0;
      }
      hl__os_unlock(lk->fd);
      registry_leave(lk);
      hl__os_close(lk->fd);
      lk->fd = -1;
      if (timeout == 0)
        return HL_EBUSY;
      if ((rc = wait_ghost(lk, timeout < 0 ? -1.0 : deadline)) < 0)
        return rc;
      continue;
    }
    hl__os_unlock(lk->fd);
    registry_leave(lk);
    hl__os_close(lk->fd);
    lk->fd = -1;
    if (timeout > 0 && hl__os_monotonic() >= deadline)
      return HL_ETIMEDOUT;
    continue;
  fail:
    hl__os_close(lk->fd);
    lk->fd = -1;
    return rc;
  }
}

int hl_lock_release(hl_lock_t *lk) {
  if (lk->owner_pid != hl__os_getpid())
    return HL_EFORKED;
  if (!lk->held)
    return HL_ENOTHELD;
  (void)check_lost(lk); /* the caller reads HL_FLAG_LOST and warns */
  if (!lk->readonly && !(lk->flags & (HL_FLAG_OTHER_CONTENT | HL_FLAG_LOST)))
    (void)hl__os_write_all(lk->fd, "", 0); /* clear our record while we hold it */
  int rc = hl__os_unlock(lk->fd);
  /* The close is what wakes waiters that watch the file. */
  hl__os_close(lk->fd);
  lk->fd = -1;
  lk->held = 0;
  registry_leave(lk);
  return rc;
}

void hl_lock_close(hl_lock_t *lk) {
  if (lk == NULL)
    return;
  if (lk->owner_pid == hl__os_getpid()) {
    if (lk->held)
      (void)hl_lock_release(lk);
  } else {
    /* A forked child: drop our reference to the descriptor without
     * unlocking; the parent's lock stays. */
    if (lk->fd >= 0)
      hl__os_close(lk->fd);
    registry_leave(lk);
  }
  hl__os_watch_close(lk->watch);
  free(lk->path);
  free(lk);
}

int hl_lock_set_label(hl_lock_t *lk, const char *label) {
  /* Cut at a character boundary, never inside a UTF-8 sequence. */
  snprintf(lk->label, sizeof(lk->label), "%s", label ? label : "");
  one_line(lk->label);
  if (lk->held && lk->owner_pid == hl__os_getpid()) {
    if (check_lost(lk) < 0)
      return HL_ELOST;
    write_record(lk);
  }
  return 0;
}

int hl_lock_held(const hl_lock_t *lk) { return lk->held; }
int hl_lock_flags(const hl_lock_t *lk) { return lk->flags; }
const char *hl_lock_path(const hl_lock_t *lk) { return lk->path; }
intptr_t hl_lock_fd(const hl_lock_t *lk) { return lk->held ? lk->fd : -1; }

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

int hl_status(const char *path, hl_status_t *st) {
  memset(st, 0, sizeof(*st));
  st->held_for = -1;
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
  rc = hl__os_lock_table(&id, st);
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

  hl_record_t rec;
  rc = hl_record_read(path, &rec);
  if (rc == HL_EFORMAT) {
    char head[1];
    st->other_content = hl__os_read_head(path, head, 1) > 0;
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
  } else {
    st->stale_record = 1;
    st->record = rec;
  }
  return 0;
}

int hl_holder_describe(const hl_status_t *st, char *buf, size_t len) {
  if (len == 0)
    return st->held;
  if (!st->held) {
    snprintf(buf, len, "free now");
    return 0;
  }
  char what[160] = "";
  if (st->has_record && st->record.label[0])
    snprintf(what, sizeof(what), "%.150s", st->record.label);
  else if (st->holder_pid && hl_proc_cmdline(st->holder_pid, what, sizeof(what)) < 0)
    what[0] = '\0';
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
