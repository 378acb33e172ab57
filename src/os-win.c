/*
 * os-win.c - the Windows backend of the lock: LockFileEx on byte 0, length 1.
 *
 * That is exactly what Python's filelock does on Windows, so the two exclude
 * each other.  Windows byte-range locks are mandatory: while a process holds
 * byte 0, other processes cannot read it, so `status` cannot read the
 * holder record there and reports the holder through a try-lock probe only.
 * The kernel releases the lock when the holding process exits.
 *
 * There is no close-event watch here: timed waits poll with bounded backoff
 * (1 ms up to 50 ms, see lock.c).  Built and compile-checked with mingw-w64
 * (`make check-win`); not run in CI, which has no Windows machine.
 */
#define WIN32_LEAN_AND_MEAN
#include "os.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <windows.h>

static int map_error(DWORD e) {
  switch (e) {
  case ERROR_FILE_NOT_FOUND:
  case ERROR_PATH_NOT_FOUND: return -ENOENT;
  case ERROR_ACCESS_DENIED: return -EACCES;
  case ERROR_WRITE_PROTECT: return -EROFS;
  case ERROR_DISK_FULL:
  case ERROR_HANDLE_DISK_FULL: return -ENOSPC;
  case ERROR_LOCK_VIOLATION:
  case ERROR_SHARING_VIOLATION: return HL_EBUSY;
  case ERROR_NOT_ENOUGH_MEMORY: return -ENOMEM;
  case ERROR_FILENAME_EXCED_RANGE: return -ENAMETOOLONG;
  default: return -EIO;
  }
}

/* UTF-8 path to a freshly allocated wide string (NULL on failure). */
static wchar_t *widen(const char *s) {
  int n = MultiByteToWideChar(CP_UTF8, 0, s, -1, NULL, 0);
  if (n <= 0)
    return NULL;
  wchar_t *w = malloc((size_t)n * sizeof(wchar_t));
  if (w && MultiByteToWideChar(CP_UTF8, 0, s, -1, w, n) <= 0) {
    free(w);
    return NULL;
  }
  return w;
}

/* What is at the path: <0 error, 0 missing, or the attributes + 1. */
static long long attributes(const wchar_t *w) {
  DWORD a = GetFileAttributesW(w);
  if (a == INVALID_FILE_ATTRIBUTES) {
    DWORD e = GetLastError();
    return (e == ERROR_FILE_NOT_FOUND || e == ERROR_PATH_NOT_FOUND) ? 0 : map_error(e);
  }
  return (long long)a + 1;
}

/* Open what `path` names now, never following a reparse point, and only if
 * it is a regular file: 0, -ENOENT, HL_ESYMLINK, HL_ENOTREG or -errno. */
static int open_existing(const char *path, DWORD access, HANDLE *out) {
  wchar_t *w = widen(path);
  if (w == NULL)
    return -EINVAL;
  long long a = attributes(w);
  int rc = a < 0 ? (int)a
           : a == 0 ? -ENOENT
           : ((a - 1) & FILE_ATTRIBUTE_REPARSE_POINT) ? HL_ESYMLINK
           : ((a - 1) & FILE_ATTRIBUTE_DIRECTORY) ? HL_ENOTREG
           : 0;
  if (rc == 0) {
    *out = CreateFileW(w, access, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL,
                       OPEN_EXISTING, FILE_FLAG_OPEN_REPARSE_POINT, NULL);
    if (*out == INVALID_HANDLE_VALUE)
      rc = map_error(GetLastError());
    else if (GetFileType(*out) != FILE_TYPE_DISK) {
      CloseHandle(*out);
      rc = HL_ENOTREG;
    }
  }
  free(w);
  return rc;
}

static int make_parents(const wchar_t *path) {
  size_t n = wcslen(path);
  wchar_t *buf = malloc((n + 1) * sizeof(wchar_t));
  if (buf == NULL)
    return -ENOMEM;
  memcpy(buf, path, (n + 1) * sizeof(wchar_t));
  for (size_t i = 1; i < n; i++) {
    if ((buf[i] == L'\\' || buf[i] == L'/') && buf[i - 1] != L':') {
      wchar_t c = buf[i];
      buf[i] = 0;
      if (!CreateDirectoryW(buf, NULL) && GetLastError() != ERROR_ALREADY_EXISTS) {
        int rc = map_error(GetLastError());
        free(buf);
        return rc;
      }
      buf[i] = c;
    }
  }
  free(buf);
  return 0;
}

int hl__os_open(const char *path, intptr_t *out, int *readonly) {
  wchar_t *w = widen(path);
  if (w == NULL)
    return -EINVAL;
  *readonly = 0;
  long long a = attributes(w);
  int rc = 0;
  if (a < 0) {
    rc = (int)a;
  } else if (a == 0) {
    rc = make_parents(w);
  } else if ((a - 1) & FILE_ATTRIBUTE_REPARSE_POINT) {
    rc = HL_ESYMLINK; /* a symlink or junction: never followed */
  } else if ((a - 1) & FILE_ATTRIBUTE_DIRECTORY) {
    rc = HL_ENOTREG;
  }
  if (rc < 0) {
    free(w);
    return rc;
  }
  const DWORD share = FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE;
  const DWORD flags = FILE_ATTRIBUTE_NORMAL | FILE_FLAG_OPEN_REPARSE_POINT;
  HANDLE h = CreateFileW(w, GENERIC_READ | GENERIC_WRITE, share, NULL, OPEN_ALWAYS, flags, NULL);
  if (h == INVALID_HANDLE_VALUE && GetLastError() == ERROR_ACCESS_DENIED) {
    h = CreateFileW(w, GENERIC_READ, share, NULL, OPEN_EXISTING, flags, NULL);
    if (h != INVALID_HANDLE_VALUE)
      *readonly = 1;
  }
  free(w);
  if (h == INVALID_HANDLE_VALUE)
    return map_error(GetLastError());
  if (GetFileType(h) != FILE_TYPE_DISK) {
    CloseHandle(h);
    return HL_ENOTREG;
  }
  *out = (intptr_t)h;
  return 0;
}

void hl__os_close(intptr_t fd) {
  DWORD saved = GetLastError();
  CloseHandle((HANDLE)fd);
  SetLastError(saved);
}

static int id_of(HANDLE h, hl__fileid_t *id) {
  BY_HANDLE_FILE_INFORMATION info;
  if (!GetFileInformationByHandle(h, &info))
    return map_error(GetLastError());
  id->dev = info.dwVolumeSerialNumber;
  id->ino = ((uint64_t)info.nFileIndexHigh << 32) | info.nFileIndexLow;
  return 0;
}

int hl__os_fileid_fd(intptr_t fd, hl__fileid_t *id) { return id_of((HANDLE)fd, id); }

int hl__os_fileid_path(const char *path, hl__fileid_t *id) {
  HANDLE h;
  int rc = open_existing(path, 0, &h);
  if (rc < 0)
    return rc;
  rc = id_of(h, id);
  CloseHandle(h);
  return rc;
}

/* No vouching lock files here: there is no lock table to check either. */
int hl__os_fileid_dir(const char *path, hl__fileid_t *id) {
  (void)path;
  (void)id;
  return -ENOSYS;
}

int hl__os_fd_written_last(intptr_t fd) {
  (void)fd;
  return 0;
}

static int lock_byte0(HANDLE h, DWORD flags) {
  OVERLAPPED ov;
  memset(&ov, 0, sizeof(ov));
  if (LockFileEx(h, flags, 0, 1, 0, &ov))
    return 0;
  return map_error(GetLastError());
}

int hl__os_trylock(intptr_t fd) {
  return lock_byte0((HANDLE)fd, LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY);
}

int hl__os_lock_wait(intptr_t fd) { return lock_byte0((HANDLE)fd, LOCKFILE_EXCLUSIVE_LOCK); }

int hl__os_unlock(intptr_t fd) {
  OVERLAPPED ov;
  memset(&ov, 0, sizeof(ov));
  return UnlockFileEx((HANDLE)fd, 0, 1, 0, &ov) ? 0 : map_error(GetLastError());
}

int hl__os_probe_held(const char *path) {
  HANDLE h;
  int rc = open_existing(path, GENERIC_READ, &h);
  if (rc < 0)
    return rc == -ENOENT ? 0 : rc;
  rc = lock_byte0(h, LOCKFILE_FAIL_IMMEDIATELY); /* shared */
  CloseHandle(h); /* drops the shared lock at once if we got it */
  if (rc == HL_EBUSY)
    return 1;
  return rc < 0 ? rc : 0;
}

hl__watch_t *hl__os_watch_open(void) { return NULL; }
int hl__os_watch_arm(hl__watch_t *w, const char *path) {
  (void)w;
  (void)path;
  return -ENOSYS;
}
void hl__os_watch_disarm(hl__watch_t *w) { (void)w; }
int hl__os_watch_wait(hl__watch_t *w, int ms) {
  (void)w;
  Sleep((DWORD)ms);
  return 0;
}
void hl__os_watch_close(hl__watch_t *w) { (void)w; }

/* No blocker thread here: timed waits poll (lock.c). */
hl__blocker_t *hl__os_blocker_start(intptr_t fd) {
  (void)fd;
  return NULL;
}
void hl__os_blocker_stop(hl__blocker_t *b) { (void)b; }
int hl__os_blocker_won(hl__blocker_t *b) {
  (void)b;
  return 0;
}
int hl__os_wait_events(hl__watch_t *w, hl__blocker_t *b, int ms) {
  (void)w;
  (void)b;
  return hl__os_sleep_ms(ms) < 0 ? -EINTR : 0;
}

int hl__os_write_all(intptr_t fd, const char *buf, size_t len) {
  HANDLE h = (HANDLE)fd;
  LARGE_INTEGER zero;
  zero.QuadPart = 0;
  if (!SetFilePointerEx(h, zero, NULL, FILE_BEGIN) || !SetEndOfFile(h))
    return map_error(GetLastError());
  size_t off = 0;
  while (off < len) {
    DWORD n = 0;
    if (!WriteFile(h, buf + off, (DWORD)(len - off), &n, NULL)) {
      int rc = map_error(GetLastError());
      SetFilePointerEx(h, zero, NULL, FILE_BEGIN);
      SetEndOfFile(h); /* leave no half record behind */
      return rc;
    }
    off += n;
  }
  return 0;
}

long hl__os_read_fd(intptr_t fd, char *buf, size_t len) {
  OVERLAPPED at; /* offset 0, without moving anyone's file pointer */
  memset(&at, 0, sizeof(at));
  DWORD n = 0;
  if (!ReadFile((HANDLE)fd, buf, (DWORD)len, &n, &at))
    return GetLastError() == ERROR_HANDLE_EOF ? 0 : map_error(GetLastError());
  return (long)n;
}

int hl__os_fopen_regular(const char *path, FILE **out) {
  *out = NULL;
  int kind = hl__os_path_kind(path);
  if (kind < 0)
    return kind;
  if (kind == 0)
    return -ENOENT;
  if (kind != 1)
    return HL_ENOTREG;
  *out = fopen(path, "rb");
  return *out ? 0 : -errno;
}

long hl__os_read_head(const char *path, char *buf, size_t len) {
  HANDLE h;
  int rc = open_existing(path, GENERIC_READ, &h);
  if (rc < 0)
    return rc;
  DWORD n = 0;
  BOOL ok = ReadFile(h, buf, (DWORD)len, &n, NULL); /* fails while byte 0 is locked */
  CloseHandle(h);
  return ok ? (long)n : 0;
}

int hl__os_sleep_ms(int ms) {
  Sleep((DWORD)ms);
  return 0;
}

double hl__os_monotonic(void) {
  LARGE_INTEGER f, c;
  QueryPerformanceFrequency(&f);
  QueryPerformanceCounter(&c);
  return (double)c.QuadPart / (double)f.QuadPart;
}

double hl__os_wallclock(void) {
  FILETIME ft;
  GetSystemTimeAsFileTime(&ft);
  uint64_t t = ((uint64_t)ft.dwHighDateTime << 32) | ft.dwLowDateTime;
  return (double)(t - 116444736000000000ull) / 1e7; /* 100 ns since 1601 */
}

long hl__os_getpid(void) { return (long)GetCurrentProcessId(); }
uintptr_t hl__os_thread_self(void) { return (uintptr_t)GetCurrentThreadId(); }

static SRWLOCK registry_lock = SRWLOCK_INIT;
void hl__os_registry_lock(void) { AcquireSRWLockExclusive(&registry_lock); }
void hl__os_registry_unlock(void) { ReleaseSRWLockExclusive(&registry_lock); }

int hl__os_proc_alive(long pid) {
  HANDLE h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, (DWORD)pid);
  if (h == NULL)
    return GetLastError() == ERROR_ACCESS_DENIED;
  DWORD code = 0;
  int alive = GetExitCodeProcess(h, &code) && code == STILL_ACTIVE;
  CloseHandle(h);
  return alive;
}

void hl__os_self_record(hl_record_t *rec) {
  rec->pid = hl__os_getpid();
  rec->start = hl__os_proc_start(rec->pid);
  DWORD n = sizeof(rec->host);
  if (!GetComputerNameA(rec->host, &n))
    rec->host[0] = '\0';
  rec->boot_id[0] = '\0';
  snprintf(rec->cmd, sizeof(rec->cmd), "%s", GetCommandLineA());
}

int hl__os_path_kind(const char *path) {
  wchar_t *w = widen(path);
  if (w == NULL)
    return -EINVAL;
  DWORD a = GetFileAttributesW(w);
  free(w);
  if (a == INVALID_FILE_ATTRIBUTES)
    return 0;
  return (a & FILE_ATTRIBUTE_DIRECTORY) ? 2 : 1;
}

int hl__os_abspath(const char *path, char *out, size_t len) {
  return _fullpath(out, path, len) ? 0 : -ENAMETOOLONG;
}

int hl__os_set_syscall(const char *name, void (*fn)(void)) {
  (void)name;
  (void)fn;
  return -ENOENT; /* no fault-injection seam on Windows yet */
}
