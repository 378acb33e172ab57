/*
 * admit.c - sizes, free memory, and the admission rule (see admit.h and
 * hl_lock_set_weight in heavylock.h).
 *
 * Why "live memory minus expected growth": a model that is still loading has
 * not used its memory yet, so MemAvailable alone would admit a second and a
 * third model into room the first is about to fill.  Each holder therefore
 * still "owes" its weight minus what its process tree has grown since it
 * was admitted.  A holder that grows past its weight owes nothing (floored at
 * 0) and its excess already shows in MemAvailable; a holder that dies frees
 * its entry and its memory together.
 */
#include "admit.h"
#include "os.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int hl_size_parse(const char *text, uint64_t *bytes) {
  if (text == NULL || *text == '\0')
    return -EINVAL;
  const char *p = text;
  if (!isdigit((unsigned char)*p) && *p != '.')
    return -EINVAL; /* no sign, no space, no "inf"/"nan" */
  char *end;
  double v = strtod(p, &end);
  if (end == p || !isfinite(v) || v < 0 || strpbrk(text, "xXpP"))
    return -EINVAL;
  double mult = 1;
  if (*end) {
    switch (tolower((unsigned char)*end)) {
    case 'k': mult = 1024.0; break;
    case 'm': mult = 1024.0 * 1024; break;
    case 'g': mult = 1024.0 * 1024 * 1024; break;
    case 't': mult = 1024.0 * 1024 * 1024 * 1024; break;
    case 'b': mult = 1; end--; break; /* "100B": the 'b' is read below */
    default: return -EINVAL;
    }
    end++;
    if (tolower((unsigned char)*end) == 'i')
      end++;
    if (tolower((unsigned char)*end) == 'b')
      end++;
    if (*end)
      return -EINVAL;
  } else {
    /* plain bytes: an integer */
    if (strchr(p, '.') || strchr(p, 'e') || strchr(p, 'E'))
      return -EINVAL;
  }
  double b = v * mult;
  if (b >= 18446744073709551615.0)
    return -EINVAL;
  *bytes = (uint64_t)(b + 0.5);
  return 0;
}

const char *hl_size_format(uint64_t bytes, char *buf, size_t len) {
  static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = (double)bytes;
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    u++;
  }
  if (u == 0)
    snprintf(buf, len, "%llu B", (unsigned long long)bytes);
  else
    snprintf(buf, len, "%.1f %s", v, units[u]);
  return buf;
}

/* ---- free memory: MemAvailable, lowered by cgroup v2 limits ---- */

static int read_u64_file(const char *path, uint64_t *v, int *is_max) {
  char buf[64];
  long n = hl__os_read_head(path, buf, sizeof(buf) - 1);
  if (n <= 0)
    return -ENOENT;
  buf[n] = '\0';
  *is_max = strncmp(buf, "max", 3) == 0;
  if (*is_max)
    return 0;
  char *end;
  unsigned long long x = strtoull(buf, &end, 10);
  if (end == buf)
    return -EINVAL;
  *v = x;
  return 0;
}

/* The tightest memory.max - memory.current over this process's cgroup and
 * its ancestors (a limit on a parent binds us too).  0 and *room, or -ENOENT
 * when no limit applies. */
static int cgroup_room(uint64_t *room) {
  char buf[4096];
  long n = hl__os_read_head("/proc/self/cgroup", buf, sizeof(buf) - 1);
  if (n <= 0)
    return -ENOENT;
  buf[n] = '\0';
  char *line = strstr(buf, "0::");
  if (line == NULL || (line != buf && line[-1] != '\n'))
    return -ENOENT;
  char cg[2048];
  size_t len = strcspn(line + 3, "\n");
  if (len >= sizeof(cg))
    return -ENOENT;
  memcpy(cg, line + 3, len);
  cg[len] = '\0';
  int found = 0;
  uint64_t best = 0;
  for (;;) {
    char pmax[2200], pcur[2200];
    snprintf(pmax, sizeof(pmax), "/sys/fs/cgroup%s/memory.max", strcmp(cg, "/") ? cg : "");
    snprintf(pcur, sizeof(pcur), "/sys/fs/cgroup%s/memory.current", strcmp(cg, "/") ? cg : "");
    uint64_t max = 0, cur = 0;
    int is_max = 1, dummy;
    if (read_u64_file(pmax, &max, &is_max) == 0 && !is_max &&
        read_u64_file(pcur, &cur, &dummy) == 0) {
      uint64_t r = max > cur ? max - cur : 0;
      if (!found || r < best)
        best = r;
      found = 1;
    }
    char *slash = strrchr(cg, '/');
    if (slash == NULL || slash == cg)
      break;
    *slash = '\0';
  }
  if (!found)
    return -ENOENT;
  *room = best;
  return 0;
}

int hl_mem_free(uint64_t *bytes) {
  uint64_t avail;
  int rc = hl_mem_available(&avail);
  if (rc < 0)
    return rc;
  uint64_t room;
  if (cgroup_room(&room) == 0 && room < avail)
    avail = room;
  *bytes = avail;
  return 0;
}

static int (*probe_fn)(uint64_t *) = hl_mem_free;

void hl__admit_set_probe(int (*probe)(uint64_t *bytes)) { probe_fn = probe ? probe : hl_mem_free; }
int hl__admit_probe(uint64_t *bytes) { return probe_fn(bytes); }

/* ---- the rule ---- */

int hl__admit_by_memory(const hl__ask_t *ask) {
  return ask->slots == 0 || ask->weight > 0 || ask->budget > 0;
}

int hl__admit_exclusive(const hl__ask_t *ask) {
  return ask->slots == 1 || (hl__admit_by_memory(ask) && ask->weight == 0);
}

int hl__admit(const hl__ask_t *ask, const hl__load_t *load, int live_ok, uint64_t live_free,
              uint64_t *free_out) {
  uint64_t free = 0;
  int known = 0;
  if (ask->budget > 0) {
    free = ask->budget > load->weights ? ask->budget - load->weights : 0;
    known = 1;
  } else if (live_ok) {
    uint64_t taken = load->growth > UINT64_MAX - HL_RESERVE_BYTES ? UINT64_MAX /* never wrap */
                                                                   : load->growth + HL_RESERVE_BYTES;
    free = live_free > taken ? live_free - taken : 0;
    known = 1;
  }
  if (free_out)
    *free_out = known ? free : 0;
  /* Nobody holds: anyone runs, alone if need be (a weight larger than
   * everything runs alone rather than never). */
  if (load->nholders == 0)
    return 1;
  if (load->exclusive || hl__admit_exclusive(ask))
    return 0;
  if (ask->slots > 0 && load->nholders >= ask->slots)
    return 0;
  if (!hl__admit_by_memory(ask))
    return 1;
  if (!known)
    return 0; /* memory cannot be judged: one at a time is the safe answer */
  return ask->weight <= free;
}
