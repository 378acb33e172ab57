/*
 * heavylock.h - a crash-safe, cross-process lock for heavy work (loading big
 * local models), with holder records, status, memory probes and GGUF reading.
 *
 * Calling sequence
 * ----------------
 *
 *     hl_lock_t *lk;
 *     int rc = hl_lock_open(&lk, "models/.llm_load.lock");
 *     if (rc < 0) { fprintf(stderr, "%s\n", hl_strerror(rc)); ... }
 *     hl_lock_set_label(lk, "tests/test_chat.py::test_reply");   (optional)
 *     rc = hl_lock_acquire(lk, 30.0);          0 = got it
 *     ... load the model, run the heavy work ...
 *     hl_lock_release(lk);                     others may take it now
 *     hl_lock_close(lk);                       frees the handle
 *
 * A handle may be acquired and released many times before it is closed.
 *
 * What the lock is
 * ----------------
 * An exclusive flock(2) on the whole lock file (on Windows: LockFileEx on
 * byte 0, length 1).  It therefore excludes, and is excluded by, Python's
 * `filelock`, `portalocker` and util-linux `flock(1)` on the same path.  The
 * kernel drops it when the holder dies, so no stale lock outlives its
 * process.  The lock file is never unlinked (waiters may be queued on its
 * inode) and is only truncated by the process that holds the lock, and only
 * when it is empty or a holder record (never another tool's file or a model
 * named as the lock by mistake).
 *
 * Timeouts (hl_lock_acquire)
 * --------------------------
 *     timeout == 0   try once; HL_EBUSY if someone else holds it
 *     timeout <  0   wait as long as it takes (blocks in the kernel)
 *     timeout >  0   wait up to that many seconds on a monotonic clock;
 *                    HL_ETIMEDOUT when it passes.  The waiter is woken by the
 *                    holder's close of the file (inotify) and, first in line,
 *                    by the kernel's release however the holder lets go (a
 *                    thread of the handle blocks in flock(2) meanwhile), not
 *                    by polling.
 *
 * Errors
 * ------
 * Every function that can fail returns 0 (or a count) on success and a
 * negative number on failure: either -errno (-EACCES, -EROFS, -ENOENT, ...)
 * or one of the HL_E* codes below.  hl_strerror() names either kind.  The
 * library never prints, never exits, installs no signal handlers and leaves
 * no thread running.  A failed call leaves nothing locked and nothing
 * half-written.
 */
#ifndef HEAVYLOCK_H
#define HEAVYLOCK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HL_VERSION_MAJOR 0
#define HL_VERSION_MINOR 1
#define HL_VERSION_PATCH 0
#define HL_VERSION_STRING "0.1.0"

/* Library-specific errors, in a range no errno uses. */
#define HL_EBUSY      (-30001) /* held by someone else (try-once acquire)   */
#define HL_ETIMEDOUT  (-30002) /* the deadline passed while waiting         */
#define HL_ENOTREG    (-30003) /* lock path is a FIFO, directory, device... */
#define HL_ESYMLINK   (-30004) /* lock path is a symbolic link: refused     */
#define HL_EENV       (-30005) /* bad environment value (see hl_path_t)     */
#define HL_EFORKED    (-30006) /* handle was opened by the parent process   */
#define HL_ENOTHELD   (-30007) /* release of a lock this handle does not hold */
#define HL_EFORMAT    (-30008) /* file is not in the expected format (GGUF)  */
#define HL_ELOST      (-30009) /* the lock was lost while held: its file was
                                  deleted or replaced, or (pg kind) the
                                  connection to the lock server broke and
                                  the server released it                   */

/* Longest lock path accepted (bytes, without the NUL); longer is refused
 * with -ENAMETOOLONG, never cut (a cut path names another file). */
#define HL_PATH_MAX 4096
#define HL_ESELF      (-30010) /* held by this process through another
                                  descriptor, or by its parent: waiting
                                  would never end                          */
#define HL_ENOBUDGET  (-30011) /* memory admission on a remote lock needs a
                                  static budget (hl_lock_set_budget)       */
#define HL_EFULL      (-30012) /* the slot table has HL_SLOTS_TABLE_MAX live
                                  holders and waiters: try again later     */
#define HL_SLOTS_TABLE_MAX 1024

/* The name of an error returned by any function here (never NULL). */
const char *hl_strerror(int err);
const char *hl_version(void);

/* ------------------------------------------------------------------------
 * The lock
 * ------------------------------------------------------------------------ */

typedef struct hl_lock_s hl_lock_t;
typedef struct hl_status_s hl_status_t; /* see "Holder records and status" */

/*
 * Open a handle on the lock at `path`.  Creates the file (mode 0666 & ~umask)
 * and its missing parent directories.  Refuses a symbolic link as the last
 * component (HL_ESYMLINK) and anything that is not a regular file
 * (HL_ENOTREG), without opening, truncating or following it.  Symbolic links
 * in the *directories* above it are followed, as flock(1) and filelock do
 * (a models/ directory that links to a big disk is common); the lock is then
 * the file the resolved path names.  A path of HL_PATH_MAX bytes or more is
 * -ENAMETOOLONG.  When the file exists but cannot be opened for
 * writing (read-only directory or file), it is opened read-only: locking
 * works, only the holder record is not written.
 *
 * A lock file that is neither empty nor a holder record (another tool's
 * file, or a model named by mistake) is locked but never truncated or
 * written: hl_lock_flags() reports HL_FLAG_OTHER_CONTENT.
 * On failure *lockp is NULL and nothing was created except, possibly, parent
 * directories.
 */
int hl_lock_open(hl_lock_t **lockp, const char *path);

/*
 * Take the lock (see "Timeouts": +infinity waits forever like -1, NaN is
 * -EINVAL, timeouts above 1e9 s are clamped).  Returns 0, HL_EBUSY, HL_ETIMEDOUT,
 * -EINTR (a signal arrived while waiting: nothing is held; call again with
 * what is left of the timeout), -EDEADLK (this thread already holds, or is
 * waiting for, the same lock file through this or another handle: waiting
 * would never end), HL_EFORKED (handle belongs to the parent), HL_EFULL
 * (slots: 1024 holders and waiters already), or -errno.  Every wait inside
 * keeps the deadline (a try-once waits at most 0.2 s for a slot table's
 * admission lock; see hl_error_detail when it stays locked).
 * After winning, it checks that the path still names the file it locked (a
 * tool may have deleted or replaced it) and starts over if not.  On Linux it
 * also checks the kernel's lock table for a holder that still holds a
 * deleted or replaced file that had this path, and waits for that holder
 * (HL_EBUSY on a try-once).  Then it writes the holder record.
 */
int hl_lock_acquire(hl_lock_t *lock, double timeout);

/*
 * Release the lock: clears the holder record, unlocks and closes the file
 * (the close is what wakes waiters that use inotify).  Returns 0,
 * HL_ENOTHELD, or HL_EFORKED when called in a forked child: a child never
 * releases its parent's lock.  If the path no longer names the file that was
 * held (deleted or replaced meanwhile), it still releases and returns 0, and
 * sets HL_FLAG_LOST for the caller to warn about: the lock did not exclude
 * newcomers that came after the change.
 */
int hl_lock_release(hl_lock_t *lock);

/* Release if held (in the owning process only) and free the handle. NULL ok. */
void hl_lock_close(hl_lock_t *lock);

/*
 * Free-text label stored in the holder record (e.g. a pytest node id); at
 * most HL_LABEL_MAX-1 bytes are kept.  When the lock is held, the record is
 * rewritten at once.  NULL clears it.  A label cut to fit is cut at a UTF-8
 * character boundary; control bytes become spaces and bytes that are not
 * UTF-8 become '?' (records are always valid UTF-8).  Returns 0, or HL_ELOST
 * when held and the path no longer names the held file (HL_FLAG_LOST).
 */
int hl_lock_set_label(hl_lock_t *lock, const char *label);

/*
 * Slots: how many holders the lock admits at once.  1 (the default) is the
 * exclusive lock described above (kind "flock").  n > 1 admits up to n
 * holders (kind "slots"); 0 ("auto") admits as many as memory allows (see
 * hl_lock_set_weight).  Slot holders take a *shared* flock on the lock file,
 * so an exclusive holder (flock(1), filelock, a slots=1 handle) excludes
 * them all and they exclude it; each registers in a table file next to the
 * lock file (PATH.slots, never unlinked) whose entries the kernel frees when
 * their owner dies (open-file-description byte locks).  Admission is first
 * come, first served among heavylock's clients (tickets in the table), and
 * holds off while an outside exclusive waiter is blocked on the lock file.
 * Call only while not held.  0, -EINVAL (n < 0), -ENOSYS (slots are not
 * built on this platform), -EBUSY (held).  The kind changes at once; a
 * target that names a remote kind keeps it.
 */
int hl_lock_set_slots(hl_lock_t *lock, int n);

/*
 * The holder's expected peak memory in bytes (0 = unknown), and where the
 * number came from ("declared", "measured", "estimated"; NULL = "").
 * With slots != 1 a newcomer is admitted only while its weight fits in what
 * is free:
 *   budget 0 (live):  min(MemAvailable, cgroup v2 memory.max - memory.current)
 *                     minus the growth still expected from every holder
 *                     (its weight minus how much its process tree's RSS grew
 *                     since admission, floored at 0), minus a reserve
 *                     (HL_RESERVE_BYTES);
 *   budget B:         B minus the sum of the holders' weights.
 * Weight 0 is exclusive (admitted only when nobody holds).  A weight larger
 * than everything is admitted when nobody else holds: it runs alone rather
 * than never.  Call while not held.  0, or -EBUSY (held).
 */
int hl_lock_set_weight(hl_lock_t *lock, uint64_t bytes, const char *source);

/* The static budget in bytes for all holders; 0 = live memory (default). */
int hl_lock_set_budget(hl_lock_t *lock, uint64_t bytes);

#define HL_RESERVE_BYTES (256ull << 20) /* kept free under live admission */

/*
 * The "who is in the way" callback of the wait in hl_lock_acquire.  Called
 * from the acquiring thread first after `first_after` seconds of waiting,
 * then every `every` seconds (every <= 0: only once), with the lock's status
 * now (hl_status) and the seconds waited so far.  A nonzero return ends the
 * wait: hl_lock_acquire returns that value (use a negative one) with
 * nothing held.  Must not call back into this handle.  NULL cb clears it.
 */
typedef int (*hl_wait_cb)(void *arg, const hl_status_t *st, double waited);
int hl_lock_set_wait_callback(hl_lock_t *lock, hl_wait_cb cb, void *arg,
                              double first_after, double every);

/* The kind that serves the handle now: "flock", "slots", "pg". */
const char *hl_lock_kind(const hl_lock_t *lock);

/* What happened to the current (or last) hold, as a set of flags: */
#define HL_FLAG_OTHER_CONTENT 1 /* the file has other content: no record written */
#define HL_FLAG_LOST 2          /* the file was deleted or replaced while held   */
int hl_lock_flags(const hl_lock_t *lock);

/*
 * Is the held lock still held?  Never waits (no round trip).  0 yes;
 * HL_ELOST when the kind learned it lost the lock: for a PostgreSQL lock,
 * the session ended (the server restarted, an administrator ended it, the
 * network or keepalives gave up), and with it the server released the lock.
 * Call it every second or so while holding a remote lock, and stop the
 * protected work (or say so loudly) on HL_ELOST; then hl_lock_release
 * (which returns HL_ELOST too).  HL_ENOTHELD when not held.  File locks
 * cannot be lost: always 0.
 */
int hl_lock_check(hl_lock_t *lock);

/*
 * What the last failed call in this thread knew beyond its error code, ""
 * when nothing: for a PostgreSQL lock, the server's or libpq's message
 * ("connection to server at "db" (10.0.0.5), port 5432 failed: FATAL:
 * password authentication failed for user "ci""); for a lock with slots
 * whose admission table stays locked by someone (HL_EBUSY, HL_ETIMEDOUT),
 * "admission table PATH.slots locked by pid N".  Valid until the next
 * call into the library from this thread.
 */
const char *hl_error_detail(void);

int hl_lock_held(const hl_lock_t *lock);          /* 1 when this handle holds it */
const char *hl_lock_path(const hl_lock_t *lock);  /* as given to hl_lock_open   */
/* The descriptor while held, else -1 (for passing the lock to a child). */
intptr_t hl_lock_fd(const hl_lock_t *lock);
/*
 * Every descriptor that carries the held lock, into fds[0..max): a lock
 * with slots is held by two (the lock file's shared flock, and the slot
 * table's descriptor that holds our entry's byte lock), an exclusive lock
 * by one.  Returns how many (0 when not held or for a remote lock).  A
 * child that is to keep the lock after its parent dies (heavylock run,
 * like flock(1)) must inherit them all: clear FD_CLOEXEC on each.
 */
int hl_lock_fds(const hl_lock_t *lock, intptr_t *fds, int max);

/* ------------------------------------------------------------------------
 * Holder records and status
 * ------------------------------------------------------------------------ */

#define HL_LABEL_MAX 512
#define HL_CMD_MAX 1024
#define HL_HOST_MAX 256
#define HL_MAX_WAITERS 64

/*
 * What the holder writes into the lock file after winning, as text lines
 * "key=value" under a first line "heavylock-holder 1".
 */
typedef struct hl_record_s {
  long pid;                   /* holder's pid                                 */
  unsigned long long start;   /* its start time (clock ticks since boot)      */
  double acquired;            /* wall clock, seconds since the Unix epoch     */
  char host[HL_HOST_MAX];
  char boot_id[40];
  char label[HL_LABEL_MAX];
  char cmd[HL_CMD_MAX];       /* command line, arguments joined by spaces     */
} hl_record_t;

/*
 * Read the record at `path`, reading at most 8 KiB, without following a
 * symlink and without blocking on a FIFO.  Returns 0 when a well-formed record
 * was found, -ENOENT when the file is missing, HL_EFORMAT when the file is
 * empty or holds something else (another tool wrote it), or -errno.
 * Whatever the file holds, the string fields come back as valid UTF-8
 * without control bytes (others become '?') and `acquired` is finite.
 */
int hl_record_read(const char *path, hl_record_t *rec);

#define HL_MAX_HOLDERS 64
#define HL_SOURCE_MAX 16

typedef struct hl_waiter_s {
  long pid;
  char how;                   /* 'b' blocked in flock(2), 'w' watching (inotify),
                                 'q' queued only (seen in the table alone)   */
  /* Waiters that took a ticket in the table (slots, and exclusive waiters
   * that wait with a deadline or notices) have ticket > 0, and: */
  uint64_t ticket;            /* its place in the queue: lower goes first    */
  int exclusive;              /* 1 when it wants the lock alone              */
  uint64_t weight;            /* bytes it asks for (0 unknown)               */
  char weight_source[HL_SOURCE_MAX];
  char label[256];
} hl_waiter_t;

/* One holder of a lock with slots (the table's view), or of a remote lock. */
typedef struct hl_holder_s {
  long pid;
  int exclusive;              /* 1 holds alone (slots=1 / weight unknown)    */
  uint64_t weight;            /* declared bytes, 0 unknown                   */
  char weight_source[HL_SOURCE_MAX];
  uint64_t rss;               /* its process tree's RSS now, 0 if unknown    */
  double held_for;            /* seconds                                     */
  char host[64];
  char label[HL_LABEL_MAX];
} hl_holder_t;

struct hl_status_s {
  int held;                   /* 1 held, 0 free                               */
  long holder_pid;            /* from the kernel's lock table, 0 if unknown    */
  int has_record;             /* record read and it names the live holder      */
  int stale_record;           /* a record is there but its holder is gone/other */
  hl_record_t record;
  double held_for;            /* seconds, from the record, -1 if unknown       */
  int nwaiters;
  hl_waiter_t waiters[HL_MAX_WAITERS];
  const char *method;         /* "proc-locks" or "probe"                      */
  int other_content;          /* the file holds something that is not a record */
  int deleted_file;           /* the holder holds a deleted or replaced file
                                 that had this path (Linux)                   */
  /* Slots and memory (kind.h).  For an exclusive lock held by one process
   * nholders is 1 and holders[0] repeats holder_pid/record. */
  const char *kind;           /* "flock", "slots", "pg"                       */
  int nholders;
  hl_holder_t holders[HL_MAX_HOLDERS];
  int shared;                 /* 1 when the holders hold shared (slots)       */
  uint64_t budget;            /* static budget, 0 = live memory / none        */
  uint64_t free_bytes;        /* what a newcomer could have now, if known     */
  int free_known;             /* 1 when free_bytes was computed               */
};

/*
 * Who holds the lock at `path` and who waits.  On Linux the kernel's lock
 * table (/proc/locks) is the truth: it names the holder's pid even when the
 * holder is flock(1) or filelock and wrote no record, and lists blocked
 * waiters; waiters that watch the file with inotify (heavylock's timed waits)
 * are found in /proc/PID/fdinfo.  When the process that took the lock has
 * died and a child it passed the descriptor to holds it (heavylock run),
 * holder_pid names that child.  Elsewhere a shared try-lock probes whether
 * the lock is held.  Never creates or modifies the file.  A missing file is
 * "free", unless a holder still holds a lock file that was deleted (or
 * replaced) at this path: then held, with deleted_file set (Linux).  A record
 * is trusted (has_record) only when the kernel names its pid as the holder
 * and the start time matches that process; otherwise it is stale_record.
 * Returns 0 or -errno.
 */
int hl_status(const char *path, hl_status_t *st);

/*
 * One line for people, from the holder's record or, without one, its command
 * line: "held by pid 4242 (tests/test_chat.py::test_reply) for 12 s".  For
 * wait messages.  Always fills `buf` (NUL-terminated); returns st->held.
 */
int hl_holder_describe(const hl_status_t *st, char *buf, size_t len);

/* The command line of `pid`, arguments joined by spaces (bounded).  0/-errno. */
int hl_proc_cmdline(long pid, char *buf, size_t len);

/* ------------------------------------------------------------------------
 * Across machines: a PostgreSQL URL instead of a lock path (kind "pg")
 * ------------------------------------------------------------------------
 *
 * Built on every POSIX system; libpq is loaded at run time, the first time
 * such a target is used (dlopen "libpq.so.5", or $HEAVYLOCK_LIBPQ): without
 * it these targets fail with -ENOSYS and hl_error_detail() naming what to
 * install.  Every round trip to the server is bounded by what is left of
 * the acquisition's timeout, at least 5 s (also for a try-once, and 5 s for
 * open and status): a server that stops answering gives HL_ETIMEDOUT with
 * the detail "timed out ...", and the session is closed.  Any function that
 * takes a lock path takes, instead,
 *
 *     postgresql://USER@HOST[:PORT]/DB?name=NAME[&other libpq parameters]
 *
 * (or postgres://).  libpq parses the URL (passwords from ~/.pgpass or
 * PGPASSWORD work as usual); `name` (percent-decoded, at most 200 bytes,
 * default "llm_load") is ours and is removed before libpq sees the URL.
 * Every client that names the same server, database and name shares one
 * lock, from any machine.  One connection per handle, opened by
 * hl_lock_open (so a wrong host or password is reported there; the server's
 * words are in hl_error_detail()).
 *
 * The lock is a session-level advisory lock: the server drops it when the
 * session ends, whatever the reason (the holder died, its machine vanished
 * and keepalives gave up, an administrator ended the session).  Slots,
 * labels, timeouts, try-once and status work as for a lock file.
 *
 * Keys.  NAME maps to 64-bit FNV-1a hashes, used in the two-int4 form
 * pg_advisory_lock(high 32 bits, low 32 bits) (in pg_locks: classid = high,
 * objid = low, objsubid = 2; the bigint form that applications commonly use
 * has objsubid = 1, so the two never meet):
 *     main       fnv1a64("heavylock:" NAME)
 *     slot i     fnv1a64("heavylock:" NAME "\0slot:" i)   (i in decimal)
 *     waiters    fnv1a64("heavylock:" NAME "\0wait")
 *     admission  fnv1a64("heavylock:" NAME "\0admission")
 * (FNV-1a 64: offset basis 0xcbf29ce484222325, prime 0x100000001b3.)  An
 * exclusive holder holds `main` exclusively: `SELECT pg_advisory_lock(k1,
 * k2)` with those halves excludes heavylock from psql or any program.  A slot
 * holder holds `main` shared and one free slot key exclusively.
 *
 * The table heavylock_holders (created on first use; without the right to
 * create it, hl_error_detail() prints the CREATE TABLE to run once) keeps
 * each holder's pid, host, label, weight and budget.  A row counts only
 * while its session holds the advisory key the row names: the row of a
 * session that is gone is dead, whatever it says, and is deleted later.
 *
 * Memory.  No live memory can be read across machines: with slots 0 or a
 * weight, hl_lock_set_budget is required (else HL_ENOBUDGET).  A newcomer is
 * admitted while the live holders' weights plus its own fit the budget; the
 * check and its row are one transaction under pg_advisory_xact_lock on
 * `admission`.  Weight 0 is exclusive; a weight above the budget runs alone.
 *
 * Waiting.  An exclusive waiter queues in the server (pg_advisory_lock sent
 * asynchronously, its socket polled): the release or the holder's death
 * wakes it, first come first served.  A slot waiter LISTENs on the channel
 * "heavylock_<main key in hex>", which every release NOTIFYs; the wait
 * loop's 100 ms re-check covers a slot holder that died without releasing.
 *
 * Losing the lock.  When the session ends under a holder, the lock is gone:
 * hl_lock_check() says HL_ELOST at once when the server ended it
 * (pg_terminate_backend, shutdown, restart), and after about 11 s when the
 * network went silent (TCP keepalives 5 s + 3 x 2 s, both ends).  A waiter
 * whose session ends gets HL_ELOST; the next acquire connects again.
 *
 * Status comes from the server: pg_locks joined with pg_stat_activity and
 * the table: holders with pid, host, label, weight and held-for (server
 * clock); waiters with pid and label, how 'b' (queued in the server) or 'q'
 * (listening).  holder_pid is set only for an exclusive holder on this
 * machine (same hostname, and on Linux the same boot_id and pid namespace:
 * CI containers often share a hostname).  Sessions show in pg_stat_activity as application_name
 * "heavylock PID@HOST LABEL".
 */

/*
 * For `heavylock doctor` on a postgresql:// target: connect as a handle would,
 * create the table if it is missing, and write one line into `out`:
 * "connected to PostgreSQL 15.18 at HOST:PORT, database DB as USER; lock
 * name 'NAME' (advisory key XXXXXXXX:XXXXXXXX); table heavylock_holders
 * ready", or on failure what went wrong (the server's words).  0 or an error
 * (-EINVAL bad URL, -ECONNREFUSED cannot connect, -EPROTO the server refused
 * a statement, -ENOSYS libpq not found).  Holds no lock.
 */
int hl_pg_doctor(const char *target, char *out, size_t len);

/* ------------------------------------------------------------------------
 * Lock path policy
 * ------------------------------------------------------------------------ */

typedef struct hl_path_s {
  char path[4096];
  const char *source;         /* "HEAVYLOCK_URL", "HEAVYLOCK_PATH",
                                 "LOCAL_MODEL_PATH", "default"               */
  char why[4400];             /* one sentence: why this path, or what is wrong */
} hl_path_t;

/*
 * What a target names (the one rule, used by the library, the CLI and the
 * Python package): "SCHEME://..." with an RFC 3986 scheme of two or more
 * characters is a URL (a one-letter scheme is a Windows drive, "C://x");
 * anything else is a lock file path ("./redis:x" is a file).  A URL is a
 * lock server's when its scheme is one of HL_TARGET_SCHEMES; any other
 * scheme is HL_TARGET_UNKNOWN, which hl_lock_open and hl_status refuse
 * (-EINVAL, hl_error_detail naming the supported schemes) and callers
 * report as a usage error: never a file created at "redis:/h/x".
 */
#define HL_TARGET_FILE 0
#define HL_TARGET_PG 1      /* postgresql:// or postgres:// */
#define HL_TARGET_UNKNOWN 2 /* a URL of no known lock server */
#define HL_TARGET_SCHEMES "postgresql://, postgres://"
int hl_target_kind(const char *target);

/*
 * `text` with every password masked as "***", into `out` (NUL-terminated,
 * cut at len - 1): the password of a URL's user info (scheme://user:PW@host,
 * for any scheme, anywhere in the text) and the value of a password= or
 * sslpassword= parameter (a URL's query, a conninfo keyword, quoted or
 * not).  Use it on every target, server message and command line shown.
 * Returns `out`.
 */
const char *hl_redact(const char *text, char *out, size_t len);

/*
 * Resolve where the lock lives:
 *   0. $HEAVYLOCK_URL, if set and not empty: a lock server's URL
 *      (postgresql://..., see "Across machines"), passed through untouched;
 *   1. $HEAVYLOCK_PATH, if set (a postgresql:// URL there passes through
 *      untouched too);
 *   2. else, if $LOCAL_MODEL_PATH is set, ".llm_load.lock" in the directory of
 *      that model file (a relative value resolves against the current
 *      directory);
 *   3. else "<root>/models/.llm_load.lock" (root NULL means ".").
 * Bad values (empty, a directory, a model that does not exist) return HL_EENV
 * with `why` naming the variable and the value.
 */
int hl_path_resolve(const char *root, hl_path_t *out);

/* ------------------------------------------------------------------------
 * Memory probes
 * ------------------------------------------------------------------------ */

/* Memory the kernel says is available for new work (MemAvailable), bytes. */
int hl_mem_available(uint64_t *bytes);
/* Resident set size of `pid` plus all of its descendants, bytes. */
int hl_mem_tree_rss(long pid, uint64_t *bytes);

/*
 * Memory free for new work now: MemAvailable, lowered to memory.max -
 * memory.current of this process's cgroup (v2) when that is set.  0/-errno.
 */
int hl_mem_free(uint64_t *bytes);

/*
 * Parse a size: plain bytes ("1048576"), or a number (fractions allowed)
 * with a unit K, M, G, T (powers of 1024), optionally followed by "i",
 * "iB" or "B" ("512M", "2G", "1.5GiB", "100KB").  Case-insensitive units;
 * no spaces, no negatives.  0 and -EINVAL (empty, junk, overflow).
 */
int hl_size_parse(const char *text, uint64_t *bytes);

/* "1.5 GiB" style text for `bytes` into buf; returns buf. */
const char *hl_size_format(uint64_t bytes, char *buf, size_t len);

/* ------------------------------------------------------------------------
 * GGUF reading
 * ------------------------------------------------------------------------ */

typedef struct hl_gguf_s {
  uint32_t version;
  uint64_t n_tensors;
  uint64_t n_kv;
  uint64_t file_size;         /* bytes                                         */
  uint64_t tensor_bytes;      /* bytes of tensor data (file minus header)      */
  char architecture[64];      /* general.architecture, "" if absent            */
  char name[256];             /* general.name, "" if absent                    */
  uint64_t context_length;    /* <arch>.context_length, 0 if absent            */
  /* For the KV cache estimate; 0 when absent (or per-layer arrays). */
  uint64_t block_count;       /* <arch>.block_count                            */
  uint64_t embedding_length;  /* <arch>.embedding_length                       */
  uint64_t head_count;        /* <arch>.attention.head_count                   */
  uint64_t head_count_kv;     /* <arch>.attention.head_count_kv (else head_count) */
  uint64_t key_length;        /* <arch>.attention.key_length                   */
  uint64_t value_length;      /* <arch>.attention.value_length                 */
} hl_gguf_t;

/*
 * Read the header and metadata of a GGUF model file (versions 2 and 3)
 * without loading its tensors.  Bounded: refuses absurd counts and strings
 * (HL_EFORMAT) instead of allocating them.  0 or -errno / HL_EFORMAT.
 */
int hl_gguf_read(const char *path, hl_gguf_t *info);

typedef struct hl_gguf_estimate_s {
  uint64_t total;             /* weights + KV cache + compute overhead        */
  uint64_t weights;           /* tensor data                                  */
  uint64_t kv_cache;          /* f16 K and V for context_length tokens         */
  uint64_t overhead;          /* compute buffers, a fixed allowance            */
  uint64_t context_length, block_count, head_count, head_count_kv, embedding_length;
} hl_gguf_estimate_t;

/*
 * Expected peak memory of running the model at `path`, from its GGUF
 * header: tensor data, plus an f16 KV cache of
 *   block_count x n_ctx x head_count_kv x (key_length + value_length) x 2 B
 * (key_length = value_length = embedding_length / head_count when the model
 * does not say; n_ctx = the model's context_length when 0 is passed), plus
 * a compute allowance of 64 MiB + 5% of the weights.  It is an estimate for
 * admission, on the high side (the model's full context); missing attention
 * keys leave the KV cache 0.
 * 0 or -errno / HL_EFORMAT (as hl_gguf_read).
 */
int hl_gguf_estimate(const char *path, uint64_t n_ctx, hl_gguf_estimate_t *est);

#ifdef __cplusplus
}
#endif
#endif /* HEAVYLOCK_H */
