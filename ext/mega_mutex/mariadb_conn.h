/*
 * mariadb_conn.h - the MariaDB store's connection layer (mariadb_conn.c):
 * a connection over libmariadb's non-blocking API opened with a deadline,
 * one statement with its deadline, the store's waker and a cancel mode,
 * KILL QUERY from a connection of its own, and ending a connection without
 * a word. What a session is (and what it holds) is store_mariadb.c's.
 *
 * Runs without the GVL; no Ruby API. Built only with HAVE_MARIADB.
 */
#ifndef MEGA_MUTEX_MARIADB_CONN_H
#define MEGA_MUTEX_MARIADB_CONN_H

#include <mysql.h>

#include "store.h"

/* Where and how to connect, and the store whose error buffer, waker
 * (cancel_fd) and cancelled flag a request uses. */
typedef struct {
  mm_store *store;
  char *host, *socket, *user, *password, *database; /* socket wins over host and port */
  unsigned port;
  int connect_timeout_ms, io_timeout_ms;
  char where[320]; /* "host:port" or the socket path, for messages */
} mm_mariadb_link;

/* The first row of a reply: at most 4 columns of at most 255 bytes. */
typedef struct {
  int cols;
  int null[4];
  char val[4][256];
} mm_mariadb_row;

/* What the store's waker does to a statement once it is sent. */
typedef enum {
  CANCEL_IGNORE, /* the waker is ignored once the request is sent (bounded by the I/O timeout) */
  CANCEL_ABORT,  /* the waker ends the session (only when it holds nothing) */
  CANCEL_KILL    /* the waker sends KILL QUERY, then the reply is read */
} mm_mariadb_cancel;

/* The store's error: fmt with l->where, detail and code, in that order. */
void mm_mariadb_set_error(mm_mariadb_link *l, const char *fmt, const char *detail, unsigned code);

/* Whether the store's waker has fired. */
int mm_mariadb_cancelled(const mm_mariadb_link *l);

/* Ends connection m (may be NULL) without a word: socket shut, then closed. */
void mm_mariadb_conn_abort(MYSQL *m);

/* Opens a connection (non-blocking, no reconnect); the waker ends it when
 * watch_cancel. MM_OK with *out set, MM_INTERRUPTED or MM_ERR_CONNECTION. */
mm_status mm_mariadb_conn_open(mm_mariadb_link *l, MYSQL **out, int watch_cancel);

/* One statement on connection m, its first row into *row (may be NULL);
 * kill_id: the connection id a CANCEL_KILL kills. Statuses: mariadb_conn.c. */
mm_status mm_mariadb_exec(mm_mariadb_link *l, MYSQL *m, const char *q, double extra, mm_mariadb_cancel mode,
                          mm_mariadb_row *row, unsigned *errcode, int *m_gone, int *killed, unsigned long kill_id);

#endif
