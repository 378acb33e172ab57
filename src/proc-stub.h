/*
 * proc-stub.h - the answers of a system without a readable lock table or
 * process tree (no /proc): proc-none.c and proc-win.c both give them.
 *
 * Function definitions, not declarations: include it from exactly one
 * proc-*.c of a build (meson compiles one of them per system).
 */
#ifndef HL_PROC_STUB_H
#define HL_PROC_STUB_H

#include "os.h"

#include <errno.h>

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

int hl__os_in_child_wait(long pid, int confirm) {
  (void)pid;
  (void)confirm;
  return 0;
}

int hl__os_pid_holds(long pid, const hl__fileid_t *id, intptr_t skip_fd) {
  (void)pid;
  (void)id;
  (void)skip_fd;
  return -ENOSYS;
}

int hl__os_pid_stopped(long pid, unsigned long long start) {
  (void)pid;
  (void)start;
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

int hl_mem_tree_rss(long pid, uint64_t *bytes) {
  (void)pid;
  (void)bytes;
  return -ENOSYS;
}

#endif
