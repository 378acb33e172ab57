/*
 * admit.h - memory admission: the numbers (free memory, sizes) and the one
 * rule that says whether a newcomer fits.  Platform-neutral; the slots kind
 * (kind-slots.c) and a remote kind gather the load and call hl__admit().
 */
#ifndef HEAVYLOCK_ADMIT_H
#define HEAVYLOCK_ADMIT_H

#include "kind.h"

/* What the current holders take, as seen by one admission decision. */
typedef struct hl__load_s {
  int nholders;
  int exclusive;              /* a holder holds alone                       */
  uint64_t weights;           /* sum of the holders' declared weights       */
  uint64_t growth;            /* growth still expected: sum over holders of
                                 max(0, weight - (rss now - rss at admission)) */
} hl__load_t;

/* Does admission by memory apply to `ask`?  slots 0 ("auto"), a weight, or
 * a static budget bring it in; plain "--slots N" counts only. */
int hl__admit_by_memory(const hl__ask_t *ask);

/* Is `ask` an exclusive holder (unknown weight under memory admission)? */
int hl__admit_exclusive(const hl__ask_t *ask);

/*
 * The rule.  1 admit, 0 not now.  `live_free` is hl_mem_free() now (used
 * when ask->budget is 0; live_ok 0 when it could not be read: then only the
 * count and "alone" rules apply).  *free_out gets what a newcomer could have.
 */
int hl__admit(const hl__ask_t *ask, const hl__load_t *load, int live_ok, uint64_t live_free,
              uint64_t *free_out);

/* Tests replace the live memory probe (NULL restores hl_mem_free). */
void hl__admit_set_probe(int (*probe)(uint64_t *bytes));
int hl__admit_probe(uint64_t *bytes);

/* The slot table's ticket queue on its own (kind-slots.c; Linux): the flock
 * kind's waiters join it so that they are served in order and are not
 * starved by slot holders.  join: 0 or -errno (no queue then: wait as
 * before).  first: 1 when no live waiter holds a lower ticket. */
typedef struct hl__queue_s hl__queue_t;
int hl__queue_join(const char *lockpath, const hl__ask_t *ask, hl__queue_t **q);
int hl__queue_first(hl__queue_t *q);
void hl__queue_leave(hl__queue_t *q); /* NULL ok; closes the table (wakes others) */
/* Are others queued on `lockpath` now (a racy read, for fairness only)? */
int hl__queue_others(const char *lockpath);

/* Tests: sleep this long between deciding and registering (kind-slots.c). */
void hl__slots_set_admit_delay(unsigned us);
/* For tests: whether a stopped earlier waiter is passed over (default 1).
 * The no-barging test stops the first in line to hold the window between a
 * release and its retry open, and must have it counted. */
void hl__slots_set_pass_stopped(int on);

#endif
