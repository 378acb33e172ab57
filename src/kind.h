/*
 * kind.h - the seam between the lock logic (lock.c) and a kind of lock.
 *
 * A *kind* is one way of holding "the" lock named by a target string: an
 * exclusive flock(2) on a file ("flock", kind-flock.c), N shared holders and
 * memory admission on the same file ("slots", kind-slots.c), PostgreSQL
 * advisory locks ("pg", kind-pg.c).  lock.c owns everything the kinds have
 * in common: the handle, the thread/fork rules, the one wait loop (deadline,
 * signals, "who is in the way" notices), the registry of busy handles.  A
 * kind owns only how to try, how to wait for a change, how to let go and
 * how to tell who holds.  Modelled on SQLite's sqlite3_vfs and libgit2's
 * git_refdb_backend: a versioned struct of callbacks; a kind fills the
 * callbacks of the version it was written for, lock.c checks `version`.
 *
 * Threads: lock.c calls a kind's per-handle callbacks (try_acquire, wait,
 * cancel, release, relabel, fd, close) from one thread at a time per handle
 * and never concurrently for the same state.  `claims` and `status` may be
 * called from any thread at any time and must not keep global state.
 *
 * Errors: every callback returns 0 (or the documented positive value) or a
 * negative value from the set in heavylock.h (-errno or HL_E*).  A kind never
 * prints, never exits, installs no signal handler and leaves no thread.
 *
 * Fork: a child process never calls try_acquire/release on a state its
 * parent opened (lock.c refuses with HL_EFORKED); it only calls close with
 * `owner` = 0, which must drop descriptors without unlocking anything.
 */
#ifndef HEAVYLOCK_KIND_H
#define HEAVYLOCK_KIND_H

#include "heavylock.h"

#include <stddef.h>
#include <stdint.h>

#define HL__KIND_VERSION 1

/* What a handle asks for.  lock.c owns it and passes it to the callbacks
 * that need it; it changes only between acquisitions (relabel excepted). */
typedef struct hl__ask_s {
  int slots;                  /* 1 exclusive; n > 1 at most n holders;
                                 0 "auto": as many as memory admits        */
  uint64_t weight;            /* expected peak bytes; 0 unknown (exclusive
                                 when admitting by memory)                  */
  char weight_source[16];     /* "declared", "measured", "estimated", ""   */
  uint64_t budget;            /* bytes for all holders; 0 = live memory     */
  char label[HL_LABEL_MAX];   /* free text for status                       */
  double deadline;            /* the acquisition's end (hl__os_monotonic()
                                 seconds), INFINITY waiting forever, 0 no
                                 acquisition under way: a remote kind bounds
                                 each round trip by it                      */
} hl__ask_t;

/* Flags for status(). */
#define HL__STATUS_QUICK 1    /* holders only: skip the (slow) scan for
                                 waiters; used by the wait loop's self check */

typedef struct hl__kind_s {
  /* HL__KIND_VERSION the kind was written for. */
  int version;
  /* Short lower-case name: "flock", "slots", "pg".  Shown by status. */
  const char *name;

  /*
   * 1 when this kind serves `target` with `ask`, else 0.  No I/O: it looks
   * at the string (a "postgresql://" prefix) and at ask->slots / weight /
   * budget.  `ask` is NULL when the registry picks a kind for hl_status():
   * claim the target when your status is the most complete view of it.
   */
  int (*claims)(const char *target, const hl__ask_t *ask);

  /*
   * Make per-handle state for `target`.  Checks what can be checked without
   * locking (the path is a regular file and not a symlink; the URL parses)
   * so that hl_lock_open reports a bad target at once; may create the lock
   * file.  Returns 0 with *state set, or -errno / HL_E* with *state NULL
   * and nothing left open.  Holds nothing afterwards.
   */
  int (*open)(const char *target, void **state);

  /*
   * One attempt, without waiting for other holders: 0 = now held (the
   * holder's record is written), HL_EBUSY = someone is in the way, or an
   * error (nothing held).  The first HL_EBUSY of an acquisition may enter
   * a queue (a ticket) that later calls keep; lock.c calls cancel() when it
   * stops trying without success.  `waiting` is 1 when lock.c will call
   * wait() after an HL_EBUSY (arm what wakes you now), 0 for a try-once
   * acquire or before acquire_blocking (lock.c calls cancel() on failure
   * either way, so a kind may queue even then).
   * Self-deadlock: after the first HL_EBUSY of a wait, lock.c calls
   * status(HL__STATUS_QUICK) and returns HL_ESELF when st->holder_pid is
   * this process (through no handle of ours) or one of its ancestors; so a
   * kind's status must set holder_pid only to a pid on THIS machine that
   * holds the lock exclusively (remote holders go in holders[] only).
   */
  int (*try_acquire)(void *state, const hl__ask_t *ask, int waiting);

  /*
   * Sleep until something may have changed (a holder closed the file, a
   * queue entry went away, a notification came) or `ms` milliseconds
   * passed, whichever is first.  ms >= 0 always (lock.c bounds it and
   * re-checks).  Returns 1 (woken: try again), 0 (ms passed), -EINTR (a
   * signal: lock.c passes it to its caller), or -errno.  Spurious wake-ups
   * are fine; missed ones are not: arm what wakes you inside try_acquire,
   * before its attempt.
   */
  int (*wait)(void *state, int ms);

  /*
   * Optional (NULL allowed): acquire, blocking for as long as it takes
   * (no deadline, no notices wanted).  0, -EINTR, or an error.  The flock
   * kind blocks in flock(2) so that the kernel's lock table shows the
   * waiter.
   */
  int (*acquire_blocking)(void *state, const hl__ask_t *ask);

  /* Leave the queue and disarm watches after an acquisition that failed
   * (busy, timed out, interrupted, error).  Never fails; idempotent. */
  void (*cancel)(void *state);

  /* Let go of a held lock: clear the record, unlock, and close what wakes
   * waiters.  0 or -errno; the lock is released in either case. */
  int (*release)(void *state);

  /* The lock is held and ask->label changed: rewrite the record.  0/-errno;
   * a failure never costs the lock. */
  int (*relabel)(void *state, const hl__ask_t *ask);

  /*
   * A stable identity of what the state locks (dev+inode for files, a key
   * hash for remote kinds), for the registry that reports -EDEADLK when one
   * thread asks twice for the same lock.  Valid after open.  0 or -errno.
   */
  int (*identity)(void *state, uint64_t id[2]);

  /* The descriptor that carries the lock while held (passed to children by
   * `heavylock run`), or -1 when the kind has none. */
  intptr_t (*fd)(void *state);

  /*
   * Who holds `target` and who waits, into *st (already zeroed, held_for
   * -1, st->kind set by lock.c).  Fill holders[] for every holder, and
   * holder_pid (see try_acquire) / record for a local exclusive one.  Never creates or modifies anything.  A
   * missing lock is "free" (return 0).  `flags`: HL__STATUS_*.
   */
  int (*status)(const char *target, hl_status_t *st, int flags);

  /* Free the state.  `owner` is 1 in the process that opened it (release
   * first if held), 0 in a forked child (close descriptors only). */
  void (*close)(void *state, int owner);

  /* Optional (NULL = 0): HL_FLAG_* of the current or last hold, for
   * hl_lock_flags (e.g. HL_FLAG_LOST: the lock went away while held). */
  int (*flags)(void *state);

  /* Optional (NULL: nothing can take the lock away): is the held lock still
   * held?  No waiting.  0, or HL_ELOST when the kind learned that it lost
   * it (a remote session ended).  For hl_lock_check. */
  int (*check)(void *state);

  /* Optional (NULL: just fd()): every descriptor that carries the held
   * lock, into out[0..max); returns how many.  For hl_lock_fds: a child
   * that inherits them all holds the lock after its parent died. */
  int (*fds)(void *state, intptr_t *out, int max);

  /* Optional (NULL: lock.c asks status(), which may read the kernel's whole
   * lock table): does process `pid` hold the lock through a descriptor that
   * is not this state's?  For the self-deadlock check, which runs on every
   * contended acquisition.  1, 0, or -errno (-EACCES: that process cannot
   * be looked at; lock.c then asks status()). */
  int (*held_by)(void *state, long pid);
} hl__kind_t;

/* What the last failing call in this thread said beyond its code (the
 * server's words), "" when nothing; for hl_error_detail (kind.c). */
const char *hl__kind_detail(void);
/* Set it (printf-style; trailing newlines dropped).  At most
 * HL__DETAIL_MAX - 1 bytes. */
#define HL__DETAIL_MAX 8192
void hl__detail_set(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* For tests: the wait loop's re-check period (lock.c; 0 restores 100 ms).
 * A test that stretches it proves that a wake comes from an event. */
void hl__lock_set_recheck_ms(int ms);

/* The kinds.  kind.c lists them for the registry; the build defines
 * HL_HAVE_SLOTS (Linux: OFD locks, /proc) and HL_HAVE_PG (POSIX: libpq is
 * loaded at run time) for
 * the ones it compiles. */
extern const hl__kind_t hl__kind_flock;
#ifdef HL_HAVE_SLOTS
extern const hl__kind_t hl__kind_slots;
#endif
#ifdef HL_HAVE_PG
extern const hl__kind_t hl__kind_pg;
#endif

/*
 * The registry: the first kind, in the order pg, slots, flock, that claims
 * `target` with `ask` (NULL: for status).  Returns NULL when none does
 * (a URL of an unknown scheme, or a postgresql:// target on Windows: lock.c
 * then returns hl__kind_none()).
 */
const hl__kind_t *hl__kind_pick(const char *target, const hl__ask_t *ask);
/* The error when no kind claims `target`: -EINVAL with the detail naming the
 * supported schemes for a URL of an unknown one, else -ENOSYS (a kind this
 * build lacks). */
int hl__kind_none(const char *target);

/* Helpers the kinds share (lock.c). */
/* The flock kind's status of a lock file: kernel lock table + record. */
int hl__flock_status(const char *path, hl_status_t *st, int flags);
/* 1 when `target` is a URL (hl_target_kind): not a lock file path (the file
 * kinds refuse it, so that a URL without its kind is not created as a file). */
int hl__is_url(const char *target);

#endif
