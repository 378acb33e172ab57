/*
 * lock.c - the lock: acquire, release, holder records and status.
 *
 * Platform-neutral; the system calls live behind os.h (os-unix.c,
 * os-win.c).  Read heavylock.h first: it is the contract.
 */
#include "os.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct hl_lock_s {
  char *path;
  intptr_t fd;          /* open only while acquiring or held, else -1 */
  int readonly;         /* no holder record can be written            */
  int held;
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

/* Make `s` fit on one record line. */
static void one_line(char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f)
      *s = ' ';
}

static void write_record(hl_lock_t *lk) {
  if (lk->readonly)
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
    int ms = (int)(left * 1000.0) + 1;
    if (w) {
      if (ms > RECHECK_MS)
        ms = RECHECK_MS;
      rc = hl__os_watch_wait(w, ms);
      if (rc == -EINTR)
        break;
    } else {
      if (ms > poll_ms)
        ms = poll_ms;
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
      lk->held = 1;
      write_record(lk);
      return 0;
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
  if (!lk->readonly)
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
  snprintf(lk->label, sizeof(lk->label), "%s", label ? label : "");
  if (lk->held && lk->owner_pid == hl__os_getpid())
    write_record(lk);
  return 0;
}

int hl_lock_held(const hl_lock_t *lk) { return lk->held; }
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
  return have_pid ? 0 : HL_EFORMAT;
}

int hl_status(const char *path, hl_status_t *st) {
  memset(st, 0, sizeof(*st));
  st->held_for = -1;
  hl__fileid_t id;
  int rc = hl__os_fileid_path(path, &id);
  if (rc == -ENOENT)
    return 0; /* no file, nobody can hold it */
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

  hl_record_t rec;
  if (hl_record_read(path, &rec) != 0)
    return 0;
  /* Trust the record only if the kernel agrees on who holds the lock and the
   * process is the one that wrote it (same pid, same start time). */
  int live = st->held && hl__os_proc_alive(rec.pid) &&
             (st->holder_pid == 0 || st->holder_pid == rec.pid) &&
             (rec.start == 0 || rec.start == hl__os_proc_start(rec.pid));
  if (live) {
    st->has_record = 1;
    st->record = rec;
    st->held_for = hl__os_wallclock() - rec.acquired;
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
  return 1;
}
