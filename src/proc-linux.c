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
#include <sys/sysmacros.h>
#include <unistd.h>

static long read_small(const char *path, char *buf, size_t len) {
  long n = hl__os_read_head(path, buf, len - 1);
  buf[n > 0 ? n : 0] = '\0';
  return n;
}

unsigned long long hl__os_proc_start(long pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
  if (read_small(path, buf, sizeof(buf)) <= 0)
    return 0;
  /* The command name may hold spaces and ')': fields start after the last ')'. */
  char *p = strrchr(buf, ')');
  if (p == NULL)
    return 0;
  p++;
  /* field 3 (state) is the first after ')'; starttime is field 22. */
  for (int field = 3; field < 22 && p; field++)
    p = strchr(p + 1, ' ');
  return p ? strtoull(p + 1, NULL, 10) : 0;
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
    if (buf[i] == '\0' || (unsigned char)buf[i] < 0x20)
      buf[i] = ' ';
  buf[n] = '\0';
  return 0;
}

static void add_waiter(hl_status_t *st, long pid, char how) {
  for (int i = 0; i < st->nwaiters; i++)
    if (st->waiters[i].pid == pid)
      return;
  if (st->nwaiters < HL_MAX_WAITERS) {
    st->waiters[st->nwaiters].pid = pid;
    st->waiters[st->nwaiters].how = how;
    st->nwaiters++;
  }
}

/* Processes with an inotify watch on the file: heavylock's timed waiters. */
static void scan_inotify_waiters(const hl__fileid_t *id, hl_status_t *st) {
  DIR *proc = opendir("/proc");
  if (proc == NULL)
    return;
  unsigned long long want_sdev =
      ((unsigned long long)major((dev_t)id->dev) << 20) | minor((dev_t)id->dev);
  long self = (long)getpid();
  struct dirent *de;
  while ((de = readdir(proc)) != NULL) {
    if (!isdigit((unsigned char)de->d_name[0]))
      continue;
    long pid = strtol(de->d_name, NULL, 10);
    if (pid == self || pid == st->holder_pid)
      continue;
    char dpath[64];
    snprintf(dpath, sizeof(dpath), "/proc/%ld/fd", pid);
    DIR *fds = opendir(dpath);
    if (fds == NULL)
      continue;
    struct dirent *fe;
    while ((fe = readdir(fds)) != NULL) {
      if (fe->d_name[0] == '.')
        continue;
      char lpath[320], target[64];
      snprintf(lpath, sizeof(lpath), "/proc/%ld/fd/%s", pid, fe->d_name);
      ssize_t n = readlink(lpath, target, sizeof(target) - 1);
      if (n <= 0)
        continue;
      target[n] = '\0';
      if (strcmp(target, "anon_inode:inotify") != 0)
        continue;
      char ipath[320], info[4096];
      snprintf(ipath, sizeof(ipath), "/proc/%ld/fdinfo/%s", pid, fe->d_name);
      if (read_small(ipath, info, sizeof(info)) <= 0)
        continue;
      for (char *line = strstr(info, "inotify "); line; line = strstr(line + 1, "inotify ")) {
        unsigned long long ino = 0, sdev = 0;
        char *pi = strstr(line, "ino:"), *ps = strstr(line, "sdev:");
        if (pi == NULL || ps == NULL)
          break;
        ino = strtoull(pi + 4, NULL, 16);
        sdev = strtoull(ps + 5, NULL, 16);
        if (ino == id->ino && sdev == want_sdev) {
          add_waiter(st, pid, 'w');
          break;
        }
      }
    }
    closedir(fds);
  }
  closedir(proc);
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

int hl__os_lock_table(const hl__fileid_t *id, hl_status_t *st, int quick) {
  FILE *f = fopen("/proc/locks", "re");
  if (f == NULL)
    return -ENOSYS;
  char line[512];
  unsigned want_major = major((dev_t)id->dev), want_minor = minor((dev_t)id->dev);
  while (fgets(line, sizeof(line), f)) {
    char *p = strchr(line, ':');
    if (p == NULL)
      continue;
    p++;
    int blocked = 0;
    char type[16], adv[16], mode[16];
    long pid;
    unsigned maj, min;
    unsigned long long ino;
    while (*p == ' ')
      p++;
    if (strncmp(p, "->", 2) == 0) {
      blocked = 1;
      p += 2;
    }
    if (sscanf(p, "%15s %15s %15s %ld %x:%x:%llu", type, adv, mode, &pid, &maj, &min, &ino) != 7)
      continue;
    if (strcmp(type, "FLOCK") != 0 || maj != want_major || min != want_minor || ino != id->ino)
      continue;
    if (blocked) {
      add_waiter(st, pid, 'b');
    } else {
      st->held = 1;
      if (st->holder_pid == 0)
        st->holder_pid = pid;
    }
  }
  fclose(f);
  if (!quick)
    scan_inotify_waiters(id, st);
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
