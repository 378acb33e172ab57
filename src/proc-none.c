/*
 * proc-none.c - systems without Linux's /proc: no lock table (status falls
 * back to a try-lock probe), no process or memory introspection.
 */
#include "os.h"
#include "proc-stub.h"

#include <errno.h>

unsigned long long hl__os_proc_start(long pid) {
  (void)pid;
  return 0;
}

int hl_mem_available(uint64_t *bytes) {
  (void)bytes;
  return -ENOSYS;
}
