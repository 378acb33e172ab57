/*
 * proc-linux.c - what Linux tells through /proc: the kernel's lock table,
 * process identity, memory.  Other systems build proc-none.c instead.
 *
 * /proc/locks lists one line per lock:
 *     1: FLOCK  ADVISORY  WRITE 4301 fe:00:2148681 0 EOF
 *     1: -> FLOCK  ADVISORY  WRITE 4305 fe:00:2148681 0 EOF
 * "->" lines are waiters blocked in flock(2) behind the line above.  The
 * device is "major:minor" in hex, the inode in decimal.  The pid is the one
 * that took the lock; a lock inherited across fork() still shows the taker.
 * Waiters that poll (filelock) do not appear; waiters that watch the file
 * with inotify (heavylock's timed waits) are found in /proc/PID/fdinfo,
 * whose "inotify" lines give the watched inode in hex and the device in the
 * kernel's internal (major << 20 | minor) form.
 */
#define _GNU_SOURCE
#include "os.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static long read_small(const char *path, char *buf, size_t len) {
  long n = hl__os_read_head(path, buf, len - 1);
  buf[n > 0 ? n : 0] = '\0';
  return n;
}

/* A process's state letter and start time (clock ticks) from
 * /proc/PID/stat; 0 when it cannot be read. */
static unsigned long long stat_state_start(long pid, char *state) {
  char path[64], buf[1024];
  *state = '\0';
  snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
  if (read_small(path, buf, sizeof(buf)) <= 0)
    return 0;
  /* The command name may hold spaces and ')': fields start after the last ')'. */
  char *p = strrchr(buf, ')');
  if (p == NULL)
    return 0;
  p++;
  *state = p[0] == ' ' ? p[1] : '\0';
  /* field 3 (state) is the first after ')'; starttime is field 22. */
  for (int field = 3; field < 22 && p; field++)
    p = strchr(p + 1, ' ');
  return p ? strtoull(p + 1, NULL, 10) : 0;
}

unsigned long long hl__os_proc_start(long pid) {
  char state;
  return stat_state_start(pid, &state);
}

int hl_proc_cmdline(long pid, char *buf, size_t len) {
  char path[64];
  if (len == 0)
    return -EINVAL;
  snprintf(path, sizeof(path), "/proc/%ld/cmdline", pid);
  long n = hl__os_read_head(path, buf, len - 1);
  if (n < 0) {
    buf[0] = '\0';
    return (int)n;
  }
  while (n > 0 && buf[n - 1] == '\0')
    n--;
  for (long i = 0; i < n; i++)
    if (buf[i] == '\0')
      buf[i] = ' ';
  buf[n] = '\0';
  /* Arguments are whatever bytes a program was given: show them as valid
   * UTF-8 without control characters, like every other field we print. */
  hl__utf8_clean(buf, ' ');
  return 0;
}

static void add_waiter(hl_status_t *st, long pid, char how) {
  for (int i = 0; i < st->nwaiters; i++)
    if (st->waiters[i].pid == pid) {
      /* A timed waiter first in line is also blocked in flock(2), on a
       * thread of its own (lock.c): its watch says what it is. */
      if (how == 'w')
        st->waiters[i].how = 'w';
      return;
    }
  if (st->nwaiters < HL_MAX_WAITERS) {
    st->waiters[st->nwaiters].pid = pid;
    st->waiters[st->nwaiters].how = how;
    st->nwaiters++;
  }
}

/* Every descriptor of every other process (not `skip`): fn(pid, fd name,
 * ctx) until it returns nonzero, which is returned.  The one walk over
 * /proc/PID/fd for the scans below. */
static int each_proc_fd(long skip, int (*fn)(long pid, const char *fd, void *ctx), void *ctx) {
  DIR *proc = opendir("/proc");
  if (proc == NULL)
    return 0;
  long self = (long)getpid();
  int stop = 0;
  struct dirent *de;
  while (!stop && (de = readdir(proc)) != NULL) {
    if (!isdigit((unsigned char)de->d_name[0]))
      continue;
    long pid = strtol(de->d_name, NULL, 10);
    if (pid == self || pid == skip)
      continue;
    char dpath[64];
    snprintf(dpath, sizeof(dpath), "/proc/%ld/fd", pid);
    DIR *fds = opendir(dpath);
    if (fds == NULL)
      continue;
    struct dirent *fe;
    while (!stop && (fe = readdir(fds)) != NULL)
      if (fe->d_name[0] != '.')
        stop = fn(pid, fe->d_name, ctx);
    closedir(fds);
  }
  closedir(proc);
  return stop;
}

typedef struct {
  const hl__fileid_t *id;
  unsigned long long sdev;
  hl_status_t *st;
} inotify_scan_t;

static int inotify_fd(long pid, const char *fd, void *ctx) {
  inotify_scan_t *sc = ctx;
  char lpath[320], target[64];
  snprintf(lpath, sizeof(lpath), "/proc/%ld/fd/%s", pid, fd);
  ssize_t n = readlink(lpath, target, sizeof(target) - 1);
  if (n <= 0)
    return 0;
  target[n] = '\0';
  if (strcmp(target, "anon_inode:inotify") != 0)
    return 0;
  char ipath[320], info[4096];
  snprintf(ipath, sizeof(ipath), "/proc/%ld/fdinfo/%s", pid, fd);
  if (read_small(ipath, info, sizeof(info)) <= 0)
    return 0;
  for (char *line = strstr(info, "inotify "); line; line = strstr(line + 1, "inotify ")) {
    char *pi = strstr(line, "ino:"), *ps = strstr(line, "sdev:");
    if (pi == NULL || ps == NULL)
      break;
    if (strtoull(pi + 4, NULL, 16) == sc->id->ino && strtoull(ps + 5, NULL, 16) == sc->sdev) {
      add_waiter(sc->st, pid, 'w');
      break;
    }
  }
  return 0;
}

/* Processes with an inotify watch on the file: heavylock's timed waiters. */
static void scan_inotify_waiters(const hl__fileid_t *id, hl_status_t *st) {
  inotify_scan_t sc = {
      id, ((unsigned long long)major((dev_t)id->dev) << 20) | minor((dev_t)id->dev), st};
  each_proc_fd(st->holder_pid, inotify_fd, &sc);
}

/* Blocked in wait4/waitid: the kernel function it sleeps in is do_wait.  A
 * process that polls with waitpid(WNOHANG) passes through do_wait too, so
 * one look is not enough to be sure: with `confirm` it must be there on
 * three looks 2 ms apart (lock.c asks so only of an ancestor that holds the
 * lock, which is rare). */
int hl__os_in_child_wait(long pid, int confirm) {
  char path[64], buf[64];
  snprintf(path, sizeof(path), "/proc/%ld/wchan", pid);
  for (int look = 0; look < (confirm ? 3 : 1); look++) {
    if (look && hl__os_sleep_ms(2) < 0)
      return -EINTR; /* the caller's signal handler must get to run */
    if (read_small(path, buf, sizeof(buf)) <= 0 || strcmp(buf, "do_wait") != 0)
      return 0;
  }
  return 1;
}

int hl__os_pid_stopped(long pid, unsigned long long start) {
  char state;
  if (stat_state_start(pid, &state) != start)
    return 0; /* that pid is another process now */
  return state == 'T' || state == 't';
}

long hl__os_parent_pid(long pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
  if (read_small(path, buf, sizeof(buf)) <= 0)
    return 0;
  char *p = strrchr(buf, ')');
  char state;
  long ppid;
  if (p == NULL || sscanf(p + 1, " %c %ld", &state, &ppid) != 2)
    return 0;
  return ppid;
}

/* One lock line, as in /proc/locks or after "lock:" in fdinfo. */
typedef struct {
  int blocked;
  long pid;
  unsigned maj, min;
  unsigned long long ino;
} lock_line_t;

/* Parse "1: FLOCK  ADVISORY  WRITE 4301 fe:00:2148681 0 EOF"; 1 when it is
 * a FLOCK line. */
static int parse_lock_line(const char *line, lock_line_t *l) {
  const char *p = strchr(line, ':');
  if (p == NULL)
    return 0;
  p++;
  while (*p == ' ')
    p++;
  l->blocked = 0;
  if (strncmp(p, "->", 2) == 0) {
    l->blocked = 1;
    p += 2;
  }
  char type[16], adv[16], mode[16];
  if (sscanf(p, "%15s %15s %15s %ld %x:%x:%llu", type, adv, mode, &l->pid, &l->maj, &l->min,
             &l->ino) != 7)
    return 0;
  return strcmp(type, "FLOCK") == 0;
}

/* Does descriptor `fd` of `pid` hold a flock on (maj:min, ino)?  Its fdinfo
 * lists the locks that belong to that open file ("lock:" lines; a blocked
 * waiter has none).  With `link`, the descriptor must also point at that
 * path, which is checked first (one readlink, no fdinfo read). */
static int fd_holds(long pid, const char *fd, const lock_line_t *want, const char *link) {
  char path[320], info[4096];
  if (link) {
    char target[HL_PATH_MAX + 16];
    snprintf(path, sizeof(path), "/proc/%ld/fd/%s", pid, fd);
    ssize_t n = readlink(path, target, sizeof(target) - 1);
    if (n <= 0)
      return 0;
    target[n] = '\0';
    if (strcmp(target, link) != 0)
      return 0;
  }
  snprintf(path, sizeof(path), "/proc/%ld/fdinfo/%s", pid, fd);
  if (read_small(path, info, sizeof(info)) <= 0)
    return 0;
  for (char *p = strstr(info, "lock:"); p; p = strstr(p + 5, "lock:")) {
    lock_line_t l;
    if (parse_lock_line(p + 5, &l) && !l.blocked && l.maj == want->maj && l.min == want->min &&
        l.ino == want->ino)
      return 1;
  }
  return 0;
}

/* The process that holds the flock `want` through one of its descriptors
 * (pointing at `link`, when given), or 0.  /proc/locks names the process
 * that *took* the lock; when it has died and a child inherited the
 * descriptor (heavylock run, flock(1)), the child is found by scanning
 * every process, but only when `scan_all`: that costs milliseconds. */
static long lock_owner(const lock_line_t *want, const char *link, int scan_all) {
  DIR *proc = NULL;
  long pid = want->pid;
  struct dirent *de = NULL;
  for (;;) {
    char dpath[64];
    snprintf(dpath, sizeof(dpath), "/proc/%ld/fd", pid);
    DIR *fds = opendir(dpath);
    if (fds != NULL) {
      struct dirent *fe;
      while ((fe = readdir(fds)) != NULL) {
        if (fe->d_name[0] != '.' && fd_holds(pid, fe->d_name, want, link)) {
          closedir(fds);
          if (proc)
            closedir(proc);
          return pid;
        }
      }
      closedir(fds);
    }
    if (!scan_all)
      return 0;
    if (proc == NULL && (proc = opendir("/proc")) == NULL)
      return 0;
    do
      de = readdir(proc);
    while (de && (!isdigit((unsigned char)de->d_name[0]) ||
                  strtol(de->d_name, NULL, 10) == want->pid));
    if (de == NULL) {
      closedir(proc);
      return 0;
    }
    pid = strtol(de->d_name, NULL, 10);
  }
}

/* A byte-range lock line (POSIX or OFDLCK, not a waiter's) on the file that
 * covers byte `off`: 1 and its pid as listed (-1 for an OFD lock). */
static int range_line_covers(const char *line, const hl__fileid_t *id, unsigned long long off,
                             long *pid) {
  const char *p = strchr(line, ':');
  if (p == NULL)
    return 0;
  p++;
  while (*p == ' ')
    p++;
  if (strncmp(p, "->", 2) == 0)
    return 0;
  char type[16], adv[16], mode[16], end[24];
  unsigned maj, min;
  unsigned long long ino, start;
  if (sscanf(p, "%15s %15s %15s %ld %x:%x:%llu %llu %23s", type, adv, mode, pid, &maj, &min,
             &ino, &start, end) != 9)
    return 0;
  if (strcmp(type, "POSIX") != 0 && strcmp(type, "OFDLCK") != 0)
    return 0;
  if (maj != major((dev_t)id->dev) || min != minor((dev_t)id->dev) || ino != id->ino)
    return 0;
  return start <= off && (strcmp(end, "EOF") == 0 || strtoull(end, NULL, 10) >= off);
}

typedef struct {
  const hl__fileid_t *id;
  unsigned long long off;
  long found;
} range_scan_t;

static int range_fd(long pid, const char *fd, void *ctx) {
  range_scan_t *sc = ctx;
  char ipath[320], info[4096];
  long listed;
  snprintf(ipath, sizeof(ipath), "/proc/%ld/fdinfo/%s", pid, fd);
  if (read_small(ipath, info, sizeof(info)) <= 0)
    return 0;
  for (char *q = strstr(info, "lock:"); q; q = strstr(q + 5, "lock:"))
    if (range_line_covers(q + 5, sc->id, sc->off, &listed)) {
      sc->found = pid;
      return 1;
    }
  return 0;
}

long hl__os_range_locker(const hl__fileid_t *id, unsigned long long off) {
  /* POSIX locks name their process in /proc/locks. */
  FILE *f = fopen("/proc/locks", "re");
  if (f == NULL)
    return 0;
  char line[512];
  long pid = 0, found = 0;
  while (found <= 0 && fgets(line, sizeof(line), f))
    if (range_line_covers(line, id, off, &pid))
      found = pid;
  fclose(f);
  if (found > 0)
    return found;
  /* OFD locks show -1 there: find the process whose descriptor carries it
   * (its fdinfo lists the locks of that open file description). */
  range_scan_t sc = {id, off, 0};
  return each_proc_fd(0, range_fd, &sc) ? sc.found : 0;
}

/* A process's own descriptor table, not the kernel's lock table: reading
 * /proc/locks takes a lock that every flock(2) on the system also takes and
 * costs milliseconds on some kernels; this costs a stat per descriptor, and
 * an fdinfo read only for a descriptor on the lock file. */
int hl__os_pid_holds(long pid, const hl__fileid_t *id, intptr_t skip_fd) {
  char dpath[64];
  int self = pid == (long)getpid();
  snprintf(dpath, sizeof(dpath), self ? "/proc/self/fd" : "/proc/%ld/fd", pid);
  DIR *fds = opendir(dpath);
  if (fds == NULL)
    return errno == EACCES || errno == EPERM ? -EACCES : errno == ENOENT ? 0 : -ENOSYS;
  lock_line_t want = {0, pid, major((dev_t)id->dev), minor((dev_t)id->dev), id->ino};
  int dfd = dirfd(fds), found = 0;
  struct dirent *fe;
  while (!found && (fe = readdir(fds)) != NULL) {
    if (fe->d_name[0] == '.')
      continue;
    long fd = strtol(fe->d_name, NULL, 10);
    if ((self && fd == dfd) || fd == (long)skip_fd)
      continue;
    struct stat st;
    if (self ? fstat((int)fd, &st) < 0 : fstatat(dfd, fe->d_name, &st, 0) < 0)
      continue;
    if ((uint64_t)st.st_dev != id->dev || (uint64_t)st.st_ino != id->ino)
      continue;
    found = fd_holds(pid, fe->d_name, &want, NULL);
  }
  closedir(fds);
  return found;
}

int hl__os_lock_table(const hl__fileid_t *id, hl_status_t *st, int quick) {
  FILE *f = fopen("/proc/locks", "re");
  if (f == NULL)
    return -ENOSYS;
  char line[512];
  lock_line_t l, held = {0};
  unsigned want_major = major((dev_t)id->dev), want_minor = minor((dev_t)id->dev);
  while (fgets(line, sizeof(line), f)) {
    if (!parse_lock_line(line, &l))
      continue;
    if (l.maj != want_major || l.min != want_minor || l.ino != id->ino)
      continue;
    if (l.blocked) {
      add_waiter(st, l.pid, 'b');
    } else {
      st->held = 1;
      if (st->holder_pid == 0)
        st->holder_pid = l.pid, held = l;
    }
  }
  fclose(f);
  if (st->held && !hl__os_proc_alive(st->holder_pid)) {
    long owner = lock_owner(&held, NULL, 1);
    if (owner)
      st->holder_pid = owner;
  }
  if (!quick)
    scan_inotify_waiters(id, st);
  return 0;
}

int hl__os_ghost_holder(const char *path, const hl__fileid_t *cur, long *pid) {
  /* Candidates first, from the lock table alone: exclusive flocks on the
   * lock's device, other than the file we hold.  Usually there are none,
   * and this costs one read of /proc/locks. */
  struct stat ds;
  const char *slash = strrchr(path, '/');
  const char *name = slash ? slash + 1 : path;
  char dir[4096];
  if (slash == path)
    snprintf(dir, sizeof(dir), "/");
  else
    snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
  dev_t dev;
  if (cur)
    dev = (dev_t)cur->dev;
  else if (stat(dir, &ds) == 0)
    dev = ds.st_dev;
  else
    return 0;
  FILE *f = fopen("/proc/locks", "re");
  if (f == NULL)
    return 0;
  char line[512];
  lock_line_t cand[16];
  int n = 0;
  unsigned maj = major(dev), min = minor(dev);
  while (n < 16 && fgets(line, sizeof(line), f)) {
    lock_line_t l;
    if (!parse_lock_line(line, &l) || l.blocked || !strstr(line, " WRITE ") || l.maj != maj ||
        l.min != min || (cur && l.ino == cur->ino))
      continue;
    cand[n++] = l;
  }
  fclose(f);
  if (n == 0)
    return 0;
  /* What the holder's descriptor reads as: the directory resolved as the
   * kernel prints it (symlinks followed), the name, " (deleted)". */
  char want[4200];
  char *real = realpath(dir, NULL);
  if (real == NULL)
    return 0;
  int len = snprintf(want, sizeof(want), "%s/%s (deleted)", strcmp(real, "/") ? real : "", name);
  free(real);
  if (len <= 0 || (size_t)len >= sizeof(want))
    return 0;
  for (int i = 0; i < n; i++) {
    /* Only the taker's descriptors, compared by name first.  (A deleted
     * file held only through a descriptor inherited from a taker that died
     * is not found: finding it would mean scanning every process.) */
    long owner = lock_owner(&cand[i], want, 0);
    if (owner) {
      *pid = owner;
      return 1;
    }
  }
  return 0;
}

/* ---- memory ---- */

int hl_mem_available(uint64_t *bytes) {
  char buf[8192];
  if (read_small("/proc/meminfo", buf, sizeof(buf)) <= 0)
    return -ENOSYS;
  char *p = strstr(buf, "MemAvailable:");
  if (p == NULL)
    return -ENOSYS;
  *bytes = strtoull(p + strlen("MemAvailable:"), NULL, 10) * 1024ull;
  return 0;
}

/* Parent pid and resident bytes of one process; 0 or -errno. */
static int proc_ppid_rss(long pid, long *ppid, uint64_t *rss) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
  if (read_small(path, buf, sizeof(buf)) <= 0)
    return -ESRCH;
  char *p = strrchr(buf, ')');
  if (p == NULL)
    return -EINVAL;
  char state;
  long pp;
  if (sscanf(p + 1, " %c %ld", &state, &pp) != 2)
    return -EINVAL;
  *ppid = pp;
  snprintf(path, sizeof(path), "/proc/%ld/statm", pid);
  if (read_small(path, buf, sizeof(buf)) <= 0)
    return -ESRCH;
  unsigned long long size, resident;
  if (sscanf(buf, "%llu %llu", &size, &resident) != 2)
    return -EINVAL;
  *rss = (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
  return 0;
}

int hl_mem_tree_rss(long root, uint64_t *bytes) {
  DIR *proc = opendir("/proc");
  if (proc == NULL)
    return -ENOSYS;
  size_t cap = 256, n = 0;
  struct ent { long pid, ppid; uint64_t rss; } *v = malloc(cap * sizeof(*v));
  if (v == NULL) {
    closedir(proc);
    return -ENOMEM;
  }
  struct dirent *de;
  while ((de = readdir(proc)) != NULL) {
    if (!isdigit((unsigned char)de->d_name[0]))
      continue;
    if (n == cap) {
      void *nv = realloc(v, 2 * cap * sizeof(*v));
      if (nv == NULL)
        break;
      v = nv;
      cap *= 2;
    }
    v[n].pid = strtol(de->d_name, NULL, 10);
    if (proc_ppid_rss(v[n].pid, &v[n].ppid, &v[n].rss) == 0)
      n++;
  }
  closedir(proc);
  /* Mark the tree: repeat until no new member is found (depth is small). */
  char *in = calloc(n ? n : 1, 1);
  if (in == NULL) {
    free(v);
    return -ENOMEM;
  }
  int found = 0;
  for (size_t i = 0; i < n; i++)
    if (v[i].pid == root)
      in[i] = 1, found = 1;
  for (int grew = 1; grew;) {
    grew = 0;
    for (size_t i = 0; i < n; i++) {
      if (in[i])
        continue;
      for (size_t j = 0; j < n; j++)
        if (in[j] && v[j].pid == v[i].ppid) {
          in[i] = 1, grew = 1;
          break;
        }
    }
  }
  uint64_t total = 0;
  for (size_t i = 0; i < n; i++)
    if (in[i])
      total += v[i].rss;
  free(in);
  free(v);
  if (!found)
    return -ESRCH;
  *bytes = total;
  return 0;
}
