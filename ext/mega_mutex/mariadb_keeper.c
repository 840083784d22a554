/*
 * mariadb_keeper.c - the MariaDB store's keeper (mariadb_keeper.h).
 *
 * A holding session must not fall silent for wait_timeout seconds, whatever
 * Ruby does (store_mariadb.c's header says why). A keeper ("mm mysql
 * keep") is one pthread per server (a store's link.where; up to KEEPERS),
 * started with the first session on that server that holds a lock; it
 * needs no GVL. A ping that stalls (its server stopped or cut off) delays
 * only that server's sessions. It walks its list of holding sessions and
 * sends `DO 0` on each idle for lock_ttl / 3. It only try-locks a session's
 * `io` (a busy session is not idle), so it never waits on a holder and
 * never interleaves with its requests. A ping that fails ends the session.
 * After a fork the child's keeper state is made anew (keeper_atfork_child).
 *
 * Runs without the GVL; no Ruby API.
 */
#define _GNU_SOURCE /* pthread_setname_np */
#ifdef HAVE_MARIADB
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "lock.h"
#include "mariadb_keeper.h"

#define KEEPERS 16 /* one per server; a process that holds locks on more servers shares the last */

/* One keeper thread and its list: the holding sessions on one server
 * (link.where). A ping that stalls (a server stopped or cut off: up to
 * io_timeout) then delays only that server's sessions, never those on
 * another server, whose wait_timeout may be shorter than the stall. */
typedef struct {
  char where[320];
  my_store *head;
  pthread_cond_t cv;
  int state; /* 0: not started; 1: running; -1: could not start (the renewer alone keeps its sessions) */
  int used;  /* where names its server */
} keeper;

static pthread_mutex_t keeper_mu = PTHREAD_MUTEX_INITIALIZER; /* guards every keeper's list and state */
static keeper keepers[KEEPERS];
static int keepers_ok = 1; /* 0: a condition variable could not be made (no keeper at all) */
static pthread_once_t keeper_once = PTHREAD_ONCE_INIT;

static int keeper_cv_init(pthread_cond_t *cv) {
  pthread_condattr_t attr;
  if (pthread_condattr_init(&attr) != 0) return -1;
  int rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 && pthread_cond_init(cv, &attr) == 0 ? 0 : -1;
  pthread_condattr_destroy(&attr);
  return rc;
}

static int keepers_init(void) {
  int ok = 1;
  for (int i = 0; i < KEEPERS; i++) {
    memset(keepers[i].where, 0, sizeof keepers[i].where);
    keepers[i].head = NULL;
    keepers[i].state = 0;
    keepers[i].used = 0;
    if (keeper_cv_init(&keepers[i].cv) != 0) ok = 0;
  }
  return ok;
}

/* In a forked child: the parent's keepers do not exist here, their lists
 * name the parent's sessions (never to be touched), keeper_mu may have
 * been held at the fork, and a keeper's cv may count the parent's keeper
 * as a waiter (signalling such a copy can block for ever): all made anew. */
static void keeper_atfork_child(void) {
  pthread_mutex_init(&keeper_mu, NULL);
  keepers_ok = keepers_init();
}

static void keeper_init_once(void) {
  keepers_ok = keepers_init() && pthread_atfork(NULL, NULL, keeper_atfork_child) == 0;
}

/* Under keeper_mu: the keeper of the server at `where`. */
static keeper *keeper_for(const char *where) {
  for (int i = 0; i < KEEPERS; i++) {
    if (!keepers[i].used) {
      snprintf(keepers[i].where, sizeof keepers[i].where, "%s", where);
      keepers[i].used = 1;
      return &keepers[i];
    }
    if (strcmp(keepers[i].where, where) == 0) return &keepers[i];
  }
  return &keepers[KEEPERS - 1];
}

/* Under keeper_mu. */
static void keeper_unlink(my_store *s) {
  if (!s->kept) return;
  keeper *k = &keepers[s->kidx];
  if (s->kprev) s->kprev->knext = s->knext;
  else k->head = s->knext;
  if (s->knext) s->knext->kprev = s->kprev;
  s->kprev = s->knext = NULL;
  s->kept = 0;
}

static void *keeper_main(void *arg);

void mm_mariadb_keeper_update(my_store *s) {
  int want = s->conn != NULL && s->holding > 0;
  if (want == s->kept) return;
  pthread_once(&keeper_once, keeper_init_once);
  if (pthread_mutex_lock(&keeper_mu) != 0) return;
  if (!want) {
    keeper_unlink(s);
  } else if (keepers_ok) {
    keeper *k = keeper_for(s->link.where);
    if (k->state >= 0) {
      s->kidx = (int) (k - keepers);
      s->kprev = NULL;
      s->knext = k->head;
      if (k->head) k->head->kprev = s;
      k->head = s;
      s->kept = 1;
      if (k->state == 0) {
        pthread_t t;
        pthread_attr_t attr;
        int inited = pthread_attr_init(&attr) == 0;
        int ok = inited && pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0;
        ok = ok && pthread_create(&t, &attr, keeper_main, k) == 0;
        if (inited) pthread_attr_destroy(&attr);
        k->state = ok ? 1 : -1;
        if (!ok) keeper_unlink(s);
      }
      pthread_cond_signal(&k->cv);
    }
  }
  pthread_mutex_unlock(&keeper_mu);
}

static void *keeper_main(void *arg) {
  keeper *k = arg;
  pthread_setname_np(pthread_self(), "mm mysql keep");
  if (pthread_mutex_lock(&keeper_mu) != 0) return NULL;
  for (;;) {
    double now = mm_monotonic();
    double next = now + 1.0;
    my_store *due = NULL;
    for (my_store *s = k->head; s != NULL; s = s->knext) {
      if (pthread_mutex_trylock(&s->io) != 0) { /* busy: not idle */
        if (now + 0.1 < next) next = now + 0.1;
        continue;
      }
      double at = s->last_io + s->session_ttl / 3.0;
      if (at <= now && s->conn != NULL) {
        due = s; /* its io stays locked */
        break;
      }
      pthread_mutex_unlock(&s->io);
      if (at < next) next = at;
    }
    if (due != NULL) {
      pthread_mutex_unlock(&keeper_mu);
      char saved[MM_ERROR_MAX];
      memcpy(saved, due->base.error, sizeof saved);
      unsigned code;
      mm_mariadb_session_exec(due, "DO 0", 0, CANCEL_IGNORE, NULL, &code, NULL); /* a failure ends the session */
      memcpy(due->base.error, saved, sizeof saved);
      if (pthread_mutex_lock(&keeper_mu) != 0) {
        pthread_mutex_unlock(&due->io);
        return NULL;
      }
      if (due->conn == NULL || due->holding == 0) keeper_unlink(due);
      pthread_mutex_unlock(&due->io);
      continue;
    }
    struct timespec ts;
    double wake = k->head ? next : now + 3600;
    ts.tv_sec = (time_t) wake;
    ts.tv_nsec = (long) ((wake - (double) ts.tv_sec) * 1e9);
    pthread_cond_timedwait(&k->cv, &keeper_mu, &ts);
  }
}

void mm_mariadb_keeper_forget(my_store *s) {
  if (pthread_mutex_lock(&keeper_mu) == 0) {
    keeper_unlink(s);
    pthread_mutex_unlock(&keeper_mu);
  }
}

#else
/* Built without libmariadb: mariadb_glue.c says so when Client.mysql is called. */
typedef int mm_mariadb_keeper_not_built;
#endif
