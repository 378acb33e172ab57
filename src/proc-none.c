/*
 * proc-none.c - systems without Linux's /proc: no lock table (status falls
 * back to a try-lock probe), no process or memory introspection.
 */
#include "os.h"

#include <errno.h>
#include <string.h>

unsigned long long hl__os_proc_start(long pid) {
  (void)pid;
  return 0;
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
  (void)bytes;
  return -ENOSYS;
}

int hl_mem_tree_rss(long pid, uint64_t *bytes) {
  (void)pid;
  (void)bytes;
  return -ENOSYS;
}
