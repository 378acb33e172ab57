/*
 * kind-pg.c - the lock across machines: PostgreSQL session advisory locks.
 *
 * Why advisory locks
 * ------------------
 * A file lock stops at the machine's edge.  PostgreSQL's session-level
 * advisory locks (pg_advisory_lock and friends) are what a flock is to a
 * kernel: the server drops them when the client's session ends, for
 * whatever reason (the process died, the machine went away and TCP
 * keepalives noticed, an administrator ended the session).  So a crashed
 * job frees its place at once, and no protocol of ours has to be trusted.
 * One connection per handle: the session IS the holder.
 *
 * Keys (documented in heavylock.h, "Across machines")
 * ----
 * A lock name (the URL's `name` parameter, default "llm_load") maps to
 * 64-bit FNV-1a hashes, split into the two-int4 form pg_advisory_lock(int4,
 * int4) (pg_locks: classid = high half, objid = low half, objsubid = 2, a key
 * space that applications using the bigint form never touch):
 *     main       fnv1a64("heavylock:" NAME)
 *     slot i     fnv1a64("heavylock:" NAME "\0slot:" i)     i = 0 .. N-1
 *     waiters    fnv1a64("heavylock:" NAME "\0wait")
 *     admission  fnv1a64("heavylock:" NAME "\0admission")
 *     schema     fnv1a64("heavylock:\0schema")
 * A name holds no NUL, so no two (name, role) pairs hash the same input.
 *
 * Who holds what
 * --------------
 * An exclusive holder (slots 1, or weight unknown under memory admission)
 * holds `main` exclusively.  A slot holder holds `main` shared plus one slot
 * key exclusively: the two kinds exclude each other, and a blocked exclusive
 * waiter in the server's queue makes later shared try-locks fail, so it is
 * not starved.  Each holder also writes a row in the table
 * heavylock_holders (who: pid, host, label; its weight and budget).  A row
 * counts only while its session holds the key the row names (joined with
 * pg_locks): a row whose session is gone is dead, whatever it says, and is
 * deleted at the next admission.  Admission by memory (a budget) checks the
 * live weights and inserts its row under a transaction-level advisory lock
 * on `admission`, so two admissions cannot both see the room for one.
 *
 * Waiting
 * -------
 * An exclusive waiter queues in the server: an asynchronous
 * pg_advisory_lock(main), polled on the connection's socket, so the release
 * (or the holder's death) wakes it, in the server's FIFO order.  A waiter for
 * a slot cannot wait in the server for "any one of N keys", so it LISTENs on
 * a channel that every release NOTIFYs, and lock.c's bounded re-check (every
 * 100 ms) covers a holder that died without a release.  Every waiter holds
 * `waiters` shared and writes a row, so status lists it.
 *
 * A lost connection is a lost lock
 * --------------------------------
 * The server drops the lock when the session ends, so a holder whose
 * connection broke holds nothing.  TCP keepalives (client and server side,
 * 5 s idle, 2 s apart, 3 probes) bound how long a dead peer goes unnoticed;
 * hl__pg_check() looks at the socket without a round trip and reports
 * HL_ELOST, and so does every later call on the handle.
 */
#define _GNU_SOURCE
#include "kind.h"
#include "os.h"
#include "pq.h"

#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_NAME "llm_load"
#define NAME_MAX_LEN 200
#define AUTO_SLOTS HL_MAX_HOLDERS /* slot keys when admitting by memory only */

typedef struct key_s {
  uint64_t h;
} key_t_;

typedef struct pg_state_s {
  char *conninfo;               /* the URL without our parameters          */
  char name[NAME_MAX_LEN + 1];
  key_t_ main, wait, admission;
  char channel[40];             /* LISTEN/NOTIFY channel of this name      */
  PGconn *conn;
  int lost;                     /* the connection broke: HL_ELOST from now */
  int held;                     /* 1 exclusive, 2 a slot                   */
  key_t_ slot_key;
  int pending;                  /* a blocking pg_advisory_lock is in flight */
  int inflight;                 /* a statement sent, its answer not read:
                                   the holder's row after a win (see
                                   send_later)                            */
  int armed;                    /* waiter: LISTEN + `wait` shared + row    */
  int listening;
  long server_ms;               /* statement_timeout/lock_timeout set now  */
  double server_for;            /* ... for the acquisition of this deadline */
  hl__ask_t ask;                /* what the current acquisition asks for   */
  long pid;
  char host[64];
  char machine[96];             /* which kernel and pid namespace: see below */
} pg_state_t;

/*
 * A pid means something only on its own machine, and hostnames repeat (CI
 * containers are often all called "runner").  lock.c's self check treats a
 * local holder's pid as possibly ours or an ancestor's, so "local" must be
 * sure: same kernel boot (boot_id) and same pid namespace, where Linux says
 * so; elsewhere the hostname alone.
 */
static void machine_id(char *out, size_t len) {
  char boot[64] = "", ns[64] = "";
  FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
  if (f) {
    if (fgets(boot, sizeof(boot), f) == NULL)
      boot[0] = '\0';
    boot[strcspn(boot, "\n")] = '\0';
    fclose(f);
  }
  ssize_t n = readlink("/proc/self/ns/pid", ns, sizeof(ns) - 1);
  ns[n > 0 ? n : 0] = '\0';
  snprintf(out, len, "%s%s%s", boot, boot[0] && ns[0] ? " " : "", ns);
}

/* ---- error details: the server's words, for messages ----
 * hl_strerror() maps codes to fixed text; what the server said (which host
 * refused, which password failed) is kept per thread for the caller, in
 * kind.c's buffer (hl__detail_set: large enough for the table's DDL). */
const char *hl__pg_errdetail(void) { return hl__kind_detail(); }

/* ---- keys ---- */

static uint64_t fnv1a(const unsigned char *p, size_t n, uint64_t h) {
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

/* fnv1a64("heavylock:" name ["\0" role]) */
static key_t_ make_key(const char *name, const char *role) {
  uint64_t h = 0xcbf29ce484222325ull;
  h = fnv1a((const unsigned char *)"heavylock:", 10, h);
  h = fnv1a((const unsigned char *)name, strlen(name), h);
  if (role) {
    h = fnv1a((const unsigned char *)"", 1, h);
    h = fnv1a((const unsigned char *)role, strlen(role), h);
  }
  key_t_ k = {h};
  return k;
}

static key_t_ slot_key(const char *name, int i) {
  char role[32];
  snprintf(role, sizeof(role), "slot:%d", i);
  return make_key(name, role);
}

uint64_t hl__pg_key(const char *name, const char *role) { return make_key(name, role).h; }

/* The halves as SQL text: signed int4 for pg_advisory_lock, unsigned for
 * comparing with pg_locks' oid columns. */
static void key_args(key_t_ k, char a[12], char b[12]) {
  snprintf(a, 12, "%d", (int32_t)(uint32_t)(k.h >> 32));
  snprintf(b, 12, "%d", (int32_t)(uint32_t)k.h);
}
static void key_oids(key_t_ k, char a[12], char b[12]) {
  snprintf(a, 12, "%u", (unsigned)(k.h >> 32));
  snprintf(b, 12, "%u", (unsigned)k.h);
}

/* ---- the target ---- */

static int claims(const char *target, const hl__ask_t *ask) {
  (void)ask;
  return hl_target_kind(target) == HL_TARGET_PG;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/*
 * Split the URL into what libpq gets (everything but our `name` parameter:
 * libpq rejects parameters it does not know) and the lock name
 * (percent-decoded).  0, -EINVAL (detail set), -ENOMEM.
 */
int hl__pg_parse(const char *target, char **conninfo, char *name, size_t namelen) {
  *conninfo = NULL;
  snprintf(name, namelen, "%s", DEFAULT_NAME);
  char *out = malloc(strlen(target) + 1);
  if (out == NULL)
    return -ENOMEM;
  const char *q = strchr(target, '?');
  size_t base = q ? (size_t)(q - target) : strlen(target);
  memcpy(out, target, base);
  size_t o = base;
  int first = 1;
  for (const char *p = q ? q + 1 : NULL; p && *p;) {
    const char *end = strchr(p, '&');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len >= 5 && strncmp(p, "name=", 5) == 0) {
      size_t n = 0;
      for (size_t i = 5; i < len; i++) {
        int c = (unsigned char)p[i];
        if (c == '%') {
          int hi = i + 2 < len ? hexval(p[i + 1]) : -1, lo = i + 2 < len ? hexval(p[i + 2]) : -1;
          if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            hl__detail_set("bad percent-escape in the lock name of '%s'", target);
            free(out);
            return -EINVAL;
          }
          c = hi * 16 + lo;
          i += 2;
        } else if (c == '+') {
          c = ' ';
        }
        if (n + 1 >= namelen || n >= NAME_MAX_LEN) {
          hl__detail_set("lock name in '%s' is longer than %d bytes", target, NAME_MAX_LEN);
          free(out);
          return -EINVAL;
        }
        name[n++] = (char)c;
      }
      name[n] = '\0';
      if (n == 0) {
        hl__detail_set("empty lock name (name=) in '%s'", target);
        free(out);
        return -EINVAL;
      }
      /* The name is stored as text (the server refuses bytes that are not
       * UTF-8) and shown: a name that is not clean UTF-8 would hold the
       * lock with no row (issue #17).  Refused, named as given. */
      char clean[NAME_MAX_LEN + 1];
      memcpy(clean, name, n + 1);
      hl__utf8_clean(clean, '?');
      if (strcmp(clean, name) != 0) {
        hl__detail_set("the lock name (name=%.*s) in '%s' is not valid UTF-8 text or holds "
                       "control characters; name the lock in UTF-8 letters, digits and "
                       "punctuation",
                       (int)(len - 5), p + 5, target);
        free(out);
        return -EINVAL;
      }
    } else if (len > 0) {
      out[o++] = first ? '?' : '&';
      memcpy(out + o, p, len);
      o += len;
      first = 0;
    }
    p = end ? end + 1 : NULL;
  }
  out[o] = '\0';
  /* libpq is loaded at the first URL (pq.h): without it, say what to install. */
  const char *why;
  int rc = hl__pq_load(&why);
  if (rc < 0) {
    hl__detail_set("%s", why);
    free(out);
    return rc;
  }
  /* Let libpq judge the rest now, so a bad URL is reported at open. */
  char *err = NULL;
  PQconninfoOption *opts = PQconninfoParse(out, &err);
  if (opts == NULL) {
    hl__detail_set("bad PostgreSQL URL '%s': %s", target, err ? err : "out of memory");
    PQfreemem(err);
    free(out);
    return -EINVAL;
  }
  PQconninfoFree(opts);
  *conninfo = out;
  return 0;
}

/* ---- the connection ---- */

static void quiet_notices(void *arg, const char *message) {
  (void)arg;
  (void)message; /* the library never prints (pg_advisory_unlock warns) */
}

static void set_appname(const pg_state_t *s, const char *label, char out[64]) {
  /* application_name is what pg_stat_activity shows without our table:
   * "heavylock PID@HOST LABEL", cut to the server's 63 bytes, printable
   * ASCII only (the server would turn the rest into '?'). */
  char full[HL_LABEL_MAX + 128];
  snprintf(full, sizeof(full), "heavylock %ld@%s %s", s->pid, s->host, label ? label : "");
  snprintf(out, 64, "%.63s", full);
  for (char *c = out; *c; c++)
    if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
      *c = '?';
}

/*
 * Every round trip is bounded (issue #17: a server that stops answering must
 * not hang -n or -w).  During an acquisition by what is left of the
 * caller's deadline, but never less than ROUND_TRIP_MIN_S (a try-once, or
 * the last moments of a wait, still gets a sane time to hear the answer);
 * outside one (open, release, status) by IDLE_CAP_S.  Waiting forever
 * leaves the statements unbounded too: that is what was asked.  The bound
 * is kept on the client's side (a poll on the socket): it holds for a
 * server that accepted TCP and never answers, a stopped backend, a table
 * locked by another session.  When it passes, the session is given up
 * (closed): whatever it half did, the server undoes with the session.
 */
#define ROUND_TRIP_MIN_S 5.0
#define IDLE_CAP_S 5.0

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double round_trip_until(const pg_state_t *s) {
  double now = mono(), d = s ? s->ask.deadline : 0;
  if (d == 0)
    return now + IDLE_CAP_S;
  if (isinf(d))
    return INFINITY;
  return now + (d - now > ROUND_TRIP_MIN_S ? d - now : ROUND_TRIP_MIN_S);
}

/* Wait until the socket is readable (`events`) or `until`: 1, 0 timed out,
 * <0 error. */
static int wait_socket(PGconn *c, short events, double until) {
  for (;;) {
    double left = until - mono();
    if (left <= 0)
      return 0;
    struct pollfd p = {.fd = PQsocket(c), .events = events};
    int ms = isinf(until) ? -1 : (int)(left * 1000.0 + 0.999);
    int rc = poll(&p, 1, ms);
    if (rc > 0)
      return 1;
    if (rc < 0 && errno != EINTR)
      return -errno;
  }
}

static PGconn *connect_to(const char *conninfo, const char *appname, double until) {
  /*
   * Our defaults come before `dbname` (the URL, expanded), so the user's own
   * settings in the URL win.  Server-side keepalives make the server notice
   * a vanished client machine (and drop its lock) in about 11 s instead of
   * the OS default of 2 hours.
   */
  const char *kw[] = {"connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
                      "keepalives_count", "options", "application_name", "dbname", NULL};
  const char *val[] = {"10", "1", "5", "2", "3",
                       "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 "
                       "-c tcp_keepalives_count=3",
                       appname, conninfo, NULL};
  double start = mono();
  PGconn *c = PQconnectStartParams(kw, val, 1);
  if (c == NULL)
    return NULL;
  /* libpq applies connect_timeout only when it blocks: here it is ours, the
   * user's value from the URL when it is shorter. */
  double cap = IDLE_CAP_S;
  PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
  for (PQconninfoOption *o = opts; o && o->keyword; o++)
    if (strcmp(o->keyword, "connect_timeout") == 0 && o->val && atoi(o->val) > 0 &&
        atoi(o->val) < cap)
      cap = atoi(o->val) < 2 ? 2 : atoi(o->val); /* libpq's own minimum is 2 s */
  PQconninfoFree(opts);
  if (isinf(until) || until - start > cap)
    until = start + cap;
  PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
  while (PQstatus(c) != CONNECTION_BAD && ps != PGRES_POLLING_OK && ps != PGRES_POLLING_FAILED) {
    int rc = wait_socket(c, ps == PGRES_POLLING_READING ? POLLIN : POLLOUT, until);
    if (rc == 0) {
      hl__detail_set("timed out after %.1f s connecting to PostgreSQL (the server accepted "
                     "no session: is it answering?)", mono() - start);
      PQfinish(c);
      errno = ETIMEDOUT;
      return NULL;
    }
    ps = PQconnectPoll(c);
  }
  PQsetNoticeProcessor(c, quiet_notices, NULL);
  return c;
}

/* The error of a failed query, as a code: HL_ELOST when the connection is
 * gone (the lock with it), else -EPROTO with the server's message kept. */
static int query_error(pg_state_t *s, PGconn *c, PGresult *r, const char *what) {
  const char *msg = r ? PQresultErrorMessage(r) : PQerrorMessage(c);
  hl__detail_set("%s: %s", what, msg && msg[0] ? msg : PQerrorMessage(c));
  /* A FATAL (pg_terminate_backend, a server shutdown) ends the session even
   * before libpq has read the end of the stream. */
  const char *sev = r ? PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED) : NULL;
  if (PQstatus(c) != CONNECTION_OK || (sev && (!strcmp(sev, "FATAL") || !strcmp(sev, "PANIC")))) {
    if (s)
      s->lost = 1;
    return HL_ELOST;
  }
  return -EPROTO;
}

/* Read the answer of the statement send_later() sent.  Its failure costs
 * nothing but what it wrote (a row for status); a lost connection shows at
 * the next statement or check. */
static int await_answer(pg_state_t *s, PGconn *c, double until, const char *what);

static void settle(pg_state_t *s) {
  if (!s->inflight)
    return;
  s->inflight = 0;
  if (await_answer(s, s->conn, round_trip_until(s), "writing the holder's row") < 0)
    return; /* the session is given up: the next statement reconnects */
  PGresult *r;
  while ((r = PQgetResult(s->conn)) != NULL)
    PQclear(r);
}

/* Wait (bounded) until the answer to what was sent is all read: 0, or
 * HL_ETIMEDOUT / HL_ELOST with the session given up. */
static int await_answer(pg_state_t *s, PGconn *c, double until, const char *what) {
  double start = mono();
  while (PQisBusy(c)) {
    int rc = wait_socket(c, POLLIN, until);
    if (rc == 0) {
      hl__detail_set("timed out after %.1f s waiting for the server's answer (%.60s): the "
                     "server is not answering (a stopped backend, a locked table, a stuck "
                     "network); the session is given up",
                     mono() - start, what);
      if (s && c == s->conn) {
        /* Closed now, not at the next start: a session we gave up must not
         * go on holding (the server ends it and undoes what it half did). */
        PQfinish(s->conn);
        s->conn = NULL;
        s->lost = 1;
        s->armed = s->listening = s->pending = s->inflight = 0;
      }
      return HL_ETIMEDOUT;
    }
    if (rc < 0 || !PQconsumeInput(c))
      return query_error(s, c, NULL, what);
  }
  return 0;
}

/* Run `sql` with text parameters; NULL on failure (rc set). */
static PGresult *run(pg_state_t *s, PGconn *c, int *rc, const char *sql, int n,
                     const char *const *params) {
  if (s && c == s->conn && s->lost) { /* given up (timed out): say so at once */
    *rc = HL_ELOST;
    return NULL;
  }
  if (s && c == s->conn)
    settle(s);
  PGresult *r = NULL;
  if (!PQsendQueryParams(c, sql, n, NULL, params, NULL, NULL, 0)) {
    *rc = query_error(s, c, NULL, sql);
    return NULL;
  }
  if ((*rc = await_answer(s, c, round_trip_until(s), sql)) < 0)
    return NULL;
  /* The statement's result, then the end of its results. */
  r = PQgetResult(c);
  for (PGresult *more; (more = PQgetResult(c)) != NULL;)
    PQclear(more);
  ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
    *rc = query_error(s, c, r, sql);
    PQclear(r);
    return NULL;
  }
  *rc = 0;
  return r;
}

static int exec0(pg_state_t *s, const char *sql, int n, const char *const *params) {
  int rc;
  PGresult *r = run(s, s->conn, &rc, sql, n, params);
  PQclear(r);
  return rc;
}

/* The first value of a one-row answer is "t". */
static int is_true(PGresult *r) {
  return PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) && PQgetvalue(r, 0, 0)[0] == 't';
}

/*
 * The holders' table.  No SQL comments in the statement: it is shown, on
 * one line, to a role that may not create it ("create it once as: ..."),
 * and must run as printed (a "--" would swallow the rest of the line).
 *   backend_pid  the session (pg_backend_pid())
 *   name         the lock name
 *   state        'h' holds, 'w' waits
 *   k1, k2       the advisory key whose lock keeps the row alive (classid,
 *                objid in pg_locks)
 *   weight       bytes, 0 unknown
 *   pid, host    the client process, on `host`
 *   machine      boot_id and pid namespace (Linux)
 */
#define TABLE_DDL                                                                            \
  "CREATE TABLE IF NOT EXISTS heavylock_holders ("                                           \
  "backend_pid integer PRIMARY KEY, name text NOT NULL, state text NOT NULL, "               \
  "k1 bigint NOT NULL, k2 bigint NOT NULL, exclusive boolean NOT NULL, "                     \
  "weight bigint NOT NULL DEFAULT 0, weight_source text NOT NULL DEFAULT '', "               \
  "budget bigint NOT NULL DEFAULT 0, pid bigint NOT NULL, host text NOT NULL, "              \
  "machine text NOT NULL DEFAULT '', label text NOT NULL DEFAULT '', "                       \
  "since timestamptz NOT NULL DEFAULT now())"

const char *hl__pg_table_ddl(void) { return TABLE_DDL; }

/* A row is alive only while its session holds the key it names. */
#define LIVE                                                                                 \
  "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"             \
  " AND l.objsubid = 2 AND l.pid = h.backend_pid AND l.classid::int8 = h.k1"                 \
  " AND l.objid::int8 = h.k2 AND l.database = (SELECT oid FROM pg_database"                 \
  " WHERE datname = current_database()))"

/* The columns TABLE_DDL makes, as format_type() names their types. */
static const char *const columns[][2] = {
    {"backend_pid", "integer"}, {"name", "text"},    {"state", "text"},
    {"k1", "bigint"},           {"k2", "bigint"},    {"exclusive", "boolean"},
    {"weight", "bigint"},       {"weight_source", "text"}, {"budget", "bigint"},
    {"pid", "bigint"},          {"host", "text"},    {"machine", "text"},
    {"label", "text"},          {"since", "timestamp with time zone"},
};

/*
 * A table made by someone else (or an older heavylock) must have our shape:
 * else rows go missing silently (an extra NOT NULL column refuses every
 * insert) and admission by memory cannot count (issue #17).  Checked once
 * per session, reported with what is wrong.  0 or -EPROTO (detail set).
 */
static int check_table(pg_state_t *s) {
  int rc;
  PGresult *r = run(s, s->conn, &rc,
                    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),"
                    " a.attnotnull AND NOT a.atthasdef AND a.attidentity = '',"
                    " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid"
                    " AND i.indisunique AND i.indnatts = 1 AND i.indkey[0] = a.attnum)"
                    " FROM pg_attribute a WHERE a.attrelid = 'heavylock_holders'::regclass"
                    " AND a.attnum > 0 AND NOT a.attisdropped",
                    0, NULL);
  if (r == NULL)
    return rc;
  char why[512] = "";
  size_t ncol = sizeof(columns) / sizeof(columns[0]);
  int seen[sizeof(columns) / sizeof(columns[0])] = {0};
  for (int i = 0; i < PQntuples(r) && !why[0]; i++) {
    const char *col = PQgetvalue(r, i, 0), *type = PQgetvalue(r, i, 1);
    size_t k = 0;
    while (k < ncol && strcmp(columns[k][0], col) != 0)
      k++;
    if (k == ncol) {
      if (PQgetvalue(r, i, 2)[0] == 't')
        snprintf(why, sizeof(why), "it has a column %.64s NOT NULL without a default, which "
                 "heavylock does not fill (every row would be refused)", col);
    } else {
      seen[k] = 1;
      if (strcmp(type, columns[k][1]) != 0)
        snprintf(why, sizeof(why), "its column %s is %.64s; heavylock needs %s", col, type,
                 columns[k][1]);
      else if (k == 0 && PQgetvalue(r, i, 3)[0] != 't')
        snprintf(why, sizeof(why), "its column backend_pid is not its primary key (or unique)");
    }
  }
  for (size_t k = 0; k < ncol && !why[0]; k++)
    if (!seen[k])
      snprintf(why, sizeof(why), "it has no column %s (%s)", columns[k][0], columns[k][1]);
  PQclear(r);
  if (!why[0])
    return 0;
  hl__detail_set("the table heavylock_holders is not the one heavylock needs: %s; it holds "
                 "only the rows of live sessions, so drop it (DROP TABLE heavylock_holders) and "
                 "let heavylock create it, or create it as: %s",
                 why, TABLE_DDL);
  return -EPROTO;
}

static int ensure_table(pg_state_t *s) {
  int rc;
  PGresult *r = run(s, s->conn, &rc, "SELECT to_regclass('heavylock_holders') IS NOT NULL", 0,
                    NULL);
  if (r == NULL)
    return rc;
  int have = is_true(r);
  PQclear(r);
  if (have)
    return check_table(s);
  /* Concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog:
   * serialize the creators on the schema key. */
  key_t_ k = make_key("", "schema");
  char a[12], b[12];
  key_args(k, a, b);
  const char *p[] = {a, b};
  if ((rc = exec0(s, "BEGIN", 0, NULL)) < 0)
    return rc;
  if ((rc = exec0(s, "SELECT pg_advisory_xact_lock($1::int4, $2::int4)", 2, p)) == 0)
    rc = exec0(s, TABLE_DDL, 0, NULL);
  if (rc < 0) {
    char keep[1024];
    snprintf(keep, sizeof(keep), "%s", hl__kind_detail());
    (void)exec0(s, "ROLLBACK", 0, NULL);
    hl__detail_set("cannot create the table heavylock_holders (%s); grant CREATE on the schema "
               "or create it once as: %s",
               keep, TABLE_DDL);
    return rc;
  }
  return exec0(s, "COMMIT", 0, NULL);
}

/* Connect (again, after a lost connection) and prepare the session. */
static int session_start(pg_state_t *s) {
  if (s->conn && PQstatus(s->conn) == CONNECTION_OK && !s->lost)
    return 0;
  if (s->conn)
    PQfinish(s->conn);
  s->lost = 0;
  s->armed = s->listening = s->pending = s->inflight = 0;
  s->server_ms = 0;
  s->server_for = -1;
  char app[64];
  set_appname(s, s->ask.label, app);
  s->conn = connect_to(s->conninfo, app, round_trip_until(s));
  if (s->conn == NULL && errno == ETIMEDOUT)
    return HL_ETIMEDOUT; /* detail set: "timed out ... connecting" */
  if (s->conn == NULL || PQstatus(s->conn) != CONNECTION_OK) {
    hl__detail_set("cannot connect to PostgreSQL: %s",
               s->conn ? PQerrorMessage(s->conn) : "out of memory");
    if (s->conn)
      PQfinish(s->conn);
    s->conn = NULL;
    return -ECONNREFUSED;
  }
  /* A server-wide statement/lock/idle timeout would end our waits or our
   * holding session: not for this session. */
  int rc = exec0(s,
                 "SELECT set_config('statement_timeout', '0', false),"
                 " set_config('lock_timeout', '0', false),"
                 " set_config('idle_in_transaction_session_timeout', '0', false)",
                 0, NULL);
  /* client_connection_check_interval: a backend whose client died (or gave
   * up on it) in the middle of a statement, e.g. blocked on a locked table,
   * ends within a second, and its advisory locks with it.  Without it, such
   * a backend kept its slot key until the statement finished, and a later
   * `--slots 2 -n` was refused with no live client holding (issue #17). */
  if (rc == 0 && PQserverVersion(s->conn) >= 140000)
    rc = exec0(s,
               "SELECT set_config('idle_session_timeout', '0', false),"
               " set_config('client_connection_check_interval', '1000', false)",
               0, NULL);
  if (rc == 0)
    rc = ensure_table(s);
  if (rc == 0) { /* rows of sessions that are gone: clean them while here */
    rc = exec0(s, "DELETE FROM heavylock_holders h WHERE NOT " LIVE, 0, NULL);
    if (rc == -EPROTO)
      rc = 0; /* the clean-up failing costs nothing; a server not answering does */
  }
  return rc;
}

/*
 * The server's own bound behind the client's (statement_timeout and
 * lock_timeout): should the client go away or give up, the server still
 * ends the statement (before PostgreSQL 14 nothing else would, and the
 * backend kept its advisory locks meanwhile).  Always longer than the
 * client's bound, so the client decides: what is left of the deadline
 * plus 2 s, rounded up to a power of two seconds (at least 8), so that it
 * is set once per session in practice, not per statement; 0 (none) when
 * waiting forever.
 */
static int server_bound(pg_state_t *s) {
  double d = s->ask.deadline;
  if (s->pending || d == s->server_for)
    return 0; /* once per acquisition, and never over a request in flight */
  s->server_for = d;
  long ms = 0;
  if (d != 0 && !isinf(d)) {
    double left = d - mono();
    long sec = 8;
    while ((double)sec < (left > ROUND_TRIP_MIN_S ? left : ROUND_TRIP_MIN_S) + 2 && sec < 1L << 30)
      sec *= 2;
    ms = sec > 2000000L ? 0 : sec * 1000; /* past int4 milliseconds: none */
  }
  if (ms == s->server_ms)
    return 0;
  char v[24];
  snprintf(v, sizeof(v), "%ld", ms);
  const char *p[] = {v};
  int rc = exec0(s, "SELECT set_config('statement_timeout', $1, false),"
                    " set_config('lock_timeout', $1, false)", 1, p);
  if (rc == 0)
    s->server_ms = ms;
  return rc;
}

/* ---- the callbacks ---- */

static int pg_open(const char *target, void **statep) {
  *statep = NULL;
  pg_state_t *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return -ENOMEM;
  int rc = hl__pg_parse(target, &s->conninfo, s->name, sizeof(s->name));
  if (rc < 0) {
    free(s);
    return rc;
  }
  s->main = make_key(s->name, NULL);
  s->wait = make_key(s->name, "wait");
  s->admission = make_key(s->name, "admission");
  snprintf(s->channel, sizeof(s->channel), "heavylock_%016llx", (unsigned long long)s->main.h);
  s->pid = (long)getpid();
  if (gethostname(s->host, sizeof(s->host)) < 0)
    s->host[0] = '\0';
  s->host[sizeof(s->host) - 1] = '\0';
  machine_id(s->machine, sizeof(s->machine));
  /* Connect now: a wrong host, database or password is reported here. */
  if ((rc = session_start(s)) < 0) {
    if (s->conn)
      PQfinish(s->conn);
    free(s->conninfo);
    free(s);
    return rc;
  }
  *statep = s;
  return 0;
}

/* What the ask means here. */
typedef struct plan_s {
  int exclusive;  /* hold `main` alone                        */
  int nslots;     /* slot keys to try                          */
  int admit_mem;  /* check weights against the budget          */
} plan_t;

static int make_plan(const hl__ask_t *ask, plan_t *p) {
  memset(p, 0, sizeof(*p));
  p->admit_mem = ask->slots == 0 || (ask->slots != 1 && ask->weight > 0) ||
                 (ask->slots != 1 && ask->budget > 0);
  if (p->admit_mem && ask->budget == 0) {
    hl__detail_set("memory admission on a PostgreSQL lock needs a budget (--budget SIZE): "
               "there is no live memory to read across machines");
    return HL_ENOBUDGET;
  }
  p->exclusive = ask->slots == 1 || (p->admit_mem && ask->weight == 0);
  p->nslots = ask->slots == 0 ? AUTO_SLOTS : ask->slots;
  return 0;
}

/*
 * Write (or replace) this session's row: state 'h' or 'w'.  `unwait`: in the
 * same statement, stop being a visible waiter (unlock `wait` shared).
 * `later`: send it and return at once; the next statement reads the answer.
 * A waiter that just won thus returns after the one round trip that granted
 * it (a handoff costs one wake-up, not three round trips).
 */
static int write_row(pg_state_t *s, const char *state, key_t_ k, int exclusive, int unwait,
                     int later) {
  char a[12], b[12], w[24], bud[24], pid[24], w1[12], w2[12];
  key_oids(k, a, b);
  key_args(s->wait, w1, w2);
  snprintf(w, sizeof(w), "%llu", (unsigned long long)s->ask.weight);
  snprintf(bud, sizeof(bud), "%llu", (unsigned long long)s->ask.budget);
  snprintf(pid, sizeof(pid), "%ld", s->pid);
  const char *p[] = {s->name, state, a, b, exclusive ? "t" : "f", w, s->ask.weight_source,
                     bud, pid, s->host, s->ask.label, unwait ? "t" : "f", w1, w2, s->machine};
  const char *sql =
      "INSERT INTO heavylock_holders AS h (backend_pid, name, state, k1, k2, exclusive,"
      " weight, weight_source, budget, pid, host, label, machine)"
      " SELECT pg_backend_pid(), $1::text, $2::text, $3::int8, $4::int8, $5::bool, $6::int8,"
      " $7::text, $8::int8, $9::int8, $10::text, $11::text, $15::text FROM (SELECT CASE WHEN"
      " $12::bool THEN pg_advisory_unlock_shared($13::int4, $14::int4) END) AS unwait"
      " ON CONFLICT (backend_pid) DO UPDATE SET name = $1, state = $2, k1 = $3, k2 = $4,"
      " exclusive = $5, weight = $6, weight_source = $7, budget = $8, pid = $9,"
      " host = $10, label = $11, machine = $15, since = now()";
  if (!later)
    return exec0(s, sql, 15, p);
  settle(s);
  if (!PQsendQueryParams(s->conn, sql, 15, NULL, p, NULL, NULL, 0))
    return query_error(s, s->conn, NULL, "writing the holder's row");
  s->inflight = 1;
  return 0;
}

/* Unlock (ignoring "not held" warnings) `key`, exclusive or shared. */
static void unlock_key(pg_state_t *s, key_t_ k, int shared) {
  char a[12], b[12];
  key_args(k, a, b);
  const char *p[] = {a, b};
  (void)exec0(s,
              shared ? "SELECT pg_advisory_unlock_shared($1::int4, $2::int4)"
                     : "SELECT pg_advisory_unlock($1::int4, $2::int4)",
              2, p);
}

/* Try a key: 1 got it, 0 busy, <0 error. */
static int try_key(pg_state_t *s, key_t_ k, int shared) {
  char a[12], b[12];
  key_args(k, a, b);
  const char *p[] = {a, b};
  int rc;
  PGresult *r = run(s, s->conn, &rc,
                    shared ? "SELECT pg_try_advisory_lock_shared($1::int4, $2::int4)"
                           : "SELECT pg_try_advisory_lock($1::int4, $2::int4)",
                    2, p);
  if (r == NULL)
    return rc;
  rc = is_true(r);
  PQclear(r);
  return rc;
}

/*
 * Take one free slot key of n and then `main` shared, in one round trip.
 * *index: the slot taken, -1 when all are busy.  *main: 1 when `main` was
 * had too (0: an exclusive holder or waiter is in the way; the slot is
 * still held then and the caller lets it go).  0 or an error.
 */
static int try_slots(pg_state_t *s, int n, int *index, int *main) {
  size_t cap = (size_t)n * 13 + 4;
  char *a1 = malloc(cap), *a2 = malloc(cap);
  if (a1 == NULL || a2 == NULL) {
    free(a1);
    free(a2);
    return -ENOMEM;
  }
  size_t o1 = 0, o2 = 0;
  a1[o1++] = '{';
  a2[o2++] = '{';
  for (int i = 0; i < n; i++) {
    char x[12], y[12];
    key_args(slot_key(s->name, i), x, y);
    o1 += (size_t)snprintf(a1 + o1, cap - o1, "%s%s", i ? "," : "", x);
    o2 += (size_t)snprintf(a2 + o2, cap - o2, "%s%s", i ? "," : "", y);
  }
  snprintf(a1 + o1, cap - o1, "}");
  snprintf(a2 + o2, cap - o2, "}");
  char m1[12], m2[12];
  key_args(s->main, m1, m2);
  const char *p[] = {a1, a2, m1, m2};
  int rc;
  /* The filter runs row by row under LIMIT 1: at most one key is taken; the
   * CTE (volatile, so materialized once) runs before `main` is tried, and
   * `main` only when a slot was had.  The slot first: status counts the
   * sessions on `main`, and a failed attempt should not show there. */
  PGresult *r = run(s, s->conn, &rc,
                    "WITH slot AS (SELECT i - 1 AS i FROM unnest($1::int4[], $2::int4[])"
                    " WITH ORDINALITY AS t(a, b, i) WHERE pg_try_advisory_lock(a, b) LIMIT 1)"
                    " SELECT i, pg_try_advisory_lock_shared($3::int4, $4::int4) FROM slot",
                    4, p);
  free(a1);
  free(a2);
  if (r == NULL)
    return rc;
  *index = PQntuples(r) > 0 ? atoi(PQgetvalue(r, 0, 0)) : -1;
  *main = PQntuples(r) > 0 && PQgetvalue(r, 0, 1)[0] == 't';
  PQclear(r);
  return 0;
}

/* One attempt at a slot (and memory) admission.  0 held, HL_EBUSY, error. */
static int try_slot_holder(pg_state_t *s, const plan_t *pl) {
  int rc, in_xact = 0, got_main = 0, idx = -1;
  if (pl->admit_mem) {
    /* The check and the row are atomic: admissions serialize on this
     * transaction lock; releases need no lock (they only free room). */
    char a[12], b[12];
    key_args(s->admission, a, b);
    const char *p[] = {a, b};
    if ((rc = exec0(s, "BEGIN", 0, NULL)) < 0)
      return rc;
    in_xact = 1;
    if ((rc = exec0(s, "SELECT pg_advisory_xact_lock($1::int4, $2::int4)", 2, p)) < 0)
      goto out;
  }
  if ((rc = try_slots(s, pl->nslots, &idx, &got_main)) < 0)
    goto out;
  if (idx < 0 || !got_main) {
    rc = HL_EBUSY;
    goto out;
  }
  if (pl->admit_mem) {
    (void)exec0(s, "DELETE FROM heavylock_holders h WHERE NOT " LIVE, 0, NULL);
    const char *p[] = {s->name};
    PGresult *r = run(s, s->conn, &rc,
                      "SELECT coalesce(sum(weight), 0)::text, count(*)::text FROM heavylock_holders"
                      " h WHERE name = $1 AND state = 'h' AND " LIVE,
                      1, p);
    if (r == NULL)
      goto out;
    uint64_t used = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    long n = atol(PQgetvalue(r, 0, 1));
    PQclear(r);
    /* Fits, or runs alone rather than never. */
    int fits = n == 0 || (used <= s->ask.budget && s->ask.weight <= s->ask.budget - used);
    if (!fits) {
      rc = HL_EBUSY;
      goto out;
    }
  }
  s->slot_key = slot_key(s->name, idx);
  /* Under a budget the row is part of the admission: written in the
   * transaction, before COMMIT.  Otherwise it is a courtesy for status. */
  rc = write_row(s, "h", s->slot_key, 0, s->armed, !pl->admit_mem);
  if (rc < 0 && pl->admit_mem)
    goto out; /* without its row a weight does not count: refuse */
  s->armed = 0;
  rc = 0;
  if (in_xact && (rc = exec0(s, "COMMIT", 0, NULL)) < 0) {
    in_xact = 0;
    goto out;
  }
  s->held = 2;
  return 0;
out:
  if (in_xact)
    (void)exec0(s, "ROLLBACK", 0, NULL); /* session locks survive it: */
  if (idx >= 0)
    unlock_key(s, slot_key(s->name, idx), 0);
  if (got_main)
    unlock_key(s, s->main, 1);
  return rc;
}

/* Become a visible waiter: `wait` shared, a row, and for slots a LISTEN. */
static int arm(pg_state_t *s, int listen) {
  if (s->armed)
    return 0;
  int rc = try_key(s, s->wait, 1);
  if (rc < 0)
    return rc;
  (void)write_row(s, "w", s->wait, 0, 0, 0); /* a courtesy for status */
  if (listen && !s->listening) {
    char sql[80];
    snprintf(sql, sizeof(sql), "LISTEN %s", s->channel);
    if ((rc = exec0(s, sql, 0, NULL)) < 0)
      return rc;
    s->listening = 1;
  }
  s->armed = 1;
  return 0;
}

/* Queue in the server for `main`: an asynchronous pg_advisory_lock. */
static int send_lock(pg_state_t *s) {
  char a[12], b[12];
  key_args(s->main, a, b);
  const char *p[] = {a, b};
  settle(s);
  if (!PQsendQueryParams(s->conn, "SELECT pg_advisory_lock($1::int4, $2::int4)", 2, NULL, p,
                         NULL, NULL, 0))
    return query_error(s, s->conn, NULL, "pg_advisory_lock");
  s->pending = 1;
  return 0;
}

/* Collect the answer to the pending lock request when it is there.
 * 1 granted, 0 still waiting, <0 error (pending cleared). */
static int poll_lock(pg_state_t *s, int block) {
  if (!block) {
    if (!PQconsumeInput(s->conn))
      goto fail;
    if (PQisBusy(s->conn))
      return 0;
  } else {
    /* After a cancel: bounded, a stopped backend never answers it. */
    int rc = await_answer(s, s->conn, mono() + ROUND_TRIP_MIN_S, "pg_advisory_lock");
    if (rc < 0) {
      s->pending = 0;
      return rc;
    }
  }
  PGresult *r = PQgetResult(s->conn);
  int ok = r && PQresultStatus(r) == PGRES_TUPLES_OK;
  int rc = ok ? 1 : query_error(s, s->conn, r, "pg_advisory_lock");
  PQclear(r);
  while ((r = PQgetResult(s->conn)) != NULL)
    PQclear(r);
  s->pending = 0;
  return rc;
fail:
  s->pending = 0;
  return query_error(s, s->conn, NULL, "waiting for the lock");
}

static void disarm(pg_state_t *s) {
  if (s->lost || s->conn == NULL) {
    s->armed = s->listening = s->pending = 0;
    return;
  }
  if (s->pending) {
    /* Leave the server's queue.  If the grant won the race, let go. */
    char err[256];
    PGcancel *c = PQgetCancel(s->conn);
    if (c) {
      (void)PQcancel(c, err, sizeof(err));
      PQfreeCancel(c);
    }
    int got = poll_lock(s, 1);
    if (s->lost) /* the answer never came: the session is given up, and all with it */
      return;
    if (got == 1) {
      unlock_key(s, s->main, 0);
      char *p[] = {s->channel};
      (void)exec0(s, "SELECT pg_notify($1, '')", 1, (const char *const *)p);
    }
  }
  if (s->listening) {
    (void)exec0(s, "UNLISTEN *", 0, NULL);
    s->listening = 0;
  }
  if (s->armed) {
    /* Only a waiter's row: a holder's row must stay (admission counts it). */
    (void)exec0(s,
                "DELETE FROM heavylock_holders WHERE backend_pid = pg_backend_pid()"
                " AND state = 'w'",
                0, NULL);
    unlock_key(s, s->wait, 1);
    s->armed = 0;
  }
  PGnotify *n;
  while ((n = PQnotifies(s->conn)) != NULL)
    PQfreemem(n);
}

/* We hold `main` exclusively now: record it and stop being a waiter. */
static int won_exclusive(pg_state_t *s) {
  s->held = 1;
  s->slot_key = s->main;
  (void)write_row(s, "h", s->main, 1, s->armed, 1); /* a courtesy for status */
  s->armed = 0;
  return 0;
}

static int pg_try_acquire(void *state, const hl__ask_t *ask, int waiting) {
  pg_state_t *s = state;
  plan_t pl;
  int rc = make_plan(ask, &pl);
  if (rc < 0)
    return rc;
  if (s->held)
    return -EDEADLK;
  if (s->lost && (s->armed || s->pending))
    return HL_ELOST; /* the wait's session is gone: say so, not "busy" */
  s->ask = *ask;
  if ((rc = session_start(s)) < 0 || (rc = server_bound(s)) < 0)
    return rc;

  if (pl.exclusive) {
    if (s->pending) {
      rc = poll_lock(s, 0);
      if (rc == 1)
        return won_exclusive(s);
      return rc == 0 ? HL_EBUSY : rc;
    }
    if ((rc = try_key(s, s->main, 0)) < 0)
      return rc;
    if (rc == 1)
      return won_exclusive(s);
    if (!waiting)
      return HL_EBUSY;
    /* Busy: become a visible waiter, then queue in the server. */
    if ((rc = arm(s, 0)) < 0 || (rc = send_lock(s)) < 0)
      return rc;
    return HL_EBUSY;
  }

  rc = try_slot_holder(s, &pl);
  if (rc == 0)
    return 0; /* LISTEN stays for the next wait; check() drains what comes */
  if (rc != HL_EBUSY || !waiting || s->armed)
    return rc;
  /* Busy: LISTEN before trying once more, so no release is missed. */
  if ((rc = arm(s, 1)) < 0)
    return rc;
  return try_slot_holder(s, &pl);
}

static int pg_wait(void *state, int ms) {
  pg_state_t *s = state;
  if (s->conn == NULL || s->lost)
    return HL_ELOST;
  struct pollfd p = {.fd = PQsocket(s->conn), .events = POLLIN};
  int rc = poll(&p, 1, ms);
  if (rc < 0)
    return errno == EINTR ? -EINTR : -errno;
  if (rc == 0)
    return 0;
  if (!s->pending) {
    /* Notifications (a release) or the end of the session. */
    if (!PQconsumeInput(s->conn))
      return query_error(s, s->conn, NULL, "waiting for a release");
    PGnotify *n;
    while ((n = PQnotifies(s->conn)) != NULL)
      PQfreemem(n);
  }
  return 1; /* try_acquire reads the lock's answer */
}

static int pg_acquire_blocking(void *state, const hl__ask_t *ask) {
  pg_state_t *s = state;
  for (;;) {
    int rc = pg_try_acquire(state, ask, 1);
    if (rc != HL_EBUSY)
      return rc;
    /* Exclusive: the pending request returns when granted; slots: a NOTIFY
     * wakes us, and the re-check covers a holder that died. */
    rc = pg_wait(s, s->pending ? -1 : 100);
    if (rc < 0)
      return rc;
  }
}

static void pg_cancel(void *state) { disarm(state); }

static int pg_release(void *state) {
  pg_state_t *s = state;
  if (!s->held)
    return HL_ENOTHELD;
  int was = s->held;
  s->held = 0;
  if (s->lost || s->conn == NULL || PQstatus(s->conn) != CONNECTION_OK) {
    s->lost = 1;
    hl__detail_set("the connection to PostgreSQL was lost while the lock was held: "
               "the server released it then");
    return HL_ELOST;
  }
  char a[12], b[12], c[12], d[12];
  key_args(s->slot_key, a, b);
  key_args(s->main, c, d);
  /* Row first, then the keys, then the wake-up (delivered at commit, i.e.
   * after the unlocks) for waiters that LISTEN. */
  if (was == 1) {
    const char *p[] = {a, b, s->channel};
    return exec0(s,
                 "WITH d AS (DELETE FROM heavylock_holders WHERE backend_pid = pg_backend_pid())"
                 " SELECT pg_advisory_unlock($1::int4, $2::int4), pg_notify($3, '')",
                 3, p);
  }
  const char *p[] = {a, b, c, d, s->channel};
  return exec0(s,
               "WITH d AS (DELETE FROM heavylock_holders WHERE backend_pid = pg_backend_pid())"
               " SELECT pg_advisory_unlock($1::int4, $2::int4),"
               " pg_advisory_unlock_shared($3::int4, $4::int4), pg_notify($5, '')",
               5, p);
}

static int pg_relabel(void *state, const hl__ask_t *ask) {
  pg_state_t *s = state;
  snprintf(s->ask.label, sizeof(s->ask.label), "%s", ask->label);
  if (s->lost || s->conn == NULL)
    return HL_ELOST;
  char app[64];
  set_appname(s, ask->label, app);
  const char *p1[] = {app}, *p2[] = {ask->label};
  int rc = exec0(s, "SELECT set_config('application_name', $1, false)", 1, p1);
  if (rc == 0)
    rc = exec0(s, "UPDATE heavylock_holders SET label = $1 WHERE backend_pid = pg_backend_pid()",
               1, p2);
  return rc;
}

static int pg_identity(void *state, uint64_t id[2]) {
  pg_state_t *s = state;
  id[0] = s->main.h;
  id[1] = fnv1a((const unsigned char *)s->conninfo, strlen(s->conninfo), 0xcbf29ce484222325ull);
  return 0;
}

static intptr_t pg_fd(void *state) {
  (void)state;
  return -1; /* the lock lives in a server session, not in a descriptor */
}

/* Is the session (and so the lock) still there?  No round trip: whatever
 * the server sent (a FATAL on pg_terminate_backend, the end of the stream
 * on a restart) or the kernel found (keepalives gave up) is read now. */
int hl__pg_check(void *state) {
  pg_state_t *s = state;
  if (s->conn == NULL || s->lost || PQstatus(s->conn) != CONNECTION_OK) {
    s->lost = 1;
    return HL_ELOST;
  }
  for (int i = 0; i < 8; i++) {
    struct pollfd p = {.fd = PQsocket(s->conn), .events = POLLIN};
    int rc = poll(&p, 1, 0);
    if (rc <= 0)
      break;
    if (!PQconsumeInput(s->conn) || PQstatus(s->conn) != CONNECTION_OK) {
      query_error(s, s->conn, NULL, "the connection to PostgreSQL was lost");
      s->lost = 1;
      return HL_ELOST;
    }
    PGnotify *n;
    while ((n = PQnotifies(s->conn)) != NULL)
      PQfreemem(n);
  }
  return 0;
}

static void pg_close(void *state, int owner) {
  pg_state_t *s = state;
  if (s == NULL)
    return;
  if (owner) {
    if (s->held)
      (void)pg_release(s);
    disarm(s);
    if (s->conn)
      PQfinish(s->conn); /* ends the session: the server drops anything left */
  }
  /* A forked child must not end the parent's session: PQfinish would send
   * Terminate on the socket it shares with the parent.  So the child's copy
   * of the descriptor is pointed at /dev/null first (dup2 changes only this
   * process's descriptor table); PQfinish then says goodbye to nothing and
   * frees the PGconn.  Without /dev/null the PGconn is left allocated. */
  else if (s->conn) {
    int fd = PQsocket(s->conn), null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (fd >= 0 && null >= 0 && dup2(null, fd) == fd)
      PQfinish(s->conn);
    if (null >= 0)
      close(null);
  }
  free(s->conninfo);
  free(s);
}

/* ---- status: from the server's lock table ---- */

static void copy(char *dst, size_t n, const char *src) { snprintf(dst, n, "%s", src ? src : ""); }

static int pg_status(const char *target, hl_status_t *st, int flags) {
  (void)flags;
  char *conninfo = NULL, name[NAME_MAX_LEN + 1];
  int rc = hl__pg_parse(target, &conninfo, name, sizeof(name));
  if (rc < 0)
    return rc;
  PGconn *c = connect_to(conninfo, "heavylock status", round_trip_until(NULL));
  free(conninfo);
  if (c == NULL && errno == ETIMEDOUT)
    return HL_ETIMEDOUT;
  if (c == NULL || PQstatus(c) != CONNECTION_OK) {
    hl__detail_set("cannot connect to PostgreSQL: %s", c ? PQerrorMessage(c) : "out of memory");
    PQfinish(c);
    return -ECONNREFUSED;
  }
  st->method = "pg_locks";
  PGresult *r = run(NULL, c, &rc, "SELECT to_regclass('heavylock_holders') IS NOT NULL", 0, NULL);
  if (r == NULL) {
    PQfinish(c);
    return rc;
  }
  int table = is_true(r);
  PQclear(r);

  char m1[12], m2[12], w1[12], w2[12];
  key_oids(make_key(name, NULL), m1, m2);
  key_oids(make_key(name, "wait"), w1, w2);
  const char *p[] = {m1, m2, w1, w2, name};
  /* One row per lock on `main` or `wait`; the session's row (if any) says
   * who it is.  Holders: granted on main.  Waiters: holding `wait`; blocked
   * in the server when the same session also asks for main. */
  char sql[2048];
  snprintf(sql, sizeof(sql),
           "SELECT l.pid, l.granted, l.mode, (l.classid::int8 = $1 AND l.objid::int8 = $2),"
           " coalesce(h.pid, 0), coalesce(h.host, host(a.client_addr), ''),"
           " coalesce(h.label, a.application_name, ''), coalesce(h.weight, 0),"
           " coalesce(h.weight_source, ''), coalesce(h.budget, 0),"
           " coalesce(extract(epoch FROM clock_timestamp() - coalesce(h.since, a.state_change)),"
           " -1), a.application_name, coalesce(h.machine, '')"
           " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid %s"
           " WHERE l.locktype = 'advisory' AND l.objsubid = 2"
           " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
           " AND ((l.classid::int8 = $1 AND l.objid::int8 = $2)"
           " OR (l.classid::int8 = $3 AND l.objid::int8 = $4 AND l.granted))"
           " ORDER BY 11 DESC",
           table ? "LEFT JOIN heavylock_holders h ON h.backend_pid = l.pid AND h.name = $5"
                 : "LEFT JOIN (SELECT NULL::int AS backend_pid, NULL::bigint AS pid,"
                   " NULL::text AS host, NULL::text AS label, NULL::bigint AS weight,"
                   " NULL::text AS weight_source, NULL::bigint AS budget,"
                   " NULL::timestamptz AS since, NULL::text AS machine, $5::text AS name) h"
                   " ON false");
  r = run(NULL, c, &rc, sql, 5, p);
  if (r == NULL) {
    PQfinish(c);
    return rc;
  }
  char myhost[64] = "";
  if (gethostname(myhost, sizeof(myhost)) < 0)
    myhost[0] = '\0';
  myhost[sizeof(myhost) - 1] = '\0';
  char mymachine[96];
  machine_id(mymachine, sizeof(mymachine));
  uint64_t used = 0;
  int n = PQntuples(r);
  for (int i = 0; i < n; i++) {
    int granted = PQgetvalue(r, i, 1)[0] == 't';
    int on_main = PQgetvalue(r, i, 3)[0] == 't';
    int exclusive = strcmp(PQgetvalue(r, i, 2), "ExclusiveLock") == 0;
    long pid = atol(PQgetvalue(r, i, 4));
    const char *host = PQgetvalue(r, i, 5), *label = PQgetvalue(r, i, 6);
    const char *app = PQgetvalue(r, i, 11);
    /* Without a row, the client's pid and host are in application_name. */
    char apphost[64] = "";
    if (pid == 0 && strncmp(app, "heavylock ", 10) == 0) {
      char *end;
      pid = strtol(app + 10, &end, 10);
      if (*end == '@') {
        size_t k = strcspn(end + 1, " ");
        snprintf(apphost, sizeof(apphost), "%.*s", (int)(k < 63 ? k : 63), end + 1);
        host = apphost;
        label = end[1 + k] ? end + 2 + k : "";
      }
    }
    int waiter = 0; /* a waiter may hold `main` for a moment while it tries */
    for (int j = 0; j < n && on_main; j++)
      if (j != i && strcmp(PQgetvalue(r, j, 0), PQgetvalue(r, i, 0)) == 0 &&
          PQgetvalue(r, j, 3)[0] == 'f')
        waiter = 1;
    if (on_main && granted && !waiter) {
      if (st->nholders >= HL_MAX_HOLDERS)
        continue;
      hl_holder_t *h = &st->holders[st->nholders++];
      h->pid = pid;
      h->exclusive = exclusive;
      h->weight = strtoull(PQgetvalue(r, i, 7), NULL, 10);
      copy(h->weight_source, sizeof(h->weight_source), PQgetvalue(r, i, 8));
      h->held_for = atof(PQgetvalue(r, i, 10));
      copy(h->host, sizeof(h->host), host);
      copy(h->label, sizeof(h->label), label);
      uint64_t b = strtoull(PQgetvalue(r, i, 9), NULL, 10);
      if (b > st->budget)
        st->budget = b;
      used += h->weight;
      if (!exclusive)
        st->shared = 1;
      /* holder_pid is for a local exclusive holder only (lock.c compares
       * it with this process and its ancestors). */
      const char *machine = PQgetvalue(r, i, 12);
      int local = strcmp(host, myhost) == 0 &&
                  (!machine[0] || !mymachine[0] || strcmp(machine, mymachine) == 0);
      if (exclusive && pid > 0 && local) {
        st->holder_pid = pid;
        st->has_record = 1;
        st->record.pid = pid;
        copy(st->record.host, sizeof(st->record.host), host);
        copy(st->record.label, sizeof(st->record.label), label);
        st->held_for = h->held_for;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        st->record.acquired = (double)ts.tv_sec - h->held_for;
      }
    } else if (!on_main && st->nwaiters < HL_MAX_WAITERS) {
      hl_waiter_t *w = &st->waiters[st->nwaiters++];
      w->pid = pid;
      w->how = 'q';
      /* Blocked in the server when the same session also asks for main. */
      for (int j = 0; j < n; j++)
        if (j != i && strcmp(PQgetvalue(r, j, 0), PQgetvalue(r, i, 0)) == 0 &&
            PQgetvalue(r, j, 1)[0] == 'f' && PQgetvalue(r, j, 3)[0] == 't')
          w->how = 'b';
      w->weight = strtoull(PQgetvalue(r, i, 7), NULL, 10);
      w->exclusive = w->how == 'b';
      copy(w->weight_source, sizeof(w->weight_source), PQgetvalue(r, i, 8));
      copy(w->label, sizeof(w->label), label);
    }
  }
  PQclear(r);
  PQfinish(c);
  st->held = st->nholders > 0;
  if (st->held && st->holders[0].held_for >= 0 && st->held_for < 0)
    st->held_for = st->holders[0].held_for;
  if (st->budget > 0) {
    st->free_bytes = used < st->budget ? st->budget - used : 0;
    st->free_known = 1;
  }
  return 0;
}

/* heavylock.h: hl_pg_doctor. */
int hl_pg_doctor(const char *target, char *out, size_t len) {
  void *state;
  int rc = pg_open(target, &state);
  if (rc < 0) {
    snprintf(out, len, "%s", hl__kind_detail());
    return rc;
  }
  pg_state_t *s = state;
  int v = PQserverVersion(s->conn), lib = PQlibVersion();
  snprintf(out, len,
           "connected to PostgreSQL %d.%d at %s:%s, database %s as %s (libpq %d.%d, loaded at "
           "run time); lock name '%s' (advisory key %08x:%08x); table heavylock_holders ready",
           v / 10000, v % 10000, PQhost(s->conn), PQport(s->conn), PQdb(s->conn),
           PQuser(s->conn), lib / 10000, lib % 10000, s->name, (unsigned)(s->main.h >> 32),
           (unsigned)s->main.h);
  pg_close(state, 1);
  return 0;
}

const hl__kind_t hl__kind_pg = {
    .version = HL__KIND_VERSION,
    .name = "pg",
    .claims = claims,
    .open = pg_open,
    .try_acquire = pg_try_acquire,
    .wait = pg_wait,
    .acquire_blocking = pg_acquire_blocking,
    .cancel = pg_cancel,
    .release = pg_release,
    .relabel = pg_relabel,
    .identity = pg_identity,
    .fd = pg_fd,
    .status = pg_status,
    .close = pg_close,
    .check = hl__pg_check,
};
