/*
 * mariadb_session.h - the MariaDB store's state and its session
 * (mariadb_session.c): what store_mariadb.c (the operations) and
 * mariadb_keeper.c (the keeper thread) share. A session is the one
 * connection whose named locks the store holds; it is never reconnected
 * while it holds one. Every request on it holds `io`.
 *
 * Runs without the GVL; no Ruby API. Built only with HAVE_MARIADB.
 */
#ifndef MEGA_MUTEX_MARIADB_SESSION_H
#define MEGA_MUTEX_MARIADB_SESSION_H

#include <pthread.h>
#include <stdint.h>

#include "mariadb_conn.h"
#include "store.h"

#define WAIT_MARGIN 2u /* wait_timeout = lock_ttl + this: the same slack as memcached's lease on the wire,
                          for a refresh that comes a little late (a renewer waiting for the GVL) */

typedef struct my_store_s {
  mm_store base;
  mm_mariadb_link link;   /* where and how to connect; link.store is &base */
  unsigned default_ttl;
  MYSQL *conn;            /* the session; NULL: none (connects at the next take) */
  unsigned long conn_id;  /* its CONNECTION_ID() */
  uint64_t generation;    /* grows with each new session */
  unsigned holding;       /* locks this session holds */
  unsigned session_ttl;   /* its wait_timeout */
  int mdl;                /* the server lists named locks (METADATA_LOCK_INFO) */
  double last_io;         /* monotonic time of the session's last request */
  pthread_mutex_t io;     /* held for each request on the session: by the client's thread or the keeper */
  struct my_store_s *kprev, *knext; /* in the keeper's list while the session holds locks */
  int kept;               /* in that list (guarded by the keeper's mutex) */
  int kidx;               /* which keeper's list (its server's), while kept */
} my_store;

/* The session is over (broken, out of step, or given up): its locks go. */
void mm_mariadb_session_drop(my_store *s);

/* A statement on the session (which must exist). Drops the session when
 * the connection went. CANCEL_ABORT becomes CANCEL_IGNORE while the
 * session holds locks. */
mm_status mm_mariadb_session_exec(my_store *s, const char *q, double extra, mm_mariadb_cancel mode,
                                  mm_mariadb_row *row, unsigned *errcode, int *killed);

/* Before a take: a session with wait_timeout for `ttl`. */
mm_status mm_mariadb_session_ready(my_store *s, unsigned ttl);

/* For the short calls that need a session but take nothing. */
mm_status mm_mariadb_session_any(my_store *s);

/* Quotes `in` (printable ASCII) as an SQL string literal into out
 * (2 * strlen(in) + 3 bytes); the session must exist. */
void mm_mariadb_quote(my_store *s, const char *in, char *out);

#endif
