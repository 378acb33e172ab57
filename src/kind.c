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

#ifndef HL_HAVE_PG
int hl_pg_doctor(const char *target, char *out, size_t len) {
  (void)target;
  snprintf(out, len, "this heavylock was built without its PostgreSQL backend "
                     "(not available on this platform)");
  return -ENOSYS;
}
#endif

/* What the last failure said beyond its code, per thread: a server's words
 * (large enough for the CREATE TABLE shown to a role that may not create
 * it: issue #17 cut it at 512 bytes), or the file kinds' ("admission table
 * ... locked by pid N"); lock.c empties it at the start of each acquisition. */
static __thread char detail[HL__DETAIL_MAX];

void hl__detail_set(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof(detail), fmt, ap);
  va_end(ap);
  size_t n = strlen(detail); /* libpq ends its messages with a newline */
  while (n > 0 && (detail[n - 1] == '\n' || detail[n - 1] == ' '))
    detail[--n] = '\0';
  /* It may quote a path or a server's lines: any bytes at all, one line. */
  hl__utf8_clean(detail, ' ');
}

const char *hl__kind_detail(void) { return detail; }

int hl_target_kind(const char *target) {
  if (target == NULL)
    return HL_TARGET_FILE;
  const char *p = strstr(target, "://");
  if (p == NULL || p - target < 2)
    return HL_TARGET_FILE;
  if (!((target[0] >= 'a' && target[0] <= 'z') || (target[0] >= 'A' && target[0] <= 'Z')))
    return HL_TARGET_FILE;
  for (const char *c = target; c < p; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
          *c == '+' || *c == '-' || *c == '.'))
      return HL_TARGET_FILE;
  size_t n = (size_t)(p - target);
  if ((n == 10 && strncmp(target, "postgresql", 10) == 0) ||
      (n == 8 && strncmp(target, "postgres", 8) == 0))
    return HL_TARGET_PG;
  return HL_TARGET_UNKNOWN;
}

int hl__is_url(const char *target) { return hl_target_kind(target) != HL_TARGET_FILE; }

int hl__kind_none(const char *target) {
  if (hl_target_kind(target) == HL_TARGET_UNKNOWN) {
    hl__detail_set("'%.*s' is a URL of no known lock server; supported: " HL_TARGET_SCHEMES,
                   (int)(strstr(target, "://") - target + 3), target);
    return -EINVAL;
  }
  return -ENOSYS;
}
