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
 *                    holder's close of the file (inotify), not by polling.
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
#define HL_ELOST      (-30009) /* lock file deleted or replaced while held   */

/* Longest lock path accepted (bytes, without the NUL); longer is refused
 * with -ENAMETOOLONG, never cut (a cut path names another file). */
#define HL_PATH_MAX 4096
#define HL_ESELF      (-30010) /* held by this process through another
                                  descriptor, or by its parent: waiting
                                  would never end                          */

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
 * would never end), HL_EFORKED (handle belongs to the parent), or -errno.
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

int hl_lock_held(const hl_lock_t *lock);          /* 1 when this handle holds it */
const char *hl_lock_path(const hl_lock_t *lock);  /* as given to hl_lock_open   */
/* The descriptor while held, else -1 (for passing the lock to a child). */
intptr_t hl_lock_fd(const hl_lock_t *lock);

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
 * Lock path policy
 * ------------------------------------------------------------------------ */

typedef struct hl_path_s {
  char path[4096];
  const char *source;         /* "HEAVYLOCK_PATH", "LOCAL_MODEL_PATH", "default" */
  char why[4400];             /* one sentence: why this path, or what is wrong */
} hl_path_t;

/*
 * Resolve where the lock lives:
 *   1. $HEAVYLOCK_PATH, if set;
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
