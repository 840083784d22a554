/*
 * store_mariadb.c - locks as MariaDB/MySQL named locks (GET_LOCK), over
 * libmariadb's non-blocking API (config.backend = :mysql).
 *
 * A session store: a lock lives as long as the connection (session) that
 * took it. The server frees it the moment that session ends - a holder
 * killed, a KILL, a restart, or wait_timeout seconds of silence (set from
 * lock_ttl + 2 s, the slack memcached's leases get on the wire; the
 * renewer's refresh every ttl/3 keeps a live holder's session busy enough). The store never reconnects a session that holds a lock:
 * once it breaks, its locks are lost, and refresh and release say so.
 * Each session gets a generation number; a lease record names the
 * generation it was taken in, so a hold from a session that is gone can
 * never be mistaken for one of its successor.
 *
 * Names. MySQL 8 accepts 64 characters, MariaDB 192 bytes; case and
 * trailing spaces matter on some servers and not on others. A key made of
 * lowercase letters, digits and _.-/:@=+ of at most 61 bytes is used as it
 * is ("mm=" + key, readable in the processlist); any other key becomes
 * "mm#" + its first 28 bytes (lowercased, others as '_') + "#" + 128 bits
 * of its SHA-256 in hex: 64 bytes at most, lowercase, no spaces. Two keys
 * share a lock only if 128 bits of their digests agree.
 *
 * Who holds it. Another session can learn the holder's connection id
 * (IS_USED_LOCK), but nothing of the holder's own (user variables are per
 * session, and there may be no database for a table). So the holder also
 * takes a second, private named lock, its "companion": "mm~" + 16 hex
 * digits of the lock name's digest + "~" + the token. Where the server lists
 * named locks by session (MariaDB's METADATA_LOCK_INFO plugin,
 * `INSTALL SONAME 'metadata_lock_info'`), read finds the companion of that
 * connection and returns the token; elsewhere it returns
 * "mysql-connection:<id>", and locked?/holder still say held. The companion
 * is taken in the same statement as the lock (CASE evaluates GET_LOCK once)
 * and released with it.
 *
 * Waiting. wait_take blocks in GET_LOCK(name, slice) for slices of at most
 * SLICE seconds (never a negative timeout: MDEV-4017), watching the
 * client's waker; when the waker fires, a control connection sends KILL
 * QUERY for the session, and the reply is read all the same: a grant that
 * raced the kill is given back before MM_INTERRUPTED is returned. Any
 * doubt (no reply, a failed clean-up) ends the session, which frees all it
 * had. A grant read more than wait_timeout - 1 s after its GET_LOCK was
 * sent is asked about again first (confirm_grant): a process stopped with
 * the grant in its socket may find its session dropped and the lock given
 * to another; the grant is then void, and the wait goes on.
 *
 * The keeper. A holding session must not fall silent for wait_timeout
 * seconds, whatever Ruby does: the renewer's refresh (lib/mega_mutex/
 * renewer.rb) needs the GVL, which CPU-bound threads may keep from it for
 * seconds. So one pthread per process ("mm mysql keep"), which needs no
 * GVL, sends `DO 0` on each holding session that has been idle for
 * lock_ttl / 3. Every request on a session holds the store's `io` mutex;
 * the keeper only try-locks it (a busy session is not idle), so it never
 * waits on a holder and never interleaves with its requests. A ping that
 * fails ends the session (its locks are lost: the next refresh or release
 * says so). The keeper keeps sessions alive; only the renewer's refresh
 * verifies that a lock is still held. A paused process (SIGSTOP) pauses its
 * keeper too, so a paused holder still loses its lock after wait_timeout.
 *
 * Fork. A forked child never closes, quits or uses a session of its
 * parent (a COM_QUIT from the child would end the parent's session and its
 * locks): abandon points the descriptor at /dev/null before freeing.
 *
 * Runs without the GVL; no Ruby API. Every libmariadb result is checked.
 */
#define _GNU_SOURCE /* ppoll */
#ifdef HAVE_MARIADB
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <mysql.h>
#include <errmsg.h>

#include "lock.h"
#include "store_mariadb.h"

#define SLICE 10.0              /* longest single GET_LOCK wait, seconds */
#define MAX_TTL 2592000u        /* lock_ttl limit (wait_timeout takes up to a year) */
#define WAIT_MARGIN 2u          /* wait_timeout = lock_ttl + this: the same slack as memcached's lease on the wire,
                                   for a refresh that comes a little late (a renewer waiting for the GVL) */
#define COMPANION_MAX 192       /* MariaDB's limit on a lock name */
#define LEASE_MAGIC 0x62646169726d6d6dULL /* "mmmariadb" */
#define ER_LOCK_DEADLOCK_CODE 1213
#define ER_QUERY_INTERRUPTED_CODE 1317
#define ER_UNKNOWN_TABLE_CODE 1109

typedef struct my_store_s {
  mm_store base;
  char *host, *socket, *user, *password, *database;
  unsigned port;
  int connect_timeout_ms, io_timeout_ms;
  unsigned default_ttl;
  MYSQL *conn;            /* the session; NULL: none (connects at the next take) */
  unsigned long conn_id;  /* its CONNECTION_ID() */
  uint64_t generation;    /* grows with each new session */
  unsigned holding;       /* locks this session holds */
  unsigned session_ttl;   /* its wait_timeout */
  int mdl;                /* the server lists named locks (METADATA_LOCK_INFO) */
  double last_io;         /* monotonic time of the session's last request */
  char where[320];
  pthread_mutex_t io;     /* held for each request on the session: by the client's thread or the keeper */
  struct my_store_s *kprev, *knext; /* in the keeper's list while the session holds locks */
  int kept;               /* in that list (guarded by keeper_mu) */
} my_store;

/* What a lease record's state holds. */
typedef struct {
  uint64_t magic;
  uint64_t generation;
  uint64_t conn_id;
  uint32_t companion; /* the companion lock was taken */
} my_lease;

typedef struct {
  int cols;
  int null[4];
  char val[4][256];
} my_row;

/* ---- SHA-256 (FIPS 180-4), for names ------------------------------------ */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t) p[4 * i] << 24 | (uint32_t) p[4 * i + 1] << 16 | (uint32_t) p[4 * i + 2] << 8 | p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = k + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
    uint32_t t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    k = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

static void sha256(const void *data, size_t len, unsigned char out[32]) {
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  const unsigned char *p = data;
  size_t left = len;
  while (left >= 64) {
    sha256_block(h, p);
    p += 64;
    left -= 64;
  }
  unsigned char tail[128];
  memset(tail, 0, sizeof tail);
  memcpy(tail, p, left);
  tail[left] = 0x80;
  size_t tail_len = left + 9 <= 64 ? 64 : 128;
  uint64_t bits = (uint64_t) len * 8;
  for (int i = 0; i < 8; i++) tail[tail_len - 1 - i] = (unsigned char) (bits >> (8 * i));
  sha256_block(h, tail);
  if (tail_len == 128) sha256_block(h, tail + 64);
  for (int i = 0; i < 8; i++) {
    out[4 * i] = (unsigned char) (h[i] >> 24);
    out[4 * i + 1] = (unsigned char) (h[i] >> 16);
    out[4 * i + 2] = (unsigned char) (h[i] >> 8);
    out[4 * i + 3] = (unsigned char) h[i];
  }
}

static void hex(const unsigned char *bytes, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 15];
  }
  out[2 * n] = '\0';
}

/* ---- names -------------------------------------------------------------- */

static int plain_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-' || c == '/' ||
         c == ':' || c == '@' || c == '=' || c == '+';
}

void mm_mariadb_lock_name(mm_bytes key, char out[65]) {
  int plain = key.len >= 1 && key.len <= 61;
  for (size_t i = 0; plain && i < key.len; i++) plain = plain_char((unsigned char) key.ptr[i]);
  if (plain) {
    memcpy(out, "mm=", 3);
    memcpy(out + 3, key.ptr, key.len);
    out[3 + key.len] = '\0';
    return;
  }
  size_t n = 0;
  memcpy(out, "mm#", 3);
  n = 3;
  for (size_t i = 0; i < key.len && i < 28; i++) {
    unsigned char c = (unsigned char) key.ptr[i];
    if (c >= 'A' && c <= 'Z') c = (unsigned char) (c - 'A' + 'a');
    out[n++] = plain_char(c) ? (char) c : '_';
  }
  out[n++] = '#';
  unsigned char digest[32];
  sha256(key.ptr, key.len, digest);
  hex(digest, 16, out + n); /* 32 hex digits, NUL-terminated */
}

/* The companion of lock `name` for `token` into out (COMPANION_MAX + 1);
 * its LIKE prefix ("mm~" + 16 hex + "~") into prefix (21 bytes). 0 when the
 * token is too long for one. */
static int companion_name(const char *name, mm_bytes token, char *out, char *prefix) {
  unsigned char digest[32];
  sha256(name, strlen(name), digest);
  memcpy(prefix, "mm~", 3);
  hex(digest, 8, prefix + 3);
  prefix[19] = '~';
  prefix[20] = '\0';
  if (20 + token.len > COMPANION_MAX) return 0;
  memcpy(out, prefix, 20);
  memcpy(out + 20, token.ptr, token.len);
  out[20 + token.len] = '\0';
  return 1;
}

/* ---- errors and the session --------------------------------------------- */

static void set_error(my_store *s, const char *fmt, const char *detail, unsigned code) {
  snprintf(s->base.error, sizeof s->base.error, fmt, s->where, detail, code);
}

static int cancelled(const my_store *s) {
  return s->base.cancelled != NULL && __atomic_load_n(s->base.cancelled, __ATOMIC_SEQ_CST);
}

/* Ends a connection without a word: the socket is shut first, so nothing
 * mysql_close writes can reach the server out of step. The server frees
 * the session's locks when it sees the socket close. */
static void conn_abort(MYSQL *m) {
  if (m == NULL) return;
  my_socket fd = mysql_get_socket(m);
  if (fd != MARIADB_INVALID_SOCKET) shutdown(fd, SHUT_RDWR);
  mysql_close(m);
}

/* The session is over (broken, out of step, or given up): its locks go. */
static void session_drop(my_store *s) {
  conn_abort(s->conn);
  s->conn = NULL;
  s->holding = 0;
  s->conn_id = 0;
}

/*
 * Waits for what libmariadb asked for (`status`, MYSQL_WAIT_*) on m's
 * socket. Returns the events for the _cont call; -1 when `deadline` passed;
 * -2 when the store's waker fired (only if watch_cancel).
 */
static int wait_io(my_store *s, MYSQL *m, int status, double deadline, int watch_cancel) {
  struct pollfd pfd[2];
  nfds_t n = 1;
  pfd[0].fd = mysql_get_socket(m);
  pfd[0].events = (short) (((status & MYSQL_WAIT_READ) ? POLLIN : 0) | ((status & MYSQL_WAIT_WRITE) ? POLLOUT : 0) |
                           ((status & MYSQL_WAIT_EXCEPT) ? POLLPRI : 0));
  pfd[0].revents = 0;
  if (watch_cancel && s->base.cancel_fd >= 0) {
    pfd[1].fd = s->base.cancel_fd;
    pfd[1].events = POLLIN;
    pfd[1].revents = 0;
    n = 2;
  }
  for (;;) {
    if (watch_cancel && cancelled(s)) return -2;
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

/* Opens a connection (non-blocking, no reconnect); the waker ends it when
 * watch_cancel. MM_OK with *out set, MM_INTERRUPTED or MM_ERR_CONNECTION. */
static mm_status conn_open(my_store *s, MYSQL **out, int watch_cancel) {
  *out = NULL;
  MYSQL *m = mysql_init(NULL);
  if (m == NULL) {
    set_error(s, "MariaDB at %s: %s (%u)", "mysql_init failed: out of memory", 0);
    return MM_ERR_CONNECTION;
  }
  my_bool off = 0;
  unsigned connect_s = (unsigned) ((s->connect_timeout_ms + 999) / 1000);
  if (mysql_options(m, MYSQL_OPT_RECONNECT, &off) != 0 || mysql_options(m, MYSQL_OPT_NONBLOCK, 0) != 0 ||
      mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &connect_s) != 0 ||
      mysql_optionsv(m, MYSQL_OPT_CONNECT_ATTR_ADD, "program_name", "mega_mutex") != 0) {
    set_error(s, "MariaDB at %s: %s (%u)", "could not set the connection's options", 0);
    mysql_close(m);
    return MM_ERR_CONNECTION;
  }
  double deadline = mm_monotonic() + s->connect_timeout_ms / 1000.0;
  MYSQL *ret = NULL;
  int status = mysql_real_connect_start(&ret, m, s->socket ? NULL : s->host, s->user, s->password, s->database,
                                        s->socket ? 0 : s->port, s->socket, 0);
  while (status) {
    int ev = wait_io(s, m, status, deadline, watch_cancel);
    if (ev < 0) {
      conn_abort(m);
      if (ev == -2) return MM_INTERRUPTED;
      char msg[64];
      snprintf(msg, sizeof msg, "no connection within %d ms (connect_timeout)", s->connect_timeout_ms);
      set_error(s, "cannot connect to MariaDB at %s: %s (%u)", msg, 0);
      return MM_ERR_CONNECTION;
    }
    status = mysql_real_connect_cont(&ret, m, ev);
  }
  if (ret == NULL) {
    set_error(s, "cannot connect to MariaDB at %s: %s (error %u)", mysql_error(m), mysql_errno(m));
    mysql_close(m);
    return MM_ERR_CONNECTION;
  }
  *out = m;
  return MM_OK;
}

enum cancel_mode {
  CANCEL_IGNORE, /* the waker is ignored once the request is sent (bounded by the I/O timeout) */
  CANCEL_ABORT,  /* the waker ends the session (only when it holds nothing) */
  CANCEL_KILL    /* the waker sends KILL QUERY, then the reply is read */
};

static mm_status kill_query(my_store *s, unsigned long id);

/*
 * One statement on connection m, its first row into *row (may be NULL).
 * `extra`: seconds the server may take on top of the I/O timeout (a
 * GET_LOCK's wait). MM_OK; MM_INTERRUPTED (the waker fired before the
 * statement was sent, or in CANCEL_ABORT mode: m is then aborted, *m_gone
 * set); MM_ERR_SERVER (the server refused it: m is fine, *errcode set);
 * MM_ERR_CONNECTION (m is aborted, *m_gone set). In CANCEL_KILL mode *killed
 * tells whether a KILL QUERY was sent (and the reply read all the same).
 */
static mm_status exec_on(my_store *s, MYSQL *m, const char *q, double extra, enum cancel_mode mode, my_row *row,
                         unsigned *errcode, int *m_gone, int *killed, unsigned long kill_id) {
  *errcode = 0;
  *m_gone = 0;
  if (killed) *killed = 0;
  if (row) row->cols = 0;
  if (mode != CANCEL_IGNORE && cancelled(s)) return MM_INTERRUPTED; /* nothing sent */
  double deadline = mm_monotonic() + s->io_timeout_ms / 1000.0 + extra;
  int watch = mode != CANCEL_IGNORE;
  int err = 0;
  int status = mysql_real_query_start(&err, m, q, (unsigned long) strlen(q));
  while (status) {
    int ev = wait_io(s, m, status, deadline, watch);
    if (ev == -2 && mode == CANCEL_KILL) {
      watch = 0;
      if (killed) *killed = 1;
      if (kill_query(s, kill_id) != MM_OK) {
        conn_abort(m);
        *m_gone = 1;
        return MM_INTERRUPTED; /* the session is gone, and what it held with it */
      }
      deadline = mm_monotonic() + s->io_timeout_ms / 1000.0;
      continue;
    }
    if (ev == -2) {
      conn_abort(m);
      *m_gone = 1;
      return MM_INTERRUPTED;
    }
    if (ev == -1) {
      conn_abort(m);
      *m_gone = 1;
      char msg[96];
      snprintf(msg, sizeof msg, "no reply within %.3f s (io_timeout)", s->io_timeout_ms / 1000.0 + extra);
      set_error(s, "MariaDB at %s: %s (%u)", msg, 0);
      return MM_ERR_CONNECTION;
    }
    status = mysql_real_query_cont(&err, m, ev);
  }
  MYSQL_RES *res = NULL;
  if (err == 0) {
    status = mysql_store_result_start(&res, m);
    while (status) {
      int ev = wait_io(s, m, status, deadline, 0);
      if (ev < 0) {
        conn_abort(m);
        *m_gone = 1;
        set_error(s, "MariaDB at %s: %s (%u)", "the reply did not arrive within io_timeout", 0);
        return MM_ERR_CONNECTION;
      }
      status = mysql_store_result_cont(&res, m, ev);
    }
  }
  unsigned code = mysql_errno(m);
  if (err != 0 || (res == NULL && code != 0)) {
    *errcode = code;
    if (code >= CR_MIN_ERROR && code <= CR_MAX_ERROR) {
      set_error(s, "MariaDB at %s: connection lost: %s (error %u)", mysql_error(m), code);
      conn_abort(m);
      *m_gone = 1;
      return MM_ERR_CONNECTION;
    }
    set_error(s, "MariaDB at %s: %s (error %u)", mysql_error(m), code);
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
static mm_status kill_query(my_store *s, unsigned long id) {
  MYSQL *ctl;
  char saved[MM_ERROR_MAX];
  memcpy(saved, s->base.error, sizeof saved);
  mm_status st = conn_open(s, &ctl, 0);
  if (st != MM_OK) return st;
  char q[64];
  snprintf(q, sizeof q, "KILL QUERY %lu", id);
  unsigned code;
  int gone;
  st = exec_on(s, ctl, q, 0, CANCEL_IGNORE, NULL, &code, &gone, NULL, 0);
  if (!gone) mysql_close(ctl);
  if (st == MM_OK) memcpy(s->base.error, saved, sizeof saved);
  return st;
}

/* A statement on the session (which must exist). Drops the session when
 * the connection went. */
static mm_status session_exec(my_store *s, const char *q, double extra, enum cancel_mode mode, my_row *row,
                              unsigned *errcode, int *killed) {
  int gone = 0;
  if (mode == CANCEL_ABORT && s->holding > 0) mode = CANCEL_IGNORE; /* never end a session that holds locks */
  mm_status st = exec_on(s, s->conn, q, extra, mode, row, errcode, &gone, killed, s->conn_id);
  if (gone) {
    s->conn = NULL;
    session_drop(s);
  } else {
    s->last_io = mm_monotonic();
  }
  return st;
}

/* A new session: connected, wait_timeout set, its id and what the server
 * lists learned. */
static mm_status session_open(my_store *s, unsigned ttl) {
  MYSQL *m;
  mm_status st = conn_open(s, &m, 1);
  if (st != MM_OK) return st;
  s->conn = m;
  s->holding = 0;
  s->generation++;
  char q[200];
  snprintf(q, sizeof q, "SET SESSION wait_timeout = %u", ttl + WAIT_MARGIN);
  unsigned code;
  st = session_exec(s, q, 0, CANCEL_ABORT, NULL, &code, NULL);
  if (st == MM_OK) {
    my_row row;
    st = session_exec(s,
                      "SELECT CONNECTION_ID(), (SELECT COUNT(*) FROM information_schema.PLUGINS WHERE PLUGIN_NAME = "
                      "'METADATA_LOCK_INFO' AND PLUGIN_STATUS = 'ACTIVE')",
                      0, CANCEL_ABORT, &row, &code, NULL);
    if (st == MM_OK && (row.cols != 2 || row.null[0])) {
      set_error(s, "MariaDB at %s: %s (%u)", "CONNECTION_ID() gave no answer", 0);
      st = MM_ERR_SERVER;
    }
    if (st == MM_OK) {
      s->conn_id = strtoul(row.val[0], NULL, 10);
      s->mdl = !row.null[1] && atoi(row.val[1]) > 0;
      s->session_ttl = ttl;
    }
  }
  if (st != MM_OK && s->conn) session_drop(s);
  return st;
}

/* Before a take: a session with the right wait_timeout. An idle session
 * that holds nothing and may have outlived its wait_timeout is replaced
 * (it holds nothing, so nothing is lost). */
static mm_status session_ready(my_store *s, unsigned ttl) {
  if (s->conn && s->holding == 0 && mm_monotonic() - s->last_io > s->session_ttl * 0.5) session_drop(s);
  if (s->conn == NULL) return session_open(s, ttl);
  if (ttl > s->session_ttl || (s->holding == 0 && ttl != s->session_ttl)) {
    char q[64];
    snprintf(q, sizeof q, "SET SESSION wait_timeout = %u", ttl + WAIT_MARGIN);
    unsigned code;
    mm_status st = session_exec(s, q, 0, CANCEL_ABORT, NULL, &code, NULL);
    if (st != MM_OK) return st;
    s->session_ttl = ttl;
  }
  return MM_OK;
}

/* Quotes `in` (printable ASCII) as an SQL string literal into out. */
static void quote(my_store *s, const char *in, char *out) {
  out[0] = '\'';
  unsigned long n = mysql_real_escape_string(s->conn, out + 1, in, (unsigned long) strlen(in));
  if (n == (unsigned long) -1) n = 0; /* cannot happen for ASCII; an empty name is refused by the server */
  out[1 + n] = '\'';
  out[2 + n] = '\0';
}

/* ---- reading the holder ------------------------------------------------- */

/* The holder of `name`: MM_OK (holder filled), MM_ABSENT, or an error. */
static mm_status read_holder(my_store *s, const char *name, mm_holder *holder, unsigned long *holder_id) {
  char qn[140], q[1200];
  quote(s, name, qn);
  char companion[COMPANION_MAX + 1], prefix[21];
  mm_bytes none = {"", 0};
  companion_name(name, none, companion, prefix);
  if (s->mdl)
    snprintf(q, sizeof q,
             "SELECT IS_USED_LOCK(%s), (SELECT TABLE_SCHEMA FROM information_schema.METADATA_LOCK_INFO WHERE "
             "THREAD_ID = IS_USED_LOCK(%s) AND LOCK_TYPE = 'User lock' AND TABLE_SCHEMA LIKE '%s%%' LIMIT 1)",
             qn, qn, prefix);
  else
    snprintf(q, sizeof q, "SELECT IS_USED_LOCK(%s), NULL", qn);
  my_row row;
  unsigned code;
  mm_status st = session_exec(s, q, 0, CANCEL_ABORT, &row, &code, NULL);
  if (st == MM_ERR_SERVER && code == ER_UNKNOWN_TABLE_CODE && s->mdl) {
    s->mdl = 0; /* the plugin went away */
    return read_holder(s, name, holder, holder_id);
  }
  if (st != MM_OK) return st;
  if (row.cols != 2) {
    set_error(s, "MariaDB at %s: %s (%u)", "IS_USED_LOCK gave no answer", 0);
    return MM_ERR_SERVER;
  }
  if (row.null[0]) return MM_ABSENT;
  if (holder_id) *holder_id = strtoul(row.val[0], NULL, 10);
  if (holder) {
    size_t plen = strlen(prefix);
    if (!row.null[1] && strlen(row.val[1]) > plen && strlen(row.val[1]) - plen <= MM_TOKEN_MAX) {
      holder->token_len = strlen(row.val[1]) - plen;
      memcpy(holder->token, row.val[1] + plen, holder->token_len);
    } else {
      holder->token_len = (size_t) snprintf(holder->token, sizeof holder->token, "mysql-connection:%s", row.val[0]);
    }
    holder->token[holder->token_len] = '\0';
    holder->version = strtoull(row.val[0], NULL, 10);
    holder->witness = 0;
  }
  return MM_OK;
}

/* ---- the operations ----------------------------------------------------- */

static double my_renew_after(const mm_store *st, uint32_t ttl) {
  (void) st;
  return ttl / 3.0;
}

/* Gives back `name` (and its companion) if this session holds it: after a
 * take that was interrupted or failed half-way. A KILL QUERY that landed
 * late may cut the first try short (1317): tried again once. Anything
 * else ends the session, which frees all it had. */
static void give_back_if_ours(my_store *s, const char *qn, const char *qc) {
  char q[1200];
  if (qc)
    snprintf(q, sizeof q, "SELECT IF(IS_USED_LOCK(%s) = CONNECTION_ID(), RELEASE_LOCK(%s), 0), RELEASE_LOCK(%s)", qn,
             qn, qc);
  else
    snprintf(q, sizeof q, "SELECT IF(IS_USED_LOCK(%s) = CONNECTION_ID(), RELEASE_LOCK(%s), 0)", qn, qn);
  for (int attempt = 0; attempt < 2 && s->conn; attempt++) {
    unsigned code;
    char saved[MM_ERROR_MAX];
    memcpy(saved, s->base.error, sizeof saved);
    mm_status st = session_exec(s, q, 0, CANCEL_IGNORE, NULL, &code, NULL);
    memcpy(s->base.error, saved, sizeof saved); /* the take's own error is the one to report */
    if (st == MM_OK) return;
    if (!(st == MM_ERR_SERVER && code == ER_QUERY_INTERRUPTED_CODE)) break;
  }
  if (s->conn) session_drop(s);
}

/*
 * A grant read so long after its GET_LOCK was sent that the session may
 * have sat silent for wait_timeout since the server granted it (this
 * process was stopped with the reply in its socket): the server then
 * dropped the session, freed the lock and may have granted it to another.
 * Asked on the session before the grant counts. MM_OK: still ours.
 * MM_HELD: void (a waiter waits on; a session that held nothing else is
 * replaced at the next try). An error otherwise; a session that had other
 * locks lost them with it, which the error says.
 */
static mm_status confirm_grant(my_store *s, const char *qn, const char *qc, unsigned held_before) {
  char q[300];
  snprintf(q, sizeof q, "SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", qn);
  my_row row;
  unsigned code;
  mm_status st = session_exec(s, q, 0, CANCEL_IGNORE, &row, &code, NULL);
  if (st == MM_OK && row.cols >= 1 && !row.null[0] && atoi(row.val[0]) == 1) return MM_OK;
  if (st == MM_OK) {
    give_back_if_ours(s, qn, qc); /* the companion, if the session still has it */
    return MM_HELD;
  }
  if (st == MM_ERR_CONNECTION && held_before == 0) return MM_HELD;
  if (st == MM_ERR_CONNECTION)
    set_error(s, "MariaDB at %s: %s (%u)",
              "the session ended while a grant waited to be read (this process paused longer than the lease?): "
              "the locks it held are lost",
              0);
  else if (s->conn)
    give_back_if_ours(s, qn, qc);
  return st;
}

/* One GET_LOCK of `key` with `wait` seconds (0: try once). */
static mm_status take(my_store *s, mm_bytes key, mm_bytes token, uint32_t ttl, double wait, int in_wait,
                      mm_lease_record *lease, int *was_killed) {
  s->base.maybe_applied = 0;
  *was_killed = 0;
  int fresh = s->conn == NULL;
  mm_status st = session_ready(s, ttl);
  if (st != MM_OK) return st;
  char name[65], companion[COMPANION_MAX + 1], prefix[21];
  mm_mariadb_lock_name(key, name);
  int with_companion = s->mdl && companion_name(name, token, companion, prefix);
  char qn[140], qc[2 * COMPANION_MAX + 4], q[1200];
  quote(s, name, qn);
  if (with_companion) quote(s, companion, qc);
  if (with_companion)
    snprintf(q, sizeof q, "SELECT CASE GET_LOCK(%s, %.3f) WHEN 1 THEN 1 + (GET_LOCK(%s, 0) <=> 1) WHEN 0 THEN 0 END",
             qn, wait, qc);
  else
    snprintf(q, sizeof q, "SELECT GET_LOCK(%s, %.3f)", qn, wait);
  my_row row;
  unsigned code;
  int killed = 0;
  unsigned held_before = s->holding;
  double sent = mm_monotonic();
  st = session_exec(s, q, wait, in_wait ? CANCEL_KILL : CANCEL_ABORT, &row, &code, &killed);
  *was_killed = killed;
  if (st == MM_ERR_CONNECTION && !fresh && s->holding == 0 && !in_wait) {
    /* The idle session had gone (a server restart, wait_timeout): it held
     * nothing, so a new one may try. */
    fresh = 1;
    if ((st = session_ready(s, ttl)) != MM_OK) return st;
    quote(s, name, qn);
    if (with_companion) quote(s, companion, qc);
    st = session_exec(s, q, wait, CANCEL_ABORT, &row, &code, &killed);
  }
  if (st == MM_ERR_SERVER && code == ER_LOCK_DEADLOCK_CODE) {
    char detail[300];
    snprintf(detail, sizeof detail, "%s: waiting for %.*s (lock name %s) would deadlock (ER_LOCK_DEADLOCK 1213); "
             "this session keeps the locks it holds", MM_MARIADB_DEADLOCK, (int) key.len, key.ptr, name);
    snprintf(s->base.error, sizeof s->base.error, "%s", detail);
    return MM_ERR_DEADLOCK; /* nothing was taken; the session is fine */
  }
  if (st != MM_OK) {
    /* A server error may come after GET_LOCK granted (the companion's
     * part); an interrupt in CANCEL_ABORT mode ended the session; one
     * before the statement was sent changed nothing. */
    if (s->conn && !(st == MM_INTERRUPTED && !killed)) give_back_if_ours(s, qn, with_companion ? qc : NULL);
    return st;
  }
  long r = row.cols >= 1 && !row.null[0] ? strtol(row.val[0], NULL, 10) : -1;
  if (killed) {
    /* The waker fired: whatever the reply, nothing stays held. */
    if (s->conn) give_back_if_ours(s, qn, with_companion ? qc : NULL);
    return MM_INTERRUPTED;
  }
  if (r >= 1 && mm_monotonic() - sent > (double) (s->session_ttl + WAIT_MARGIN) - 1.0) {
    st = confirm_grant(s, qn, with_companion ? qc : NULL, held_before);
      if (st != MM_OK) return st;
  }
  if (r >= 1) {
    my_lease ml = {LEASE_MAGIC, s->generation, s->conn_id, with_companion && r == 2};
    memset(lease, 0, sizeof *lease);
    memcpy(lease->state, &ml, sizeof ml);
    lease->valid_until = INFINITY;
    lease->fencing_token = 0;
    s->holding++;
    return MM_OK;
  }
  if (r == 0) return MM_HELD;
  /* NULL: an error inside GET_LOCK that was not reported as one. */
  give_back_if_ours(s, qn, with_companion ? qc : NULL);
  set_error(s, "MariaDB at %s: %s (%u)", "GET_LOCK returned NULL", 0);
  return MM_ERR_SERVER;
}

static mm_status fill_holder(my_store *s, mm_bytes key, mm_holder *holder) {
  if (holder == NULL || s->conn == NULL) return MM_OK;
  char name[65];
  mm_mariadb_lock_name(key, name);
  memset(holder, 0, sizeof *holder);
  mm_status st = read_holder(s, name, holder, NULL);
  if (st == MM_ABSENT) holder->token_len = 0;
  return st == MM_ABSENT ? MM_OK : st;
}

static mm_status my_try_take(mm_store *st, mm_bytes key, mm_bytes token, uint32_t ttl, mm_lease_record *lease,
                             mm_holder *holder) {
  my_store *s = (my_store *) st;
  int killed;
  if (holder) holder->token_len = 0;
  mm_status r = take(s, key, token, ttl, 0, 0, lease, &killed);
  if (r == MM_HELD) {
    mm_status h = fill_holder(s, key, holder);
    if (h == MM_INTERRUPTED) return MM_INTERRUPTED;
    if (h != MM_OK && holder) holder->token_len = 0; /* who holds it is a nicety; that it is held is known */
  }
  return r;
}

static mm_status my_wait_take(mm_store *st, mm_bytes key, mm_bytes token, uint32_t ttl, double timeout,
                              mm_lease_record *lease, mm_holder *holder) {
  my_store *s = (my_store *) st;
  double end = timeout < 0 ? INFINITY : mm_monotonic() + timeout;
  if (holder) holder->token_len = 0;
  for (;;) {
    double left = end - mm_monotonic();
    if (left <= 0) break;
    double slice = left < SLICE ? left : SLICE;
    if (slice < 0.001) slice = 0.001;
    int killed;
    mm_status r = take(s, key, token, ttl, slice, 1, lease, &killed);
      if (r != MM_HELD) return r;
  }
  mm_status h = fill_holder(s, key, holder);
  if (h == MM_INTERRUPTED) return MM_INTERRUPTED;
  return MM_TIMEOUT;
}

/* The lease's session, if it is this store's current one. */
static int lease_live(my_store *s, const mm_lease_record *lease, my_lease *ml) {
  if (lease == NULL) return 0;
  memcpy(ml, lease->state, sizeof *ml);
  return ml->magic == LEASE_MAGIC && s->conn != NULL && ml->generation == s->generation;
}

static mm_status my_release(mm_store *st, mm_bytes key, mm_bytes token, const mm_lease_record *lease, int unknown) {
  my_store *s = (my_store *) st;
  (void) unknown;
  s->base.maybe_applied = 0;
  my_lease ml;
  if (lease != NULL && !lease_live(s, lease, &ml)) {
    set_error(s, "MariaDB at %s: %s (%u)", "the session that held the lock has ended", 0);
    return MM_ABSENT; /* its session ended: the server freed the lock then */
  }
  if (s->conn == NULL) return MM_ABSENT; /* no session: it holds nothing */
  if (cancelled(s)) return MM_INTERRUPTED; /* nothing sent */
  char name[65], companion[COMPANION_MAX + 1], prefix[21], qn[140], qc[2 * COMPANION_MAX + 4], q[1200];
  mm_mariadb_lock_name(key, name);
  quote(s, name, qn);
  int with_companion = (lease == NULL ? s->mdl : (int) ml.companion) && companion_name(name, token, companion, prefix);
  if (with_companion) {
    quote(s, companion, qc);
    snprintf(q, sizeof q, "SELECT RELEASE_LOCK(%s), RELEASE_LOCK(%s)", qn, qc);
  } else {
    snprintf(q, sizeof q, "SELECT RELEASE_LOCK(%s)", qn);
  }
  my_row row;
  unsigned code;
  mm_status r = session_exec(s, q, 0, CANCEL_IGNORE, &row, &code, NULL);
  if (r == MM_ERR_CONNECTION) return MM_ABSENT; /* the session broke: its locks are gone */
  if (r != MM_OK) return r;
  if (row.cols < 1) {
    set_error(s, "MariaDB at %s: %s (%u)", "RELEASE_LOCK gave no answer", 0);
    return MM_ERR_SERVER;
  }
  int released = !row.null[0] && atoi(row.val[0]) == 1;
  if (s->holding > 0 && (lease != NULL || released)) s->holding--;
  if (row.null[0]) return MM_ABSENT;
  return atoi(row.val[0]) == 1 ? MM_OK : MM_HELD;
}

static mm_status my_refresh(mm_store *st, mm_bytes key, mm_bytes token, uint32_t ttl, mm_lease_record *lease) {
  my_store *s = (my_store *) st;
  (void) token;
  (void) ttl;
  s->base.maybe_applied = 0;
  my_lease ml;
  /* A lease of this store names its session (client.c's _extend passes
   * none: then the current session is asked). */
  memcpy(&ml, lease->state, sizeof ml);
  if ((ml.magic == LEASE_MAGIC && !lease_live(s, lease, &ml)) || s->conn == NULL) {
    set_error(s, "MariaDB at %s: %s (%u)", "the session that held the lock has ended", 0);
    return MM_ABSENT;
  }
  if (cancelled(s)) return MM_INTERRUPTED;
  char name[65], qn[140], q[300];
  mm_mariadb_lock_name(key, name);
  quote(s, name, qn);
  snprintf(q, sizeof q, "SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", qn);
  my_row row;
  unsigned code;
  mm_status r = session_exec(s, q, 0, CANCEL_IGNORE, &row, &code, NULL);
  if (r == MM_ERR_CONNECTION) return MM_ABSENT; /* the session broke: its locks are gone */
  if (r != MM_OK) return r;
  if (row.cols < 1) {
    set_error(s, "MariaDB at %s: %s (%u)", "IS_USED_LOCK gave no answer", 0);
    return MM_ERR_SERVER;
  }
  if (row.null[0]) return MM_ABSENT;
  if (atoi(row.val[0]) != 1) return MM_HELD;
  lease->valid_until = INFINITY;
  return MM_OK;
}

/* For the short calls that need a session but take nothing. */
static mm_status session_any(my_store *s) {
  if (s->conn && s->holding == 0 && mm_monotonic() - s->last_io > s->session_ttl * 0.5) session_drop(s);
  return s->conn ? MM_OK : session_open(s, s->session_ttl ? s->session_ttl : s->default_ttl);
}

static mm_status my_read(mm_store *st, mm_bytes key, mm_holder *holder) {
  my_store *s = (my_store *) st;
  s->base.maybe_applied = 0;
  mm_status r = session_any(s);
  if (r != MM_OK) return r;
  char name[65];
  mm_mariadb_lock_name(key, name);
  memset(holder, 0, sizeof *holder);
  return read_holder(s, name, holder, NULL);
}

static mm_status my_describe(mm_store *st, mm_bytes key, mm_description *out) {
  my_store *s = (my_store *) st;
  memset(out, 0, sizeof *out);
  snprintf(out->where, sizeof out->where, "%s", s->where);
  out->lease_left = -1; /* no expiry: it lives as long as its holder's session */
  mm_status r = my_read(st, key, &out->holder);
  if (r == MM_ABSENT) {
    out->holder.token_len = 0;
    return MM_OK;
  }
  return r;
}

static mm_status my_force_release(mm_store *st, mm_bytes key) {
  my_store *s = (my_store *) st;
  s->base.maybe_applied = 0;
  mm_status r = session_any(s);
  if (r != MM_OK) return r;
  char name[65];
  mm_mariadb_lock_name(key, name);
  unsigned long id = 0;
  r = read_holder(s, name, NULL, &id);
  if (r != MM_OK) return r;
  if (id == s->conn_id) {
    set_error(s, "MariaDB at %s: %s (%u)", "this client's own session holds the lock: release it instead", 0);
    return MM_ERR_SERVER;
  }
  char q[64];
  snprintf(q, sizeof q, "KILL CONNECTION %lu", id);
  unsigned code;
  r = session_exec(s, q, 0, CANCEL_ABORT, NULL, &code, NULL);
  if (r == MM_ERR_SERVER && code == 1094) return MM_ABSENT; /* gone meanwhile */
  return r;
}

static mm_status my_locate(mm_store *st, mm_bytes key, char *host, size_t hostlen, unsigned *port) {
  my_store *s = (my_store *) st;
  (void) key;
  if (s->socket) {
    snprintf(host, hostlen, "%s", s->socket);
    *port = 0;
  } else {
    snprintf(host, hostlen, "%s", s->host);
    *port = s->port;
  }
  return MM_OK;
}

static void free_strings(my_store *s) {
  free(s->host);
  free(s->socket);
  free(s->user);
  if (s->password) memset(s->password, 0, strlen(s->password));
  free(s->password);
  free(s->database);
}

static void my_destroy(mm_store *st) {
  my_store *s = (my_store *) st;
  if (s->conn) mysql_close(s->conn); /* COM_QUIT: the server frees the session's locks */
  s->conn = NULL;
  free_strings(s);
  free(s);
}

/* In a forked child: the socket is the parent's session. Pointed at
 * /dev/null first, so that mysql_close's COM_QUIT goes nowhere; the
 * parent's session is untouched. */
static void my_abandon(mm_store *st) {
  my_store *s = (my_store *) st;
  if (s->conn) {
    my_socket fd = mysql_get_socket(s->conn);
    int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd != MARIADB_INVALID_SOCKET && null_fd >= 0 && dup2(null_fd, fd) >= 0) {
      mysql_close(s->conn);
    } /* else: leaked rather than risk a word to the parent's server */
    if (null_fd >= 0) close(null_fd);
  }
  s->conn = NULL;
  free_strings(s);
  free(s);
}


/* ---- the keeper ----------------------------------------------------------- */

static pthread_mutex_t keeper_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t keeper_cv;
static my_store *keeper_head;
static int keeper_state; /* 0: not started; 1: running; -1: could not start (the renewer alone keeps sessions) */
static pthread_once_t keeper_once = PTHREAD_ONCE_INIT;

static int keeper_cv_init(void) {
  pthread_condattr_t attr;
  if (pthread_condattr_init(&attr) != 0) return -1;
  int rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 && pthread_cond_init(&keeper_cv, &attr) == 0 ? 0 : -1;
  pthread_condattr_destroy(&attr);
  return rc;
}

/* In a forked child: the parent's keeper does not exist here, its list
 * names the parent's sessions (never to be touched), keeper_mu may have
 * been held at the fork, and keeper_cv may count the parent's keeper as a
 * waiter (signalling such a copy can block for ever): all made anew. */
static void keeper_atfork_child(void) {
  pthread_mutex_init(&keeper_mu, NULL);
  keeper_head = NULL;
  keeper_state = keeper_cv_init() == 0 ? 0 : -1;
}

static void keeper_init_once(void) {
  if (keeper_cv_init() != 0 || pthread_atfork(NULL, NULL, keeper_atfork_child) != 0) keeper_state = -1;
}

/* Under keeper_mu. */
static void keeper_unlink(my_store *s) {
  if (!s->kept) return;
  if (s->kprev) s->kprev->knext = s->knext;
  else keeper_head = s->knext;
  if (s->knext) s->knext->kprev = s->kprev;
  s->kprev = s->knext = NULL;
  s->kept = 0;
}

static void *keeper_main(void *arg);

/* After a request (s->io held): a session that holds locks is in the
 * keeper's list, one that holds none is not. */
static void keeper_update(my_store *s) {
  int want = s->conn != NULL && s->holding > 0;
  if (want == s->kept) return;
  pthread_once(&keeper_once, keeper_init_once);
  if (pthread_mutex_lock(&keeper_mu) != 0) return;
  if (!want) {
    keeper_unlink(s);
  } else if (keeper_state >= 0) {
    s->kprev = NULL;
    s->knext = keeper_head;
    if (keeper_head) keeper_head->kprev = s;
    keeper_head = s;
    s->kept = 1;
    if (keeper_state == 0) {
      pthread_t t;
      pthread_attr_t attr;
      int ok = pthread_attr_init(&attr) == 0;
      ok = ok && pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0;
      ok = ok && pthread_create(&t, &attr, keeper_main, NULL) == 0;
      if (ok) pthread_attr_destroy(&attr);
      keeper_state = ok ? 1 : -1;
      if (!ok) keeper_unlink(s);
    }
    pthread_cond_signal(&keeper_cv);
  }
  pthread_mutex_unlock(&keeper_mu);
}

static void *keeper_main(void *arg) {
  (void) arg;
  pthread_setname_np(pthread_self(), "mm mysql keep");
  if (pthread_mutex_lock(&keeper_mu) != 0) return NULL;
  for (;;) {
    double now = mm_monotonic();
    double next = now + 1.0;
    my_store *due = NULL;
    for (my_store *s = keeper_head; s != NULL; s = s->knext) {
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
      session_exec(due, "DO 0", 0, CANCEL_IGNORE, NULL, &code, NULL); /* a failure ends the session */
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
    double wake = keeper_head ? next : now + 3600;
    ts.tv_sec = (time_t) wake;
    ts.tv_nsec = (long) ((wake - (double) ts.tv_sec) * 1e9);
    pthread_cond_timedwait(&keeper_cv, &keeper_mu, &ts);
  }
}

/* Each request on the session, with its io mutex held; the keeper's list
 * follows what the session holds. */
#define WITH_IO(s, call)                                                                                               \
  do {                                                                                                                 \
    if (pthread_mutex_lock(&(s)->io) != 0) {                                                                           \
      snprintf((s)->base.error, sizeof (s)->base.error, "MariaDB at %s: cannot lock the session (pthread)", (s)->where); \
      return MM_ERR_SERVER;                                                                                            \
    }                                                                                                                  \
    mm_status r_ = (call);                                                                                             \
    keeper_update(s);                                                                                                  \
    pthread_mutex_unlock(&(s)->io);                                                                                    \
    return r_;                                                                                                         \
  } while (0)

static mm_status k_try_take(mm_store *st, mm_bytes key, mm_bytes token, uint32_t ttl, mm_lease_record *lease,
                            mm_holder *holder) {
  WITH_IO((my_store *) st, my_try_take(st, key, token, ttl, lease, holder));
}
static mm_status k_wait_take(mm_store *st, mm_bytes key, mm_bytes token, uint32_t ttl, double timeout,
                             mm_lease_record *lease, mm_holder *holder) {
  WITH_IO((my_store *) st, my_wait_take(st, key, token, ttl, timeout, lease, holder));
}
static mm_status k_release(mm_store *st, mm_bytes key, mm_bytes token, const mm_lease_record *lease, int unknown) {
  WITH_IO((my_store *) st, my_release(st, key, token, lease, unknown));
}
static mm_status k_refresh(mm_store *st, mm_bytes key, mm_bytes token, uint32_t ttl, mm_lease_record *lease) {
  WITH_IO((my_store *) st, my_refresh(st, key, token, ttl, lease));
}
static mm_status k_read(mm_store *st, mm_bytes key, mm_holder *holder) { WITH_IO((my_store *) st, my_read(st, key, holder)); }
static mm_status k_describe(mm_store *st, mm_bytes key, mm_description *out) {
  WITH_IO((my_store *) st, my_describe(st, key, out));
}
static mm_status k_force_release(mm_store *st, mm_bytes key) { WITH_IO((my_store *) st, my_force_release(st, key)); }

/* Out of the keeper's list (waiting for a ping in flight), then closed. */
static void k_destroy(mm_store *st) {
  my_store *s = (my_store *) st;
  if (pthread_mutex_lock(&s->io) == 0) {
    if (pthread_mutex_lock(&keeper_mu) == 0) {
      keeper_unlink(s);
      pthread_mutex_unlock(&keeper_mu);
    }
    pthread_mutex_unlock(&s->io);
  }
  pthread_mutex_destroy(&s->io);
  my_destroy(st);
}

static const mm_store_ops my_ops = {
    "mariadb",      MM_KIND_SESSION, MM_CAP_WAIT,  MAX_TTL,     my_renew_after,   k_try_take,
    k_wait_take,    k_release,       k_refresh,    k_read,      k_describe,       k_force_release,
    my_locate,      k_destroy,       my_abandon,
};

static char *dup_or_null(const char *v) {
  if (v == NULL) return NULL;
  return strdup(v);
}

mm_store *mm_mariadb_store_new(const mm_mariadb_options *o, char *errbuf, size_t errlen) {
  if (o->connect_timeout_ms < 1 || o->io_timeout_ms < 1 || o->ttl < 1 || o->ttl > MAX_TTL) {
    snprintf(errbuf, errlen, "MariaDB store: timeouts must be positive and ttl 1 to %u", MAX_TTL);
    return NULL;
  }
  my_store *s = calloc(1, sizeof *s);
  if (s == NULL) {
    snprintf(errbuf, errlen, "MariaDB store: out of memory");
    return NULL;
  }
  s->base.ops = &my_ops;
  s->base.cancel_fd = -1;
  if (pthread_mutex_init(&s->io, NULL) != 0) {
    free(s);
    snprintf(errbuf, errlen, "MariaDB store: pthread_mutex_init failed");
    return NULL;
  }
  s->host = dup_or_null(o->host ? o->host : "localhost");
  s->socket = dup_or_null(o->socket);
  s->user = dup_or_null(o->user);
  s->password = dup_or_null(o->password);
  s->database = dup_or_null(o->database);
  if (s->host == NULL || (o->socket && !s->socket) || (o->user && !s->user) || (o->password && !s->password) ||
      (o->database && !s->database)) {
    free_strings(s);
    pthread_mutex_destroy(&s->io);
    free(s);
    snprintf(errbuf, errlen, "MariaDB store: out of memory");
    return NULL;
  }
  s->port = o->port ? o->port : 3306;
  s->connect_timeout_ms = o->connect_timeout_ms;
  s->io_timeout_ms = o->io_timeout_ms;
  s->default_ttl = o->ttl;
  s->session_ttl = o->ttl;
  if (s->socket)
    snprintf(s->where, sizeof s->where, "%s", s->socket);
  else
    snprintf(s->where, sizeof s->where, "%s:%u", s->host, s->port);
  return &s->base;
}

int mm_mariadb_library_init(void) { return mysql_library_init(0, NULL, NULL); }

#else
/* Built without libmariadb: mariadb_glue.c says so when Client.mysql is called. */
typedef int mm_mariadb_not_built;
#endif
