/*
 * store_memory.c - the memory store (config.backend = :memory): locks in one
 * table per process, for test suites. The lock loop, reentrancy, renewal
 * and interrupt handling above it are the production ones (lock.c,
 * client.c, renewer.c); only the store is different.
 *
 * The table. Every memory store of the process works on the same table:
 * entries by key (token, version, expiry), one mutex, and the list of
 * threads waiting in wait_take. The mutex is held only for table work -
 * never across a wait, a sleep or a call into Ruby.
 *
 * The clock. An entry's expiry is on the table's clock: CLOCK_MONOTONIC
 * plus an offset that mm_memory_table_advance moves forward (as if that
 * much time had passed for the leases, not for waits and timeouts). Times
 * are integer nanoseconds, so a lease's end is exact; lease->valid_until is
 * reported a microsecond before it, so rounding to seconds can never make a
 * holder believe in a lease the store has ended.
 *
 * Advance and renewal. A lease its holder is renewing is never ended by
 * advance: had the time really passed, the renewer would have renewed it.
 * "Being renewed" means refreshed at least once, most recently less than
 * its ttl ago (real time): a refresh sets the entry's expiry on the table's
 * clock AND keeps it alive on the real clock until now + ttl; an entry
 * lives while either says so. So advance ends only leases that nobody has
 * renewed within their ttl: a lock taken by a holder that crashed or never
 * renews (a ghost), a lock the renewer has lost, the parent's locks in a
 * forked child once their last renewal is a ttl old - and a lock taken less
 * than renew_after (ttl / 3) ago, whose first renewal is still to come:
 * advance treats it as unrenewed, and its holder finds it gone at its first
 * renewal or its release (LockLostError). Without advance, an entry ends
 * exactly when its lease->valid_until (+1 us) says.
 *
 * Waiting. wait_take registers the thread (key + a fresh eventfd) in the
 * table's waiter list and ppoll()s that eventfd and the client's cancel_fd
 * until the holder's lease ends or the deadline; release, force_release,
 * reset and advance write to the eventfds of the waiters concerned. So a
 * release wakes a waiter at once, the waker ends a wait at once, and a
 * waiter never polls.
 *
 * Fork. pthread_atfork handlers (registered with the table) hold the
 * table's mutex across fork(), so the child's copy is consistent; in the
 * child they re-initialise the mutex (its owner does not exist there) and
 * set the parent's waiters aside, reachable but never touched (their
 * eventfds are shared with the parent: a write from the child would wake
 * the parent's threads). The child's table
 * is its own from then on. This needs no getpid() per call.
 *
 * No Ruby API in this file. Every pthread return code is checked: a failure
 * is MM_ERR_SERVER with a message.
 */
#define _GNU_SOURCE /* ppoll */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "store_memory.h"

#define NS 1000000000LL
#define VALID_MARGIN_NS 1000LL /* lease->valid_until is this much before the entry's end */
#define INITIAL_BUCKETS 64
#define FOREVER INT64_MAX
#define LEASE_MAGIC 0x79726f6d656d6d6dULL /* "mmmemory": a lease record of this store */

typedef struct entry {
  struct entry *next; /* bucket chain */
  uint64_t hash;
  uint64_t version;       /* from the table's counter, new at every take */
  int64_t expires;        /* on the table's clock, ns */
  int64_t renewed_until;  /* CLOCK_MONOTONIC ns: kept alive by the last refresh until then (0: none) */
  uint64_t renewals;      /* refreshes since the take */
  size_t key_len, token_len;
  char key[MM_KEY_MAX + 1];
  char token[MM_TOKEN_MAX + 1];
} entry;

/* A thread in wait_take. Allocated, not on the waiter's stack: should the
 * mutex ever fail, a node left in the list stays valid memory. */
typedef struct waiter {
  struct waiter *next, *prev;
  uint64_t hash;
  const char *key;
  size_t key_len;
  int fd; /* eventfd the waiter polls */
} waiter;

/* What a lease record's state bytes hold. */
typedef struct {
  uint64_t magic;
  uint64_t version;
} lease_state;

typedef struct {
  mm_store base;
} memory_store;

/* ---- the table ---------------------------------------------------------- */

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_broken;           /* an errno code: the mutex could not be set up (again) */
static pthread_mutex_t g_mutex; /* error-checking */
static int g_fork_locked;      /* the atfork prepare handler holds g_mutex */
static entry **g_buckets;
static size_t g_nbuckets, g_count;
static uint64_t g_version;
static int64_t g_offset; /* ns added to CLOCK_MONOTONIC: the table's clock */
static waiter *g_waiters;
static waiter *g_inherited; /* a forked child's: the parent's waiters, kept reachable, never touched */

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t) ts.tv_sec * NS + ts.tv_nsec;
}

static int mutex_setup(void) {
  pthread_mutexattr_t attr;
  int rc = pthread_mutexattr_init(&attr);
  if (rc != 0) return rc;
  rc = pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
  if (rc == 0) rc = pthread_mutex_init(&g_mutex, &attr);
  int rc2 = pthread_mutexattr_destroy(&attr);
  return rc != 0 ? rc : rc2;
}

static void fork_prepare(void) {
  if (g_broken) return;
  int rc = pthread_mutex_lock(&g_mutex);
  g_fork_locked = rc == 0;
  if (rc != 0) g_broken = rc;
}

static void fork_parent(void) {
  if (!g_fork_locked) return;
  g_fork_locked = 0;
  int rc = pthread_mutex_unlock(&g_mutex);
  if (rc != 0) g_broken = rc;
}

/* The child's only thread: the mutex is owned by a thread that is gone
 * (errorcheck would refuse our unlock), so it starts afresh. */
static void fork_child(void) {
  g_fork_locked = 0;
  if (g_waiters != NULL) { /* the parent's threads: never woken from here */
    waiter *last = g_waiters;
    while (last->next != NULL) last = last->next;
    last->next = g_inherited;
    g_inherited = g_waiters;
    g_waiters = NULL;
  }
  pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
  g_mutex = fresh;
  g_broken = mutex_setup();
}

static void table_init(void) {
  g_broken = mutex_setup();
  if (g_broken == 0) g_broken = pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static int table_lock(char *err, size_t errlen) {
  int rc = pthread_once(&g_once, table_init);
  if (rc == 0) rc = g_broken;
  if (rc == 0) rc = pthread_mutex_lock(&g_mutex);
  if (rc != 0) snprintf(err, errlen, "memory store: could not lock the lock table: %s", strerror(rc));
  return rc;
}

static int table_unlock(char *err, size_t errlen) {
  int rc = pthread_mutex_unlock(&g_mutex);
  if (rc != 0) snprintf(err, errlen, "memory store: could not unlock the lock table: %s", strerror(rc));
  return rc;
}

/* FNV-1a */
static uint64_t hash_key(mm_bytes key) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < key.len; i++) {
    h ^= (unsigned char) key.ptr[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

static int same_key(const entry *e, uint64_t h, mm_bytes key) {
  return e->hash == h && e->key_len == key.len && memcmp(e->key, key.ptr, key.len) == 0;
}

static int live(const entry *e, int64_t now) { return e->expires - g_offset > now || e->renewed_until > now; }

/* When the entry ends, on CLOCK_MONOTONIC, unless renewed (or advanced). */
static int64_t ends_at(const entry *e) {
  int64_t by_clock = e->expires - g_offset;
  return by_clock > e->renewed_until ? by_clock : e->renewed_until;
}

/* Under the mutex: the entry for key (alive or not) and the link that
 * points to it, or NULL. */
static entry *lookup(mm_bytes key, uint64_t h, entry ***link) {
  if (g_buckets == NULL) return NULL;
  entry **l = &g_buckets[h & (g_nbuckets - 1)];
  for (; *l != NULL; l = &(*l)->next) {
    if (same_key(*l, h, key)) {
      *link = l;
      return *l;
    }
  }
  return NULL;
}

static void unlink_entry(entry **link) {
  entry *e = *link;
  *link = e->next;
  free(e);
  g_count--;
}

/* Doubles the buckets; keeps the old ones when out of memory (longer chains). */
static void grow(void) {
  size_t n = g_nbuckets * 2;
  entry **b = calloc(n, sizeof *b);
  if (b == NULL) return;
  for (size_t i = 0; i < g_nbuckets; i++) {
    entry *e = g_buckets[i];
    while (e != NULL) {
      entry *next = e->next;
      e->next = b[e->hash & (n - 1)];
      b[e->hash & (n - 1)] = e;
      e = next;
    }
  }
  free(g_buckets);
  g_buckets = b;
  g_nbuckets = n;
}

/* Under the mutex: a new entry for key, linked in. NULL when out of memory. */
static entry *insert(mm_bytes key, uint64_t h) {
  if (g_buckets == NULL) {
    g_buckets = calloc(INITIAL_BUCKETS, sizeof *g_buckets);
    if (g_buckets == NULL) return NULL;
    g_nbuckets = INITIAL_BUCKETS;
  }
  entry *e = calloc(1, sizeof *e);
  if (e == NULL) return NULL;
  e->hash = h;
  memcpy(e->key, key.ptr, key.len);
  e->key_len = key.len;
  entry **head = &g_buckets[h & (g_nbuckets - 1)];
  e->next = *head;
  *head = e;
  if (++g_count > g_nbuckets) grow();
  return e;
}

static void signal_waiter(const waiter *w) {
  uint64_t one = 1;
  ssize_t n = write(w->fd, &one, sizeof one);
  (void) n; /* EAGAIN: already readable; the waiter wakes either way */
}

/* Under the mutex: wakes the waiters for key (all when key.ptr is NULL). */
static void wake(mm_bytes key, uint64_t h) {
  for (waiter *w = g_waiters; w != NULL; w = w->next) {
    if (key.ptr == NULL || (w->hash == h && w->key_len == key.len && memcmp(w->key, key.ptr, key.len) == 0))
      signal_waiter(w);
  }
}

static void free_entries(void) {
  for (size_t i = 0; i < g_nbuckets; i++) {
    entry *e = g_buckets[i];
    while (e != NULL) {
      entry *next = e->next;
      free(e);
      e = next;
    }
    g_buckets[i] = NULL;
  }
  g_count = 0;
}

/* ---- the store's operations ------------------------------------------- */

static void fill_holder(mm_holder *holder, const entry *e) {
  if (holder == NULL) return;
  memcpy(holder->token, e->token, e->token_len + 1);
  holder->token_len = e->token_len;
  holder->version = e->version;
  holder->witness = 0;
}

static double valid_until(int64_t end) { return (double) (end - VALID_MARGIN_NS) / (double) NS; }

/* The version a lease record of this store carries; 0 for NULL or another
 * store's record (then the release or refresh checks the token only). */
static uint64_t lease_version(const mm_lease_record *lease) {
  if (lease == NULL) return 0;
  lease_state st;
  memcpy(&st, lease->state, sizeof st);
  return st.magic == LEASE_MAGIC ? st.version : 0;
}

static mm_status fail(mm_store *s, const char *fmt, const char *what) {
  snprintf(s->error, sizeof s->error, fmt, what);
  return MM_ERR_SERVER;
}

/* Keys and tokens come checked from client.c; lengths are checked here
 * again because they size this file's copies. */
static mm_status check_args(mm_store *s, mm_bytes key, const mm_bytes *token, const uint32_t *ttl) {
  s->maybe_applied = 0;
  if (key.ptr == NULL || key.len < 1 || key.len > MM_KEY_MAX)
    return fail(s, "memory store: a key must be 1 to %s bytes", "250");
  if (token != NULL && (token->ptr == NULL || token->len < 1 || token->len > MM_TOKEN_MAX))
    return fail(s, "memory store: a token must be 1 to %s bytes", "200");
  if (ttl != NULL && (*ttl < 1 || *ttl > MM_MEMORY_MAX_TTL))
    return fail(s, "memory store: ttl must be 1 to %s seconds", "2592000");
  return MM_OK;
}

/* Ends a call that held the mutex: its status, or an error if the mutex
 * could not be given back (`changed`: the table was changed, so the
 * outcome must not read as "not done"). */
static mm_status finish(mm_store *s, mm_status st, int changed) {
  if (table_unlock(s->error, sizeof s->error) != 0) {
    s->maybe_applied = changed;
    return MM_ERR_SERVER;
  }
  return st;
}

/* Under the mutex: takes key if nobody holds it. MM_OK (lease filled),
 * MM_HELD (holder filled, *end = when the holder's lease ends) or
 * MM_ERR_SERVER (out of memory). */
static mm_status take_locked(mm_store *s, mm_bytes key, uint64_t h, mm_bytes token, uint32_t ttl,
                             mm_lease_record *lease, mm_holder *holder, int64_t *end) {
  int64_t now = mono_ns();
  entry **link;
  entry *e = lookup(key, h, &link);
  if (e != NULL && live(e, now)) {
    fill_holder(holder, e);
    if (end != NULL) *end = ends_at(e);
    return MM_HELD;
  }
  if (e == NULL && (e = insert(key, h)) == NULL) return fail(s, "memory store: out of memory %s", "taking a lock");
  e->version = ++g_version;
  memcpy(e->token, token.ptr, token.len);
  e->token[token.len] = '\0';
  e->token_len = token.len;
  e->expires = now + g_offset + (int64_t) ttl * NS;
  e->renewed_until = 0;
  e->renewals = 0;
  if (lease != NULL) {
    memset(lease, 0, sizeof *lease);
    lease_state st = {LEASE_MAGIC, e->version};
    memcpy(lease->state, &st, sizeof st);
    lease->valid_until = valid_until(now + (int64_t) ttl * NS);
    lease->fencing_token = 0;
  }
  return MM_OK;
}

static double mem_renew_after(const mm_store *s, uint32_t ttl) {
  (void) s;
  return ttl / 3.0;
}

static mm_status mem_try_take(mm_store *s, mm_bytes key, mm_bytes token, uint32_t ttl, mm_lease_record *lease,
                              mm_holder *holder) {
  mm_status st = check_args(s, key, &token, &ttl);
  if (st != MM_OK) return st;
  if (table_lock(s->error, sizeof s->error) != 0) return MM_ERR_SERVER;
  st = take_locked(s, key, hash_key(key), token, ttl, lease, holder, NULL);
  return finish(s, st, st == MM_OK);
}

/* The waker's flag (the truth about "stop"), or, with no flag, whether
 * cancel_fd is readable. */
static int cancel_requested(const mm_store *s) {
  if (s->cancelled != NULL) return __atomic_load_n(s->cancelled, __ATOMIC_SEQ_CST) != 0;
  if (s->cancel_fd < 0) return 0;
  struct pollfd p = {s->cancel_fd, POLLIN, 0};
  return poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
}

/* After ppoll found cancel_fd readable: stop, or a stale wake-up from the
 * waker (flag already reset) that is drained so the next ppoll sleeps. The
 * flag is read again after the drain: a real wake-up racing the drain has
 * set it by then. */
static int cancel_after_poll(const mm_store *s) {
  if (s->cancelled == NULL) return 1;
  if (__atomic_load_n(s->cancelled, __ATOMIC_SEQ_CST)) return 1;
  uint64_t drained;
  ssize_t n = read(s->cancel_fd, &drained, sizeof drained);
  (void) n; /* EAGAIN: someone else drained it */
  return __atomic_load_n(s->cancelled, __ATOMIC_SEQ_CST) != 0;
}

static mm_status mem_wait_take(mm_store *s, mm_bytes key, mm_bytes token, uint32_t ttl, double timeout,
                               mm_lease_record *lease, mm_holder *holder) {
  mm_status st = check_args(s, key, &token, &ttl);
  if (st != MM_OK) return st;
  if (isnan(timeout)) return fail(s, "memory store: %s", "the timeout is not a number");
  int64_t start = mono_ns();
  int64_t deadline = timeout < 0 || timeout > 1e9 ? FOREVER : start + (int64_t) (timeout * (double) NS);
  uint64_t h = hash_key(key);
  waiter *w = NULL;
  if (table_lock(s->error, sizeof s->error) != 0) return MM_ERR_SERVER;
  for (;;) {
    if (cancel_requested(s)) {
      st = MM_INTERRUPTED;
      break;
    }
    int64_t end = FOREVER;
    st = take_locked(s, key, h, token, ttl, lease, holder, &end);
    if (st != MM_HELD) break;
    int64_t now = mono_ns();
    if (now >= deadline) {
      st = MM_TIMEOUT;
      break;
    }
    if (w == NULL) { /* the first wait: made outside the mutex, then try again */
      if (table_unlock(s->error, sizeof s->error) != 0) return MM_ERR_SERVER;
      w = calloc(1, sizeof *w);
      int fd = w == NULL ? -1 : eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (fd < 0) {
        int err = w == NULL ? ENOMEM : errno;
        free(w);
        snprintf(s->error, sizeof s->error, "memory store: cannot wait for a lock: eventfd: %s", strerror(err));
        return MM_ERR_SERVER;
      }
      w->fd = fd;
      w->hash = h;
      w->key = key.ptr;
      w->key_len = key.len;
      if (table_lock(s->error, sizeof s->error) != 0) {
        close(w->fd);
        free(w);
        return MM_ERR_SERVER;
      }
      continue;
    }
    w->prev = NULL;
    w->next = g_waiters;
    if (g_waiters != NULL) g_waiters->prev = w;
    g_waiters = w;
    int unlock_rc = table_unlock(s->error, sizeof s->error);

    int64_t until = deadline < end ? deadline : end;
    int64_t left = until - mono_ns();
    if (left < 0) left = 0;
    struct timespec ts = {(time_t) (left / NS), (long) (left % NS)};
    struct pollfd pfd[2] = {{w->fd, POLLIN, 0}, {s->cancel_fd, POLLIN, 0}}; /* fd -1: ignored */
    int n = unlock_rc != 0 ? -1 : ppoll(pfd, 2, &ts, NULL);
    int poll_errno = errno;
    int stop = n > 0 && (pfd[1].revents & POLLIN) && cancel_after_poll(s);
    if (n > 0 && (pfd[0].revents & POLLIN)) {
      uint64_t drained;
      ssize_t r = read(w->fd, &drained, sizeof drained);
      (void) r; /* woken: the count does not matter */
    }

    if (table_lock(s->error, sizeof s->error) != 0) return MM_ERR_SERVER; /* w stays listed (leaked): valid memory */
    if (w->prev != NULL) w->prev->next = w->next;
    else g_waiters = w->next;
    if (w->next != NULL) w->next->prev = w->prev;
    if (unlock_rc != 0) {
      st = MM_ERR_SERVER;
      break;
    }
    if (n < 0 && poll_errno != EINTR) {
      snprintf(s->error, sizeof s->error, "memory store: waiting for a lock: ppoll: %s", strerror(poll_errno));
      st = MM_ERR_SERVER;
      break;
    }
    if (stop) {
      st = MM_INTERRUPTED;
      break;
    }
  }
  st = finish(s, st, st == MM_OK);
  if (w != NULL) {
    close(w->fd);
    free(w);
  }
  return st;
}

static mm_status mem_release(mm_store *s, mm_bytes key, mm_bytes token, const mm_lease_record *lease, int unknown) {
  mm_status st = check_args(s, key, &token, NULL);
  if (st != MM_OK) return st;
  if (table_lock(s->error, sizeof s->error) != 0) return MM_ERR_SERVER;
  uint64_t h = hash_key(key), version = lease_version(lease);
  int64_t now = mono_ns();
  entry **link;
  entry *e = lookup(key, h, &link);
  int changed = 0;
  if (e == NULL || !live(e, now)) {
    if (e != NULL) unlink_entry(link);
    st = unknown ? MM_OK : MM_ABSENT;
  } else if (e->token_len != token.len || memcmp(e->token, token.ptr, token.len) != 0 ||
             (version != 0 && e->version != version)) {
    st = MM_HELD; /* someone else's (or a later take of the same token) */
  } else {
    unlink_entry(link);
    wake(key, h);
    st = MM_OK;
    changed = 1;
  }
  return finish(s, st, changed);
}

static mm_status mem_refresh(mm_store *s, mm_bytes key, mm_bytes token, uint32_t ttl, mm_lease_record *lease) {
  mm_status st = check_args(s, key, &token, &ttl);
  if (st != MM_OK) return st;
  if (table_lock(s->error, sizeof s->error) != 0) return MM_ERR_SERVER;
  uint64_t h = hash_key(key), version = lease_version(lease);
  int64_t now = mono_ns();
  entry **link;
  entry *e = lookup(key, h, &link);
  int changed = 0;
  if (e == NULL || !live(e, now)) {
    if (e != NULL) unlink_entry(link);
    st = MM_ABSENT;
  } else if (e->token_len != token.len || memcmp(e->token, token.ptr, token.len) != 0 ||
             (version != 0 && e->version != version)) {
    st = MM_HELD;
  } else {
    int64_t end = now + (int64_t) ttl * NS;
    e->expires = end + g_offset;
    e->renewed_until = end; /* being renewed: advance does not end it (see the top of this file) */
    e->renewals++;
    if (lease != NULL) lease->valid_until = valid_until(end);
    st = MM_OK;
    changed = 1;
  }
  return finish(s, st, changed);
}

static mm_status mem_read(mm_store *s, mm_bytes key, mm_holder *holder) {
  mm_status st = check_args(s, key, NULL, NULL);
  if (st != MM_OK) return st;
  if (table_lock(s->error, sizeof s->error) != 0) return MM_ERR_SERVER;
  entry **link;
  entry *e = lookup(key, hash_key(key), &link);
  if (e != NULL && live(e, mono_ns())) {
    fill_holder(holder, e);
    st = MM_OK;
  } else {
    if (e != NULL) unlink_entry(link);
    st = MM_ABSENT;
  }
  return finish(s, st, 0);
}

static mm_status mem_describe(mm_store *s, mm_bytes key, mm_description *out) {
  memset(out, 0, sizeof *out);
  snprintf(out->where, sizeof out->where, "memory");
  out->lease_left = -2;
  mm_status st = check_args(s, key, NULL, NULL);
  if (st != MM_OK) return st;
  if (table_lock(s->error, sizeof s->error) != 0) return MM_ERR_SERVER;
  int64_t now = mono_ns();
  entry **link;
  entry *e = lookup(key, hash_key(key), &link);
  if (e != NULL && live(e, now)) {
    fill_holder(&out->holder, e);
    out->lease_left = (double) (ends_at(e) - now) / (double) NS;
  } else if (e != NULL) {
    unlink_entry(link);
  }
  return finish(s, MM_OK, 0);
}

static mm_status mem_force_release(mm_store *s, mm_bytes key) {
  mm_status st = check_args(s, key, NULL, NULL);
  if (st != MM_OK) return st;
  if (table_lock(s->error, sizeof s->error) != 0) return MM_ERR_SERVER;
  uint64_t h = hash_key(key);
  entry **link;
  entry *e = lookup(key, h, &link);
  int was_live = e != NULL && live(e, mono_ns());
  if (e != NULL) unlink_entry(link);
  if (was_live) wake(key, h);
  return finish(s, was_live ? MM_OK : MM_ABSENT, was_live);
}

static mm_status mem_locate(mm_store *s, mm_bytes key, char *host, size_t hostlen, unsigned *port) {
  (void) s;
  (void) key;
  snprintf(host, hostlen, "memory");
  *port = 0;
  return MM_OK;
}

/* The table outlives its stores. */
static void mem_destroy(mm_store *s) { free(s); }

static const mm_store_ops memory_ops = {
    .name = "memory",
    .kind = MM_KIND_LEASE,
    .caps = MM_CAP_WAIT,
    .max_ttl = MM_MEMORY_MAX_TTL,
    .renew_after = mem_renew_after,
    .try_take = mem_try_take,
    .wait_take = mem_wait_take,
    .release = mem_release,
    .refresh = mem_refresh,
    .read = mem_read,
    .describe = mem_describe,
    .force_release = mem_force_release,
    .locate = mem_locate,
    .destroy = mem_destroy,
    .abandon = mem_destroy, /* nothing shared with a parent: no socket */
};

mm_store *mm_memory_store_new(char *errbuf, size_t errlen) {
  int rc = pthread_once(&g_once, table_init);
  if (rc == 0) rc = g_broken;
  if (rc != 0) {
    snprintf(errbuf, errlen, "memory store: could not set up the lock table: %s", strerror(rc));
    return NULL;
  }
  memory_store *m = calloc(1, sizeof *m);
  if (m == NULL) {
    snprintf(errbuf, errlen, "memory store: out of memory");
    return NULL;
  }
  m->base.ops = &memory_ops;
  m->base.cancel_fd = -1;
  m->base.cancelled = NULL;
  return &m->base;
}

/* ---- table operations (memory_glue.c) ------------------------------- */

int mm_memory_table_reset(char *errbuf, size_t errlen) {
  int rc = table_lock(errbuf, errlen);
  if (rc != 0) return rc;
  free_entries();
  g_offset = 0;
  mm_bytes all = {NULL, 0};
  wake(all, 0);
  return table_unlock(errbuf, errlen);
}

int mm_memory_table_advance(double seconds, char *errbuf, size_t errlen) {
  if (!isfinite(seconds) || seconds < 0) {
    snprintf(errbuf, errlen, "advance takes a non-negative number of seconds (got %g)", seconds);
    return EINVAL;
  }
  int rc = table_lock(errbuf, errlen);
  if (rc != 0) return rc;
  if ((double) g_offset / (double) NS + seconds > MM_MEMORY_MAX_OFFSET) {
    snprintf(errbuf, errlen, "advance moves the lease clock at most %.0f seconds (100 years) in all since the "
             "last reset! (got %g more)", MM_MEMORY_MAX_OFFSET, seconds);
    rc = EINVAL;
  } else {
    g_offset += (int64_t) llround(seconds * (double) NS);
    mm_bytes all = {NULL, 0};
    wake(all, 0);
  }
  int rc2 = table_unlock(errbuf, errlen);
  return rc != 0 ? rc : rc2;
}

int mm_memory_table_snapshot(mm_memory_lock **out, size_t *count, char *errbuf, size_t errlen) {
  *out = NULL;
  *count = 0;
  int rc = table_lock(errbuf, errlen);
  if (rc != 0) return rc;
  int64_t now = mono_ns();
  for (size_t i = 0; i < g_nbuckets; i++) { /* drop the ended ones first: count the live */
    entry **link = &g_buckets[i];
    while (*link != NULL) {
      if (live(*link, now)) link = &(*link)->next;
      else unlink_entry(link);
    }
  }
  mm_memory_lock *locks = NULL;
  if (g_count > 0 && (locks = calloc(g_count, sizeof *locks)) == NULL) {
    snprintf(errbuf, errlen, "memory store: out of memory listing the locks");
    rc = ENOMEM;
  }
  size_t n = 0;
  for (size_t i = 0; locks != NULL && i < g_nbuckets; i++) {
    for (entry *e = g_buckets[i]; e != NULL; e = e->next) {
      mm_memory_lock *l = &locks[n++];
      memcpy(l->key, e->key, e->key_len + 1);
      l->key_len = e->key_len;
      memcpy(l->token, e->token, e->token_len + 1);
      l->token_len = e->token_len;
      l->seconds_left = (double) (ends_at(e) - now) / (double) NS;
      l->renewals = e->renewals;
    }
  }
  int rc2 = table_unlock(errbuf, errlen);
  if (rc == 0 && rc2 != 0) rc = rc2;
  if (rc != 0) {
    free(locks);
    return rc;
  }
  *out = locks;
  *count = n;
  return 0;
}
