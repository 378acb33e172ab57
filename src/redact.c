/*
 * redact.c - hide passwords in anything we show: a target, a server's
 * message, a holder's command line (heavylock.h: hl_redact).
 *
 * Every output (the CLI's, the Python exceptions and their pickles, the
 * plugin's terminal lines, report and timeline) goes through this one
 * function, so that a password given in a URL is never printed, logged or
 * written.  It works on free text, not on one parsed URL: a command line or
 * an error message can hold several URLs anywhere.
 */
#include "heavylock.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#define MASK "***"

typedef struct {
  char *out;
  size_t len, n;
} sink_t;

static void put(sink_t *s, const char *p, size_t k) {
  for (size_t i = 0; i < k; i++) {
    if (s->n + 1 < s->len)
      s->out[s->n] = p[i];
    s->n++;
  }
}

/* What ends a password= value: a parameter's end, or what ends a URL in
 * free text (a quote or a blank), as for the user info below; else a
 * second pass could read the rest differently (fuzz_redact: redacting is
 * idempotent). */
static int ends_value(int c) {
  return c == '\0' || c == '&' || c == '#' || c == '"' || c == '\'' || isspace(c);
}

/* "password=" (any case; also sslpassword=) at a parameter's start: after
 * the text's start, '?', '&', ';' or a blank (a conninfo string). */
static size_t password_key(const char *text, const char *p) {
  static const char key[] = "password=";
  const char *start = p;
  if ((size_t)(p - text) >= 3 && strncasecmp(p - 3, "ssl", 3) == 0)
    start = p - 3;
  if (start != text && !strchr("?&; \t\n", start[-1]))
    return 0;
  return strncasecmp(p, key, sizeof(key) - 1) == 0 ? sizeof(key) - 1 : 0;
}

const char *hl_redact(const char *text, char *out, size_t len) {
  sink_t s = {out, len, 0};
  if (text == NULL)
    text = "";
  for (const char *p = text; *p;) {
    if (strncmp(p, "://", 3) == 0) {
      /* scheme://user:PASSWORD@host: the user info ends at an '@' before
       * the first '/' (a quote or a blank ends the URL in free text).  '?'
       * and '#' do not end it: libpq takes "u:pa?ss#w@h/d" as user u,
       * password "pa?ss#w" (generated passwords hold them).  The last '@'
       * ends it (a password may hold '@' unescaped); the first ':' before
       * it starts the password. */
      const char *a = p + 3, *end = a, *at = NULL;
      while (*end && !strchr("/\"'", *end) && !isspace((unsigned char)*end)) {
        if (*end == '@')
          at = end;
        end++;
      }
      const char *colon = at ? memchr(a, ':', (size_t)(at - a)) : NULL;
      if (colon) {
        put(&s, p, (size_t)(colon + 1 - p));
        put(&s, MASK, 3);
        p = at;
        continue;
      }
      put(&s, p, 3);
      p += 3;
      continue;
    }
    size_t k = password_key(text, p);
    if (k) {
      put(&s, p, k);
      p += k;
      if (*p == '\'') { /* conninfo quoting: 'a b\'c', masked as '***' */
        p++;
        while (*p && *p != '\'')
          p += (*p == '\\' && p[1]) ? 2 : 1;
        if (*p == '\'')
          p++;
        put(&s, "'" MASK "'", 5);
      } else {
        while (!ends_value((unsigned char)*p))
          p++;
        put(&s, MASK, 3);
      }
      continue;
    }
    put(&s, p, 1);
    p++;
  }
  if (len > 0)
    out[s.n < len ? s.n : len - 1] = '\0';
  return out;
}
