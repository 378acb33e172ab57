/*
 * proc-win.c - what Windows tells about processes and memory.  There is no
 * readable lock table: status falls back to a try-lock probe.
 */
#define WIN32_LEAN_AND_MEAN
#include "os.h"
#include "proc-stub.h"

#include <errno.h>
#include <windows.h>

unsigned long long hl__os_proc_start(long pid) {
  HANDLE h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, (DWORD)pid);
  if (h == NULL)
    return 0;
  FILETIME created, exited, kernel, user;
  unsigned long long t = 0;
  if (GetProcessTimes(h, &created, &exited, &kernel, &user))
    t = ((unsigned long long)created.dwHighDateTime << 32) | created.dwLowDateTime;
  CloseHandle(h);
  return t;
}

int hl_mem_available(uint64_t *bytes) {
  MEMORYSTATUSEX m;
  m.dwLength = sizeof(m);
  if (!GlobalMemoryStatusEx(&m))
    return -EIO;
  *bytes = m.ullAvailPhys;
  return 0;
}
