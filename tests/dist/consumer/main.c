/* Take and release a lock through the installed libheavylock; a second
 * handle must be refused while the first holds it. */
#include <heavylock.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
  if (argc != 2)
    return 2;
  hl_lock_t *a, *b;
  int rc = hl_lock_open(&a, argv[1]);
  if (rc < 0 || (rc = hl_lock_open(&b, argv[1])) < 0) {
    fprintf(stderr, "open: %s\n", hl_strerror(rc));
    return 1;
  }
  hl_lock_set_label(a, "consumer");
  if (hl_lock_acquire(a, 5.0) != 0 || hl_lock_acquire(b, 0) != -35 /* EDEADLK */) {
    fprintf(stderr, "exclusion failed\n");
    return 1;
  }
  hl_status_t st;
  if (hl_status(argv[1], &st) != 0 || !st.held || strcmp(st.record.label, "consumer") != 0) {
    fprintf(stderr, "status failed\n");
    return 1;
  }
  hl_lock_close(b);
  hl_lock_close(a);
  printf("heavylock %s: ok\n", hl_version());
  return 0;
}
