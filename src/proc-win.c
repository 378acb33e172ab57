/*
 * proc-win.c - what Windows tells about processes and memory.  There is no
 * readable lock table: status falls back to a try-lock probe.
 */
#define WIN32_LEAN_AND_MEAN
#include "os.h"

#include <errno.h>
#include <windows.h>

unsigned long long hl__os_proc_start(long pid) {
  HANDLE h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, (DWORD)pid);
  if (h == NULL)
    return 0;
  FILETIME created, exited, kernel, user;
  unsigned long long t = 0;
  if (GetProcessTimes(h, &created, &exited, &kernel, &user))
    t = ((unsigned long long)created.dwHighDateTime << 32) | created.dwLowDateTime;
  CloseHandle(h);
  return t;
}

int hl_proc_cmdline(long pid, char *buf, size_t len) {
  (void)pid;
  if (len)
    buf[0] = '\0';
  return -ENOSYS;
}

int hl__os_lock_table(const hl__fileid_t *id, hl_status_t *st, int quick) {
  (void)id;
  (void)st;
  (void)quick;
  return -ENOSYS;
}

int hl__os_in_child_wait(long pid) {
  (void)pid;
  return 0;
}

long hl__os_parent_pid(long pid) {
  (void)pid;
  return 0;
}

int hl__os_ghost_holder(const char *path, const hl__fileid_t *cur, long *pid) {
  (void)path;
  (void)cur;
  (void)pid;
  return 0; /* no lock table to ask */
}

int hl_mem_available(uint64_t *bytes) {
  MEMORYSTATUSEX m;
  m.dwLength = sizeof(m);
  if (!GlobalMemoryStatusEx(&m))
    return -EIO;
  *bytes = m.ullAvailPhys;
  return 0;
}

int hl_mem_tree_rss(long pid, uint64_t *bytes) {
  (void)pid;
  (void)bytes;
  return -ENOSYS;
}
