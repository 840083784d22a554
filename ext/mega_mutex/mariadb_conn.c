/*
 * mariadb_conn.c - the MariaDB store's connection layer over libmariadb's
 * non-blocking API (mariadb_conn.h): every wait is a ppoll on the socket
 * and the store's waker, with a deadline (connect_timeout, io_timeout, plus
 * a GET_LOCK's own wait). No reconnect: a connection that breaks or falls
 * out of step is aborted and its caller told (*m_gone).
 *
 * Runs without the GVL; no Ruby API. Every libmariadb result is checked.
 */
#define _GNU_SOURCE /* ppoll */
#ifdef HAVE_MARIADB
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <mysql.h>
#include <errmsg.h>

#include "lock.h"
#include "mariadb_conn.h"

void mm_mariadb_set_error(mm_mariadb_link *l, const char *fmt, const char *detail, unsigned code) {
  snprintf(l->store->error, sizeof l->store->error, fmt, l->where, detail, code);
}

int mm_mariadb_cancelled(const mm_mariadb_link *l) {
  return l->store->cancelled != NULL && __atomic_load_n(l->store->cancelled, __ATOMIC_SEQ_CST);
}

/* Ends a connection without a word: the socket is shut first, so nothing
 * mysql_close writes can reach the server out of step. The server frees
 * the session's locks when it sees the socket close. */
void mm_mariadb_conn_abort(MYSQL *m) {
  if (m == NULL) return;
  my_socket fd = mysql_get_socket(m);
  if (fd != MARIADB_INVALID_SOCKET) shutdown(fd, SHUT_RDWR);
  mysql_close(m);
}

/*
 * Waits for what libmariadb asked for (`status`, MYSQL_WAIT_*) on m's
 * socket. Returns the events for the _cont call; -1 when `deadline` passed;
 * -2 when the store's waker fired (only if watch_cancel).
 */
static int wait_io(mm_mariadb_link *l, MYSQL *m, int status, double deadline, int watch_cancel) {
  struct pollfd pfd[2];
  nfds_t n = 1;
  pfd[0].fd = mysql_get_socket(m);
  pfd[0].events = (short) (((status & MYSQL_WAIT_READ) ? POLLIN : 0) | ((status & MYSQL_WAIT_WRITE) ? POLLOUT : 0) |
                           ((status & MYSQL_WAIT_EXCEPT) ? POLLPRI : 0));
  pfd[0].revents = 0;
  if (watch_cancel && l->store->cancel_fd >= 0) {
    pfd[1].fd = l->store->cancel_fd;
    pfd[1].events = POLLIN;
    pfd[1].revents = 0;
    n = 2;
  }
  for (;;) {
    if (watch_cancel && mm_mariadb_cancelled(l)) return -2;
    double now = mm_monotonic();
    double left = deadline - now;
    if (left <= 0) return -1;
    double lib = INFINITY;
    if (status & MYSQL_WAIT_TIMEOUT) lib = (double) mysql_get_timeout_value_ms(m) / 1000.0;
    double t = lib < left ? lib : left;
    struct timespec ts;
    ts.tv_sec = (time_t) t;
    ts.tv_nsec = (long) ((t - (double) ts.tv_sec) * 1e9);
    int rc = ppoll(pfd, n, &ts, NULL);
    if (rc < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (rc == 0) {
      if (lib <= left) return MYSQL_WAIT_TIMEOUT;
      continue; /* our deadline: seen at the top */
    }
    if (n == 2 && pfd[1].revents) {
      if (watch_cancel) return -2;
    }
    int ev = 0;
    if (pfd[0].revents & POLLIN) ev |= MYSQL_WAIT_READ;
    if (pfd[0].revents & POLLOUT) ev |= MYSQL_WAIT_WRITE;
    if (pfd[0].revents & POLLPRI) ev |= MYSQL_WAIT_EXCEPT;
    if (pfd[0].revents & (POLLERR | POLLHUP | POLLNVAL)) ev |= status & (MYSQL_WAIT_READ | MYSQL_WAIT_WRITE);
    if (ev) return ev;
  }
}

/*
 * Marks m's socket close-on-exec once it exists: 1 when it is (or there is
 * no socket yet), 0 when fcntl failed. libmariadb opens it without the flag,
 * and a program the application starts while a lock is held would keep the
 * session, and so the lock, open after its holder is killed.
 */
static int close_on_exec(MYSQL *m, int *done) {
  if (*done) return 1;
  my_socket fd = mysql_get_socket(m);
  if (fd == MARIADB_INVALID_SOCKET) return 1;
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0 || ((flags & FD_CLOEXEC) == 0 && fcntl(fd, F_SETFD, flags | FD_CLOEXEC) != 0)) return 0;
  *done = 1;
  return 1;
}

static mm_status not_close_on_exec(mm_mariadb_link *l, MYSQL *m) {
  mm_mariadb_set_error(l, "cannot connect to MariaDB at %s: %s (errno %u)", "its socket could not be marked close-on-exec",
                       (unsigned) errno);
  mm_mariadb_conn_abort(m);
  return MM_ERR_CONNECTION;
}

/* Opens a connection (non-blocking, no reconnect, close-on-exec); the waker
 * ends it when watch_cancel. MM_OK with *out set, MM_INTERRUPTED or
 * MM_ERR_CONNECTION. */
mm_status mm_mariadb_conn_open(mm_mariadb_link *l, MYSQL **out, int watch_cancel) {
  *out = NULL;
  MYSQL *m = mysql_init(NULL);
  if (m == NULL) {
    mm_mariadb_set_error(l, "MariaDB at %s: %s (%u)", "mysql_init failed: out of memory", 0);
    return MM_ERR_CONNECTION;
  }
  my_bool off = 0;
  unsigned connect_s = (unsigned) ((l->connect_timeout_ms + 999) / 1000);
  if (mysql_options(m, MYSQL_OPT_RECONNECT, &off) != 0 || mysql_options(m, MYSQL_OPT_NONBLOCK, 0) != 0 ||
      mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &connect_s) != 0 ||
      mysql_optionsv(m, MYSQL_OPT_CONNECT_ATTR_ADD, "program_name", "mega_mutex") != 0) {
    mm_mariadb_set_error(l, "MariaDB at %s: %s (%u)", "could not set the connection's options", 0);
    mysql_close(m);
    return MM_ERR_CONNECTION;
  }
  double deadline = mm_monotonic() + l->connect_timeout_ms / 1000.0;
  MYSQL *ret = NULL;
  int status = mysql_real_connect_start(&ret, m, l->socket ? NULL : l->host, l->user, l->password, l->database,
                                        l->socket ? 0 : l->port, l->socket, 0);
  int cloexec = 0;
  while (status) {
    if (!close_on_exec(m, &cloexec)) return not_close_on_exec(l, m);
    int ev = wait_io(l, m, status, deadline, watch_cancel);
    if (ev < 0) {
      mm_mariadb_conn_abort(m);
      if (ev == -2) return MM_INTERRUPTED;
      char msg[64];
      snprintf(msg, sizeof msg, "no connection within %d ms (connect_timeout)", l->connect_timeout_ms);
      mm_mariadb_set_error(l, "cannot connect to MariaDB at %s: %s (%u)", msg, 0);
      return MM_ERR_CONNECTION;
    }
    status = mysql_real_connect_cont(&ret, m, ev);
  }
  if (ret == NULL) {
    mm_mariadb_set_error(l, "cannot connect to MariaDB at %s: %s (error %u)", mysql_error(m), mysql_errno(m));
    mysql_close(m);
    return MM_ERR_CONNECTION;
  }
  if (!close_on_exec(m, &cloexec)) return not_close_on_exec(l, m);
  *out = m;
  return MM_OK;
}


static mm_status kill_query(mm_mariadb_link *l, unsigned long id);

/*
 * One statement on connection m, its first row into *row (may be NULL).
 * `extra`: seconds the server may take on top of the I/O timeout (a
 * GET_LOCK's wait). MM_OK; MM_INTERRUPTED (the waker fired before the
 * statement was sent, or in CANCEL_ABORT mode: m is then aborted, *m_gone
 * set); MM_ERR_SERVER (the server refused it: m is fine, *errcode set);
 * MM_ERR_CONNECTION (m is aborted, *m_gone set). In CANCEL_KILL mode *killed
 * tells whether a KILL QUERY was sent (and the reply read all the same).
 */
mm_status mm_mariadb_exec(mm_mariadb_link *l, MYSQL *m, const char *q, double extra, mm_mariadb_cancel mode,
                          mm_mariadb_row *row, unsigned *errcode, int *m_gone, int *killed, unsigned long kill_id) {
  *errcode = 0;
  *m_gone = 0;
  if (killed) *killed = 0;
  if (row) row->cols = 0;
  if (mode != CANCEL_IGNORE && mm_mariadb_cancelled(l)) return MM_INTERRUPTED; /* nothing sent */
  double deadline = mm_monotonic() + l->io_timeout_ms / 1000.0 + extra;
  int watch = mode != CANCEL_IGNORE;
  int err = 0;
  int status = mysql_real_query_start(&err, m, q, (unsigned long) strlen(q));
  while (status) {
    int ev = wait_io(l, m, status, deadline, watch);
    if (ev == -2 && mode == CANCEL_KILL) {
      watch = 0;
      if (killed) *killed = 1;
      if (kill_query(l, kill_id) != MM_OK) {
        mm_mariadb_conn_abort(m);
        *m_gone = 1;
        return MM_INTERRUPTED; /* the session is gone, and what it held with it */
      }
      deadline = mm_monotonic() + l->io_timeout_ms / 1000.0;
      continue;
    }
    if (ev == -2) {
      mm_mariadb_conn_abort(m);
      *m_gone = 1;
      return MM_INTERRUPTED;
    }
    if (ev == -1) {
      mm_mariadb_conn_abort(m);
      *m_gone = 1;
      char msg[96];
      snprintf(msg, sizeof msg, "no reply within %.3f s (io_timeout)", l->io_timeout_ms / 1000.0 + extra);
      mm_mariadb_set_error(l, "MariaDB at %s: %s (%u)", msg, 0);
      return MM_ERR_CONNECTION;
    }
    status = mysql_real_query_cont(&err, m, ev);
  }
  MYSQL_RES *res = NULL;
  if (err == 0) {
    status = mysql_store_result_start(&res, m);
    while (status) {
      int ev = wait_io(l, m, status, deadline, 0);
      if (ev < 0) {
        mm_mariadb_conn_abort(m);
        *m_gone = 1;
        mm_mariadb_set_error(l, "MariaDB at %s: %s (%u)", "the reply did not arrive within io_timeout", 0);
        return MM_ERR_CONNECTION;
      }
      status = mysql_store_result_cont(&res, m, ev);
    }
  }
  unsigned code = mysql_errno(m);
  if (err != 0 || (res == NULL && code != 0)) {
    *errcode = code;
    if (code >= CR_MIN_ERROR && code <= CR_MAX_ERROR) {
      mm_mariadb_set_error(l, "MariaDB at %s: connection lost: %s (error %u)", mysql_error(m), code);
      mm_mariadb_conn_abort(m);
      *m_gone = 1;
      return MM_ERR_CONNECTION;
    }
    mm_mariadb_set_error(l, "MariaDB at %s: %s (error %u)", mysql_error(m), code);
    return MM_ERR_SERVER;
  }
  if (res != NULL) {
    MYSQL_ROW r = mysql_fetch_row(res);
    unsigned long *lens = r ? mysql_fetch_lengths(res) : NULL;
    if (row && r && lens) {
      unsigned n = mysql_num_fields(res);
      row->cols = n > 4 ? 4 : (int) n;
      for (int i = 0; i < row->cols; i++) {
        row->null[i] = r[i] == NULL;
        size_t len = r[i] ? lens[i] : 0;
        if (len > sizeof row->val[i] - 1) len = sizeof row->val[i] - 1;
        if (r[i]) memcpy(row->val[i], r[i], len);
        row->val[i][len] = '\0';
      }
    }
    mysql_free_result(res);
  }
  return MM_OK;
}

/* KILL QUERY `id` from a connection of its own, opened and closed here:
 * ends a GET_LOCK wait of the session at once. */
static mm_status kill_query(mm_mariadb_link *l, unsigned long id) {
  MYSQL *ctl;
  char saved[MM_ERROR_MAX];
  memcpy(saved, l->store->error, sizeof saved);
  mm_status st = mm_mariadb_conn_open(l, &ctl, 0);
  if (st != MM_OK) return st;
  char q[64];
  snprintf(q, sizeof q, "KILL QUERY %lu", id);
  unsigned code;
  int gone;
  st = mm_mariadb_exec(l, ctl, q, 0, CANCEL_IGNORE, NULL, &code, &gone, NULL, 0);
  if (!gone) mysql_close(ctl);
  if (st == MM_OK) memcpy(l->store->error, saved, sizeof saved);
  return st;
}

#else
/* Built without libmariadb: mariadb_glue.c says so when Client.mysql is called. */
typedef int mm_mariadb_conn_not_built;
#endif
