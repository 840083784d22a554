/*
 * renewer.h - keeping leases alive from C threads that never need the GVL.
 *
 * A lease (one held lock on one server, or in the memory store's table) is
 * renewed by the lane of its server (the memory store has one lane): a pthread with a connection of its own that extends each lease a
 * third of the way through it. One lane per server, so a slow or paused
 * server delays only its own leases; no Ruby thread, so Ruby threads that
 * hog the GVL cannot starve renewal. A lease that could not be kept - found
 * gone or taken over, or not renewed before it ran out - is marked lost and
 * queued for Ruby, which tells the holder (log, events, LockLostError).
 *
 * Nothing here uses the Ruby API. After fork the child starts afresh: it
 * renews nothing of its parent's and never touches the parent's lanes.
 */
#ifndef MEGA_MUTEX_RENEWER_H
#define MEGA_MUTEX_RENEWER_H

#include <stdint.h>

#include "store.h"

#define MM_REASON_MAX 200

typedef struct mm_lease mm_lease;

/* The server a lease lives on, and how to talk to it. */
typedef struct {
  const char *host; /* or a unix socket path when port is 0 */
  unsigned port;
  int connect_timeout_ms;
  int io_timeout_ms;
  int memory; /* 1: the memory store's table (store_memory.c), one lane for the process; host and port unused */
} mm_lane_spec;

/* Starts renewing `key` for `token`, a lease of lock_ttl `ttl`: the lane's
 * store refreshes it when its rules say (memcached: every ttl/3 s).
 * `valid_until` (CLOCK_MONOTONIC seconds) is when the lease as taken is
 * known to end. Returns the lease with one reference for the caller, or
 * NULL with a message in err. */
mm_lease *mm_lease_start(const mm_lane_spec *spec, mm_bytes key, mm_bytes token, unsigned ttl, double valid_until,
                         char *err, size_t errlen);

typedef struct mm_lane mm_lane;

/* A lane of its own for `store`, which it now owns (any store kind: a
 * quorum's, say), for the leases of one configuration; `label` names it.
 * Its requests are never cut short (the store's waker is unhooked). Lives as
 * long as the process. NULL with a message in err (the store destroyed). */
mm_lane *mm_lane_adopt(mm_store *store, const char *label, char *err, size_t errlen);

/* As mm_lease_start, in a lane from mm_lane_adopt (of this process). */
mm_lease *mm_lease_start_in(mm_lane *lane, mm_bytes key, mm_bytes token, unsigned ttl, double valid_until,
                            char *err, size_t errlen);

/* Stops renewing (the lock is about to be released). Idempotent; a no-op in
 * a forked child. */
void mm_lease_stop(mm_lease *lease);

/* 1 if the lease was lost (reason copied), 0 if it is still known good. A
 * lease past its valid_until is lost from that moment, even while its lane
 * is still waiting on the server. */
int mm_lease_lost(mm_lease *lease, char *reason, size_t len);

/* The lease's number, unique in the process: names it in the loss queue. */
uint64_t mm_lease_id(const mm_lease *lease);

/* Drops the caller's reference. */
void mm_lease_unref(mm_lease *lease);

/* Losses, for Ruby: an eventfd that is readable while losses are queued (-1
 * if it could not be made), and the next one (its id and reason; returns 0
 * when the queue is empty). */
int mm_renewer_loss_fd(void);
int mm_renewer_next_loss(uint64_t *id, char *reason, size_t len);

#endif
