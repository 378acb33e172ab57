/*
 * fuzz_record.c - libFuzzer harness for the holder record parser
 * (hl_record_read) and the holder description built on it.  Each input is
 * the content of a lock file, written to a file in /dev/shm (the reader
 * refuses symlinks, so a /proc/self/fd link cannot stand in).
 * Properties: whatever the file holds, a record read back has valid UTF-8
 * fields without control bytes and a finite `acquired`.
 */
#define _GNU_SOURCE
#include "heavylock.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int clean(const char *str, size_t cap) {
  const unsigned char *s = (const unsigned char *)str;
  if (memchr(str, 0, cap) == NULL)
    return 0;
  while (*s) {
    int n = *s < 0x80 ? 1 : (*s >= 0xc2 && *s <= 0xdf) ? 2 : (*s & 0xf0) == 0xe0 ? 3
          : (*s >= 0xf0 && *s <= 0xf4) ? 4 : 0;
    if (n == 0 || *s < 0x20 || *s == 0x7f || (n == 2 && s[0] == 0xc2 && s[1] < 0xa0))
      return 0;
    for (int i = 1; i < n; i++)
      if ((s[i] & 0xc0) != 0x80)
        return 0;
    s += n;
  }
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int fd = -1;
  static char path[64];
  if (fd < 0) {
    snprintf(path, sizeof(path), "/dev/shm/hl-fuzz-record-%ld", (long)getpid());
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
      abort();
  }
  if (ftruncate(fd, 0) < 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
    abort();
  hl_record_t rec;
  if (hl_record_read(path, &rec) == 0) {
    if (!clean(rec.host, sizeof(rec.host)) || !clean(rec.boot_id, sizeof(rec.boot_id)) ||
        !clean(rec.label, sizeof(rec.label)) || !clean(rec.cmd, sizeof(rec.cmd)) ||
        !isfinite(rec.acquired) || rec.pid <= 0)
      abort();
  }
  /* hl_status itself scans /proc (too slow to fuzz); describe a status
   * that trusts this record, as status would for a live holder. */
  hl_status_t st;
  memset(&st, 0, sizeof(st));
  st.held = 1;
  st.has_record = 1;
  st.holder_pid = rec.pid;
  st.record = rec;
  st.held_for = 1.5;
  char buf[256];
  hl_holder_describe(&st, buf, sizeof(buf));
  if (!clean(buf, sizeof(buf)))
    abort();
  return 0;
}
