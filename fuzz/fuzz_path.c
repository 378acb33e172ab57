/*
 * fuzz_path.c - libFuzzer harness for the lock path policy (hl_path_resolve).
 * An input is up to three NUL-separated values; the first byte says which
 * of HEAVYLOCK_PATH, LOCAL_MODEL_PATH and the root they become (unset
 * otherwise).  Properties: success gives an absolute, NUL-terminated path
 * from a named source, or a lock server's URL passed through untouched;
 * HL_EENV names the variable in `why`.
 */
#define _GNU_SOURCE
#include "heavylock.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  char *buf = malloc(size + 1);
  memcpy(buf, data + 1, size - 1);
  buf[size - 1] = '\0';
  const char *vals[3] = {NULL, NULL, NULL};
  char *p = buf, *end = buf + size - 1;
  for (int i = 0; i < 3 && p <= end; i++) {
    vals[i] = p;
    p += strlen(p) + 1;
  }
  unsigned sel = data[0];
  unsetenv("HEAVYLOCK_PATH");
  unsetenv("LOCAL_MODEL_PATH");
  if ((sel & 1) && vals[0])
    setenv("HEAVYLOCK_PATH", vals[0], 1);
  if ((sel & 2) && vals[1])
    setenv("LOCAL_MODEL_PATH", vals[1], 1);
  const char *root = (sel & 4) ? vals[2] : NULL;
  hl_path_t out;
  int rc = hl_path_resolve(root, &out);
  if (memchr(out.path, 0, sizeof(out.path)) == NULL || memchr(out.why, 0, sizeof(out.why)) == NULL)
    abort();
  int url = strncmp(out.path, "postgresql://", 13) == 0 || strncmp(out.path, "postgres://", 11) == 0;
  if (rc == 0 && url && (sel & 1) && vals[0] && strcmp(out.path, vals[0]) != 0)
    abort(); /* a URL is the value as given, never rewritten */
  if (rc == 0 && ((out.path[0] != '/' && !url) || out.source == NULL))
    abort();
  if (rc == HL_EENV && (out.source == NULL || strstr(out.why, out.source) == NULL))
    abort();
  free(buf);
  return 0;
}
