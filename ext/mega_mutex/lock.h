/*
 * lock.h - the lock logic over any store: take with spin-and-backoff, wake
 * early when Ruby interrupts the thread.
 */
#ifndef MEGA_MUTEX_LOCK_H
#define MEGA_MUTEX_LOCK_H

#include "store.h"

/* Wakes a waiting thread: the unblocking function Ruby calls on Thread#raise,
 * Thread#kill, Timeout or a signal sets `interrupted` and writes to the
 * eventfd the waiter polls. Async-signal-safe (an atomic store and a
 * write), so Ruby may call it from a signal handler. */
typedef struct {
  int fd;          /* eventfd */
  int interrupted; /* accessed with __atomic builtins */
} mm_waker;

typedef struct {
  double timeout;     /* seconds; < 0 waits forever; 0 tries once */
  double backoff_min; /* first sleep after a busy attempt, seconds */
  double backoff_max; /* longest sleep, seconds */
} mm_wait_policy;

typedef struct {
  unsigned long attempts; /* acquire calls to the store */
  double waited;          /* seconds from the first attempt to the result */
} mm_acquire_stats;

int mm_waker_init(mm_waker *w); /* 0, or -1 with errno */
void mm_waker_destroy(mm_waker *w);
void mm_waker_reset(mm_waker *w);  /* before each wait */
void mm_waker_wake(void *waker);   /* an unblocking function: no Ruby API */

double mm_monotonic(void);

/* Take `key` for `token` (lease of `ttl` seconds, by the store's rules),
 * waiting as `policy` says: polling with backoff, or in the store when it
 * can wait there (MM_CAP_WAIT). MM_OK (*lease filled), MM_TIMEOUT,
 * MM_INTERRUPTED or a store error; `holder` describes the holder seen last. */
mm_status mm_lock_acquire(mm_store *store, mm_bytes key, mm_bytes token, unsigned ttl,
                          const mm_wait_policy *policy, mm_waker *waker, mm_lease_record *lease,
                          mm_holder *holder, mm_acquire_stats *stats);

#endif
