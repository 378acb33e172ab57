/*
 * smoke.c - a portable program over the whole public API.  On Windows
 * (`make check-win`) linking it proves the backend provides every symbol;
 * run anywhere, it takes and releases a lock once and prints what it saw.
 */
#include "heavylock.h"

#include <stdio.h>

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "models/.llm_load.lock";
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
