/*
 * os-unix.c - the POSIX backend of the lock: open, flock, watch, write.
 *
 * Why flock(2) and not fcntl() record locks
 * -----------------------------------------
 * Classic POSIX record locks (fcntl F_SETLK, lockf) belong to the *process*,
 * not to the descriptor: closing ANY descriptor of the file drops every lock
 * the process holds on it (SQLite's os_unix.c calls this "broken by design").
 * A test runner that opens the model directory's lock file twice would
 * silently lose its lock.  flock(2) locks belong to the open file description:
 * two opens in one process exclude each other, a dup() or fork() shares the
 * lock, and the kernel drops it when the last descriptor closes, in
 * particular when the holder dies.  Python's filelock, portalocker and
 * util-linux flock(1) all use flock(2), so we exclude each other.  flock and
 * fcntl locks do not see each other on Linux.
 *
 * On NFS, Linux emulates flock(2) with byte-range locks; exclusion between
 * clients is only as good as the server's lock manager.  Keep lock files on
 * a local disk.
 *
 * Why inotify for timed waits
 * ---------------------------
 * A blocking flock(2) can only be bounded by a timer signal, and a library
 * must not install signal handlers in its host.  Instead a timed waiter
 * watches the lock file for close events: every releaser, whatever tool it
 * is, closes its descriptor (and the kernel closes it for a holder that
 * dies), so the waiter retries a non-blocking flock right when it may
 * succeed.  A holder that unlocks without closing (flock -u) produces no
 * event; the bounded re-check interval in lock.c covers that case.
 */
#define _GNU_SOURCE
#include "os.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/inotify.h>
#endif

/* ---- the overridable syscall table (fault injection seam) ---- */

typedef void (*hl__sysfn)(void);
static struct {
  const char *name;
  hl__sysfn real;
  hl__sysfn cur;
} syscalls[] = {
    {"open", (hl__sysfn)open, (hl__sysfn)open},
    {"flock", (hl__sysfn)flock, (hl__sysfn)flock},
    {"pwrite", (hl__sysfn)pwrite, (hl__sysfn)pwrite},
    {"ftruncate", (hl__sysfn)ftruncate, (hl__sysfn)ftruncate},
    {"fstat", (hl__sysfn)fstat, (hl__sysfn)fstat},
#ifdef __linux__
    {"inotify_init1", (hl__sysfn)inotify_init1, (hl__sysfn)inotify_init1},
#endif
};
#define sys_open ((int (*)(const char *, int, ...))syscalls[0].cur)
#define sys_flock ((int (*)(int, int))syscalls[1].cur)
#define sys_pwrite ((ssize_t(*)(int, const void *, size_t, off_t))syscalls[2].cur)
#define sys_ftruncate ((int (*)(int, off_t))syscalls[3].cur)
#define sys_fstat ((int (*)(int, struct stat *))syscalls[4].cur)
#define sys_inotify_init1 ((int (*)(int))syscalls[5].cur)

int hl__os_set_syscall(const char *name, void (*fn)(void)) {
  for (size_t i = 0; i < sizeof(syscalls) / sizeof(syscalls[0]); i++) {
    if (strcmp(syscalls[i].name, name) == 0) {
      syscalls[i].cur = fn ? fn : syscalls[i].real;
      return 0;
    }
  }
  return -ENOENT;
}

/* open(2) that retries EINTR (SQLite's robust_open). Returns fd or -errno. */
static int robust_open(const char *path, int flags, mode_t mode) {
  int fd;
  do
    fd = sys_open(path, flags, mode);
  while (fd < 0 && errno == EINTR);
  return fd < 0 ? -errno : fd;
}

/* Create the missing directories above `path` (mkdir -p of its dirname). */
static int make_parents(const char *path) {
  char buf[4096];
  size_t n = strlen(path);
  if (n >= sizeof(buf))
    return -ENAMETOOLONG;
  memcpy(buf, path, n + 1);
  char *slash = strrchr(buf, '/');
  if (slash == NULL || slash == buf)
    return 0;
  *slash = '\0';
  for (char *p = buf + 1; ; p++) {
    if (*p == '/' || *p == '\0') {
      char c = *p;
      *p = '\0';
      if (mkdir(buf, 0777) < 0 && errno != EEXIST)
        return -errno;
      *p = c;
      if (c == '\0')
        break;
    }
  }
  return 0;
}

static int kind_error(mode_t mode) {
  return S_ISLNK(mode) ? HL_ESYMLINK : HL_ENOTREG;
}

int hl__os_open(const char *path, intptr_t *out, int *readonly) {
  /* O_NONBLOCK: opening a FIFO that someone planted must not hang us; it is
   * refused below once fstat shows what it is.  O_NOFOLLOW: a symlink planted
   * at the lock path is refused (ELOOP), never followed (CVE-2025-68146). */
  const int base = O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK;
  struct stat st;
  int fd, rc;

  *readonly = 0;
  if (lstat(path, &st) == 0) {
    if (!S_ISREG(st.st_mode))
      return kind_error(st.st_mode);
  } else if (errno == ENOENT) {
    if ((rc = make_parents(path)) < 0)
      return rc;
  } else {
    return -errno;
  }

  fd = robust_open(path, O_RDWR | O_CREAT | base, 0666);
  if (fd == -EACCES || fd == -EPERM || fd == -EROFS) {
    /* The file may exist in a directory we cannot write (read-only checkout),
     * or in a sticky /tmp owned by another user, where O_CREAT alone is
     * refused (fs.protected_regular).  flock works on a read-only
     * descriptor; only the holder record is lost. */
    int first = fd;
    fd = robust_open(path, O_RDWR | base, 0);
    if (fd < 0) {
      fd = robust_open(path, O_RDONLY | base, 0);
      if (fd >= 0)
        *readonly = 1;
      else
        fd = first;
    }
  }
  if (fd == -ELOOP)
    return HL_ESYMLINK;
  if (fd == -EISDIR)
    return HL_ENOTREG;
  if (fd < 0)
    return fd;
  if (sys_fstat(fd, &st) < 0) {
    rc = -errno;
    close(fd);
    return rc;
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return HL_ENOTREG;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  *out = fd;
  return 0;
}

void hl__os_close(intptr_t fd) {
  int saved = errno;
  close((int)fd); /* never retried: the descriptor is gone either way */
  errno = saved;
}

int hl__os_fileid_fd(intptr_t fd, hl__fileid_t *id) {
  struct stat st;
  if (sys_fstat((int)fd, &st) < 0)
    return -errno;
  id->dev = (uint64_t)st.st_dev;
  id->ino = (uint64_t)st.st_ino;
  return 0;
}

int hl__os_fileid_path(const char *path, hl__fileid_t *id) {
  struct stat st;
  if (lstat(path, &st) < 0)
    return -errno;
  if (!S_ISREG(st.st_mode))
    return kind_error(st.st_mode);
  id->dev = (uint64_t)st.st_dev;
  id->ino = (uint64_t)st.st_ino;
  return 0;
}

int hl__os_fileid_dir(const char *path, hl__fileid_t *id) {
  const char *slash = strrchr(path, '/');
  char dir[HL_PATH_MAX];
  if (slash == NULL)
    snprintf(dir, sizeof(dir), ".");
  else if (slash == path)
    snprintf(dir, sizeof(dir), "/");
  else
    snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
  struct stat st;
  if (stat(dir, &st) < 0)
    return -errno;
  id->dev = (uint64_t)st.st_dev;
  id->ino = (uint64_t)st.st_ino;
  return 0;
}

int hl__os_fd_written_last(intptr_t fd) {
  struct stat st;
  if (sys_fstat((int)fd, &st) < 0)
    return 0;
  return st.st_ctim.tv_sec == st.st_mtim.tv_sec && st.st_ctim.tv_nsec == st.st_mtim.tv_nsec;
}

/* flock(2) that retries EINTR when told to, and maps "would block". */
static int do_flock(int fd, int op, int retry_eintr) {
  for (;;) {
    if (sys_flock(fd, op) == 0)
      return 0;
    if (errno == EINTR && retry_eintr)
      continue;
    if (errno == EWOULDBLOCK || errno == EAGAIN)
      return HL_EBUSY;
    return -errno;
  }
}

int hl__os_trylock(intptr_t fd) { return do_flock((int)fd, LOCK_EX | LOCK_NB, 1); }
int hl__os_lock_wait(intptr_t fd) { return do_flock((int)fd, LOCK_EX, 0); }
int hl__os_unlock(intptr_t fd) { return do_flock((int)fd, LOCK_UN, 1); }

int hl__os_probe_held(const char *path) {
  int fd = robust_open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK, 0);
  if (fd < 0)
    return fd == -ENOENT ? 0 : fd;
  int rc = do_flock(fd, LOCK_SH | LOCK_NB, 1);
  close(fd); /* drops the shared lock at once if we got it */
  if (rc == HL_EBUSY)
    return 1;
  return rc < 0 ? rc : 0;
}

/* ---- watching for releases ---- */

struct hl__watch_s {
  int fd;
  int wd; /* the current watch, -1 when disarmed */
};

hl__watch_t *hl__os_watch_open(void) {
#ifdef __linux__
  hl__watch_t *w = malloc(sizeof(*w));
  if (w == NULL)
    return NULL;
  w->fd = sys_inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  w->wd = -1;
  if (w->fd < 0) {
    free(w);
    return NULL;
  }
  return w;
#else
  return NULL;
#endif
}

static void watch_drain(hl__watch_t *w) {
  char buf[4096];
  while (read(w->fd, buf, sizeof(buf)) > 0) {
  }
}

int hl__os_watch_arm(hl__watch_t *w, const char *path) {
#ifdef __linux__
  /* Close events mark releases; self-delete/move means the path no longer
   * names this inode, so the waiter should go and look again.  Adding a
   * watch on an inode already watched just returns its descriptor. */
  uint32_t mask = IN_CLOSE_WRITE | IN_CLOSE_NOWRITE | IN_DELETE_SELF | IN_MOVE_SELF |
                  IN_DONT_FOLLOW;
  int wd = inotify_add_watch(w->fd, path, mask);
  if (wd < 0)
    return -errno;
  if (w->wd >= 0 && w->wd != wd) /* the path names a new file now */
    inotify_rm_watch(w->fd, w->wd);
  w->wd = wd;
  watch_drain(w);
  return 0;
#else
  (void)w;
  (void)path;
  return -ENOSYS;
#endif
}

void hl__os_watch_disarm(hl__watch_t *w) {
#ifdef __linux__
  if (w->wd >= 0)
    inotify_rm_watch(w->fd, w->wd);
  w->wd = -1;
#else
  (void)w;
#endif
}

int hl__os_watch_wait(hl__watch_t *w, int ms) {
  struct pollfd p = {.fd = w->fd, .events = POLLIN};
  int n = poll(&p, 1, ms);
  if (n < 0)
    return -errno;
  if (n == 0)
    return 0;
  watch_drain(w);
  return 1;
}

void hl__os_watch_close(hl__watch_t *w) {
  if (w) {
    hl__os_close(w->fd);
    free(w);
  }
}

/* ---- the blocker: a thread in flock(2) for a timed waiter ----
 * Why a thread: flock(2) has no timeout, and the ways to bound it in the
 * waiting thread (SIGALRM, a timer signal) need a signal handler, which a
 * library must not install in its host.  The thread is cancelled
 * asynchronously (glibc and musl deliver their internal cancel signal,
 * which interrupts the blocked flock(2)); while async-cancellable it makes
 * that one system call and nothing else.  A cancel that lands just after
 * flock(2) succeeded leaves the lock held through the waiter's descriptor,
 * which is where the waiter looks (its next try-lock succeeds on it, or it
 * closes the descriptor when it gives up).  All signals are blocked in the
 * thread so that the host's (Ctrl-C for Python) reach its own threads. */
struct hl__blocker_s {
  pthread_t thread;
  long pid;    /* the process whose thread it is */
  int fd;      /* the lock file */
  int pipe[2]; /* [1] written once flock(2) returned */
  int won;     /* flock(2) succeeded (atomic) */
};

static void *blocker_main(void *arg) {
  hl__blocker_t *b = arg;
  int old;
  pthread_setcanceltype(PTHREAD_CANCEL_ASYNCHRONOUS, &old);
  int rc = sys_flock(b->fd, LOCK_EX);
  pthread_setcanceltype(PTHREAD_CANCEL_DEFERRED, &old);
  __atomic_store_n(&b->won, rc == 0, __ATOMIC_RELEASE);
  ssize_t n = write(b->pipe[1], "x", 1);
  (void)n;
  return NULL;
}

hl__blocker_t *hl__os_blocker_start(intptr_t fd) {
  hl__blocker_t *b = malloc(sizeof(*b));
  if (b == NULL)
    return NULL;
  b->fd = (int)fd;
  b->pid = (long)getpid();
  b->won = 0;
  if (pipe(b->pipe) < 0) {
    free(b);
    return NULL;
  }
  for (int i = 0; i < 2; i++) {
    fcntl(b->pipe[i], F_SETFD, FD_CLOEXEC);
    fcntl(b->pipe[i], F_SETFL, O_NONBLOCK);
  }
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread starts with all blocked */
  int rc = pthread_create(&b->thread, NULL, blocker_main, b);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    close(b->pipe[0]);
    close(b->pipe[1]);
    free(b);
    return NULL;
  }
  return b;
}

int hl__os_blocker_won(hl__blocker_t *b) {
  return b && __atomic_load_n(&b->won, __ATOMIC_ACQUIRE);
}

void hl__os_blocker_stop(hl__blocker_t *b) {
  if (b == NULL)
    return;
  if (b->pid == (long)getpid()) {
    pthread_cancel(b->thread); /* a no-op when it has returned */
    pthread_join(b->thread, NULL);
  }
  close(b->pipe[0]);
  close(b->pipe[1]);
  free(b);
}

int hl__os_wait_events(hl__watch_t *w, hl__blocker_t *b, int ms) {
  struct pollfd p[2] = {{.fd = w ? w->fd : -1, .events = POLLIN},
                        {.fd = b ? b->pipe[0] : -1, .events = POLLIN}};
  int n = poll(p, 2, ms);
  if (n < 0)
    return -errno;
  if (n == 0)
    return 0;
  if (w && p[0].revents)
    watch_drain(w);
  return 1;
}

int hl__os_write_all(intptr_t fd, const char *buf, size_t len) {
  /* Written over the old contents, then cut at its end: on a tmpfs, cutting
   * to 0 first frees the page that the write then allocates again, on
   * every handoff. */
  size_t off = 0;
  while (off < len) {
    ssize_t n = sys_pwrite((int)fd, buf + off, len - off, (off_t)off);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      int rc = -errno;
      (void)sys_ftruncate((int)fd, 0); /* leave no half record behind */
      return rc;
    }
    off += (size_t)n;
  }
  if (sys_ftruncate((int)fd, (off_t)len) < 0) {
    int rc = -errno;
    (void)sys_ftruncate((int)fd, 0);
    return rc;
  }
  return 0;
}

long hl__os_read_fd(intptr_t fd, char *buf, size_t len) {
  size_t off = 0;
  while (off < len) {
    ssize_t n = pread((int)fd, buf + off, len - off, (off_t)off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -errno;
    if (n == 0)
      break;
    off += (size_t)n;
  }
  return (long)off;
}

int hl__os_fopen_regular(const char *path, FILE **out) {
  *out = NULL;
  int fd = robust_open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0);
  if (fd < 0)
    return fd;
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return HL_ENOTREG;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  FILE *f = fdopen(fd, "rb");
  if (f == NULL) {
    int rc = -errno;
    close(fd);
    return rc;
  }
  *out = f;
  return 0;
}

long hl__os_read_head(const char *path, char *buf, size_t len) {
  int fd = robust_open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK, 0);
  if (fd == -ELOOP)
    return HL_ESYMLINK;
  if (fd < 0)
    return fd;
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return HL_ENOTREG;
  }
  size_t off = 0;
  while (off < len) {
    ssize_t n = pread(fd, buf + off, len - off, (off_t)off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    off += (size_t)n;
  }
  close(fd);
  return (long)off;
}

/* ---- clocks, identity, registry ---- */

int hl__os_sleep_ms(int ms) {
  if (ms < 0)
    ms = 0; /* nanosleep refuses a negative time (EINVAL): never spin on it */
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  return nanosleep(&ts, NULL) < 0 ? -errno : 0;
}

int hl__os_sleep_us(int us) {
  if (us < 0)
    us = 0;
  struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000L};
  return nanosleep(&ts, NULL) < 0 ? -errno : 0;
}

double hl__os_monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double hl__os_wallclock(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

long hl__os_getpid(void) { return (long)getpid(); }
uintptr_t hl__os_thread_self(void) { return (uintptr_t)pthread_self(); }

static pthread_mutex_t registry_mutex = PTHREAD_MUTEX_INITIALIZER;
void hl__os_registry_lock(void) { pthread_mutex_lock(&registry_mutex); }
void hl__os_registry_unlock(void) { pthread_mutex_unlock(&registry_mutex); }

void hl__os_self_record(hl_record_t *rec) {
  rec->pid = (long)getpid();
  rec->start = hl__os_proc_start(rec->pid);
  if (gethostname(rec->host, sizeof(rec->host)) < 0)
    rec->host[0] = '\0';
  rec->host[sizeof(rec->host) - 1] = '\0';
  rec->boot_id[0] = '\0';
  long n = hl__os_read_head("/proc/sys/kernel/random/boot_id", rec->boot_id,
                            sizeof(rec->boot_id) - 1);
  rec->boot_id[n > 0 ? n : 0] = '\0';
  rec->boot_id[strcspn(rec->boot_id, "\n")] = '\0';
  if (hl_proc_cmdline(rec->pid, rec->cmd, sizeof(rec->cmd)) < 0)
    rec->cmd[0] = '\0';
}

int hl__os_proc_alive(long pid) {
  if (pid <= 0)
    return 0;
  return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

int hl__os_path_kind(const char *path) {
  struct stat st;
  if (stat(path, &st) < 0)
    return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
  return S_ISREG(st.st_mode) ? 1 : S_ISDIR(st.st_mode) ? 2 : 3;
}

int hl__os_abspath(const char *path, char *out, size_t len) {
  if (path[0] == '/') {
    if (strlen(path) >= len)
      return -ENAMETOOLONG;
    strcpy(out, path);
    return 0;
  }
  if (getcwd(out, len) == NULL)
    return -errno;
  size_t n = strlen(out);
  const char *rel = path;
  while (rel[0] == '.' && rel[1] == '/')
    rel += 2;
  if (n + 1 + strlen(rel) >= len)
    return -ENAMETOOLONG;
  if (n == 0 || out[n - 1] != '/')
    out[n++] = '/';
  strcpy(out + n, rel);
  return 0;
}
