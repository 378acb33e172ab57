/*
 * pq.c - load libpq at run time, once, for the PostgreSQL kind (see pq.h).
 */
#define HL__PQ_NO_MACROS
#include "pq.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

hl__pq_t hl__pq;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int load_rc;
static char load_why[1024];

/* Where libpq usually is, in the order tried, when HEAVYLOCK_LIBPQ is not
 * set: the dynamic loader's search (a system package), then Homebrew's
 * keg-only prefixes (brew does not link libpq into the default path). */
static const char *const default_names[] = {
#ifdef __APPLE__
    "libpq.5.dylib",
    "/opt/homebrew/opt/libpq/lib/libpq.5.dylib",
    "/usr/local/opt/libpq/lib/libpq.5.dylib",
#else
    "libpq.so.5",
#endif
    NULL,
};

#define INSTALL_HINT                                                                         \
  "install the PostgreSQL client library (Debian/Ubuntu: apt install libpq5; "               \
  "Fedora/RHEL: dnf install libpq; Alpine: apk add libpq; Arch: pacman -S postgresql-libs; " \
  "macOS: brew install libpq), or set HEAVYLOCK_LIBPQ to the path of libpq"

static void load(void) {
  const char *env = getenv("HEAVYLOCK_LIBPQ");
  const char *const *names = default_names;
  const char *one[] = {env, NULL};
  if (env && env[0])
    names = one;
  void *h = NULL;
  char tried[512] = "";
  for (size_t i = 0; names[i] && h == NULL; i++) {
    h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL && i == 0) {
      const char *e = dlerror();
      snprintf(tried, sizeof(tried), "%s", e ? e : names[i]);
    }
  }
  if (h == NULL) {
    if (names == one)
      snprintf(load_why, sizeof(load_why),
               "cannot load libpq from HEAVYLOCK_LIBPQ='%s' (%s); point it at libpq.so.5, "
               "or unset it to use the system's; otherwise " INSTALL_HINT,
               env, tried);
    else
      snprintf(load_why, sizeof(load_why),
               "a postgresql:// lock needs libpq, which is not installed (%s); " INSTALL_HINT,
               tried);
    load_rc = -ENOSYS;
    return;
  }
  /* Resolve everything now: a libpq too old for one function fails here,
   * once, with its name, not in the middle of a lock. */
#define HL__PQ_RESOLVE(ret, name, params)                                                    \
  if (load_rc == 0) {                                                                        \
    *(void **)(&hl__pq.name) = dlsym(h, #name);                                              \
    if (hl__pq.name == NULL) {                                                               \
      snprintf(load_why, sizeof(load_why),                                                   \
               "the libpq loaded from %s has no %s (too old?); " INSTALL_HINT,               \
               names == one ? env : "the system", #name);                                    \
      load_rc = -ENOSYS;                                                                     \
    }                                                                                        \
  }
  HL__PQ_FUNCTIONS(HL__PQ_RESOLVE)
#undef HL__PQ_RESOLVE
  if (load_rc < 0) {
    memset(&hl__pq, 0, sizeof(hl__pq));
    dlclose(h);
  }
  /* On success the handle stays open for the life of the process. */
}

int hl__pq_load(const char **why) {
  pthread_once(&once, load);
  if (why)
    *why = load_why;
  return load_rc;
}
