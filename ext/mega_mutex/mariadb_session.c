/*
 * mariadb_session.c - the MariaDB store's session (mariadb_session.h): one
 * connection, opened when a take or a read needs it, with wait_timeout set
 * from lock_ttl + WAIT_MARGIN and no statement time limit, its
 * CONNECTION_ID() and whether the server
 * lists named locks (METADATA_LOCK_INFO). An idle session that holds
 * nothing and may have outlived its wait_timeout is replaced; one that
 * holds a lock never is: when it breaks, its locks are lost.
 *
 * Runs without the GVL; no Ruby API. Every libmariadb result is checked.
 */
#ifdef HAVE_MARIADB
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mysql.h>

#include "lock.h"
#include "mariadb_session.h"

#define ER_UNKNOWN_SYSTEM_VARIABLE_CODE 1193

void mm_mariadb_session_drop(my_store *s) {
  mm_mariadb_conn_abort(s->conn);
  s->conn = NULL;
  s->holding = 0;
  s->conn_id = 0;
}

mm_status mm_mariadb_session_exec(my_store *s, const char *q, double extra, mm_mariadb_cancel mode,
                                  mm_mariadb_row *row, unsigned *errcode, int *killed) {
  int gone = 0;
  if (mode == CANCEL_ABORT && s->holding > 0) mode = CANCEL_IGNORE; /* never end a session that holds locks */
  mm_status st = mm_mariadb_exec(&s->link, s->conn, q, extra, mode, row, errcode, &gone, killed, s->conn_id);
  if (gone) {
    s->conn = NULL;
    mm_mariadb_session_drop(s);
  } else {
    s->last_io = mm_monotonic();
  }
  return st;
}

/* A new session: connected, wait_timeout set, its id and what the server
 * lists learned. */
static mm_status session_open(my_store *s, unsigned ttl) {
  MYSQL *m;
  mm_status st = mm_mariadb_conn_open(&s->link, &m, 1);
  if (st != MM_OK) return st;
  s->conn = m;
  s->holding = 0;
  s->generation++;
  /* No statement limit on this session (a server-wide max_statement_time
   * against runaway queries would cut every GET_LOCK wait short): MariaDB's
   * max_statement_time, MySQL's max_execution_time (SELECTs). A server that
   * knows neither gets wait_timeout alone. */
  const char *server = mysql_get_server_info(m);
  char q[200];
  snprintf(q, sizeof q, "SET SESSION wait_timeout = %u, %s = 0", ttl + WAIT_MARGIN,
           server != NULL && strstr(server, "MariaDB") != NULL ? "max_statement_time" : "max_execution_time");
  unsigned code;
  st = mm_mariadb_session_exec(s, q, 0, CANCEL_ABORT, NULL, &code, NULL);
  if (st == MM_ERR_SERVER && code == ER_UNKNOWN_SYSTEM_VARIABLE_CODE) {
    snprintf(q, sizeof q, "SET SESSION wait_timeout = %u", ttl + WAIT_MARGIN);
    st = mm_mariadb_session_exec(s, q, 0, CANCEL_ABORT, NULL, &code, NULL);
  }
  if (st == MM_OK) {
    mm_mariadb_row row;
    st = mm_mariadb_session_exec(s,
                                 "SELECT CONNECTION_ID(), (SELECT COUNT(*) FROM information_schema.PLUGINS WHERE "
                                 "PLUGIN_NAME = 'METADATA_LOCK_INFO' AND PLUGIN_STATUS = 'ACTIVE')",
                                 0, CANCEL_ABORT, &row, &code, NULL);
    if (st == MM_OK && (row.cols != 2 || row.null[0])) {
      mm_mariadb_set_error(&s->link, "MariaDB at %s: %s (%u)", "CONNECTION_ID() gave no answer", 0);
      st = MM_ERR_SERVER;
    }
    if (st == MM_OK) {
      s->conn_id = strtoul(row.val[0], NULL, 10);
      s->mdl = !row.null[1] && atoi(row.val[1]) > 0;
      s->session_ttl = ttl;
    }
  }
  if (st != MM_OK && s->conn) mm_mariadb_session_drop(s);
  return st;
}

/* Before a take: a session with the right wait_timeout. An idle session
 * that holds nothing and may have outlived its wait_timeout is replaced
 * (it holds nothing, so nothing is lost). */
mm_status mm_mariadb_session_ready(my_store *s, unsigned ttl) {
  if (s->conn && s->holding == 0 && mm_monotonic() - s->last_io > s->session_ttl * 0.5) mm_mariadb_session_drop(s);
  if (s->conn == NULL) return session_open(s, ttl);
  if (ttl > s->session_ttl || (s->holding == 0 && ttl != s->session_ttl)) {
    char q[64];
    snprintf(q, sizeof q, "SET SESSION wait_timeout = %u", ttl + WAIT_MARGIN);
    unsigned code;
    mm_status st = mm_mariadb_session_exec(s, q, 0, CANCEL_ABORT, NULL, &code, NULL);
    if (st != MM_OK) return st;
    s->session_ttl = ttl;
  }
  return MM_OK;
}

void mm_mariadb_quote(my_store *s, const char *in, char *out) {
  out[0] = '\'';
  unsigned long n = mysql_real_escape_string(s->conn, out + 1, in, (unsigned long) strlen(in));
  if (n == (unsigned long) -1) n = 0; /* cannot happen for ASCII; an empty name is refused by the server */
  out[1 + n] = '\'';
  out[2 + n] = '\0';
}

mm_status mm_mariadb_session_any(my_store *s) {
  if (s->conn && s->holding == 0 && mm_monotonic() - s->last_io > s->session_ttl * 0.5) mm_mariadb_session_drop(s);
  return s->conn ? MM_OK : session_open(s, s->session_ttl ? s->session_ttl : s->default_ttl);
}

#else
/* Built without libmariadb: mariadb_glue.c says so when Client.mysql is called. */
typedef int mm_mariadb_session_not_built;
#endif
