/*
 * smoke.c - a portable program over the whole public API.  On Windows
 * (`make check-win`) linking it proves the backend provides every symbol;
 * run anywhere, it takes and releases a lock once and prints what it saw.
 */
#include "heavylock.h"
#include "os.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* `smoke PATH hold SECONDS`: hold the lock that long.  `smoke PATH try`:
 * exit 0 if the lock could be taken at once, 3 if someone holds it. */
static int mode(const char *path, const char *what, const char *arg) {
  hl_lock_t *lk;
  int rc = hl_lock_open(&lk, path);
  if (rc < 0)
    return 66;
  rc = hl_lock_acquire(lk, strcmp(what, "hold") == 0 ? 10.0 : 0);
  printf("%s: %s\n", what, hl_strerror(rc));
  fflush(stdout);
  if (rc == 0 && strcmp(what, "hold") == 0)
    hl__os_sleep_ms(atoi(arg ? arg : "1") * 1000);
  hl_lock_close(lk);
  return rc == 0 ? 0 : rc == HL_EBUSY ? 3 : 1;
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "models/.llm_load.lock";
  if (argc > 2)
    return mode(path, argv[2], argc > 3 ? argv[3] : NULL);
  hl_path_t where;
  hl_status_t st;
  hl_record_t rec;
  hl_gguf_t g;
  uint64_t avail = 0, rss = 0;
  hl_lock_t *lk;
  int rc = hl_path_resolve(NULL, &where);
  printf("policy: %s (%s)\n", rc == 0 ? where.path : where.why, hl_strerror(rc));
  if ((rc = hl_lock_open(&lk, path)) < 0) {
    fprintf(stderr, "smoke: cannot open lock file %s: %s\n", path, hl_strerror(rc));
    return 66;
  }
  hl_lock_set_label(lk, "smoke");
  rc = hl_lock_acquire(lk, 5.0);
  printf("acquire: %s, held=%d\n", hl_strerror(rc), hl_lock_held(lk));
  printf("record: %s\n", hl_strerror(hl_record_read(path, &rec)));
  rc = hl_status(path, &st);
  printf("status: %s, held=%d\n", hl_strerror(rc), st.held);
  if (rc < 0 || !st.held)
    return 1;
  rc = hl_lock_release(lk);
  printf("release: %s\n", hl_strerror(rc));
  hl_lock_close(lk);
  printf("gguf: %s\n", hl_strerror(hl_gguf_read(path, &g)));
  printf("memory: %s %s\n", hl_strerror(hl_mem_available(&avail)),
         hl_strerror(hl_mem_tree_rss(0, &rss)));
  return rc == 0 ? 0 : 1;
}
