/*
 * doctor.c - `heavylock doctor [PATH]`: what to run when locking seems not
 * to work.  It reports, and checks where it can:
 *   - the path policy's decision (or the PATH given) and what is there now;
 *   - the file system under the lock and what flock(2) means on it (NFS,
 *     CIFS and FUSE emulate it or may not share it; overlay, tmpfs are local);
 *   - whether flock excludes across two processes there: it forks and tries,
 *     on a scratch file beside the lock, never on the lock itself;
 *   - whether inotify and /proc/locks are available (timed waits wake on
 *     release; status sees holders that wrote no record);
 *   - who holds the lock and who waits now.
 * Exit 0 when all is well, 1 when a problem was found (each one named).
 */
#define _GNU_SOURCE
#include "cli.h"
#include "heavylock.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/inotify.h>
#include <sys/vfs.h>
#endif

static int problems;

/* Every line goes through cli_term_text: it may quote a URL (the target, a
 * server's message, a holder's or waiter's command line) or a path with
 * control characters. */
static void line_out(const char *head, const char *fmt, va_list ap) {
  char raw[16384], safe[sizeof(raw) * 2 + 4];
  vsnprintf(raw, sizeof(raw), fmt, ap);
  printf("%-12s %s\n", head, cli_term_text(raw, safe, sizeof(safe)));
}

static void say(const char *what, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  line_out(what, fmt, ap);
  va_end(ap);
}

static void problem(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  line_out("PROBLEM", fmt, ap);
  va_end(ap);
  problems++;
}

/* The directory that holds `path`, or its nearest ancestor that exists. */
static void existing_dir(const char *path, char *dir, size_t len) {
  snprintf(dir, len, "%s", path);
  for (;;) {
    char *slash = strrchr(dir, '/');
    if (slash == NULL) {
      snprintf(dir, len, ".");
      return;
    }
    if (slash == dir) {
      dir[1] = '\0';
      return;
    }
    *slash = '\0';
    struct stat st;
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode))
      return;
  }
}

/* The lock file does not exist yet: can the first `heavylock run` create
 * it?  Tried as run does it, with a scratch file in the nearest directory
 * that exists (run creates the policy's missing directories there).  A
 * read-only file system or a directory we cannot write passes every other
 * check, yet run exits 73 (EROFS, ENOSPC) or 66 (anything else). */
static void can_create(const char *path, const char *dir) {
  char probe[HL_PATH_MAX + 64];
  snprintf(probe, sizeof(probe), "%s/.heavylock-doctor-XXXXXX", dir);
  int fd = mkstemp(probe);
  if (fd >= 0) {
    close(fd);
    unlink(probe);
    say("create", "ok: the first holder can create %s", path);
    return;
  }
  int err = errno;
  problem("cannot create the lock file %s: %s in %s, so `heavylock run` would exit %d; "
          "point the lock at a writable directory (--lock, HEAVYLOCK_PATH), or have the "
          "lock file created there beforehand", path, strerror(err), dir,
          (err == EROFS || err == ENOSPC) ? 73 : 66);
}

/* What flock(2) means on a file system, by its magic number (statfs). */
static void file_system(const char *dir) {
#ifdef __linux__
  static const struct {
    unsigned long magic;
    const char *name;
    int level; /* 0 local, 1 local to this host only, 2 doubtful */
    const char *note;
  } fs[] = {
      {0xEF53, "ext2/3/4", 0, "local: flock excludes every process on this host"},
      {0x58465342, "xfs", 0, "local: flock excludes every process on this host"},
      {0x9123683E, "btrfs", 0, "local: flock excludes every process on this host"},
      {0x2FC12FC1, "zfs", 0, "local: flock excludes every process on this host"},
      {0x01021994, "tmpfs", 0, "local (in memory): flock excludes every process on this host"},
      {0x794C7630, "overlay", 1,
       "overlay (a container's root?): flock works on the upper layer, among processes "
       "that see this same overlay mount; other containers do not see it"},
      {0x6969, "nfs", 2,
       "NFS: Linux emulates flock with byte-range (POSIX) locks sent to the server; "
       "exclusion across machines is only as good as the server's lock manager, and "
       "a lock may be lost when the client loses its lease; keep lock files on a local disk"},
      {0xFF534D42, "cifs", 2,
       "CIFS/SMB: flock is emulated (byte-range locks on the server) unless mounted "
       "with nobrl, then it is local to this client only"},
      {0xFE534D42, "smb2", 2, "SMB: flock is emulated or local to this client (see cifs)"},
      {0x65735546, "fuse", 2,
       "FUSE: flock is handled by the file system daemon or, when it does not implement "
       "it, by this kernel only (local to this host); network FUSE file systems "
       "(sshfs, s3fs, gcsfuse) do not share it between machines"},
      {0x01021997, "9p", 2,
       "9p (VM or WSL share): flock is local to this guest, not shared with the host "
       "or other guests"},
      {0x00C36400, "ceph", 2, "CephFS: flock is cluster-wide only with a recent MDS"},
      {0x6B414653, "afs", 2, "AFS: flock is whole-file and server-side; check the client"},
  };
  struct statfs sf;
  if (statfs(dir, &sf) < 0) {
    problem("cannot statfs %s: %s", dir, strerror(errno));
    return;
  }
  for (size_t i = 0; i < sizeof(fs) / sizeof(fs[0]); i++) {
    if ((unsigned long)sf.f_type == fs[i].magic) {
      say("file system", "%s (%s)", fs[i].name, fs[i].note);
      if (fs[i].level == 2)
        problem("the lock is on %s: flock there may not exclude everyone (see above)",
                fs[i].name);
      return;
    }
  }
  say("file system", "type 0x%lx (not one doctor knows; the flock test below decides)",
      (unsigned long)sf.f_type);
#else
  (void)dir;
  say("file system", "unknown on this system (the flock test below decides)");
#endif
}

/* Does flock exclude across two processes in `dir`?  On a scratch file,
 * never on the lock: 1 yes, 0 no, -1 could not test. */
static int flock_excludes(const char *dir) {
  char path[HL_PATH_MAX + 64];
  snprintf(path, sizeof(path), "%s/.heavylock-doctor-XXXXXX", dir);
  int fd = mkstemp(path);
  if (fd < 0) {
    say("flock test", "skipped: cannot create a scratch file in %s (%s)", dir, strerror(errno));
    return -1;
  }
  int ready[2], done[2];
  if (pipe(ready) < 0 || pipe(done) < 0) {
    close(fd);
    unlink(path);
    return -1;
  }
  pid_t pid = fork();
  if (pid == 0) {
    int cfd = open(path, O_RDWR | O_CLOEXEC);
    char c = (cfd >= 0 && flock(cfd, LOCK_EX) == 0) ? 'y' : 'n';
    if (write(ready[1], &c, 1) != 1 || read(done[0], &c, 1) < 0)
      _exit(1);
    _exit(0);
  }
  char c = 'n';
  if (read(ready[0], &c, 1) != 1)
    c = 'n';
  int busy = flock(fd, LOCK_EX | LOCK_NB) < 0 && (errno == EWOULDBLOCK || errno == EAGAIN);
  int err = errno;
  if (write(done[1], "x", 1) != 1) {
  }
  int st;
  waitpid(pid, &st, 0);
  int after = flock(fd, LOCK_EX | LOCK_NB) == 0; /* free once the child is gone */
  close(fd);
  unlink(path);
  close(ready[0]), close(ready[1]), close(done[0]), close(done[1]);
  if (c != 'y') {
    problem("flock(2) does not work in %s: a process could not lock a file there", dir);
    return 0;
  }
  if (!busy) {
    problem("flock(2) does NOT exclude across processes in %s: a second process got the lock "
            "while the first held it (%s)", dir, err ? strerror(err) : "no error");
    return 0;
  }
  if (!after) {
    problem("flock(2) in %s: the lock was not freed when its holder exited", dir);
    return 0;
  }
  say("flock test", "ok: a second process was refused while the first held a lock in %s, "
      "and got it once the first exited", dir);
  return 1;
}

static void kernel_views(const char *dir) {
#ifdef __linux__
  int fd = inotify_init1(IN_CLOEXEC);
  if (fd < 0) {
    problem("inotify is not available (%s): timed waits poll every 1-50 ms instead of "
            "waking on release", strerror(errno));
  } else {
    if (inotify_add_watch(fd, dir, IN_CLOSE_WRITE) < 0)
      problem("inotify cannot watch %s (%s): timed waits poll instead of waking on release",
              dir, strerror(errno));
    else
      say("inotify", "ok: timed waits wake when the holder closes the lock file");
    close(fd);
  }
  FILE *f = fopen("/proc/locks", "re");
  if (f == NULL) {
    problem("/proc/locks is not readable (%s): status cannot name holders that wrote no record "
            "(flock(1), filelock)", strerror(errno));
  } else {
    say("/proc/locks", "ok: status sees every flock holder and blocked waiter");
    fclose(f);
  }
#else
  (void)dir;
  say("kernel", "no inotify or /proc/locks here: timed waits poll; status probes");
#endif
}

/* A lock server: can we reach it, what it runs, who holds and waits. */
static int doctor_server(const char *target) {
  char shown[HL_PATH_MAX + 8], line[8192], safe[8192];
  cli_show_target(target, shown, sizeof(shown));
  int rc = hl_pg_doctor(target, line, sizeof(line));
  cli_show_target(line, safe, sizeof(safe));
  if (rc < 0)
    problem("%s: %s", shown, safe[0] ? safe : hl_strerror(rc));
  else
    say("server", "%s", safe);
  if (rc == 0) {
    hl_status_t hs;
    if ((rc = hl_status(target, &hs)) < 0) {
      problem("cannot read the lock's status from the server: %s", hl_strerror(rc));
    } else {
      char who[512];
      hl_holder_describe(&hs, who, sizeof(who));
      say("now", "%s; %d holder%s, %d waiting", who, hs.nholders, hs.nholders == 1 ? "" : "s",
          hs.nwaiters);
    }
  }
  if (problems)
    printf("%d problem%s found\n", problems, problems == 1 ? "" : "s");
  else
    printf("all is well\n");
  return problems ? 1 : 0;
}

int cmd_doctor(int argc, char **argv) {
  struct option opts[32];
  char shorts[64];
  cli_getopt_args("doctor", opts, 32, shorts, sizeof(shorts));
  const char *root = NULL, *given = NULL;
  int c;
  while ((c = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
    switch (c) {
    case 'r': root = optarg; break;
    case 'L': given = optarg; break;
    case 'h':
      cli_usage();
      return 0;
    default:
      fprintf(stderr, "heavylock: bad usage\nTry 'heavylock --help' for more information.\n");
      return 64;
    }
  }
  if (optind < argc)
    given = argv[optind++];
  if (optind < argc) {
    fprintf(stderr, "heavylock: doctor: unexpected argument '%s'\n"
                    "Try 'heavylock --help' for more information.\n", argv[optind]);
    return 64;
  }
  problems = 0;
  char path[HL_PATH_MAX];
  if (given) {
    if (strlen(given) >= sizeof(path)) {
      problem("the lock path is %zu bytes long; the limit is %d", strlen(given), HL_PATH_MAX - 1);
      return 1;
    }
    snprintf(path, sizeof(path), "%s", given);
    char shown[HL_PATH_MAX + 8];
    say("lock path", "%s (given on the command line)", cli_show_target(path, shown, sizeof(shown)));
    /* run's rule (lock_path): an unknown scheme is no path and no server
     * (it was diagnosed as a bad PostgreSQL URL), an empty path no file */
    if (hl_target_kind(path) == HL_TARGET_UNKNOWN) {
      problem("%s is a URL of no known lock server; supported: " HL_TARGET_SCHEMES, shown);
      return 64;
    }
    if (path[0] == '\0') {
      problem("the lock path is empty; name a lock file or a lock server's URL");
      return 64;
    }
  } else {
    hl_path_t p;
    int rc = hl_path_resolve(root, &p);
    if (rc < 0) {
      problem("%s", rc == HL_EENV ? p.why : hl_strerror(rc));
      return 1;
    }
    snprintf(path, sizeof(path), "%s", p.path);
    char shown[HL_PATH_MAX + 8];
    say("lock path", "%s", cli_show_target(path, shown, sizeof(shown)));
    say("decided by", "%s: %s", p.source, p.why);
  }

  if (cli_is_url(path))
    return doctor_server(path);

  struct stat st;
  int missing = 0;
  if (lstat(path, &st) < 0) {
    missing = errno == ENOENT;
    if (missing)
      say("lock file", "does not exist yet (the first holder creates it)");
    else
      problem("cannot look at %s: %s", path, strerror(errno));
  } else if (S_ISLNK(st.st_mode)) {
    problem("%s is a symbolic link: heavylock refuses it (flock(1) and filelock would follow "
            "it and lock another file); point the lock at a regular file", path);
  } else if (!S_ISREG(st.st_mode)) {
    problem("%s is not a regular file (a directory, FIFO, socket or device): heavylock "
            "refuses it", path);
  } else {
    hl_record_t rec;
    int rc = hl_record_read(path, &rec);
    char head[19]; /* a free lock's record has our first line and no pid */
    int hfd = rc == HL_EFORMAT && st.st_size > 0
                  ? open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC) : -1;
    int ours = hfd >= 0 && read(hfd, head, sizeof(head)) == (ssize_t)sizeof(head) &&
               memcmp(head, "heavylock-holder 1\n", sizeof(head)) == 0;
    if (hfd >= 0)
      close(hfd);
    if (rc == HL_EFORMAT && st.st_size > 0 && !ours)
      problem("%s holds %lld bytes that are not a heavylock record: is the lock path naming "
              "a model or another file by mistake? (it is locked but never written)", path,
              (long long)st.st_size);
    else
      say("lock file", "regular file, %lld bytes, owner uid %ld, mode %03o", (long long)st.st_size,
          (long)st.st_uid, (unsigned)(st.st_mode & 0777));
    if (access(path, W_OK) < 0)
      say("note", "not writable by you: locking works on a read-only descriptor, but no holder "
          "record is written");
  }

  char dir[HL_PATH_MAX];
  existing_dir(path, dir, sizeof(dir));
  if (missing)
    can_create(path, dir);
  file_system(dir);
  flock_excludes(dir);
  kernel_views(dir);

  hl_status_t hs;
  int rc = hl_status(path, &hs);
  if (rc == HL_ESYMLINK || rc == HL_ENOTREG) {
    /* already named above */
  } else if (rc < 0 && rc != -ENOENT) {
    problem("cannot read the lock's status: %s", hl_strerror(rc));
  } else if (rc == 0) {
    char who[512];
    hl_holder_describe(&hs, who, sizeof(who));
    say("now", "%s%s; %d waiting", who,
        hs.deleted_file ? " (on a lock file that was deleted or replaced)" : "", hs.nwaiters);
    for (int i = 0; i < hs.nwaiters; i++) {
      char cmd[HL_CMD_MAX]; /* whole: masked before any cut */
      if (hl_proc_cmdline(hs.waiters[i].pid, cmd, sizeof(cmd)) < 0)
        cmd[0] = '\0';
      say("", "waiter pid %ld (%s): %s", hs.waiters[i].pid,
          hs.waiters[i].how == 'b' ? "blocked in flock" : "watching", cmd);
    }
    if (hs.deleted_file)
      problem("the lock file was deleted or replaced while held: do not delete lock files "
              "(tools other than heavylock would lock the new file meanwhile)");
  }
  if (problems)
    printf("%d problem%s found\n", problems, problems == 1 ? "" : "s");
  else
    printf("all is well\n");
  return problems ? 1 : 0;
}
