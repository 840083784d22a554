/*
 * lock.c - taking a lock: try, and while someone else holds it, sleep with
 * exponential backoff and jitter, bounded by the policy's timeout.
 *
 * Runs without the GVL. Sleeps polling the waker's eventfd, which the
 * unblocking function writes, so Thread#raise, Timeout and Ctrl-C end a wait
 * at once. A store call in flight watches the same eventfd: it ends at once
 * if it has written nothing that changes the server, otherwise within the
 * store's short grace (its connection is then closed, never left out of
 * step, and the outcome reported as unknown). Each store call lasts at most
 * the configured I/O timeout (plus the connect timeout when it connects).
 */
#define _GNU_SOURCE /* ppoll */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lock.h"
#include "local_queue.h"
#include "pid.h"

/* See poll_store: a waiter that has seen k holders come and go restarts
 * from this many backoff_min / k (k >= this: from backoff_min). */
#define MM_NEWCOMER_FACTOR 16.0

double mm_monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

int mm_waker_init(mm_waker *w) {
  w->interrupted = 0;
  w->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  return w->fd < 0 ? -1 : 0;
}

void mm_waker_destroy(mm_waker *w) {
  if (w->fd >= 0) close(w->fd);
  w->fd = -1;
}

void mm_waker_reset(mm_waker *w) {
  if (__atomic_exchange_n(&w->interrupted, 0, __ATOMIC_SEQ_CST) && w->fd >= 0) { /* -1: closed with its client */
    uint64_t drained;
    while (read(w->fd, &drained, sizeof drained) > 0) {
    }
  }
}

void mm_waker_wake(void *arg) {
  mm_waker *w = arg;
  int saved = errno; /* may run in a signal handler */
  __atomic_store_n(&w->interrupted, 1, __ATOMIC_SEQ_CST);
  uint64_t one = 1;
  if (w->fd >= 0) {
    ssize_t n = write(w->fd, &one, sizeof one);
    (void) n; /* EAGAIN means it is already readable: fine */
  }
  errno = saved;
}

static int waker_interrupted(mm_waker *w) { return __atomic_load_n(&w->interrupted, __ATOMIC_SEQ_CST); }

/* Sleep `seconds` unless woken; returns 1 if interrupted. */
static int waker_sleep(mm_waker *w, double seconds) {
  double until = mm_monotonic() + seconds;
  struct pollfd pfd = {w->fd, POLLIN, 0};
  while (!waker_interrupted(w)) {
    double left = until - mm_monotonic();
    if (left <= 0) break;
    struct timespec ts;
    ts.tv_sec = (time_t) left;
    ts.tv_nsec = (long) ((left - (double) ts.tv_sec) * 1e9);
    int n = ppoll(&pfd, 1, &ts, NULL);
    if (n == 0) break; /* slept the whole time */
    if (n < 0 && errno != EINTR) break;
  }
  return waker_interrupted(w);
}

/* xorshift64*: jitter only, not security. */
static double next_random(uint64_t *state) {
  uint64_t x = *state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return (double) ((x * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0; /* [0, 1) */
}

static uint64_t new_seed(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t seed = ((uint64_t) ts.tv_nsec << 20) ^ (uint64_t) ts.tv_sec ^ ((uint64_t) mm_getpid() << 40) ^
                  (uint64_t) (uintptr_t) &ts;
  return seed == 0 ? 0x9E3779B97F4A7C15ULL : seed;
}

/* A store that waits in the server (MM_CAP_WAIT): one try, then its own
 * wait, woken by the release and ended by the waker (the store watches the
 * same eventfd). */
static mm_status wait_in_store(mm_store *store, mm_bytes key, mm_bytes token, unsigned ttl,
                               const mm_wait_policy *policy, mm_lease_record *lease, mm_holder *holder,
                               mm_acquire_stats *stats, double start) {
  stats->attempts = 1;
  /* Who holds it matters only if the call ends without the lock: a wait
   * that follows says so itself when its time runs out, so the try does
   * not ask (one statement less per waited take on MariaDB). */
  mm_status st = store->ops->try_take(store, key, token, ttl, lease, policy->timeout != 0 ? NULL : holder);
  if (st == MM_HELD && policy->timeout != 0) {
    stats->attempts = 2;
    /* A bounded wait whose time ran out during the try ends here: a
     * negative timeout means "for ever" to wait_take. */
    double left = policy->timeout < 0 ? -1 : policy->timeout - (mm_monotonic() - start);
    st = policy->timeout >= 0 && left < 1e-6 ? MM_TIMEOUT
                                              : store->ops->wait_take(store, key, token, ttl, left, lease, holder);
  } else if (st == MM_HELD) {
    st = MM_TIMEOUT;
  }
  stats->waited = mm_monotonic() - start;
  return st;
}

/* Polls the store until the lock is taken, the deadline passes (one last
 * try at the deadline) or the waker fires. `tried`: the caller's own first
 * attempt already found the lock held (holder filled). */
static mm_status poll_store(mm_store *store, mm_bytes key, mm_bytes token, unsigned ttl, const mm_wait_policy *policy,
                            mm_waker *waker, mm_lease_record *lease, mm_holder *holder, mm_acquire_stats *stats,
                            double deadline, int tried) {
  unsigned long changes = 0; /* holders seen to come and go during this wait */
  double backoff = policy->backoff_min;
  uint64_t seed = new_seed();
  mm_status st = MM_HELD;

  /* Who held it at the last attempt: a lock that changes hands between two
   * attempts is turning over quickly, so the backoff starts again (from
   * backoff_min for a waiter that has seen many changes, from more for a
   * newcomer); one held by the same holder all along gets polled less and
   * less often, down to one attempt per backoff_max. */
  char seen[MM_TOKEN_MAX + 1];
  size_t seen_len = 0;
  uint64_t seen_version = 0;
  int seen_any = 0;

  for (;;) {
    if (!tried) {
      stats->attempts++;
      st = store->ops->try_take(store, key, token, ttl, lease, holder);
      if (st != MM_HELD) break;
    }
    tried = 0;

    int changed = !seen_any || holder->version != seen_version || holder->token_len != seen_len ||
                  memcmp(holder->token, seen, seen_len) != 0;
    if (changed && seen_any) {
      /* Seniority: the lock changed hands, and not to this waiter. One that
       * has seen few changes is a newcomer: it restarts its backoff from
       * MM_NEWCOMER_FACTOR x backoff_min / changes, so that those that have
       * waited through many changes - polling from backoff_min - go first,
       * and newcomers cost the server little. (Restarting every waiter from
       * backoff_min, and older ones from less, cost 18 requests per
       * acquisition with 8 processes and 100 with 32, and the pollers'
       * CPU slowed the holders down: bench/run.rb, docs/benchmarks.md.) */
      changes++;
      backoff = policy->backoff_min * MM_NEWCOMER_FACTOR / (double) changes;
      if (backoff < policy->backoff_min) backoff = policy->backoff_min;
      if (backoff > policy->backoff_max) backoff = policy->backoff_max;
    }
    memcpy(seen, holder->token, holder->token_len);
    seen_len = holder->token_len;
    seen_version = holder->version;
    seen_any = 1;

    double now = mm_monotonic();
    if (now >= deadline) {
      st = MM_TIMEOUT;
      break;
    }
    /* "Equal jitter": half the backoff fixed, half random, so waiters
     * spread out but none starves with a near-zero sleep streak. */
    double pause = backoff / 2 + next_random(&seed) * backoff / 2;
    if (now + pause > deadline) pause = deadline - now; /* last try at the deadline */
    if (waker_sleep(waker, pause)) {
      st = MM_INTERRUPTED;
      break;
    }
    backoff *= 2;
    if (backoff > policy->backoff_max) backoff = policy->backoff_max;
  }
  return st;
}

/* Courtesy. A process that took a key after waiting for it, and wants it
 * again soon after, has just given it back to waiters that are still
 * polling: trying at once, it would take it again nearly every time (a
 * release and the next call's try are microseconds apart; a waiter's poll
 * lands in that gap rarely). So it first pauses a little (backoff_min/8 to
 * backoff_min/4: a senior waiter polls every backoff_min/2 to backoff_min)
 * and lets one of them in. (Measured with 8 and 32 processes against
 * pauses of backoff_min/2..backoff_min and none: the shortest share rises
 * from about 0.75 to 0.85 and the p99 wait drops by a fifth, for some of
 * the throughput at 8 processes; docs/benchmarks.md.) Remembered per key, in
 * a small table of this process (a hash and a time: a collision or a torn
 * read only costs or saves one such pause; nothing here grants anything). */
#define MM_COURTESY_SLOTS 64
#define MM_COURTESY_WINDOW 1.0 /* seconds after such a take */
static uint64_t courtesy_hash[MM_COURTESY_SLOTS];
static uint64_t courtesy_until_us[MM_COURTESY_SLOTS];

static uint64_t key_hash(const mm_store *store, mm_bytes key) {
  uint64_t h = 1469598103934665603ULL ^ (uint64_t) (uintptr_t) store->ops;
  for (size_t i = 0; i < key.len; i++) {
    h ^= (unsigned char) key.ptr[i];
    h *= 1099511628211ULL;
  }
  return h | 1; /* never 0, the empty slot */
}

static void courtesy_note(const mm_store *store, mm_bytes key, double now) {
  uint64_t h = key_hash(store, key);
  size_t slot = (size_t) (h >> 32) % MM_COURTESY_SLOTS;
  __atomic_store_n(&courtesy_until_us[slot], (uint64_t) ((now + MM_COURTESY_WINDOW) * 1e6), __ATOMIC_RELAXED);
  __atomic_store_n(&courtesy_hash[slot], h, __ATOMIC_RELAXED);
}

static int courtesy_due(const mm_store *store, mm_bytes key, double now) {
  uint64_t h = key_hash(store, key);
  size_t slot = (size_t) (h >> 32) % MM_COURTESY_SLOTS;
  if (__atomic_load_n(&courtesy_hash[slot], __ATOMIC_RELAXED) != h) return 0;
  return (double) __atomic_load_n(&courtesy_until_us[slot], __ATOMIC_RELAXED) > now * 1e6;
}

mm_status mm_lock_acquire(mm_store *store, mm_bytes key, mm_bytes token, unsigned ttl,
                          const mm_wait_policy *policy, mm_waker *waker, mm_lease_record *lease,
                          mm_holder *holder, mm_acquire_stats *stats) {
  double start = mm_monotonic();
  store->maybe_applied = 0; /* nothing written yet (a queued thread may write nothing at all) */
  if ((store->ops->caps & MM_CAP_WAIT) && store->ops->wait_take != NULL)
    return wait_in_store(store, key, token, ttl, policy, lease, holder, stats, start);
  double deadline = policy->timeout < 0 ? INFINITY : start + policy->timeout;
  mm_status st;
  mm_lq_waiter w;
  int queued = 0, tried = 0;
  holder->token_len = 0;
  stats->attempts = 0;

  /* Threads of this process that want the same key queue locally: one asks
   * the server, the others wait for their turn (local_queue.c). A thread
   * that finds a sibling asking already queues without asking; otherwise it
   * tries first (the uncontended path: one try, no queue). try_lock
   * (timeout 0) never queues. */
  if (policy->timeout != 0 && mm_lq_busy(store, key)) {
    queued = mm_lq_enter(store, key, &w);
  } else {
    if (policy->timeout != 0 && courtesy_due(store, key, start)) {
      uint64_t seed = new_seed();
      double pause = policy->backoff_min / 8 + next_random(&seed) * policy->backoff_min / 8;
      if (start + pause > deadline) pause = deadline - start;
      if (pause > 0 && waker_sleep(waker, pause)) {
        st = MM_INTERRUPTED;
        goto done;
      }
    }
    stats->attempts++;
    st = store->ops->try_take(store, key, token, ttl, lease, holder);
    if (st != MM_HELD || policy->timeout == 0) {
      if (st == MM_HELD) st = MM_TIMEOUT;
      goto done;
    }
    tried = 1;
    queued = mm_lq_enter(store, key, &w);
  }
  if (queued && !w.is_asker) {
    int turn = mm_lq_wait(&w, waker, deadline);
    if (turn < 0) {
      st = MM_INTERRUPTED;
      goto done;
    }
    if (turn == 0) {
      /* The deadline passed in the queue: one last try, as a poller makes. */
      stats->attempts++;
      st = store->ops->try_take(store, key, token, ttl, lease, holder);
      if (st == MM_HELD) st = MM_TIMEOUT;
      goto done;
    }
    tried = 0; /* the turn: the holder seen before is old news */
  }
  st = poll_store(store, key, token, ttl, policy, waker, lease, holder, stats, deadline, tried);
done:
  if (queued) mm_lq_leave(&w);
  stats->waited = mm_monotonic() - start;
  if (st == MM_OK && (stats->attempts > 1 || queued)) courtesy_note(store, key, start + stats->waited);
  return st;
}
