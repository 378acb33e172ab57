/*
 * kind-slots.c - the "slots" kind: up to N holders at once on one lock file,
 * and/or as many as memory admits, machine-wide and crash-safe.  Linux only
 * (open-file-description locks, /proc); other systems build without it.
 *
 * How it holds
 * ------------
 * A slot holder takes a SHARED flock(2) on the lock file itself.  An
 * exclusive holder of the same file (flock(1), Python's filelock, the seed's
 * conftest, a heavylock handle with one slot) therefore excludes every slot
 * holder, and they exclude it, with no help from us.
 *
 * Who holds a slot is kept in a table file next to the lock file
 * (PATH.slots, created with O_NOFOLLOW like the lock file, never unlinked,
 * never truncated): a header, then fixed-size entries.  Entry i belongs to
 * whoever holds an OFD lock (fcntl F_OFD_SETLK) on its first byte.  OFD locks
 * belong to the open file description, like flock(2), and NOT to the process
 * like classic POSIX record locks: closing some other descriptor of the file
 * (a status reader in the same process) does not drop them, and the kernel
 * drops them when the holder dies.  So a record in the table means nothing
 * by itself: an entry is live only while its byte is locked.  A killed
 * holder's slot is free the moment the kernel closes its descriptors; no pid
 * is ever trusted (a reused pid cannot fake a holder).
 *
 * Admission is one atomic step: an OFD write lock on byte 0 of the table (held
 * for microseconds) serialises "read the live entries, decide, register".
 * Two newcomers racing for the last slot cannot both see it free.
 *
 * Fairness: a newcomer draws a ticket (a counter in the header) and is
 * admitted only when no live waiter holds a lower ticket: first come, first
 * served among heavylock's clients, so the worst wait stays near the fair
 * share.  Admissions also hold off while an outside exclusive waiter is
 * blocked on the lock file (a "->" FLOCK WRITE line in /proc/locks): an
 * endless stream of overlapping shared holders would starve it otherwise,
 * because Linux grants new shared flocks past a waiting exclusive one.
 *
 * Waiting: inotify on both files (close and modify events: a holder leaving,
 * a waiter giving up, an admission that moves the queue), plus the wait
 * loop's periodic re-check in lock.c (memory changes send no events).
 */
#define _GNU_SOURCE
#include "admit.h"
#include "kind.h"
#include "os.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define TABLE_SUFFIX ".slots"
#define TABLE_MAGIC "heavylock-slots 1\n"
#define HEADER_SIZE 4096
#define ENTRY_SIZE 1024
#define MAX_ENTRIES HL_SLOTS_TABLE_MAX
#define ADMIT_BYTE 0 /* the admission lock */

enum { E_EMPTY = 0, E_WAITING = 1, E_HOLDING = 2 };

/* On-disk layout (native byte order: the table never leaves the machine). */
typedef struct header_s {
  char magic[32];
  uint64_t next_ticket;
  uint32_t high; /* entries [0, high) may be in use */
} header_t;

typedef struct entry_s {
  uint32_t state;
  uint32_t exclusive;
  int64_t pid;
  uint64_t start;
  uint64_t ticket;
  uint64_t weight;
  uint64_t baseline_rss;
  uint64_t budget;
  int32_t slots;
  int32_t pad;
  double since; /* wall clock: when queued, then when admitted */
  char weight_source[HL_SOURCE_MAX];
  char host[64];
  char label[HL_LABEL_MAX];
} entry_t;

_Static_assert(sizeof(entry_t) <= ENTRY_SIZE, "entry fits its slot");

static off_t entry_off(int i) { return (off_t)HEADER_SIZE + (off_t)i * ENTRY_SIZE; }

typedef struct slots_state_s {
  char *path, *tpath;
  int fd;       /* the lock file: LOCK_SH while held                      */
  int tfd;      /* the table: our entry's byte lock lives on this OFD      */
  int idx;      /* our entry, -1 none                                      */
  int held;
  uint64_t ticket;
  hl__fileid_t id;
  int ino, wd_main, wd_table; /* inotify, -1 when not armed              */
  hl_record_t self;
} slots_state_t;

/* ---- small system helpers ---- */

/* Never F_OFD_SETLKW: a wait here would ignore the caller's deadline
 * (admit_lock below waits, bounded). */
static int ofd_lock(int fd, off_t off, short type) {
  struct flock fl;
  memset(&fl, 0, sizeof(fl));
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = off;
  fl.l_len = 1;
  if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
    return 0;
  if (errno == EAGAIN || errno == EACCES)
    return HL_EBUSY;
  return -errno; /* -EINTR from a signal passes out */
}

/* Does another open file description lock byte `off`?  Asked with a read
 * lock, which works on a read-only descriptor (status) and conflicts with
 * the write locks that entries are held by. */
static int ofd_live(int fd, off_t off) {
  struct flock fl;
  memset(&fl, 0, sizeof(fl));
  fl.l_type = F_RDLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = off;
  fl.l_len = 1;
  if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
    return 0;
  return fl.l_type != F_UNLCK;
}

/*
 * The admission lock, bounded.  A client that admits holds byte 0 for
 * microseconds, so one attempt waits at most ADMIT_PATIENCE for it (a
 * try-once as well), and never past the caller's deadline.  Longer means
 * the holder is stopped (Ctrl-Z) or hostile: anyone who can read the table
 * can take a read lock on its byte 0 (fcntl needs only a read-only
 * descriptor for that; the table's mode cannot prevent it without shutting
 * out the other users of the lock).  Then the attempt reports HL_EBUSY and
 * says who holds the byte (hl_error_detail); the caller's wait loop goes on
 * until its own deadline, with its notices.  `tpath` NULL: say nothing.
 */
#define ADMIT_PATIENCE 0.2 /* seconds */

static int admit_lock(int tfd, const char *tpath, double deadline) {
  int rc = ofd_lock(tfd, ADMIT_BYTE, F_WRLCK);
  if (rc == 0 && tpath != NULL)
    hl__detail_set("%s", ""); /* not stuck (any more) */
  if (rc != HL_EBUSY)
    return rc;
  double t = hl__os_monotonic(), until = t + ADMIT_PATIENCE;
  if (deadline > t && deadline < until)
    until = deadline;
  /* Short polls first (the holder needs microseconds; a crowd woken by one
   * release queues here), backing off to 1 ms. */
  for (int us = 20; rc == HL_EBUSY && t < until; t = hl__os_monotonic()) {
    int left = (int)((until - t) * 1e6) + 1;
    if ((rc = hl__os_sleep_us(us < left ? us : left)) < 0)
      return rc; /* -EINTR: the caller checks its signals */
    rc = ofd_lock(tfd, ADMIT_BYTE, F_WRLCK);
    us = us < 500 ? us * 2 : 1000;
  }
  if (rc == 0 && tpath != NULL)
    hl__detail_set("%s", "");
  if (rc == HL_EBUSY && tpath != NULL) {
    hl__fileid_t id;
    long pid = hl__os_fileid_fd(tfd, &id) == 0 ? hl__os_range_locker(&id, ADMIT_BYTE) : 0;
    if (pid > 0)
      hl__detail_set("admission table %s locked by pid %ld", tpath, pid);
    else
      hl__detail_set("admission table %s locked by another process (not visible to "
                          "this user)", tpath);
  }
  return rc;
}

static int pread_all(int fd, void *buf, size_t len, off_t off) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = pread(fd, (char *)buf + got, len - got, off + (off_t)got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -errno;
    if (n == 0)
      break;
    got += (size_t)n;
  }
  memset((char *)buf + got, 0, len - got); /* past the end reads as empty */
  return 0;
}

static int pwrite_all(int fd, const void *buf, size_t len, off_t off) {
  size_t put = 0;
  while (put < len) {
    ssize_t n = pwrite(fd, (const char *)buf + put, len - put, off + (off_t)put);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -errno;
    put += (size_t)n;
  }
  return 0;
}

static char *table_path(const char *path) {
  size_t n = strlen(path);
  char *t = malloc(n + sizeof(TABLE_SUFFIX));
  if (t) {
    memcpy(t, path, n);
    memcpy(t + n, TABLE_SUFFIX, sizeof(TABLE_SUFFIX));
  }
  return t;
}

/*
 * Open (creating) the table.  Like the lock file: never follow a symlink,
 * refuse what is not a regular file, and never write into a file that is
 * not a table: a non-empty file without our magic is HL_EFORMAT.  An empty
 * file gets its header under the admission lock (bounded by `deadline`);
 * a table that has its header needs no lock to open.
 */
static int table_open(const char *tpath, double deadline, int *out) {
  const int base = O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK;
  int fd;
  do
    fd = open(tpath, O_RDWR | O_CREAT | base, 0666);
  while (fd < 0 && errno == EINTR);
  if (fd < 0 && (errno == EACCES || errno == EPERM)) {
    do /* sticky /tmp owned by another user: O_CREAT alone is refused */
      fd = open(tpath, O_RDWR | base);
    while (fd < 0 && errno == EINTR);
  }
  if (fd < 0)
    return errno == ELOOP ? HL_ESYMLINK : errno == EISDIR ? HL_ENOTREG : -errno;
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return HL_ENOTREG;
  }
  header_t h;
  int rc = pread_all(fd, &h, sizeof(h), 0);
  if (rc == 0 && st.st_size > 0 && memcmp(h.magic, TABLE_MAGIC, sizeof(TABLE_MAGIC) - 1) == 0) {
    *out = fd;
    return 0;
  }
  if (rc < 0 || (rc = admit_lock(fd, tpath, deadline)) < 0) {
    close(fd);
    return rc;
  }
  rc = pread_all(fd, &h, sizeof(h), 0);
  if (rc == 0 && fstat(fd, &st) == 0 && st.st_size == 0) {
    memset(&h, 0, sizeof(h));
    memcpy(h.magic, TABLE_MAGIC, sizeof(TABLE_MAGIC) - 1);
    h.next_ticket = 1;
    rc = pwrite_all(fd, &h, sizeof(h), 0);
  } else if (rc == 0 && memcmp(h.magic, TABLE_MAGIC, sizeof(TABLE_MAGIC) - 1) != 0) {
    rc = HL_EFORMAT;
  }
  (void)ofd_lock(fd, ADMIT_BYTE, F_UNLCK);
  if (rc < 0) {
    close(fd);
    return rc;
  }
  *out = fd;
  return 0;
}

/* Read-only view of the table for status; -ENOENT when there is none. */
static int table_open_ro(const char *tpath) {
  int fd = open(tpath, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0)
    return errno == ELOOP ? HL_ESYMLINK : -errno;
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return HL_ENOTREG;
  }
  return fd;
}

/* ---- the kernel's lock table for the lock file ---- */

typedef struct kview_s {
  long writer;       /* pid holding an exclusive flock, 0 none         */
  int readers;       /* shared flocks                                   */
  int write_waiters; /* exclusive requests blocked ("->" FLOCK WRITE)   */
} kview_t;

static void kernel_view(const hl__fileid_t *id, kview_t *kv) {
  memset(kv, 0, sizeof(*kv));
  FILE *f = fopen("/proc/locks", "re");
  if (f == NULL)
    return;
  char line[512];
  unsigned want_major = major((dev_t)id->dev), want_minor = minor((dev_t)id->dev);
  while (fgets(line, sizeof(line), f)) {
    char *p = strchr(line, ':');
    if (p == NULL)
      continue;
    p++;
    while (*p == ' ')
      p++;
    int blocked = strncmp(p, "->", 2) == 0;
    if (blocked)
      p += 2;
    char type[16], adv[16], mode[16];
    long pid;
    unsigned maj, min;
    unsigned long long ino;
    if (sscanf(p, "%15s %15s %15s %ld %x:%x:%llu", type, adv, mode, &pid, &maj, &min, &ino) != 7)
      continue;
    if (strcmp(type, "FLOCK") != 0 || maj != want_major || min != want_minor || ino != id->ino)
      continue;
    int write = strcmp(mode, "WRITE") == 0;
    if (blocked)
      kv->write_waiters += write;
    else if (write)
      kv->writer = pid;
    else
      kv->readers++;
  }
  fclose(f);
}

/* ---- reading the table ---- */

typedef struct snapshot_s {
  header_t h;
  int n;
  entry_t *e;   /* n entries; state E_EMPTY for dead or unused ones */
} snapshot_t;

/* An entry as read from the file, made safe to use: anyone who can write
 * the table chose its bytes.  Text fields end inside their buffers (the
 * one sanitizer in lock.c cleans them for status), an unknown state is
 * empty, numbers that name a process or a time are in range. */
static void entry_bound(entry_t *e) {
  e->weight_source[sizeof(e->weight_source) - 1] = '\0';
  e->host[sizeof(e->host) - 1] = '\0';
  e->label[sizeof(e->label) - 1] = '\0';
  if (e->state != E_WAITING && e->state != E_HOLDING)
    e->state = E_EMPTY;
  if (e->pid <= 0 || e->pid > INT32_MAX)
    e->pid = 0;
  if (!isfinite(e->since) || e->since < 0)
    e->since = 0;
}

/* Read header and entries [0, high); entries whose byte nobody locks are
 * dead and read as empty (with `clean`, they are zeroed on disk too: the
 * caller holds the admission lock).  `self` is our own entry (its lock is on
 * our descriptor, which GETLK does not report), -1 none. */
static int snapshot(int tfd, int self, int clean, snapshot_t *s) {
  int rc = pread_all(tfd, &s->h, sizeof(s->h), 0);
  if (rc < 0)
    return rc;
  s->n = s->h.high > MAX_ENTRIES ? MAX_ENTRIES : (int)s->h.high;
  s->e = calloc((size_t)(s->n ? s->n : 1), sizeof(entry_t));
  if (s->e == NULL)
    return -ENOMEM;
  /* One read for the whole table (entries are ENTRY_SIZE apart on disk). */
  char *raw = malloc((size_t)(s->n ? s->n : 1) * ENTRY_SIZE);
  if (raw == NULL)
    return -ENOMEM;
  if ((rc = pread_all(tfd, raw, (size_t)s->n * ENTRY_SIZE, entry_off(0))) < 0) {
    free(raw);
    return rc;
  }
  for (int i = 0; i < s->n; i++) {
    memcpy(&s->e[i], raw + (size_t)i * ENTRY_SIZE, sizeof(entry_t));
    entry_bound(&s->e[i]);
  }
  free(raw);
  for (int i = 0; i < s->n; i++) {
    if (s->e[i].state == E_EMPTY || i == self)
      continue;
    if (!ofd_live(tfd, entry_off(i))) {
      if (clean) {
        uint32_t zero = 0;
        (void)pwrite_all(tfd, &zero, sizeof(zero), entry_off(i));
      }
      s->e[i].state = E_EMPTY;
    }
  }
  return 0;
}

/* The load the holders put on memory (admit.h).  `need_rss`: measure how
 * much each holder still has to grow (a /proc scan per holder). */
static void load_of(const snapshot_t *s, int self, int need_rss, hl__load_t *load) {
  memset(load, 0, sizeof(*load));
  for (int i = 0; i < s->n; i++) {
    const entry_t *e = &s->e[i];
    if (i == self || e->state != E_HOLDING)
      continue;
    load->nholders++;
    /* Saturating: a forged entry's weight must not wrap the sum to room. */
    load->weights = e->weight > UINT64_MAX - load->weights ? UINT64_MAX : load->weights + e->weight;
    load->exclusive |= e->exclusive != 0;
    if (need_rss && e->weight > 0) {
      uint64_t rss = 0, grown = 0;
      if (hl_mem_tree_rss((long)e->pid, &rss) == 0 && rss > e->baseline_rss)
        grown = rss - e->baseline_rss;
      if (e->weight > grown)
        load->growth = e->weight - grown > UINT64_MAX - load->growth
                           ? UINT64_MAX
                           : load->growth + (e->weight - grown);
    }
  }
}

/* ---- the kind ---- */

static int slots_claims(const char *target, const hl__ask_t *ask) {
  if (hl__is_url(target))
    return 0;
  return ask == NULL || ask->slots != 1;
}

static void drop(int *fd) {
  if (*fd >= 0) {
    int saved = errno;
    close(*fd);
    errno = saved;
  }
  *fd = -1;
}

static void unwatch(slots_state_t *ss) {
  if (ss->ino >= 0) {
    if (ss->wd_main >= 0)
      inotify_rm_watch(ss->ino, ss->wd_main);
    if (ss->wd_table >= 0)
      inotify_rm_watch(ss->ino, ss->wd_table);
  }
  ss->wd_main = ss->wd_table = -1;
}

static void slots_close(void *state, int owner);

static int slots_open(const char *path, void **statep) {
  slots_state_t *ss = calloc(1, sizeof(*ss));
  if (ss == NULL)
    return -ENOMEM;
  ss->fd = ss->tfd = ss->ino = -1;
  ss->wd_main = ss->wd_table = -1;
  ss->idx = -1;
  ss->path = strdup(path);
  ss->tpath = ss->path ? table_path(path) : NULL;
  if (ss->tpath == NULL) {
    slots_close(ss, 1);
    return -ENOMEM;
  }
  /* Check both files now so that a bad path is reported at open. */
  intptr_t fd;
  int ro, rc = hl__os_open(path, &fd, &ro);
  if (rc == 0) {
    hl__os_close(fd);
    rc = ro ? -EACCES : table_open(ss->tpath, 0, &ss->tfd); /* no deadline: patience only */
    /* Busy: the table is there and others are admitting (a crowd, or
     * clients slowed down, as under valgrind).  The path is good; waiting
     * for the byte is the acquisition's business, within its deadline. */
    if (rc == HL_EBUSY)
      rc = 0;
  }
  drop(&ss->tfd);
  if (rc < 0) {
    slots_close(ss, 1);
    return rc;
  }
  *statep = ss;
  return 0;
}

static int ensure_open(slots_state_t *ss, double deadline) {
  int rc;
  if (ss->fd < 0) {
    intptr_t fd;
    int ro;
    if ((rc = hl__os_open(ss->path, &fd, &ro)) < 0)
      return rc;
    ss->fd = (int)fd;
    if ((rc = hl__os_fileid_fd(fd, &ss->id)) < 0) {
      drop(&ss->fd);
      return rc;
    }
  }
  if (ss->tfd < 0 && (rc = table_open(ss->tpath, deadline, &ss->tfd)) < 0)
    return rc;
  return 0;
}

static void arm(slots_state_t *ss) {
  if (ss->ino < 0)
    ss->ino = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (ss->ino < 0)
    return;
  uint32_t mask = IN_CLOSE_WRITE | IN_CLOSE_NOWRITE | IN_DELETE_SELF | IN_MOVE_SELF |
                  IN_DONT_FOLLOW;
  if (ss->wd_main < 0)
    ss->wd_main = inotify_add_watch(ss->ino, ss->path, mask);
  if (ss->wd_table < 0)
    ss->wd_table = inotify_add_watch(ss->ino, ss->tpath, mask | IN_MODIFY);
  char buf[4096];
  while (read(ss->ino, buf, sizeof(buf)) > 0) {
  }
}

static void fill_entry(slots_state_t *ss, const hl__ask_t *ask, entry_t *e, uint32_t state) {
  if (ss->self.pid != hl__os_getpid()) {
    memset(&ss->self, 0, sizeof(ss->self));
    hl__os_self_record(&ss->self);
  }
  memset(e, 0, sizeof(*e));
  e->state = state;
  e->exclusive = (uint32_t)hl__admit_exclusive(ask);
  e->pid = ss->self.pid;
  e->start = ss->self.start;
  e->ticket = ss->ticket;
  e->weight = ask->weight;
  e->budget = ask->budget;
  e->slots = ask->slots;
  e->since = hl__os_wallclock();
  snprintf(e->weight_source, sizeof(e->weight_source), "%s", ask->weight_source);
  snprintf(e->host, sizeof(e->host), "%.63s", ss->self.host);
  snprintf(e->label, sizeof(e->label), "%s", ask->label);
  for (char *c = e->label; *c; c++)
    if ((unsigned char)*c < 0x20 || *c == 0x7f)
      *c = ' ';
}

/* Under the admission lock: take a free entry and the next ticket. */
static int enqueue(slots_state_t *ss, const hl__ask_t *ask) {
  header_t h;
  int rc = pread_all(ss->tfd, &h, sizeof(h), 0);
  if (rc < 0)
    return rc;
  for (int i = 0; i < MAX_ENTRIES; i++) {
    rc = ofd_lock(ss->tfd, entry_off(i), F_WRLCK);
    if (rc == HL_EBUSY)
      continue;
    if (rc < 0)
      return rc;
    ss->idx = i;
    ss->ticket = h.next_ticket++;
    if ((uint32_t)i >= h.high)
      h.high = (uint32_t)i + 1;
    entry_t e;
    fill_entry(ss, ask, &e, E_WAITING);
    if ((rc = pwrite_all(ss->tfd, &e, sizeof(e), entry_off(i))) < 0 ||
        (rc = pwrite_all(ss->tfd, &h, sizeof(h), 0)) < 0) {
      (void)ofd_lock(ss->tfd, entry_off(i), F_UNLCK);
      ss->idx = -1;
      return rc;
    }
    return 0;
  }
  return HL_EFULL; /* MAX_ENTRIES holders and waiters at once */
}

/* Under the admission lock: may we go now?  1 yes, 0 no, <0 error. */
static int decide(slots_state_t *ss, const hl__ask_t *ask) {
  snapshot_t s;
  memset(&s, 0, sizeof(s));
  int rc = snapshot(ss->tfd, ss->idx, 1, &s);
  if (rc < 0) {
    free(s.e);
    return rc;
  }
  int ahead = 0;
  for (int i = 0; i < s.n; i++)
    if (i != ss->idx && s.e[i].state == E_WAITING && s.e[i].ticket < ss->ticket)
      ahead++;
  rc = 0;
  if (ahead == 0) {
    kview_t kv;
    kernel_view(&ss->id, &kv);
    /* An exclusive holder or waiter on the lock file comes first. */
    if (kv.writer == 0 && kv.write_waiters == 0) {
      hl__load_t load;
      int need_live = hl__admit_by_memory(ask) && ask->budget == 0 && ask->weight > 0;
      load_of(&s, ss->idx, need_live, &load);
      uint64_t live = 0;
      int live_ok = need_live && hl__admit_probe(&live) == 0;
      rc = hl__admit(ask, &load, live_ok, live, NULL);
    }
  }
  free(s.e);
  return rc;
}

static int count_ahead(slots_state_t *ss);

/* Tests widen the window between the decision and the registration, where
 * two newcomers would both take the last slot without the admission lock. */
static unsigned admit_delay_us;
void hl__slots_set_admit_delay(unsigned us) { admit_delay_us = us; }
static int pass_stopped = 1;
void hl__slots_set_pass_stopped(int on) { pass_stopped = on; }

static int slots_try(void *state, const hl__ask_t *ask, int waiting) {
  slots_state_t *ss = state;
  int rc = ensure_open(ss, ask->deadline);
  if (rc < 0)
    return rc;
  if (waiting)
    arm(ss); /* before the attempt: a change after it wakes us */
  if (ss->idx >= 0 && count_ahead(ss) > 0)
    return HL_EBUSY; /* not first: no need to take the admission lock */
  if ((rc = admit_lock(ss->tfd, ss->tpath, ask->deadline)) < 0)
    return rc;
  if (ss->idx < 0 && (rc = enqueue(ss, ask)) < 0)
    goto out;
  rc = decide(ss, ask);
  if (rc <= 0) {
    rc = rc < 0 ? rc : HL_EBUSY;
    goto out;
  }
  if (admit_delay_us)
    usleep(admit_delay_us);
  /* The table says yes; the kernel has the last word on the lock file. */
  if (flock(ss->fd, LOCK_SH | LOCK_NB) < 0) {
    rc = errno == EWOULDBLOCK ? HL_EBUSY : -errno;
    goto out;
  }
  hl__fileid_t now;
  if (hl__os_fileid_path(ss->path, &now) != 0 || now.dev != ss->id.dev || now.ino != ss->id.ino) {
    /* The lock file was deleted or replaced: our shared lock excludes
     * nobody.  Start over on the new file at the next try. */
    flock(ss->fd, LOCK_UN);
    drop(&ss->fd);
    rc = HL_EBUSY;
    goto out;
  }
  entry_t e;
  fill_entry(ss, ask, &e, E_HOLDING);
  if (hl__admit_by_memory(ask)) {
    uint64_t rss = 0;
    if (hl_mem_tree_rss(e.pid, &rss) == 0)
      e.baseline_rss = rss;
  }
  if ((rc = pwrite_all(ss->tfd, &e, sizeof(e), entry_off(ss->idx))) < 0) {
    flock(ss->fd, LOCK_UN);
    goto out;
  }
  ss->held = 1;
  unwatch(ss);
  rc = 0;
out:
  (void)ofd_lock(ss->tfd, ADMIT_BYTE, F_UNLCK);
  return rc;
}

static int slots_wait(void *state, int ms) {
  slots_state_t *ss = state;
  if (ss->ino < 0 || (ss->wd_main < 0 && ss->wd_table < 0)) {
    int rc = hl__os_sleep_ms(ms < 10 ? ms : 10);
    return rc < 0 ? rc : 1;
  }
  struct pollfd p = {.fd = ss->ino, .events = POLLIN};
  int n = poll(&p, 1, ms);
  if (n < 0)
    return -errno;
  if (n == 0)
    return 0;
  char buf[4096];
  while (read(ss->ino, buf, sizeof(buf)) > 0) {
  }
  return 1;
}

/* Clear our entry and close both files (the closes wake the others).  The
 * clearing is tidiness only (an entry whose byte nobody locks is dead), so
 * a stuck admission lock costs it, never the release. */
static void leave(slots_state_t *ss) {
  if (ss->tfd >= 0 && ss->idx >= 0 && admit_lock(ss->tfd, NULL, 0) == 0) {
    uint32_t zero = 0;
    (void)pwrite_all(ss->tfd, &zero, sizeof(zero), entry_off(ss->idx));
    (void)ofd_lock(ss->tfd, ADMIT_BYTE, F_UNLCK);
  }
  ss->idx = -1;
  drop(&ss->tfd); /* drops our entry's byte lock with it */
  drop(&ss->fd);  /* drops the shared flock */
}

static void slots_cancel(void *state) {
  slots_state_t *ss = state;
  unwatch(ss);
  if (!ss->held)
    leave(ss);
}

static int slots_release(void *state) {
  slots_state_t *ss = state;
  ss->held = 0;
  leave(ss);
  unwatch(ss);
  return 0;
}

static int slots_relabel(void *state, const hl__ask_t *ask) {
  slots_state_t *ss = state;
  if (!ss->held || ss->idx < 0)
    return 0;
  entry_t e;
  int rc = pread_all(ss->tfd, &e, sizeof(e), entry_off(ss->idx));
  if (rc < 0)
    return rc;
  snprintf(e.label, sizeof(e.label), "%s", ask->label);
  for (char *c = e.label; *c; c++)
    if ((unsigned char)*c < 0x20 || *c == 0x7f)
      *c = ' ';
  return pwrite_all(ss->tfd, e.label, sizeof(e.label),
                    entry_off(ss->idx) + (off_t)offsetof(entry_t, label));
}

static int slots_identity(void *state, uint64_t id[2]) {
  slots_state_t *ss = state;
  if (ss->id.dev == 0 && ss->id.ino == 0)
    return -EBADF;
  id[0] = ss->id.dev;
  id[1] = ss->id.ino;
  return 0;
}

static intptr_t slots_fd(void *state) { return ((slots_state_t *)state)->fd; }

/* Both: a command that inherits the lock file's descriptor alone would hold
 * the shared flock while its entry died with a killed parent, and slot
 * counting would let one more in while it runs.  The entry's byte lock
 * belongs to the table's open file description, so it lives for as long
 * as any process (the parent, the command, its children) keeps that open,
 * and dies with the last of them. */
static int slots_fds(void *state, intptr_t *out, int max) {
  slots_state_t *ss = state;
  int n = 0;
  if (ss->fd >= 0 && n < max)
    out[n++] = ss->fd;
  if (ss->tfd >= 0 && n < max)
    out[n++] = ss->tfd;
  return n;
}

static void slots_close(void *state, int owner) {
  slots_state_t *ss = state;
  if (owner && ss->held)
    (void)slots_release(ss);
  /* In a forked child: close descriptors only.  The OFDs stay open in the
   * parent, so neither its entry nor its shared flock is dropped. */
  drop(&ss->tfd);
  drop(&ss->fd);
  drop(&ss->ino);
  free(ss->path);
  free(ss->tpath);
  free(ss);
}

static void add_queued(hl_status_t *st, const entry_t *e) {
  int k;
  for (k = 0; k < st->nwaiters; k++)
    if (st->waiters[k].pid == e->pid)
      break;
  hl_waiter_t *w = &st->waiters[k];
  if (k == st->nwaiters) { /* not seen watching or blocked: queued only */
    if (st->nwaiters >= HL_MAX_WAITERS)
      return;
    st->nwaiters++;
    memset(w, 0, sizeof(*w));
    w->pid = (long)e->pid;
    w->how = 'q';
  } /* else how it waits ('w': inotify) stays; the ticket says it queues */
  w->exclusive = e->exclusive != 0;
  w->weight = e->weight;
  w->ticket = e->ticket;
  snprintf(w->weight_source, sizeof(w->weight_source), "%s", e->weight_source);
  snprintf(w->label, sizeof(w->label), "%.255s", e->label);
}

static int slots_status(const char *path, hl_status_t *st, int flags) {
  int rc = hl__flock_status(path, st, flags);
  if (rc < 0)
    return rc;
  st->kind = hl__kind_flock.name; /* until slot holders or waiters show */
  hl__fileid_t id;
  if (hl__os_fileid_path(path, &id) < 0)
    return 0;
  kview_t kv;
  kernel_view(&id, &kv);
  if (kv.writer == 0 && kv.readers > 0) {
    /* Shared holders only: no single holder, and the main file's record
     * (if any) is not theirs. */
    st->shared = 1;
    st->holder_pid = 0;
    st->nholders = 0;
    if (st->has_record) {
      st->has_record = 0;
      st->stale_record = 1;
    }
    st->held_for = -1;
  }
  char *tpath = table_path(path);
  if (tpath == NULL)
    return 0;
  int tfd = table_open_ro(tpath);
  free(tpath);
  if (tfd < 0) {
    st->kind = hl__kind_flock.name; /* no table: nobody ever held a slot here */
    return 0;
  }
  snapshot_t s;
  memset(&s, 0, sizeof(s));
  header_t h;
  if (pread_all(tfd, &h, sizeof(h), 0) < 0 ||
      memcmp(h.magic, TABLE_MAGIC, sizeof(TABLE_MAGIC) - 1) != 0 ||
      snapshot(tfd, -1, 0, &s) < 0) {
    free(s.e);
    close(tfd);
    return 0;
  }
  hl__fileid_t tid;
  int have_tid = hl__os_fileid_fd(tfd, &tid) == 0;
  close(tfd);
  double now = hl__os_wallclock();
  uint64_t budget = 0;
  int memory = 0;
  for (int i = 0; i < s.n; i++) {
    const entry_t *e = &s.e[i];
    if (e->state == E_WAITING) {
      add_queued(st, e);
    } else if (e->state == E_HOLDING) {
      if (e->budget > budget)
        budget = e->budget;
      memory |= e->weight > 0 || e->slots == 0 || e->budget > 0;
      if (st->nholders >= HL_MAX_HOLDERS)
        continue;
      hl_holder_t *ho = &st->holders[st->nholders++];
      memset(ho, 0, sizeof(*ho));
      ho->pid = (long)e->pid;
      /* Its heavylock was killed while the command it ran still holds
       * the entry (inherited descriptors): name the process that does. */
      if (ho->pid == 0 || !hl__os_proc_alive(ho->pid)) {
        long owner = have_tid ? hl__os_range_locker(&tid, (unsigned long long)entry_off(i)) : 0;
        ho->pid = owner > 0 ? owner : ho->pid;
      }
      ho->exclusive = e->exclusive != 0;
      ho->weight = e->weight;
      snprintf(ho->weight_source, sizeof(ho->weight_source), "%s", e->weight_source);
      ho->held_for = e->since > 0 && e->since <= now ? now - e->since : -1;
      snprintf(ho->host, sizeof(ho->host), "%s", e->host);
      snprintf(ho->label, sizeof(ho->label), "%s", e->label);
      if (!(flags & HL__STATUS_QUICK))
        (void)hl_mem_tree_rss(ho->pid, &ho->rss);
      st->held = 1;
      st->shared = 1;
    }
  }
  /* A holder watching the files is not a waiter. */
  for (int i = 0; i < st->nwaiters;) {
    int holds = 0;
    for (int j = 0; j < st->nholders; j++)
      holds |= st->holders[j].pid == st->waiters[i].pid;
    if (holds && st->waiters[i].how == 'w')
      st->waiters[i] = st->waiters[--st->nwaiters];
    else
      i++;
  }
  /* Sort the queue by ticket (first come first). */
  for (int i = 1; i < st->nwaiters; i++)
    for (int j = i; j > 0; j--) {
      hl_waiter_t *a = &st->waiters[j - 1], *b = &st->waiters[j];
      uint64_t ta = a->ticket ? a->ticket : UINT64_MAX;
      uint64_t tb = b->ticket ? b->ticket : UINT64_MAX;
      if (ta <= tb)
        break;
      hl_waiter_t tmp = *a;
      *a = *b;
      *b = tmp;
    }
  /* The kind in use now: slots while shared holders hold or slot waiters
   * queue; an exclusive holder (heavylock, flock(1), filelock) and its
   * queue are the flock kind's, table or not. */
  int slot_use = st->shared;
  for (int i = 0; i < st->nwaiters && !slot_use; i++)
    slot_use = st->waiters[i].ticket > 0 && !st->waiters[i].exclusive;
  st->kind = slot_use ? hl__kind_slots.name : hl__kind_flock.name;
  st->budget = budget;
  if (!(flags & HL__STATUS_QUICK)) {
    hl__load_t load;
    load_of(&s, -1, budget == 0 && memory, &load);
    hl__ask_t probe;
    memset(&probe, 0, sizeof(probe));
    probe.budget = budget;
    probe.slots = 0;
    uint64_t live = 0, free_now = 0;
    int live_ok = budget > 0 || hl__admit_probe(&live) == 0;
    if (live_ok) {
      (void)hl__admit(&probe, &load, live_ok, live, &free_now);
      st->free_bytes = free_now;
      st->free_known = 1;
    }
  }
  free(s.e);
  return 0;
}

/* ---- the queue alone, for the flock kind's waiters ----
 * An exclusive waiter of the flock kind takes a ticket in the same table, so
 * that heavylock's exclusive waiters are served first come first served
 * too (Linux wakes every flock waiter at a release and lets them race), and
 * so that slot newcomers hold off behind it instead of starving it. */

struct hl__queue_s {
  slots_state_t ss;
};

int hl__queue_join(const char *lockpath, const hl__ask_t *ask, hl__queue_t **qp) {
  *qp = NULL;
  hl__queue_t *q = calloc(1, sizeof(*q));
  if (q == NULL)
    return -ENOMEM;
  q->ss.fd = q->ss.tfd = q->ss.ino = -1; /* never close(0) on a failure below */
  q->ss.wd_main = q->ss.wd_table = -1;
  q->ss.idx = -1;
  q->ss.tpath = table_path(lockpath);
  int rc = q->ss.tpath ? table_open(q->ss.tpath, ask->deadline, &q->ss.tfd) : -ENOMEM;
  if (rc == 0 && (rc = admit_lock(q->ss.tfd, q->ss.tpath, ask->deadline)) == 0) {
    rc = enqueue(&q->ss, ask);
    (void)ofd_lock(q->ss.tfd, ADMIT_BYTE, F_UNLCK);
  }
  if (rc < 0) {
    if (q->ss.tfd >= 0)
      close(q->ss.tfd);
    free(q->ss.tpath);
    free(q);
    return rc;
  }
  *qp = q;
  return 0;
}

/* Live waiters with a lower ticket than ours.  Read without the admission
 * lock: tickets only grow, so no entry ahead of us can appear, and one
 * that leaves just as we read costs at most one more wake-up.  This keeps a
 * crowd of waiters, all woken by one release, from queueing up on the
 * admission lock only to learn they are not first. */
/* Earlier waiters still in line.  A stopped one (Ctrl-Z, SIGSTOP, a
 * debugger) is passed over while it stays stopped: alive, its entry stays
 * live, and counting it would hold every later waiter while the lock is
 * free.  It keeps its ticket and is first again once it continues. */
static int count_ahead(slots_state_t *ss) {
  snapshot_t s;
  memset(&s, 0, sizeof(s));
  int ahead = 0;
  if (snapshot(ss->tfd, ss->idx, 0, &s) == 0)
    for (int i = 0; i < s.n; i++)
      if (i != ss->idx && s.e[i].state == E_WAITING && s.e[i].ticket < ss->ticket &&
          !(pass_stopped && hl__os_pid_stopped((long)s.e[i].pid, s.e[i].start)))
        ahead++;
  free(s.e);
  return ahead;
}

int hl__queue_first(hl__queue_t *q) { return count_ahead(&q->ss) == 0; }

int hl__queue_others(const char *lockpath) {
  char *tpath = table_path(lockpath);
  if (tpath == NULL)
    return 0;
  int tfd = table_open_ro(tpath);
  free(tpath);
  if (tfd < 0)
    return 0; /* no table, no queue */
  snapshot_t s;
  memset(&s, 0, sizeof(s));
  int waiting = 0;
  if (snapshot(tfd, -1, 0, &s) == 0)
    for (int i = 0; i < s.n; i++)
      waiting += s.e[i].state == E_WAITING;
  free(s.e);
  close(tfd);
  return waiting > 0;
}

void hl__queue_leave(hl__queue_t *q) {
  if (q == NULL)
    return;
  leave(&q->ss);
  free(q->ss.tpath);
  free(q);
}

const hl__kind_t hl__kind_slots = {
    .version = HL__KIND_VERSION,
    .name = "slots",
    .claims = slots_claims,
    .open = slots_open,
    .try_acquire = slots_try,
    .wait = slots_wait,
    .acquire_blocking = NULL,
    .cancel = slots_cancel,
    .release = slots_release,
    .relabel = slots_relabel,
    .identity = slots_identity,
    .fd = slots_fd,
    .fds = slots_fds,
    .status = slots_status,
    .close = slots_close,
};
