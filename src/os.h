/*
 * os.h - what the portable lock logic (lock.c) needs from the platform.
 *
 * One implementation per platform, chosen by the build: os-unix.c (Linux and
 * other POSIX systems) and os-win.c (Windows, compile-checked
 * with mingw-w64 by `make check-win`).  Callers never see #ifdef.
 * Descriptors are intptr_t so a Windows HANDLE fits.
 */
#ifndef HEAVYLOCK_OS_H
#define HEAVYLOCK_OS_H

#include "heavylock.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct hl__fileid_s {
  uint64_t dev;
  uint64_t ino;
} hl__fileid_t;

/* Open the lock file as described for hl_lock_open.  *readonly is set when
 * only a read-only descriptor could be had. */
int hl__os_open(const char *path, intptr_t *fd, int *readonly);
void hl__os_close(intptr_t fd);
int hl__os_fileid_fd(intptr_t fd, hl__fileid_t *id);
/* Identity of what `path` names now, without following a symlink. */
int hl__os_fileid_path(const char *path, hl__fileid_t *id);
/* Identity of the directory that holds `path`'s last component. */
int hl__os_fileid_dir(const char *path, hl__fileid_t *id);
/* 1 when the file's last change was a write of its contents (its change
 * time equals its modification time: a rename, link, unlink or chmod moves
 * only the change time), 0 when not or unknown. */
int hl__os_fd_written_last(intptr_t fd);

/* 0 got it, HL_EBUSY held elsewhere, -errno. */
int hl__os_trylock(intptr_t fd);
/* Blocks in the kernel. 0, -EINTR, -errno. */
int hl__os_lock_wait(intptr_t fd);
int hl__os_unlock(intptr_t fd);

/* A watch that wakes when someone closes (releases) the lock file. */
typedef struct hl__watch_s hl__watch_t;
/* NULL when the platform has no such watch: the caller polls instead. */
hl__watch_t *hl__os_watch_open(void);
/* (Re)point the watch at what `path` names now and drop queued events.
 * Call it before each try-lock of a wait.  0 or -errno. */
int hl__os_watch_arm(hl__watch_t *w, const char *path);
/* Stop watching (cheap), so that status no longer counts us as a waiter. */
void hl__os_watch_disarm(hl__watch_t *w);
/* Wait up to `ms` for an event. 1 event, 0 timeout, -EINTR, -errno. */
int hl__os_watch_wait(hl__watch_t *w, int ms);
/* Slow on Linux (closing an inotify instance waits for an RCU grace period,
 * milliseconds), so a handle keeps its watch until hl_lock_close. */
void hl__os_watch_close(hl__watch_t *w);

/* A thread blocked in flock(2) on a waiter's descriptor: the kernel wakes it
 * when the holder lets go however it does (an unlock that keeps the file
 * open sends no inotify event).  Its success is the descriptor's: the lock
 * is then held through `fd`, and the waiter's next try-lock on `fd` says so.
 * NULL when no thread can be had (the caller waits as before). */
typedef struct hl__blocker_s hl__blocker_t;
hl__blocker_t *hl__os_blocker_start(intptr_t fd);
/* 1 once its flock(2) succeeded: the lock is held through `fd`. */
int hl__os_blocker_won(hl__blocker_t *b);
/* Stop it (cancel, join) and free it; only the process that started it
 * touches the thread (a forked child just frees its copy).  NULL is fine. */
void hl__os_blocker_stop(hl__blocker_t *b);
/* Wait up to `ms` for an event on the watch or the blocker's return (either
 * may be NULL).  1 event, 0 timeout, -EINTR, -errno. */
int hl__os_wait_events(hl__watch_t *w, hl__blocker_t *b, int ms);

/* Read at most `len` bytes from offset 0 of an open file; bytes or -errno. */
long hl__os_read_fd(intptr_t fd, char *buf, size_t len);

/* Replace the file's contents (the caller holds the lock). */
int hl__os_write_all(intptr_t fd, const char *buf, size_t len);

/* 0, or -EINTR when a signal cut the sleep short. */
int hl__os_sleep_ms(int ms);
int hl__os_sleep_us(int us); /* POSIX only (the slots kind's short polls) */
double hl__os_monotonic(void); /* seconds */
double hl__os_wallclock(void); /* seconds since the epoch */
long hl__os_getpid(void);
uintptr_t hl__os_thread_self(void);
void hl__os_registry_lock(void);
void hl__os_registry_unlock(void);

/* Fill pid, start, host, boot_id and cmd for this process. */
void hl__os_self_record(hl_record_t *rec);
/* Start time of `pid` in the units of hl_record_t.start; 0 if unknown. */
unsigned long long hl__os_proc_start(long pid);
int hl__os_proc_alive(long pid);

/* Kernel view of the lock (status).  Returns 0 and fills holder/waiters, or
 * -ENOSYS where there is no lock table to read. */
int hl__os_lock_table(const hl__fileid_t *id, hl_status_t *st, int quick);
/* quick: holders only, skip the slow scan of /proc for inotify waiters. */
/* Parent of `pid`, 0 when unknown. */
long hl__os_parent_pid(long pid);
/* 1 when process `pid`, started at `start` (hl__os_proc_start's clock
 * ticks), is stopped (SIGSTOP, Ctrl-Z, a tracer); 0 otherwise or when that
 * pid is another process now.  For the FIFO queue: a stopped waiter is
 * passed over while it stays stopped. */
int hl__os_pid_stopped(long pid, unsigned long long start);
/* 1 when `pid` is blocked waiting for a child to exit (Linux: wchan
 * do_wait), 0 when not or unknown, -EINTR when a signal cut the look short.
 * With `confirm`, it must be seen there three times 2 ms apart (a parent
 * polling waitpid(WNOHANG) passes through do_wait too); without, one look
 * (no sleep) that may say 1 for such a poller. */
int hl__os_in_child_wait(long pid, int confirm);
/* Does process `pid` hold a flock on the file `id` through one of its
 * descriptors other than `skip_fd` (-1: none skipped)?  Reads only that
 * process's descriptor table (/proc/PID/fd, fdinfo), never /proc/locks.
 * 1, 0, -EACCES (another user's process), -ENOSYS (cannot be known). */
int hl__os_pid_holds(long pid, const hl__fileid_t *id, intptr_t skip_fd);
/* Lock file deleted or replaced under its holder.  A holder keeps its flock
 * on the old inode, which no path names any more, so a newcomer that opens
 * the path gets a fresh inode and "wins": two holders.  The kernel still
 * lists the old lock (/proc/locks), and the holder's descriptor reads as
 * "PATH (deleted)" (/proc/PID/fd).  Returns 1 and the holder's pid when a
 * live flock is held on a deleted file that had `path` (other than `cur`,
 * which may be NULL), 0 when none is, or where this cannot be known.  It
 * looks only at the descriptors of the
 * process that took each lock; but reading /proc/locks costs milliseconds
 * on some kernels, so lock.c asks only when the lock file does not vouch
 * for itself (see flock_vouched in lock.c). */
int hl__os_ghost_holder(const char *path, const hl__fileid_t *cur, long *pid);

/* Linux: who holds a byte-range lock (POSIX or OFD) covering byte `off` of
 * the file, 0 when none or not visible (another user's OFD lock, unless we
 * are root).  Scans /proc: for reporting a stuck lock only. */
long hl__os_range_locker(const hl__fileid_t *id, unsigned long long off);

/* Fallback: does a shared try-lock fail?  1 held, 0 free, -errno. */
int hl__os_probe_held(const char *path);

/* Read at most `len` bytes from the start of the file, no symlink follow, no
 * FIFO block.  Returns bytes read or -errno (HL_ESYMLINK, HL_ENOTREG). */
long hl__os_read_head(const char *path, char *buf, size_t len);

/* Open a file for reading only if it is a regular file (a FIFO must not
 * block us: it is opened non-blocking and refused).  0, HL_ENOTREG, -errno. */
int hl__os_fopen_regular(const char *path, FILE **f);

/* Make `s` valid UTF-8 in place: control characters (C0, DEL, C1) become
 * `ctl`, bytes that are not UTF-8 become '?', and a sequence cut short at
 * the end is dropped.  Never lengthens the string. */
void hl__utf8_clean(char *s, char ctl);

/* What is at `path` (following symlinks): 0 nothing, 1 regular file,
 * 2 directory, 3 something else; -errno when it cannot be told. */
int hl__os_path_kind(const char *path);
/* `path` made absolute against the current directory (no normalisation). */
int hl__os_abspath(const char *path, char *out, size_t len);
/* The directory separator of this platform. */
#ifdef _WIN32
#define HL__SEP '\\'
#else
#define HL__SEP '/'
#endif

/* 64-bit file offsets with stdio (model files are many GiB). */
#ifdef _WIN32
#define hl__fseek _fseeki64
#define hl__ftell _ftelli64
#else
#define hl__fseek fseeko
#define hl__ftell ftello
#endif

/* Fault injection for tests (SQLite's overridable syscall table): replace the
 * syscall named `name` ("open", "flock", "pwrite", "ftruncate", "fstat") by
 * `fn`; NULL restores the real one.  Returns 0 or -ENOENT. */
int hl__os_set_syscall(const char *name, void (*fn)(void));

#endif
