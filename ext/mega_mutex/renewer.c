/*
 * renewer.c - lanes of C threads that keep leases alive (see renewer.h).
 *
 * Each lane owns a list of leases, a mutex and a condition variable, and a
 * store connected to its one server (or the memory store's table: the
 * :memory backend's leases are kept here too, so that a Ruby thread hogging
 * the GVL cannot starve them either). Its thread sleeps until the next lease
 * is due, takes the due ones out of the lock, extends them one after another
 * (the server's I/O timeout bounds each), and records each outcome. The
 * mutex is never held across I/O, so Ruby threads stopping or reading a
 * lease never wait on a server.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "lock.h"
#include "pid.h"
#include "renewer.h"
#include "store_memory.h"

#define RETRY_SECONDS 0.2 /* after a renewal that failed with an error */
#define LANE_HOST_MAX 1024

enum lease_state { LEASE_ACTIVE, LEASE_STOPPED, LEASE_LOST };


struct mm_lease {
  int refs; /* __atomic */
  pid_t pid;
  uint64_t id;
  mm_lane *lane;
  char *key, *token;
  size_t key_len, token_len;
  unsigned ttl;
  /* guarded by lane->mutex */
  enum lease_state state;
  double next_due;
  double valid_until;
  char reason[MM_REASON_MAX];
};

struct mm_lane {
  mm_lane *next;
  char host[LANE_HOST_MAX];
  unsigned port;
  int connect_timeout_ms, io_timeout_ms;
  int memory;  /* the memory store's lane (store_memory.c) */
  int adopted; /* its store was handed over (mm_lane_adopt): never found by lane_for */
  pid_t pid;   /* the process it runs in */
  pthread_mutex_t mutex;
  pthread_cond_t wakeup;
  mm_lease **leases;
  size_t count, capacity;
  double wake_at;  /* when the sleeping thread wakes by itself (INFINITY: only if signalled; 0: awake) */
  mm_lease **work[3]; /* the lane thread's: due, lost, dropped (here, not on its stack, so that a
                         forked child, which has no such thread, still reaches them) */
  size_t work_cap;
  mm_store *store; /* the lane thread's alone */
};

typedef struct loss {
  struct loss *next;
  uint64_t id;
  char reason[MM_REASON_MAX];
} loss;

static pthread_mutex_t g_mutex = PTHREAD_MUTEX_INITIALIZER;
static pid_t g_pid;              /* the process g_lanes belong to */
static mm_lane *g_lanes;         /* guarded by g_mutex */
static mm_lane *g_inherited;     /* a parent's lanes: kept reachable, never touched */
static loss *g_loss_head, *g_loss_tail;
static int g_loss_fd = -1;
static uint64_t g_next_id; /* __atomic */

static const char *RAN_OUT = "its lease ran out before a renewal got through (the server did not answer in time): "
                             "another process may have taken it";
static const char *NOT_FOUND = "its lease was not found when renewing (expired, evicted, flushed or server restarted)";

/* ---- process-wide state ---------------------------------------------- */

/* Under g_mutex, or in a child before anyone else can use it: a forked child
 * leaves its parent's lanes and losses alone (their threads do not exist
 * here, their mutexes may be held) and starts empty. */
static void forget_parent(void) {
  pid_t pid = mm_getpid();
  if (g_pid == pid) return;
  if (g_lanes != NULL) {
    mm_lane *last = g_lanes;
    while (last->next != NULL) last = last->next;
    last->next = g_inherited;
    g_inherited = g_lanes;
  }
  g_lanes = NULL;
  g_loss_head = g_loss_tail = NULL; /* the parent's to report, not ours (leaked) */
  if (g_loss_fd >= 0) close(g_loss_fd); /* our copy: the parent's stays open */
  g_loss_fd = -1;
  g_pid = pid;
}

static void global_lock(void) {
  if (g_pid != 0 && g_pid != mm_getpid()) {
    /* A child: the mutex may have been copied while held by a thread that
     * does not exist here. */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    g_mutex = fresh;
  }
  pthread_mutex_lock(&g_mutex);
  forget_parent();
}

static void global_unlock(void) { pthread_mutex_unlock(&g_mutex); }

static void queue_loss(const mm_lease *lease) {
  loss *item = calloc(1, sizeof *item);
  if (item == NULL) return; /* out of memory: the holder still sees lost? */
  item->id = lease->id;
  snprintf(item->reason, sizeof item->reason, "%s", lease->reason);
  global_lock();
  int owned = lease->pid == g_pid;
  if (owned) {
    if (g_loss_tail != NULL) g_loss_tail->next = item;
    else g_loss_head = item;
    g_loss_tail = item;
  }
  int fd = g_loss_fd;
  global_unlock();
  if (!owned) {
    free(item);
    return;
  }
  if (fd >= 0) {
    uint64_t one = 1;
    ssize_t n = write(fd, &one, sizeof one);
    (void) n; /* EAGAIN: already readable */
  }
}

int mm_renewer_loss_fd(void) {
  global_lock();
  if (g_loss_fd < 0) g_loss_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  int fd = g_loss_fd;
  global_unlock();
  return fd;
}

int mm_renewer_next_loss(uint64_t *id, char *reason, size_t len) {
  global_lock();
  loss *item = g_loss_head;
  if (item != NULL) {
    g_loss_head = item->next;
    if (g_loss_head == NULL) g_loss_tail = NULL;
  } else if (g_loss_fd >= 0) {
    uint64_t drained;
    while (read(g_loss_fd, &drained, sizeof drained) > 0) {
    }
  }
  global_unlock();
  if (item == NULL) return 0;
  *id = item->id;
  snprintf(reason, len, "%s", item->reason);
  free(item);
  return 1;
}


/* ---- leases -------------------------------------------------------------- */

static void lease_ref(mm_lease *lease) { __atomic_add_fetch(&lease->refs, 1, __ATOMIC_RELAXED); }

void mm_lease_unref(mm_lease *lease) {
  if (lease == NULL || __atomic_sub_fetch(&lease->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
  free(lease->key);
  free(lease->token);
  free(lease);
}

uint64_t mm_lease_id(const mm_lease *lease) { return lease->id; }

/* Under lane->mutex: marks it lost (once) and reports 1 if the caller must
 * queue the loss. */
static int lease_lose(mm_lease *lease, const char *reason) {
  if (lease->state != LEASE_ACTIVE) return 0;
  lease->state = LEASE_LOST;
  snprintf(lease->reason, sizeof lease->reason, "%s", reason);
  return 1;
}

void mm_lease_stop(mm_lease *lease) {
  if (lease->pid != mm_getpid()) return; /* a parent's: not ours to touch */
  mm_lane *lane = lease->lane;
  pthread_mutex_lock(&lane->mutex);
  if (lease->state == LEASE_ACTIVE) lease->state = LEASE_STOPPED;
  pthread_mutex_unlock(&lane->mutex);
}

int mm_lease_lost(mm_lease *lease, char *reason, size_t len) {
  if (lease->pid != mm_getpid()) return 0; /* a parent's lease is not the child's concern */
  mm_lane *lane = lease->lane;
  pthread_mutex_lock(&lane->mutex);
  int queue = 0;
  if (lease->state == LEASE_ACTIVE && mm_monotonic() >= lease->valid_until) queue = lease_lose(lease, RAN_OUT);
  int lost = lease->state == LEASE_LOST;
  if (lost) snprintf(reason, len, "%s", lease->reason);
  pthread_mutex_unlock(&lane->mutex);
  if (queue) queue_loss(lease);
  return lost;
}


/* ---- lanes ----------------------------------------------------------------- */

static void timespec_at(double t, struct timespec *ts) {
  ts->tv_sec = (time_t) t;
  ts->tv_nsec = (long) ((t - (double) ts->tv_sec) * 1e9);
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec += 1;
    ts->tv_nsec -= 1000000000L;
  }
}

/* Under lane->mutex: drops the lease at index i (the lane's reference goes
 * to *dropped for the caller to release outside the lock). */
static void lane_remove_at(mm_lane *lane, size_t i, mm_lease **dropped, size_t *ndropped) {
  dropped[(*ndropped)++] = lane->leases[i];
  lane->leases[i] = lane->leases[--lane->count];
}

/* Renews one lease over the lane's connection (the store's refresh, by its
 * own lease rules); records the outcome. */
static void lane_renew(mm_lane *lane, mm_lease *lease) {
  mm_lease_record record;
  memset(&record, 0, sizeof record);
  mm_bytes key = {lease->key, lease->key_len}, token = {lease->token, lease->token_len};
  mm_status st = lane->store->ops->refresh(lane->store, key, token, lease->ttl, &record);
  pthread_mutex_lock(&lane->mutex);
  int queue = 0;
  if (lease->state == LEASE_ACTIVE) {
    if (st == MM_OK) {
      lease->valid_until = record.valid_until;
      lease->next_due = mm_monotonic() + lane->store->ops->renew_after(lane->store, lease->ttl);
    } else if (st == MM_HELD || st == MM_ABSENT) {
      queue = lease_lose(lease, NOT_FOUND);
    } else {
      lease->next_due = mm_monotonic() + RETRY_SECONDS; /* the server failed: try again soon */
    }
  }
  pthread_mutex_unlock(&lane->mutex);
  if (queue) queue_loss(lease);
}

/* Grows the lane thread's work arrays to the lane's capacity; 0 when out of memory. */
static int grow_arrays(mm_lease ***arrays, size_t narrays, size_t *cap, size_t want) {
  if (*cap >= want) return 1;
  for (size_t i = 0; i < narrays; i++) {
    mm_lease **grown = realloc(arrays[i], want * sizeof *grown);
    if (grown == NULL) return 0;
    arrays[i] = grown;
  }
  *cap = want;
  return 1;
}

static void *lane_main(void *arg) {
  mm_lane *lane = arg;
  pthread_setname_np(pthread_self(), "mm renewer"); /* as `ps -L` and /proc show it */
  mm_lease ***arrays = lane->work;
  pthread_mutex_lock(&lane->mutex);
  for (;;) {
    double now = mm_monotonic();
    if (!grow_arrays(arrays, 3, &lane->work_cap, lane->capacity)) { /* out of memory: look again shortly */
      struct timespec ts;
      timespec_at(now + RETRY_SECONDS, &ts);
      pthread_cond_timedwait(&lane->wakeup, &lane->mutex, &ts);
      continue;
    }
    mm_lease **due = arrays[0], **lost = arrays[1], **dropped = arrays[2];
    size_t ndue = 0, nlost = 0, ndropped = 0;
    double next = INFINITY;
    for (size_t i = lane->count; i-- > 0;) {
      mm_lease *lease = lane->leases[i];
      if (lease->state == LEASE_ACTIVE && now >= lease->valid_until && lease_lose(lease, RAN_OUT)) {
        lease_ref(lease);
        lost[nlost++] = lease;
      }
      if (lease->state != LEASE_ACTIVE) {
        lane_remove_at(lane, i, dropped, &ndropped);
      } else if (lease->next_due <= now) {
        lease_ref(lease);
        due[ndue++] = lease;
      } else {
        next = fmin(next, fmin(lease->next_due, lease->valid_until));
      }
    }
    if (ndue == 0 && nlost == 0 && ndropped == 0) {
      lane->wake_at = next;
      if (isinf(next)) {
        pthread_cond_wait(&lane->wakeup, &lane->mutex);
      } else {
        struct timespec ts;
        timespec_at(next, &ts);
        pthread_cond_timedwait(&lane->wakeup, &lane->mutex, &ts);
      }
      lane->wake_at = 0; /* awake: a new lease needs no signal, the loop looks again */
      continue;
    }
    lane->wake_at = 0;
    pthread_mutex_unlock(&lane->mutex);
    for (size_t i = 0; i < ndropped; i++) mm_lease_unref(dropped[i]);
    for (size_t i = 0; i < nlost; i++) {
      queue_loss(lost[i]);
      mm_lease_unref(lost[i]);
    }
    for (size_t i = 0; i < ndue; i++) {
      lane_renew(lane, due[i]);
      mm_lease_unref(due[i]);
    }
    pthread_mutex_lock(&lane->mutex);
  }
  return NULL; /* not reached: a lane lives as long as its process */
}

/* Under g_mutex: starts a new lane's thread (its store set) and links it
 * in. 0; or -1 with err filled, the lane and its store freed. */
static int lane_run(mm_lane *lane, char *err, size_t errlen) {
  pthread_condattr_t cattr;
  int rc = pthread_condattr_init(&cattr);
  if (rc == 0) rc = pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
  if (rc == 0) rc = pthread_cond_init(&lane->wakeup, &cattr);
  if (rc == 0) rc = pthread_mutex_init(&lane->mutex, NULL);
  pthread_condattr_destroy(&cattr);
  pthread_attr_t attr;
  if (rc == 0) rc = pthread_attr_init(&attr);
  if (rc == 0) {
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* Signals are Ruby's business, on Ruby's threads: none here. */
    sigset_t all, saved;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &saved);
    pthread_t thread;
    rc = pthread_create(&thread, &attr, lane_main, lane);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    pthread_attr_destroy(&attr);
  }
  if (rc != 0) {
    snprintf(err, errlen, "could not start a renewer thread: %s", strerror(rc));
    lane->store->ops->destroy(lane->store);
    free(lane); /* its mutex and condvar hold nothing on Linux */
    return -1;
  }
  lane->pid = g_pid;
  lane->next = g_lanes;
  g_lanes = lane;
  return 0;
}

/* Under g_mutex: the lane for `spec`, made and started if new. */
static mm_lane *lane_for(const mm_lane_spec *spec, char *err, size_t errlen) {
  for (mm_lane *l = g_lanes; l != NULL; l = l->next) {
    if (l->adopted) continue;
    if (l->memory != 0 || spec->memory != 0) {
      if (l->memory != 0 && spec->memory != 0) return l;
      continue;
    }
    if (l->port == spec->port && l->connect_timeout_ms == spec->connect_timeout_ms &&
        l->io_timeout_ms == spec->io_timeout_ms && strcmp(l->host, spec->host) == 0)
      return l;
  }
  if (strlen(spec->host) >= LANE_HOST_MAX) {
    snprintf(err, errlen, "server name too long for the renewer: %.60s...", spec->host);
    return NULL;
  }
  mm_lane *lane = calloc(1, sizeof *lane);
  if (lane == NULL) {
    snprintf(err, errlen, "out of memory starting a renewer lane");
    return NULL;
  }
  snprintf(lane->host, sizeof lane->host, "%s", spec->memory ? "memory" : spec->host);
  lane->port = spec->port;
  lane->connect_timeout_ms = spec->connect_timeout_ms;
  lane->io_timeout_ms = spec->io_timeout_ms;
  lane->memory = spec->memory != 0;
  if (lane->memory) {
    /* The memory store's table: a refresh there never waits. */
    lane->store = mm_memory_store_new(err, errlen);
  } else {
    /* Its own connection to its one server (made here, opened on first use).
     * Retry 0: a failed connection is tried again at the next renewal, which
     * RETRY_SECONDS paces. */
    mm_server_addr addr = {lane->host, lane->port};
    mm_memcached_options opts = {&addr, 1, lane->connect_timeout_ms, lane->io_timeout_ms, 0};
    lane->store = mm_memcached_store_new(&opts, err, errlen);
  }
  if (lane->store == NULL) {
    free(lane);
    return NULL;
  }
  if (lane_run(lane, err, errlen) != 0) return NULL;
  return lane;
}

/* A new lease in the lane for `spec`, or (spec NULL) in `in_lane`. */
static mm_lease *lease_start(const mm_lane_spec *spec, mm_lane *in_lane, mm_bytes key, mm_bytes token, unsigned ttl,
                             double valid_until, char *err, size_t errlen) {
  mm_lease *lease = calloc(1, sizeof *lease);
  if (lease != NULL) {
    lease->key = malloc(key.len + 1);
    lease->token = malloc(token.len + 1);
  }
  if (lease == NULL || lease->key == NULL || lease->token == NULL) {
    if (lease != NULL) {
      free(lease->key);
      free(lease->token);
      free(lease);
    }
    snprintf(err, errlen, "out of memory recording a lease");
    return NULL;
  }
  memcpy(lease->key, key.ptr, key.len);
  lease->key[key.len] = '\0';
  lease->key_len = key.len;
  memcpy(lease->token, token.ptr, token.len);
  lease->token[token.len] = '\0';
  lease->token_len = token.len;
  lease->ttl = ttl;
  lease->valid_until = valid_until;
  lease->state = LEASE_ACTIVE;
  lease->refs = 2; /* the caller's and the lane's */
  lease->id = __atomic_add_fetch(&g_next_id, 1, __ATOMIC_RELAXED);

  global_lock();
  lease->pid = g_pid;
  mm_lane *lane = spec != NULL ? lane_for(spec, err, errlen) : in_lane;
  if (lane != NULL && lane->pid != g_pid) {
    snprintf(err, errlen, "a renewer lane of another process");
    lane = NULL;
  }
  global_unlock();
  if (lane == NULL) {
    mm_lease_unref(lease);
    mm_lease_unref(lease);
    return NULL;
  }
  lease->lane = lane;
  /* A third of the way through the lease as taken (valid_until - ttl): at
   * once if the taker waited that long for the GVL before getting here. */
  double renew_after = lane->store->ops->renew_after(lane->store, ttl);
  lease->next_due = fmin(mm_monotonic() + renew_after, valid_until - (double) ttl + renew_after);
  pthread_mutex_lock(&lane->mutex);
  int ok = 1;
  if (lane->count == lane->capacity) {
    size_t cap = lane->capacity ? lane->capacity * 2 : 16;
    mm_lease **grown = realloc(lane->leases, cap * sizeof *grown);
    if (grown == NULL) ok = 0;
    else {
      lane->leases = grown;
      lane->capacity = cap;
    }
  }
  if (ok) {
    lane->leases[lane->count++] = lease;
    /* A signal (a thread switch) only when the lane would sleep past this
     * lease's first renewal. */
    if (lane->wake_at > lease->next_due) pthread_cond_signal(&lane->wakeup);
  }
  pthread_mutex_unlock(&lane->mutex);
  if (!ok) {
    snprintf(err, errlen, "out of memory recording a lease");
    mm_lease_unref(lease);
    mm_lease_unref(lease);
    return NULL;
  }
  return lease;
}

mm_lease *mm_lease_start(const mm_lane_spec *spec, mm_bytes key, mm_bytes token, unsigned ttl,
                         double valid_until, char *err, size_t errlen) {
  return lease_start(spec, NULL, key, token, ttl, valid_until, err, errlen);
}

mm_lease *mm_lease_start_in(mm_lane *lane, mm_bytes key, mm_bytes token, unsigned ttl, double valid_until,
                            char *err, size_t errlen) {
  return lease_start(NULL, lane, key, token, ttl, valid_until, err, errlen);
}

mm_lane *mm_lane_adopt(mm_store *store, const char *label, char *err, size_t errlen) {
  mm_lane *lane = calloc(1, sizeof *lane);
  if (lane == NULL) {
    snprintf(err, errlen, "out of memory starting a renewer lane");
    store->ops->destroy(store);
    return NULL;
  }
  snprintf(lane->host, sizeof lane->host, "%s", label);
  lane->adopted = 1;
  store->cancel_fd = -1; /* a lane's requests are never cut short */
  store->cancelled = NULL;
  lane->store = store;
  global_lock();
  int rc = lane_run(lane, err, errlen);
  global_unlock();
  return rc == 0 ? lane : NULL;
}
