/*
 * store_mariadb.c - locks as MariaDB/MySQL named locks (GET_LOCK), over
 * libmariadb's non-blocking API (config.backend = :mysql): the store's
 * operations (take, release, refresh, read, ...) and its ops table.
 *
 * The store's other files: mariadb_names.c (lock and companion names, with
 * sha256.c), mariadb_conn.c (a connection, one statement with its deadline,
 * waker and cancel mode, KILL QUERY), mariadb_session.c (the session: open,
 * wait_timeout, replaced when idle) and mariadb_keeper.c (the keeper thread).
 *
 * A session store: a lock lives as long as the connection (session) that
 * took it. The server frees it the moment that session ends - a holder
 * killed, a KILL, a restart, or wait_timeout seconds of silence (set from
 * lock_ttl + 2 s, the slack memcached's leases get on the wire; the
 * renewer's refresh every ttl/3 keeps a live holder's session busy
 * enough). The store never reconnects a session that holds a lock: once
 * it breaks, its locks are lost, and refresh and release say so.
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
 * seconds. So one pthread per server ("mm mysql keep", mariadb_keeper.c),
 * which needs no GVL, sends `DO 0` on each holding session that has been
 * idle for lock_ttl / 3. Every request on a session holds the store's `io`
 * mutex (WITH_IO below); the keeper only try-locks it (a busy session is
 * not idle), so it never waits on a holder and never interleaves with its
 * requests. A ping that fails ends the session (its locks are lost: the
 * next refresh or release says so). The keeper keeps sessions alive; only the renewer's refresh
 * verifies that a lock is still held. A paused process (SIGSTOP) pauses its
 * keeper too, so a paused holder still loses its lock after wait_timeout.
 *
 * Fork. A forked child never closes, quits or uses a session of its
 * parent (a COM_QUIT from the child would end the parent's session and its
 * locks): abandon points the descriptor at /dev/null before freeing.
 *
 * Runs without the GVL; no Ruby API. Every libmariadb result is checked.
 */
#ifdef HAVE_MARIADB
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mysql.h>

#include "lock.h"
#include "mariadb_conn.h"
#include "mariadb_keeper.h"
#include "mariadb_session.h"
#include "store_mariadb.h"

#define SLICE 10.0              /* longest single GET_LOCK wait, seconds */
#define MAX_TTL 2592000u        /* lock_ttl limit (wait_timeout takes up to a year) */
#define LEASE_MAGIC 0x62646169726d6d6dULL /* "mmmariadb" */
#define ER_LOCK_DEADLOCK_CODE 1213
#define ER_QUERY_INTERRUPTED_CODE 1317
#define ER_UNKNOWN_TABLE_CODE 1109

/* What a lease record's state holds. */
typedef struct {
  uint64_t magic;
  uint64_t generation;
  uint64_t conn_id;
  uint32_t companion; /* the companion lock was taken */
} my_lease;

/* ---- reading the holder ------------------------------------------------- */

/* The holder of `name`: MM_OK (holder filled), MM_ABSENT, or an error. */
static mm_status read_holder(my_store *s, const char *name, mm_holder *holder, unsigned long *holder_id) {
  char qn[140], q[1200];
  mm_mariadb_quote(s, name, qn);
  char companion[MM_MARIADB_COMPANION_MAX + 1], prefix[21];
  mm_bytes none = {"", 0};
  mm_mariadb_companion_name(name, none, companion, prefix);
  if (s->mdl)
    snprintf(q, sizeof q,
             "SELECT IS_USED_LOCK(%s), (SELECT TABLE_SCHEMA FROM information_schema.METADATA_LOCK_INFO WHERE "
             "THREAD_ID = IS_USED_LOCK(%s) AND LOCK_TYPE = 'User lock' AND TABLE_SCHEMA LIKE '%s%%' LIMIT 1)",
             qn, qn, prefix);
  else
    snprintf(q, sizeof q, "SELECT IS_USED_LOCK(%s), NULL", qn);
  mm_mariadb_row row;
  unsigned code;
  mm_status st = mm_mariadb_session_exec(s, q, 0, CANCEL_ABORT, &row, &code, NULL);
  if (st == MM_ERR_SERVER && code == ER_UNKNOWN_TABLE_CODE && s->mdl) {
    s->mdl = 0; /* the plugin went away */
    return read_holder(s, name, holder, holder_id);
  }
  if (st != MM_OK) return st;
  if (row.cols != 2) {
    mm_mariadb_set_error(&s->link, "MariaDB at %s: %s (%u)", "IS_USED_LOCK gave no answer", 0);
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
    mm_status st = mm_mariadb_session_exec(s, q, 0, CANCEL_IGNORE, NULL, &code, NULL);
    memcpy(s->base.error, saved, sizeof saved); /* the take's own error is the one to report */
    if (st == MM_OK) return;
    if (!(st == MM_ERR_SERVER && code == ER_QUERY_INTERRUPTED_CODE)) break;
  }
  if (s->conn) mm_mariadb_session_drop(s);
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
  mm_mariadb_row row;
  unsigned code;
  mm_status st = mm_mariadb_session_exec(s, q, 0, CANCEL_IGNORE, &row, &code, NULL);
  if (st == MM_OK && row.cols >= 1 && !row.null[0] && atoi(row.val[0]) == 1) return MM_OK;
  if (st == MM_OK) {
    give_back_if_ours(s, qn, qc); /* the companion, if the session still has it */
    return MM_HELD;
  }
  if (st == MM_ERR_CONNECTION && held_before == 0) return MM_HELD;
  if (st == MM_ERR_CONNECTION)
    mm_mariadb_set_error(&s->link, "MariaDB at %s: %s (%u)",
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
  mm_status st = mm_mariadb_session_ready(s, ttl);
  if (st != MM_OK) return st;
  char name[65], companion[MM_MARIADB_COMPANION_MAX + 1], prefix[21];
  mm_mariadb_lock_name(key, name);
  int with_companion = s->mdl && mm_mariadb_companion_name(name, token, companion, prefix);
  char qn[140], qc[2 * MM_MARIADB_COMPANION_MAX + 4], q[1200];
  mm_mariadb_quote(s, name, qn);
  if (with_companion) mm_mariadb_quote(s, companion, qc);
  if (with_companion)
    snprintf(q, sizeof q, "SELECT CASE GET_LOCK(%s, %.3f) WHEN 1 THEN 1 + (GET_LOCK(%s, 0) <=> 1) WHEN 0 THEN 0 END",
             qn, wait, qc);
  else
    snprintf(q, sizeof q, "SELECT GET_LOCK(%s, %.3f)", qn, wait);
  mm_mariadb_row row;
  unsigned code;
  int killed = 0;
  unsigned held_before = s->holding;
  double sent = mm_monotonic();
  st = mm_mariadb_session_exec(s, q, wait, in_wait ? CANCEL_KILL : CANCEL_ABORT, &row, &code, &killed);
  *was_killed = killed;
  if (st == MM_ERR_CONNECTION && !fresh && s->holding == 0 && !in_wait) {
    /* The idle session had gone (a server restart, wait_timeout): it held
     * nothing, so a new one may try. */
    fresh = 1;
    if ((st = mm_mariadb_session_ready(s, ttl)) != MM_OK) return st;
    mm_mariadb_quote(s, name, qn);
    if (with_companion) mm_mariadb_quote(s, companion, qc);
    st = mm_mariadb_session_exec(s, q, wait, CANCEL_ABORT, &row, &code, &killed);
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
  mm_mariadb_set_error(&s->link, "MariaDB at %s: %s (%u)", "GET_LOCK returned NULL", 0);
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
    mm_mariadb_set_error(&s->link, "MariaDB at %s: %s (%u)", "the session that held the lock has ended", 0);
    return MM_ABSENT; /* its session ended: the server freed the lock then */
  }
  if (s->conn == NULL) return MM_ABSENT; /* no session: it holds nothing */
  if (mm_mariadb_cancelled(&s->link)) return MM_INTERRUPTED; /* nothing sent */
  char name[65], companion[MM_MARIADB_COMPANION_MAX + 1], prefix[21], qn[140], q[1200];
  char qc[2 * MM_MARIADB_COMPANION_MAX + 4];
  mm_mariadb_lock_name(key, name);
  mm_mariadb_quote(s, name, qn);
  int with_companion =
      (lease == NULL ? s->mdl : (int) ml.companion) && mm_mariadb_companion_name(name, token, companion, prefix);
  if (with_companion) {
    mm_mariadb_quote(s, companion, qc);
    snprintf(q, sizeof q, "SELECT RELEASE_LOCK(%s), RELEASE_LOCK(%s)", qn, qc);
  } else {
    snprintf(q, sizeof q, "SELECT RELEASE_LOCK(%s)", qn);
  }
  mm_mariadb_row row;
  unsigned code;
  mm_status r = mm_mariadb_session_exec(s, q, 0, CANCEL_IGNORE, &row, &code, NULL);
  if (r == MM_ERR_CONNECTION) return MM_ABSENT; /* the session broke: its locks are gone */
  if (r != MM_OK) return r;
  if (row.cols < 1) {
    mm_mariadb_set_error(&s->link, "MariaDB at %s: %s (%u)", "RELEASE_LOCK gave no answer", 0);
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
    mm_mariadb_set_error(&s->link, "MariaDB at %s: %s (%u)", "the session that held the lock has ended", 0);
    return MM_ABSENT;
  }
  if (mm_mariadb_cancelled(&s->link)) return MM_INTERRUPTED;
  char name[65], qn[140], q[300];
  mm_mariadb_lock_name(key, name);
  mm_mariadb_quote(s, name, qn);
  snprintf(q, sizeof q, "SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", qn);
  mm_mariadb_row row;
  unsigned code;
  mm_status r = mm_mariadb_session_exec(s, q, 0, CANCEL_IGNORE, &row, &code, NULL);
  if (r == MM_ERR_CONNECTION) return MM_ABSENT; /* the session broke: its locks are gone */
  if (r != MM_OK) return r;
  if (row.cols < 1) {
    mm_mariadb_set_error(&s->link, "MariaDB at %s: %s (%u)", "IS_USED_LOCK gave no answer", 0);
    return MM_ERR_SERVER;
  }
  if (row.null[0]) return MM_ABSENT;
  if (atoi(row.val[0]) != 1) return MM_HELD;
  lease->valid_until = INFINITY;
  return MM_OK;
}


/* A read on an idle session that had gone (killed while idle, a restart)
 * asks again once on a new one: it holds nothing, and a read changes
 * nothing. */
static mm_status my_read(mm_store *st, mm_bytes key, mm_holder *holder) {
  my_store *s = (my_store *) st;
  s->base.maybe_applied = 0;
  uint64_t generation = s->generation;
  unsigned held = s->holding;
  mm_status r = mm_mariadb_session_any(s);
  if (r != MM_OK) return r;
  int fresh = s->generation != generation;
  char name[65];
  mm_mariadb_lock_name(key, name);
  memset(holder, 0, sizeof *holder);
  r = read_holder(s, name, holder, NULL);
  if (r == MM_ERR_CONNECTION && !fresh && held == 0 && s->conn == NULL) {
    if ((r = mm_mariadb_session_any(s)) != MM_OK) return r;
    memset(holder, 0, sizeof *holder);
    r = read_holder(s, name, holder, NULL);
  }
  return r;
}

static mm_status my_describe(mm_store *st, mm_bytes key, mm_description *out) {
  my_store *s = (my_store *) st;
  memset(out, 0, sizeof *out);
  snprintf(out->where, sizeof out->where, "%s", s->link.where);
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
  mm_status r = mm_mariadb_session_any(s);
  if (r != MM_OK) return r;
  char name[65];
  mm_mariadb_lock_name(key, name);
  unsigned long id = 0;
  r = read_holder(s, name, NULL, &id);
  if (r != MM_OK) return r;
  if (id == s->conn_id) {
    mm_mariadb_set_error(&s->link, "MariaDB at %s: %s (%u)",
                         "this client's own session holds the lock: release it instead", 0);
    return MM_ERR_SERVER;
  }
  char q[64];
  snprintf(q, sizeof q, "KILL CONNECTION %lu", id);
  unsigned code;
  r = mm_mariadb_session_exec(s, q, 0, CANCEL_ABORT, NULL, &code, NULL);
  if (r == MM_ERR_SERVER && code == 1094) return MM_ABSENT; /* gone meanwhile */
  return r;
}

static mm_status my_locate(mm_store *st, mm_bytes key, char *host, size_t hostlen, unsigned *port) {
  my_store *s = (my_store *) st;
  (void) key;
  if (s->link.socket) {
    snprintf(host, hostlen, "%s", s->link.socket);
    *port = 0;
  } else {
    snprintf(host, hostlen, "%s", s->link.host);
    *port = s->link.port;
  }
  return MM_OK;
}

static void free_strings(my_store *s) {
  free(s->link.host);
  free(s->link.socket);
  free(s->link.user);
  if (s->link.password) memset(s->link.password, 0, strlen(s->link.password));
  free(s->link.password);
  free(s->link.database);
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

/* Each request on the session, with its io mutex held; the keeper's list
 * follows what the session holds. */
#define WITH_IO(s, call)                                                                                        \
  do {                                                                                                          \
    if (pthread_mutex_lock(&(s)->io) != 0) {                                                                    \
      snprintf((s)->base.error, sizeof (s)->base.error, "MariaDB at %s: cannot lock the session (pthread)",     \
               (s)->link.where);                                                                                \
      return MM_ERR_SERVER;                                                                                     \
    }                                                                                                           \
    mm_status r_ = (call);                                                                                      \
    mm_mariadb_keeper_update(s);                                                                                \
    pthread_mutex_unlock(&(s)->io);                                                                             \
    return r_;                                                                                                  \
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
static mm_status k_read(mm_store *st, mm_bytes key, mm_holder *holder) {
  WITH_IO((my_store *) st, my_read(st, key, holder));
}
static mm_status k_describe(mm_store *st, mm_bytes key, mm_description *out) {
  WITH_IO((my_store *) st, my_describe(st, key, out));
}
static mm_status k_force_release(mm_store *st, mm_bytes key) { WITH_IO((my_store *) st, my_force_release(st, key)); }

/* Out of the keeper's list (waiting for a ping in flight), then closed. */
static void k_destroy(mm_store *st) {
  my_store *s = (my_store *) st;
  if (pthread_mutex_lock(&s->io) == 0) {
    mm_mariadb_keeper_forget(s);
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
  s->link.store = &s->base;
  if (pthread_mutex_init(&s->io, NULL) != 0) {
    free(s);
    snprintf(errbuf, errlen, "MariaDB store: pthread_mutex_init failed");
    return NULL;
  }
  s->link.host = dup_or_null(o->host ? o->host : "localhost");
  s->link.socket = dup_or_null(o->socket);
  s->link.user = dup_or_null(o->user);
  s->link.password = dup_or_null(o->password);
  s->link.database = dup_or_null(o->database);
  if (s->link.host == NULL || (o->socket && !s->link.socket) || (o->user && !s->link.user) ||
      (o->password && !s->link.password) || (o->database && !s->link.database)) {
    free_strings(s);
    pthread_mutex_destroy(&s->io);
    free(s);
    snprintf(errbuf, errlen, "MariaDB store: out of memory");
    return NULL;
  }
  s->link.port = o->port ? o->port : 3306;
  s->link.connect_timeout_ms = o->connect_timeout_ms;
  s->link.io_timeout_ms = o->io_timeout_ms;
  s->default_ttl = o->ttl;
  s->session_ttl = o->ttl;
  if (s->link.socket)
    snprintf(s->link.where, sizeof s->link.where, "%s", s->link.socket);
  else
    snprintf(s->link.where, sizeof s->link.where, "%s:%u", s->link.host, s->link.port);
  return &s->base;
}

int mm_mariadb_library_init(void) { return mysql_library_init(0, NULL, NULL); }

#else
/* Built without libmariadb: mariadb_glue.c says so when Client.mysql is called. */
typedef int mm_mariadb_not_built;
#endif