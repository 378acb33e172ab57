/*
 * path.c - where the lock lives (the seed policy's rules, in order).
 */
#include "os.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOCK_NAME ".llm_load.lock"

static int fail(hl_path_t *out, const char *source, const char *fmt, const char *value,
                const char *extra) {
  out->source = source;
  out->path[0] = '\0';
  snprintf(out->why, sizeof(out->why), fmt, source, value, extra ? extra : "");
  return HL_EENV;
}

/* out->path = abs(dir) + "/" + name */
static int join(hl_path_t *out, const char *dir, const char *name) {
  char abs[sizeof(out->path)];
  int rc = hl__os_abspath(dir, abs, sizeof(abs));
  if (rc < 0)
    return rc;
  size_t n = strlen(abs);
  while (n > 1 && abs[n - 1] == HL__SEP)
    abs[--n] = '\0';
  if ((size_t)snprintf(out->path, sizeof(out->path), "%s%c%s", abs, HL__SEP, name) >=
      sizeof(out->path))
    return -ENAMETOOLONG;
  return 0;
}

int hl_path_resolve(const char *root, hl_path_t *out) {
  memset(out, 0, sizeof(*out));
  const char *v = getenv("HEAVYLOCK_PATH");
  int rc;
  if (v != NULL) {
    if (v[0] == '\0')
      return fail(out, "HEAVYLOCK_PATH", "%s is set but empty%s; unset it or name a lock file%s",
                  "", NULL);
    if (hl__os_path_kind(v) == 2)
      return fail(out, "HEAVYLOCK_PATH",
                  "%s='%s' is a directory; name the lock file itself, e.g. %s/" LOCK_NAME, v, v);
    out->source = "HEAVYLOCK_PATH";
    if ((rc = hl__os_abspath(v, out->path, sizeof(out->path))) == -ENAMETOOLONG) {
      char n[32];
      snprintf(n, sizeof(n), "%zu", strlen(v));
      return fail(out, "HEAVYLOCK_PATH",
                  "%s is %s bytes long (as an absolute path it must stay under 4096)%s", n, "");
    }
    if (rc < 0)
      return rc;
    snprintf(out->why, sizeof(out->why), "HEAVYLOCK_PATH is set to '%s'", v);
    return 0;
  }

  v = getenv("LOCAL_MODEL_PATH");
  if (v != NULL) {
    if (v[0] == '\0')
      return fail(out, "LOCAL_MODEL_PATH",
                  "%s is set but empty%s; unset it or point it at the model file%s", "", NULL);
    int kind = hl__os_path_kind(v);
    if (kind == 0 || kind < 0)
      return fail(out, "LOCAL_MODEL_PATH",
                  "%s='%s' does not exist%s (a relative path is resolved against the current "
                  "directory)",
                  v, "");
    if (kind == 2)
      return fail(out, "LOCAL_MODEL_PATH",
                  "%s='%s' is a directory; it must name the model file (e.g. a .gguf)%s", v, "");
    char dir[sizeof(out->path)];
    if ((rc = hl__os_abspath(v, dir, sizeof(dir))) == -ENAMETOOLONG) {
      char n[32];
      snprintf(n, sizeof(n), "%zu", strlen(v));
      return fail(out, "LOCAL_MODEL_PATH",
                  "%s is %s bytes long (as an absolute path it must stay under 4096)%s", n, "");
    }
    if (rc < 0)
      return rc;
    char *slash = strrchr(dir, HL__SEP);
    if (slash == dir)
      slash[1] = '\0';
    else if (slash)
      *slash = '\0';
    if ((rc = join(out, dir, LOCK_NAME)) < 0)
      return rc;
    out->source = "LOCAL_MODEL_PATH";
    snprintf(out->why, sizeof(out->why),
             "LOCAL_MODEL_PATH is set to '%s': the lock lives next to the model", v);
    return 0;
  }

  char models[sizeof(out->path)];
  snprintf(models, sizeof(models), "%s%cmodels", root && root[0] ? root : ".", HL__SEP);
  if ((rc = join(out, models, LOCK_NAME)) < 0)
    return rc;
  out->source = "default";
  snprintf(out->why, sizeof(out->why),
           "neither HEAVYLOCK_PATH nor LOCAL_MODEL_PATH is set: models/" LOCK_NAME
           " under '%s'",
           root && root[0] ? root : ".");
  return 0;
}
