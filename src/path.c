/*
 * path.c - where the lock lives (the seed policy's rules, in order).
 */
#include "kind.h"
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

/*
 * A lock server's URL (HEAVYLOCK_URL, or HEAVYLOCK_PATH holding one) passes
 * through untouched: it is not a file, so no abspath, no directory check.
 * Only the schemes a kind serves are accepted, so that a typo is named here
 * rather than created as a file called "postgresq://...".
 */
static int url_target(hl_path_t *out, const char *source, const char *v) {
  if (hl_target_kind(v) != HL_TARGET_PG)
    return fail(out, source,
                "%s='%s' is a URL of no known lock server%s; supported: " HL_TARGET_SCHEMES
                " (postgresql://USER@HOST/DB?name=NAME)",
                v, "");
  if (strlen(v) >= sizeof(out->path))
    return -ENAMETOOLONG;
  snprintf(out->path, sizeof(out->path), "%s", v);
  out->source = source;
  snprintf(out->why, sizeof(out->why), "%s is set to a PostgreSQL URL: the lock is shared by "
           "every machine that uses that server", source);
  return 0;
}

int hl_path_resolve(const char *root, hl_path_t *out) {
  memset(out, 0, sizeof(*out));
  const char *v = getenv("HEAVYLOCK_URL");
  int rc;
  if (v != NULL && v[0] != '\0') {
    if (!hl__is_url(v))
      return fail(out, "HEAVYLOCK_URL",
                  "%s='%s' is not a URL%s; use postgresql://USER@HOST/DB?name=NAME, or "
                  "HEAVYLOCK_PATH for a lock file",
                  v, "");
    return url_target(out, "HEAVYLOCK_URL", v);
  }
  v = getenv("HEAVYLOCK_PATH");
  if (v != NULL && hl__is_url(v))
    return url_target(out, "HEAVYLOCK_PATH", v);
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
    /* A model not downloaded yet is no error here: the seed puts the lock in
     * the model's directory, which is made like the default models/, so
     * fast runs and `heavylock run` work before the download.  What needs
     * the model says it is missing (the plugin's local_model_path). */
    int kind = hl__os_path_kind(v);
    if (kind < 0) {
      char why[128];
      snprintf(why, sizeof(why), " (%s)", strerror(-kind));
      return fail(out, "LOCAL_MODEL_PATH", "%s='%s' cannot be looked at%s", v, why);
    }
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
             "LOCAL_MODEL_PATH is set to '%s': the lock lives next to the model%s", v,
             kind == 1 ? "" : " (the model is not there yet)");
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
