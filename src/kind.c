/*
 * kind.c - the registry of lock kinds: which kind serves a target.
 *
 * Order matters: a remote kind claims its URLs whatever the handle asks for;
 * the slots kind claims lock files when more than one holder (or memory
 * admission) is asked for, and for status (its view of a lock file is the
 * flock kind's plus the slot table); the flock kind takes every other path.
 */
#include "kind.h"
#include "os.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const hl__kind_t *const kinds[] = {
#ifdef HL_HAVE_PG
    &hl__kind_pg,
#endif
#ifdef HL_HAVE_SLOTS
    &hl__kind_slots,
#endif
    &hl__kind_flock,
};

const hl__kind_t *hl__kind_pick(const char *target, const hl__ask_t *ask) {
  for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
    if (kinds[i]->claims(target, ask))
      return kinds[i];
  return NULL;
}

#ifdef HL_HAVE_PG
const char *hl__pg_errdetail(void);
#endif

#ifndef HL_HAVE_PG
int hl_pg_doctor(const char *target, char *out, size_t len) {
  (void)target;
  snprintf(out, len, "this heavylock was built without its PostgreSQL backend "
                     "(libpq was not found when it was built)");
  return -ENOSYS;
}
#endif

/* What the last failure said beyond its code, per thread (the file kinds:
 * "admission table ... locked by pid N"); lock.c empties it at the start
 * of each acquisition. */
static __thread char detail[HL__DETAIL_MAX];

void hl__detail_set(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof(detail), fmt, ap);
  va_end(ap);
  hl__utf8_clean(detail, '?'); /* it may quote a path: any bytes at all */
}

const char *hl__kind_detail(void) {
  if (detail[0])
    return detail;
#ifdef HL_HAVE_PG
  return hl__pg_errdetail();
#else
  return "";
#endif
}

int hl__is_url(const char *target) {
  /* "scheme://": letters, digits, '+', '-', '.' before "://" */
  const char *p = strstr(target, "://");
  if (p == NULL || p == target)
    return 0;
  for (const char *c = target; c < p; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
          *c == '+' || *c == '-' || *c == '.'))
      return 0;
  return 1;
}
