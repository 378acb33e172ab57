/*
 * fuzz_gguf.c - libFuzzer harness for the GGUF reader (hl_gguf_read).
 * Each input is a whole model file, served from a memfd (no disk).
 * Property checked beyond "no crash, no sanitizer report": a successful
 * read gives NUL-terminated strings and sizes that fit the input.
 */
#define _GNU_SOURCE
#include "heavylock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int fd = -1;
  static char path[64];
  if (fd < 0) {
    fd = memfd_create("gguf", 0);
    if (fd < 0)
      abort();
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  }
  if (ftruncate(fd, 0) < 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
    abort();
  hl_gguf_t g;
  if (hl_gguf_read(path, &g) == 0) {
    if (memchr(g.architecture, 0, sizeof(g.architecture)) == NULL ||
        memchr(g.name, 0, sizeof(g.name)) == NULL || g.file_size != size ||
        g.tensor_bytes > g.file_size)
      abort();
  }
  return 0;
}
