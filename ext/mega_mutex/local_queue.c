/*
 * local_queue.c - the process-wide table of keys that threads of this
 * process wait for (see local_queue.h).
 *
 * A key's entry: who asks the server now (one thread at most) and the
 * threads queued behind it, first come first served. The asker polls the
 * store as lock.c always does; when it is done - taken, timed out,
 * interrupted, failed - it makes the first queued thread the asker and
 * writes that thread's eventfd. A queued thread sleeps in ppoll on its
 * eventfd and on its client's waker, so Thread#raise, Timeout and Ctrl-C end
 * its wait at once, as they end a backoff sleep.
 *
 * Nothing here talks to a server or grants anything: a thread that leaves
 * the queue with the turn still has to take the lock from the store.
 */
#define _GNU_SOURCE /* ppoll */
#include "local_queue.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define LQ_BUCKETS 64
#define LQ_SCOPE_MAX (MM_KEY_MAX + 1100) /* server (host:port) + key */

struct mm_lq_entry {
  struct mm_lq_entry *next; /* hash chain */
  const mm_store_ops *ops;
  size_t scope_len;
  unsigned long users; /* the asker and the queued: freed at 0 */
  int asking;          /* a thread of this process asks the server now */
  mm_lq_waiter *head, *tail;
  char scope[];
};

static pthread_mutex_t lq_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t lq_once = PTHREAD_ONCE_INIT;
static mm_lq_entry *lq_buckets[LQ_BUCKETS];
static size_t lq_entries; /* read without the mutex by mm_lq_busy (atomics) */

static void lq_prepare(void) { pthread_mutex_lock(&lq_mutex); }
static void lq_parent(void) { pthread_mutex_unlock(&lq_mutex); }

/* A forked child has only the thread that forked: the parent's askers and
 * queued threads do not exist here. Their entries go (their eventfds are
 * the child's copies: closing them leaves the parent's alone). */
static void lq_child(void) {
  for (size_t b = 0; b < LQ_BUCKETS; b++) {
    mm_lq_entry *e = lq_buckets[b];
    while (e != NULL) {
      mm_lq_entry *next = e->next;
      for (mm_lq_waiter *w = e->head; w != NULL; w = w->next)
        if (w->fd >= 0) close(w->fd);
      free(e);
      e = next;
    }
    lq_buckets[b] = NULL;
  }
  __atomic_store_n(&lq_entries, 0, __ATOMIC_SEQ_CST);
  pthread_mutex_unlock(&lq_mutex); /* taken by lq_prepare in this very thread */
}

static void lq_init(void) { pthread_atfork(lq_prepare, lq_parent, lq_child); }

/* FNV-1a */
static size_t lq_hash(const mm_store_ops *ops, const char *p, size_t n) {
  uint64_t h = 1469598103934665603ULL ^ (uint64_t) (uintptr_t) ops;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char) p[i];
    h *= 1099511628211ULL;
  }
  return (size_t) (h % LQ_BUCKETS);
}

/* "server\0key": the scope of a key's queue. 0 when the store cannot say
 * where the key lives. */
static size_t lq_scope(mm_store *store, mm_bytes key, char *out) {
  if (store->ops->locate == NULL || key.len > MM_KEY_MAX) return 0;
  char host[1024];
  unsigned port = 0;
  if (store->ops->locate(store, key, host, sizeof host, &port) != MM_OK) return 0;
  int n = snprintf(out, LQ_SCOPE_MAX, "%s:%u", host, port);
  if (n < 0 || (size_t) n + 1 + key.len > LQ_SCOPE_MAX) return 0;
  out[n] = '\0';
  memcpy(out + n + 1, key.ptr, key.len);
  return (size_t) n + 1 + key.len;
}

static mm_lq_entry **lq_find(const mm_store_ops *ops, const char *scope, size_t len) {
  mm_lq_entry **p = &lq_buckets[lq_hash(ops, scope, len)];
  while (*p != NULL && !((*p)->ops == ops && (*p)->scope_len == len && memcmp((*p)->scope, scope, len) == 0))
    p = &(*p)->next;
  return p;
}

int mm_lq_busy(mm_store *store, mm_bytes key) {
  if (__atomic_load_n(&lq_entries, __ATOMIC_ACQUIRE) == 0) return 0;
  char scope[LQ_SCOPE_MAX];
  size_t len = lq_scope(store, key, scope);
  if (len == 0) return 0;
  pthread_mutex_lock(&lq_mutex);
  mm_lq_entry *e = *lq_find(store->ops, scope, len);
  int busy = e != NULL && e->asking;
  pthread_mutex_unlock(&lq_mutex);
  return busy;
}

int mm_lq_enter(mm_store *store, mm_bytes key, mm_lq_waiter *w) {
  w->next = NULL;
  w->fd = -1;
  w->is_asker = 0;
  w->entry = NULL;
  char scope[LQ_SCOPE_MAX];
  size_t len = lq_scope(store, key, scope);
  if (len == 0) return 0;
  pthread_once(&lq_once, lq_init);
  /* Made before the mutex is taken; closed at once if this thread asks. */
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return 0;

  pthread_mutex_lock(&lq_mutex);
  mm_lq_entry **p = lq_find(store->ops, scope, len);
  mm_lq_entry *e = *p;
  if (e == NULL) {
    e = malloc(sizeof *e + len);
    if (e == NULL) {
      pthread_mutex_unlock(&lq_mutex);
      close(fd);
      return 0;
    }
    memset(e, 0, sizeof *e);
    e->ops = store->ops;
    e->scope_len = len;
    memcpy(e->scope, scope, len);
    *p = e;
    __atomic_add_fetch(&lq_entries, 1, __ATOMIC_RELEASE);
  }
  e->users++;
  w->entry = e;
  if (!e->asking) {
    e->asking = 1;
    w->is_asker = 1;
  } else {
    w->fd = fd;
    fd = -1;
    if (e->tail) e->tail->next = w;
    else e->head = w;
    e->tail = w;
  }
  pthread_mutex_unlock(&lq_mutex);
  if (fd >= 0) close(fd);
  return 1;
}

static int lq_is_asker(mm_lq_waiter *w) {
  pthread_mutex_lock(&lq_mutex);
  int yes = w->is_asker;
  pthread_mutex_unlock(&lq_mutex);
  return yes;
}

int mm_lq_wait(mm_lq_waiter *w, mm_waker *waker, double deadline) {
  struct pollfd pfd[2] = {{waker->fd, POLLIN, 0}, {w->fd, POLLIN, 0}};
  for (;;) {
    if (__atomic_load_n(&waker->interrupted, __ATOMIC_SEQ_CST)) return -1;
    if (lq_is_asker(w)) return 1;
    double left = deadline - mm_monotonic();
    if (left <= 0) return 0;
    struct timespec ts, *tsp = NULL;
    if (isfinite(left)) {
      ts.tv_sec = (time_t) left;
      ts.tv_nsec = (long) ((left - (double) ts.tv_sec) * 1e9);
      tsp = &ts;
    }
    int n = ppoll(pfd, 2, tsp, NULL);
    if (n < 0 && errno != EINTR) return -1; /* cannot wait: end as an interrupt would, leaving nothing */
    if (n > 0 && (pfd[1].revents & POLLIN)) {
      uint64_t drained;
      ssize_t r = read(w->fd, &drained, sizeof drained);
      (void) r; /* EAGAIN: a nudge already drained; the flag is the truth */
    }
  }
}

void mm_lq_leave(mm_lq_waiter *w) {
  mm_lq_entry *e = w->entry;
  if (e == NULL) return;
  pthread_mutex_lock(&lq_mutex);
  if (w->is_asker) {
    mm_lq_waiter *next = e->head;
    if (next != NULL) {
      /* The turn passes in arrival order. */
      e->head = next->next;
      if (e->head == NULL) e->tail = NULL;
      next->next = NULL;
      next->is_asker = 1;
      uint64_t one = 1;
      ssize_t r = write(next->fd, &one, sizeof one);
      (void) r; /* EAGAIN: already readable; it sees the flag anyway */
    } else {
      e->asking = 0;
    }
  } else {
    /* Never got the turn: out of the queue. */
    mm_lq_waiter **p = &e->head;
    mm_lq_waiter *prev = NULL;
    while (*p != NULL && *p != w) {
      prev = *p;
      p = &(*p)->next;
    }
    if (*p == w) {
      *p = w->next;
      if (e->tail == w) e->tail = prev;
    }
  }
  if (--e->users == 0) {
    mm_lq_entry **p = lq_find(e->ops, e->scope, e->scope_len);
    if (*p == e) *p = e->next;
    free(e);
    __atomic_sub_fetch(&lq_entries, 1, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock(&lq_mutex);
  if (w->fd >= 0) close(w->fd);
  w->fd = -1;
  w->entry = NULL;
  w->is_asker = 0;
}

size_t mm_lq_count(void) { return __atomic_load_n(&lq_entries, __ATOMIC_ACQUIRE); }
