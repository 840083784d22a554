/*
 * local_queue.h - threads of one process that wait for the same key queue
 * here, and only one of them at a time (the "asker") asks the server.
 *
 * The queue never grants a lock: only the store does. It only decides which
 * of a process's threads polls the store for a key, so N threads waiting on
 * one key cost the server what one waiter costs, and they take their turns
 * in arrival order. A key's queue is scoped by its store kind and the server
 * that keeps it (mm_store_ops.locate), so waiters on different servers never
 * wait behind each other.
 *
 * Process-wide, guarded by one mutex that is never held across I/O or a
 * sleep. A forked child starts with an empty table (pthread_atfork). No Ruby
 * API: everything here runs without the GVL.
 */
#ifndef MEGA_MUTEX_LOCAL_QUEUE_H
#define MEGA_MUTEX_LOCAL_QUEUE_H

#include <stddef.h>

#include "lock.h"
#include "store.h"

typedef struct mm_lq_entry mm_lq_entry;

/* One thread's place in a key's queue (lives on that thread's stack). */
typedef struct mm_lq_waiter {
  struct mm_lq_waiter *next;
  int fd;       /* eventfd the previous asker writes when it is this waiter's turn; -1 none */
  int is_asker; /* set under the table lock: this thread asks the server now */
  mm_lq_entry *entry;
} mm_lq_waiter;

/* Is anyone of this process queued or asking for `key` on `store`'s server?
 * Lock-free answer 0 when no key has a queue at all (the uncontended path). */
int mm_lq_busy(mm_store *store, mm_bytes key);

/* Joins `key`'s queue: returns 1 with w->is_asker set when nobody of this
 * process asks the server for it (the caller asks now), 1 with w->is_asker
 * clear when queued behind the asker (wait with mm_lq_wait), 0 when the
 * queue could not be used (no memory, no eventfd, no server for the key):
 * the caller polls the store on its own, as if alone. */
int mm_lq_enter(mm_store *store, mm_bytes key, mm_lq_waiter *w);

/* Waits until w becomes the asker (1), `deadline` passes (0: CLOCK_MONOTONIC
 * seconds; INFINITY waits for ever) or the waker fires (-1). */
int mm_lq_wait(mm_lq_waiter *w, mm_waker *waker, double deadline);

/* Leaves the queue, whatever happened: an asker hands the turn to the next
 * waiter in arrival order; a waiter that never got its turn (timeout,
 * interrupt) just leaves. Frees the waiter's eventfd and, with the last
 * thread gone, the key's queue. */
void mm_lq_leave(mm_lq_waiter *w);

/* Keys with a queue now (for specs: 0 when nothing is left behind). */
size_t mm_lq_count(void);

#endif
