/*
 * store_quorum.c - a lock held on a majority of N >= 3 independent memcached
 * servers (the Redlock scheme, asked in parallel), with fencing tokens.
 *
 * Every request goes to all servers at once: each server's request is
 * written, then one poll over all the sockets reads the replies as they
 * come. Replies are parsed by the connection layer store_memcached.c uses
 * too (memcached_conn.c), as strictly: exactly the reply each request
 * allows; anything else closes that connection.
 *
 * Keys on each server:
 *   K          the lock: value = holder's token, expiry = the lease (+2 s for
 *              memcached's one-second clock), as with :memcached
 *   ~f<K>      the fence: the last fencing token given on that server, no
 *              expiry (a key longer than 248 bytes: "~f", its first 232
 *              bytes and a 64-bit hash of it - two ids sharing a fence only
 *              makes their tokens grow faster)
 *   ~mm:epoch  the server's sentinel: created with no expiry by the first
 *              client that finds it missing; its value is the server's
 *              uptime then. Gone means the server forgot everything
 *              (flush_all, restart, eviction).
 *
 * Counting. A server counts toward a majority only when it is "mature": its
 * process has been up (stats uptime), and its sentinel has existed, for
 * longer than the longest lease (max_ttl + the wire margin + 3 s of clock
 * slack). A server that restarted or was flushed may have forgotten a lock
 * someone still holds: until every such lease has run out, its vote could
 * grant that lock twice. A young server is still asked (so it learns the
 * locks), it just does not count. Each new connection starts with "stats"
 * and "stats settings" in the same write as its first request (identity,
 * uptime, evictions); every request reads the sentinel.
 *
 * take     one round trip: on every server "add K noreply" + "gets K ~fK
 *          ~mm:epoch". Won on a server = K holds our token there. With wins on
 *          a majority of mature servers, still within validity (ttl - time
 *          taken - drift), a second round trip writes the fence
 *          t = max(fences read, wall-clock microseconds) + 1 to the servers
 *          won (cas on the fence read, or add when there was none); the take
 *          counts when a mature majority stored it within validity. Anything
 *          less: the take is undone on every server it may have reached.
 *          Successive majorities intersect, so t grows as long as one
 *          server of the intersection kept its fence (a young server never
 *          counts, so that server is mature: it kept it).
 * release  gets K everywhere, then a cas expiring K now on those where it
 *          is ours (an atomic compare-and-delete on the connection the CAS
 *          was read on).
 * refresh  gets K everywhere, then on those where it is ours a cas with the
 *          new lease, and an add where K is missing (a server that came
 *          back learns the lock again); kept = a mature majority stored it
 *          within validity. Otherwise the lock is lost.
 *
 * An answer from fewer than a majority of mature servers is an error
 * (MM_ERR_CONNECTION, naming every server's trouble), never "nobody holds
 * it". Once a majority has answered, the others get a short grace and are
 * then dropped from this request (their connection closed): a paused
 * server costs each request a few milliseconds, not io_timeout.
 *
 * All functions here run without the GVL and use no Ruby API.
 */
#define _GNU_SOURCE /* ppoll */
#include "store_quorum.h"
#include "memcached_conn.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define Q_WIRE_MARGIN 2          /* seconds added to a lease on the wire (memcached's clock) */
#define Q_MATURE_SLACK 3         /* memcached reports uptime from 2 s before it started, +1 tick */
#define Q_VALUE_MAX 1024         /* longest value accepted in a reply (tokens are <= 200) */
#define Q_WBUF 2048
#define Q_MAX_EXPECT 8
#define Q_INTERRUPT_GRACE 0.02
#define Q_STRAGGLER_MIN 0.02     /* once a majority answered: the others get max(this, 2x elapsed) */
#define Q_STRAGGLER_SKIP 0.25    /* a server dropped as too slow is not asked for this long */
#define Q_RETRY_TIMEOUT 1.0      /* a server that refused a connection is not asked for this long */
#define Q_SENTINEL "~mm:epoch"

enum { EX_STATS, EX_SETTINGS, EX_GETS, EX_STATUS };
enum { SR_IDLE, SR_ACTIVE, SR_DONE, SR_FAILED };

typedef struct {
  mmc_conn conn;
  int connecting;
  char wbuf[Q_WBUF];
  size_t wlen, wpos;
  /* who it is */
  int probed;             /* stats read on this connection */
  double probe_mono;      /* when */
  uint64_t uptime;        /* at probe_mono */
  uint64_t pid;
  int64_t started;        /* time - uptime: with pid, the process's identity */
  double young_until;     /* monotonic: does not count before */
  int evicts;             /* "evictions on" */
  int warned;
  uint64_t sentinel_cas;  /* of the sentinel last seen (0: none yet) */
  int need_sentinel;      /* add the sentinel with the next request */
  /* the request in progress */
  int state;
  int wrote_store;        /* a store command is in this request */
  int expect[Q_MAX_EXPECT];
  const char *const *accepted[Q_MAX_EXPECT];
  int nexpect, cur;
  size_t value_left;      /* in a VALUE's data: its length; 0 otherwise */
  int value_which;        /* 0 lock, 1 fence, 2 sentinel */
  uint64_t value_cas;
  char error[400];
  /* results */
  int got_lock, got_fence, got_sentinel;
  char token[MM_TOKEN_MAX + 1];
  size_t token_len;
  uint64_t lock_cas, fence, fence_cas, sentinel_uptime, read_sentinel_cas;
  int fence_bad;
  int status[Q_MAX_EXPECT];
  int nstatus;
  double answered_at;
} q_server;

/* The last take of a store: the CAS of its item on each server won, read on
 * the connection still open if its generation is unchanged - then a
 * release is one round trip (a cas that expires the item only if nobody
 * changed it since). */
typedef struct {
  uint64_t id; /* 0: none */
  char key[MM_KEY_MAX];
  size_t key_len;
  uint64_t cas[MM_QUORUM_MAX_SERVERS], generation[MM_QUORUM_MAX_SERVERS];
} q_last_take;

typedef struct {
  mm_store base;
  q_last_take last;
  mm_store_ops ops; /* max_ttl is this store's */
  q_server *servers;
  size_t n, majority;
  double connect_timeout, io_timeout;
  uint32_t max_ttl;
  /* the request in progress: the keys a gets reads */
  char fence_key[MM_KEY_MAX + 1];
  size_t fence_len;
  mm_bytes key;
} q_store;

static int is_cancelled(const q_store *q) {
  return q->base.cancelled != NULL && __atomic_load_n(q->base.cancelled, __ATOMIC_SEQ_CST);
}

/* The seconds a server must have kept its items before its vote counts. */
static double mature_after(const q_store *q) { return (double) q->max_ttl + Q_WIRE_MARGIN + Q_MATURE_SLACK; }

static int mature(const q_store *q, const q_server *s, double now) {
  (void) q;
  return s->probed && now >= s->young_until;
}

/* ---- connections ----------------------------------------------------------- */

static void srv_close(q_server *s) {
  mmc_conn_close(&s->conn);
  s->connecting = 0;
  s->probed = 0;
}

static void srv_fail(q_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void srv_fail(q_server *s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->error, sizeof s->error, fmt, ap);
  va_end(ap);
  srv_close(s);
  s->state = SR_FAILED;
}

/* Starts a non-blocking connect (to the server's first address). 0, or -1
 * with the server failed. */
static int srv_connect(q_server *s, double now) {
  mmc_conn *c = &s->conn;
  if (now < c->retry_at) {
    srv_fail(s, "%s (not retried for another %.2f s)", c->connect_error, c->retry_at - now);
    return -1;
  }
  mmc_addresses addrs;
  char why[MMC_WHY_MAX];
  int rc = mmc_addresses_get(c, &addrs, why, sizeof why);
  if (rc != 0) {
    srv_fail(s, "%s", why);
    if (rc == MMC_ADDR_RESOLVE) {
      c->retry_at = now + Q_RETRY_TIMEOUT;
      memcpy(c->connect_error, s->error, sizeof c->connect_error);
    }
    return -1;
  }
  int fd, in_progress;
  int err = mmc_connect_start(addrs.first, &fd, &in_progress);
  mmc_addresses_free(&addrs);
  if (err != 0) {
    srv_fail(s, "could not connect: %s", strerror(err));
    if (err != EMFILE && err != ENFILE) c->retry_at = now + Q_RETRY_TIMEOUT;
    memcpy(c->connect_error, s->error, sizeof c->connect_error);
    return -1;
  }
  mmc_conn_opened(c, fd);
  s->connecting = 1; /* connected or not: the first poll for writing tells */
  s->probed = 0;
  return 0;
}

/* ---- building requests ----------------------------------------------------- */

static void srv_write(q_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void srv_write(q_server *s, const char *fmt, ...) {
  if (s->state != SR_ACTIVE) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(s->wbuf + s->wlen, sizeof s->wbuf - s->wlen, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t) n >= sizeof s->wbuf - s->wlen) {
    srv_fail(s, "request too long");
    return;
  }
  s->wlen += (size_t) n;
}

static void srv_expect(q_server *s, int kind, const char *const *accepted) {
  if (s->state != SR_ACTIVE || s->nexpect >= Q_MAX_EXPECT) return;
  s->accepted[s->nexpect] = accepted;
  s->expect[s->nexpect++] = kind;
}

/* The sentinel's value: the server's uptime now, as this client reckons it. */
static uint64_t srv_uptime_now(const q_server *s, double now) {
  double up = (double) s->uptime + (now - s->probe_mono);
  return up < 0 ? 0 : (uint64_t) up;
}

/* Makes `s` part of the next request: connects when needed, and prefixes
 * the probe ("stats", "stats settings") on a new connection and the
 * sentinel's add when it was found missing. Returns 1 when it is in.
 * `same_connection`: a second step that uses a CAS read by the first, on
 * the connection it was read on (a CAS from another server process could
 * match a stranger's item): without it, the server is out of this request. */
static int srv_begin(q_server *s, double now, int same_connection) {
  s->state = SR_ACTIVE;
  s->wlen = s->wpos = 0;
  s->nexpect = s->cur = 0;
  s->value_left = 0;
  s->wrote_store = 0;
  s->got_lock = s->got_fence = s->got_sentinel = 0;
  s->token_len = 0;
  s->lock_cas = s->fence = s->fence_cas = s->sentinel_uptime = s->read_sentinel_cas = 0;
  s->fence_bad = 0;
  s->nstatus = 0;
  s->answered_at = 0;
  if (s->conn.fd >= 0 && mmc_conn_stray(&s->conn)) srv_close(s); /* bytes nobody asked for */
  if (s->conn.fd >= 0 && !s->connecting && !same_connection) {
    /* An idle connection with something to read has been closed by its
     * server (restarted, idle timeout) or sent what nobody asked: a new one,
     * rather than a failed request. */
    struct pollfd p = {s->conn.fd, POLLIN, 0};
    if (poll(&p, 1, 0) != 0) srv_close(s);
  }
  if (s->conn.fd < 0 && same_connection) {
    srv_fail(s, "the connection was lost between two steps of the request");
    return 0;
  }
  if (s->conn.fd < 0 && srv_connect(s, now) != 0) return 0;
  s->error[0] = '\0';
  if (!s->probed) {
    srv_write(s, "stats\r\nstats settings\r\n");
    srv_expect(s, EX_STATS, NULL);
    srv_expect(s, EX_SETTINGS, NULL);
  } else if (s->need_sentinel) {
    srv_write(s, "add " Q_SENTINEL " 0 0 %d noreply\r\n%llu\r\n", snprintf(NULL, 0, "%llu", (unsigned long long) srv_uptime_now(s, now)),
              (unsigned long long) srv_uptime_now(s, now));
    s->need_sentinel = 0;
  }
  return s->state == SR_ACTIVE;
}

/* ---- parsing replies ------------------------------------------------------- */

/* A line that is not the reply expected: the server fails this request. */
static void unexpected(q_server *s, const char *line, size_t len) {
  char why[MMC_WHY_MAX];
  mmc_unexpected(line, len, why, sizeof why);
  srv_fail(s, "%s", why);
}

/* The server's process changed, or it forgot its items: it does not count
 * until a whole lease has passed. */
static void srv_young_from(q_store *q, q_server *s, double now, double age) {
  double until = now + mature_after(q) - (age > 0 ? age : 0);
  if (until > s->young_until) s->young_until = until;
}

static void on_stat(q_server *s, int settings, mm_bytes name, mm_bytes val) {
  uint64_t v;
  if (settings) {
    if (mmc_word_is(name.ptr, name.len, "evictions")) s->evicts = mmc_word_is(val.ptr, val.len, "on");
    return;
  }
  if (mmc_word_is(name.ptr, name.len, "pid") && mmc_number(val.ptr, val.len, UINT32_MAX, &v)) s->pid = v;
  else if (mmc_word_is(name.ptr, name.len, "uptime") && mmc_number(val.ptr, val.len, UINT32_MAX, &v)) s->uptime = v;
  else if (mmc_word_is(name.ptr, name.len, "time") && mmc_number(val.ptr, val.len, UINT32_MAX * 2ULL, &v))
    s->started = (int64_t) v;
}

/* After "stats": the process's identity and age. */
static void on_stats_end(q_store *q, q_server *s, double now) {
  s->started -= (int64_t) s->uptime;
  s->probe_mono = now;
  s->probed = 1;
  s->sentinel_cas = 0; /* a new connection: the sentinel is read afresh */
  srv_young_from(q, s, now, (double) s->uptime);
}

/* A line of the reply in progress. 1: that reply is complete. */
static int on_line(q_store *q, q_server *s, const char *line, size_t len, double now) {
  int kind = s->expect[s->cur];
  if (kind == EX_STATS || kind == EX_SETTINGS) {
    if (mmc_word_is(line, len, "END")) {
      if (kind == EX_STATS) on_stats_end(q, s, now);
      return 1;
    }
    mm_bytes name, val;
    if (!mmc_stat_line(line, len, &name, &val)) {
      unexpected(s, line, len);
      return 0;
    }
    on_stat(s, kind == EX_SETTINGS, name, val);
    return 0;
  }
  if (kind == EX_STATUS) {
    int i = mmc_status(line, len, s->accepted[s->cur]);
    if (i < 0) {
      unexpected(s, line, len);
      return 0;
    }
    s->status[s->nstatus++] = i;
    return 1;
  }
  /* EX_GETS */
  if (mmc_word_is(line, len, "END")) return 1;
  if (!mmc_starts_with(line, len, "VALUE ")) {
    unexpected(s, line, len);
    return 0;
  }
  mm_bytes key;
  uint64_t bytes, cas;
  char ex[200];
  mmc_excerpt(line, len, ex, sizeof ex);
  if (!mmc_value_header(line, len, Q_VALUE_MAX, &key, &bytes, &cas)) {
    srv_fail(s, "malformed reply \"%s\" (expected VALUE <key> <flags> <bytes> <cas>, at most %d bytes)", ex, Q_VALUE_MAX);
    return 0;
  }
  int which;
  if (mmc_bytes_is(key.ptr, key.len, q->key) && !s->got_lock) which = 0;
  else if (mmc_bytes_is(key.ptr, key.len, (mm_bytes){q->fence_key, q->fence_len}) && !s->got_fence) which = 1;
  else if (mmc_word_is(key.ptr, key.len, Q_SENTINEL) && !s->got_sentinel) which = 2;
  else {
    srv_fail(s, "unexpected reply \"%s\" (a key not asked for, or twice)", ex);
    return 0;
  }
  if (cas == 0) {
    srv_fail(s, "returned CAS 0 (server started with -C?): MegaMutex needs CAS");
    return 0;
  }
  s->value_which = which;
  s->value_cas = cas;
  s->value_left = (size_t) bytes + 1; /* +1: a 0-byte value is still pending */
  return 0;
}

/* A VALUE's data (complete, with its CRLF, in p[0..n+2)). */
static void on_value(q_server *s, const char *p, size_t n) {
  if (p[n] != '\r' || p[n + 1] != '\n') {
    srv_fail(s, "malformed reply (the value is longer than announced)");
    return;
  }
  if (s->value_which == 0) {
    memcpy(s->token, p, n > MM_TOKEN_MAX ? MM_TOKEN_MAX : n);
    s->token_len = mmc_value_token(s->token, n); /* longer: a holder, never a token */
    s->got_lock = 1;
    s->lock_cas = s->value_cas;
  } else if (s->value_which == 1) {
    s->got_fence = 1;
    s->fence_cas = s->value_cas;
    if (!mmc_number(p, n, UINT64_MAX / 2, &s->fence)) s->fence_bad = 1;
  } else {
    s->got_sentinel = 1;
    s->read_sentinel_cas = s->value_cas;
    if (!mmc_number(p, n, UINT64_MAX, &s->sentinel_uptime)) s->sentinel_uptime = 0;
  }
}

/* After a gets that asked for the sentinel: a server whose sentinel is gone
 * or new forgot its items (restart, flush_all, eviction). */
static void check_sentinel(q_store *q, q_server *s, double now) {
  if (!s->got_sentinel) {
    s->need_sentinel = 1;
    s->sentinel_cas = 0;
    srv_young_from(q, s, now, 0);
    return;
  }
  if (s->sentinel_cas != 0 && s->sentinel_cas == s->read_sentinel_cas) return; /* unchanged */
  if (s->sentinel_cas != 0) {
    /* Replaced since we last looked: it forgot, and we do not know when. */
    srv_young_from(q, s, now, 0);
  } else {
    /* First look on this connection: as old as the sentinel (by the
     * server's own clock; a value that makes no sense: new). */
    uint64_t up = srv_uptime_now(s, now);
    double age = up > s->sentinel_uptime ? (double) (up - s->sentinel_uptime) : 0;
    srv_young_from(q, s, now, age);
  }
  s->sentinel_cas = s->read_sentinel_cas;
}

/* Parses what is buffered. */
static void srv_consume(q_store *q, q_server *s, double now) {
  while (s->state == SR_ACTIVE) {
    if (s->cur >= s->nexpect) {
      if (mmc_conn_stray(&s->conn)) {
        char ex[100];
        mmc_excerpt(s->conn.rbuf + s->conn.rpos, s->conn.rlen - s->conn.rpos, ex, sizeof ex);
        srv_fail(s, "unexpected reply \"%s\" (sent before it was asked for)", ex);
        return;
      }
      s->state = SR_DONE;
      s->answered_at = now;
      return;
    }
    mmc_conn *c = &s->conn;
    if (s->value_left > 0) {
      size_t n = s->value_left - 1;
      if (c->rlen - c->rpos < n + 2) return;
      on_value(s, c->rbuf + c->rpos, n);
      if (s->state != SR_ACTIVE) return;
      c->rpos += n + 2;
      s->value_left = 0;
      continue;
    }
    char *line, why[MMC_WHY_MAX];
    size_t len;
    mmc_line_status ls = mmc_next_line(c, &line, &len, why, sizeof why);
    if (ls == MMC_MORE) return;
    if (ls == MMC_BAD) {
      srv_fail(s, "%s", why);
      return;
    }
    if (on_line(q, s, line, len, now)) s->cur++;
  }
}

/* ---- one request to many servers ------------------------------------------ */

/* Runs the request every SR_ACTIVE server has in its buffer. Returns
 * MM_OK (each server is SR_DONE or SR_FAILED), or MM_INTERRUPTED. */
static mm_status run(q_store *q, int quorum_early) {
  double start = mmc_now();
  double deadline = start + q->io_timeout + q->connect_timeout;
  double grace_until = 0, straggle_until = 0, straggle_from = 0;
  struct pollfd pfd[MM_QUORUM_MAX_SERVERS + 1];
  size_t idx[MM_QUORUM_MAX_SERVERS + 1];
  for (;;) {
    double now = mmc_now();
    size_t done = 0, active = 0;
    for (size_t i = 0; i < q->n; i++) {
      q_server *s = &q->servers[i];
      if (s->state == SR_ACTIVE) {
        if (s->connecting && now > start + q->connect_timeout) {
          srv_fail(s, "could not connect: timed out after %.3g s (connect_timeout)", q->connect_timeout);
          s->conn.retry_at = now + Q_RETRY_TIMEOUT;
          memcpy(s->conn.connect_error, s->error, sizeof s->conn.connect_error);
        } else if (!s->connecting && now > deadline) {
          srv_fail(s, "timed out after %.3g s (io_timeout)", q->io_timeout);
        } else if (straggle_until != 0 && now > straggle_until) {
          srv_fail(s, "too slow: dropped %.0f ms after a majority had answered", (now - straggle_from) * 1000);
          s->conn.retry_at = now + Q_STRAGGLER_SKIP;
          memcpy(s->conn.connect_error, s->error, sizeof s->conn.connect_error);
        }
      }
      if (s->state == SR_ACTIVE) active++;
      else if (s->state == SR_DONE && mature(q, s, now)) done++;
    }
    if (active == 0) return MM_OK;
    if (quorum_early && straggle_until == 0 && done >= q->majority) {
      double wait = 2 * (now - start);
      straggle_until = now + (wait > Q_STRAGGLER_MIN ? wait : Q_STRAGGLER_MIN);
      straggle_from = now;
    }
    int cancel = is_cancelled(q);
    if (cancel) {
      int wrote = 0;
      for (size_t i = 0; i < q->n; i++)
        if (q->servers[i].state == SR_ACTIVE && q->servers[i].wrote_store && q->servers[i].wpos > 0) wrote = 1;
      if (!wrote) {
        for (size_t i = 0; i < q->n; i++)
          if (q->servers[i].state == SR_ACTIVE) srv_fail(&q->servers[i], "interrupted");
        return MM_INTERRUPTED;
      }
      q->base.maybe_applied = 1;
      if (grace_until == 0) grace_until = now + Q_INTERRUPT_GRACE;
      if (now >= grace_until) {
        for (size_t i = 0; i < q->n; i++)
          if (q->servers[i].state == SR_ACTIVE) srv_fail(&q->servers[i], "interrupted");
        return MM_INTERRUPTED;
      }
    }
    nfds_t n = 0;
    double until = deadline;
    for (size_t i = 0; i < q->n; i++) {
      q_server *s = &q->servers[i];
      if (s->state != SR_ACTIVE) continue;
      pfd[n].fd = s->conn.fd;
      pfd[n].events = (short) ((s->connecting || s->wpos < s->wlen) ? POLLOUT : POLLIN);
      pfd[n].revents = 0;
      idx[n++] = i;
      if (s->connecting && start + q->connect_timeout < until) until = start + q->connect_timeout;
    }
    if (straggle_until != 0 && straggle_until < until) until = straggle_until;
    if (grace_until != 0 && grace_until < until) until = grace_until;
    if (!cancel && q->base.cancel_fd >= 0) {
      pfd[n].fd = q->base.cancel_fd;
      pfd[n].events = POLLIN;
      pfd[n].revents = 0;
      idx[n++] = SIZE_MAX;
    }
    double left = until - now;
    if (left < 0) left = 0;
    struct timespec ts;
    ts.tv_sec = (time_t) left;
    ts.tv_nsec = (long) ((left - (double) ts.tv_sec) * 1e9);
    int r = ppoll(pfd, n, &ts, NULL);
    if (r < 0 && errno != EINTR) {
      int err = errno;
      for (size_t i = 0; i < q->n; i++)
        if (q->servers[i].state == SR_ACTIVE) srv_fail(&q->servers[i], "poll: %s", strerror(err));
      return MM_OK;
    }
    if (r <= 0) continue;
    now = mmc_now();
    for (nfds_t j = 0; j < n; j++) {
      if (idx[j] == SIZE_MAX || pfd[j].revents == 0) continue;
      q_server *s = &q->servers[idx[j]];
      if (s->connecting) {
        int err = mmc_connect_result(s->conn.fd);
        if (err != 0) {
          srv_fail(s, "could not connect: %s", strerror(err));
          s->conn.retry_at = now + Q_RETRY_TIMEOUT;
          memcpy(s->conn.connect_error, s->error, sizeof s->conn.connect_error);
          continue;
        }
        s->connecting = 0;
        s->conn.retry_at = 0;
      }
      if (s->wpos < s->wlen) {
        ssize_t w = mmc_send(&s->conn, s->wbuf + s->wpos, s->wlen - s->wpos);
        if (w > 0) s->wpos += (size_t) w;
        else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) srv_fail(s, "%s", strerror(errno));
        continue;
      }
      ssize_t got = mmc_recv(&s->conn);
      if (got == 0) {
        srv_fail(s, "the server closed the connection");
        continue;
      }
      if (got < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) srv_fail(s, "%s", strerror(errno));
        continue;
      }
      srv_consume(q, s, now);
    }
  }
}

/* ---- the keys ---------------------------------------------------------------- */

static void set_key(q_store *q, mm_bytes key) {
  q->key = key;
  q->fence_len = mmc_fence_key(key, q->fence_key, sizeof q->fence_key);
}

/* ---- counting --------------------------------------------------------------- */

static int holds(const q_server *s, mm_bytes token) {
  return s->state == SR_DONE && s->got_lock && s->token_len == token.len && memcmp(s->token, token.ptr, token.len) == 0;
}

static size_t count_mature_done(const q_store *q, double now) {
  size_t n = 0;
  for (size_t i = 0; i < q->n; i++)
    if (q->servers[i].state == SR_DONE && mature(q, &q->servers[i], now)) n++;
  return n;
}

/* "quorum of 3 (need 2): a:1 timed out; b:2 restarted 3 s ago, counts in 30 s; ..." */
static mm_status no_majority(q_store *q, const char *doing, double now) {
  size_t len = (size_t) snprintf(q->base.error, sizeof q->base.error,
                                 "quorum of %zu memcached servers failed to %s: %zu of the %zu needed answered and count",
                                 q->n, doing, count_mature_done(q, now), q->majority);
  for (size_t i = 0; i < q->n && len < sizeof q->base.error; i++) {
    q_server *s = &q->servers[i];
    if (s->state == SR_FAILED)
      len += (size_t) snprintf(q->base.error + len, sizeof q->base.error - len, "; %s: %s", s->conn.label, s->error);
    else if (s->state == SR_DONE && !mature(q, s, now))
      len += (size_t) snprintf(q->base.error + len, sizeof q->base.error - len,
                               "; %s restarted or forgot its items recently: counts in %.0f s (quorum_max_ttl)",
                               s->conn.label, s->young_until - now);
  }
  return MM_ERR_CONNECTION;
}

/* Ends a request's use of the sentinel and the stats. */
static void after_gets(q_store *q, double now) {
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    if (s->state != SR_DONE) continue;
    check_sentinel(q, s, now);
  }
}

/* ---- operations ----------------------------------------------------------- */

static double drift(uint32_t ttl) { return ttl * 0.01 + 0.002; }

/* Reads K (and the fence, with `fence`) and the sentinel on every server. */
static mm_status read_all(q_store *q, mm_bytes key, int fence, const char *add_token, uint32_t add_wire) {
  double now = mmc_now();
  set_key(q, key);
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    if (!srv_begin(s, now, 0)) continue;
    if (add_token != NULL) {
      srv_write(s, "add %.*s 0 %u %zu noreply\r\n%s\r\n", (int) key.len, key.ptr, (unsigned) add_wire, strlen(add_token),
                add_token);
      s->wrote_store = 1;
    }
    if (fence) srv_write(s, "gets %.*s %s " Q_SENTINEL "\r\n", (int) key.len, key.ptr, q->fence_key);
    else srv_write(s, "gets %.*s " Q_SENTINEL "\r\n", (int) key.len, key.ptr);
    srv_expect(s, EX_GETS, NULL);
  }
  mm_status st = run(q, 1);
  after_gets(q, mmc_now());
  return st;
}

static const char *const STORE_REPLIES[] = {"STORED", "EXISTS", "NOT_FOUND", "NOT_STORED", NULL};

/* Expires K now where it is ours (cas on the CAS just read, same
 * connection). `which[i]`: 1 for the servers to do it on. */
static mm_status delete_ours(q_store *q, mm_bytes key, mm_bytes token, const int *which) {
  double now = mmc_now();
  int any = 0;
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    if (!which[i] || s->conn.fd < 0 || s->state != SR_DONE) {
      s->state = SR_IDLE;
      continue;
    }
    uint64_t cas = s->lock_cas;
    if (!srv_begin(s, now, 1)) continue;
    srv_write(s, "cas %.*s 0 %lu %zu %llu\r\n%.*s\r\n", (int) key.len, key.ptr, MMC_EXPIRE_NOW, token.len,
              (unsigned long long) cas, (int) token.len, token.ptr);
    s->wrote_store = 1;
    s->lock_cas = cas;
    srv_expect(s, EX_STATUS, STORE_REPLIES);
    any = 1;
  }
  if (!any) return MM_OK;
  return run(q, 0);
}

/* Undoes a take that did not count: on every server it may have reached,
 * K is read and removed where ours. Best effort: what it cannot reach
 * expires with the lease. */
static void undo(q_store *q, mm_bytes key, mm_bytes token) {
  char err[MM_ERROR_MAX];
  memcpy(err, q->base.error, sizeof err);
  int which[MM_QUORUM_MAX_SERVERS];
  for (size_t i = 0; i < q->n; i++) which[i] = holds(&q->servers[i], token);
  mm_status st = delete_ours(q, key, token, which);
  int again = 0;
  for (size_t i = 0; i < q->n; i++) {
    /* A server whose reply was lost may have stored it: read it afresh. */
    which[i] = q->servers[i].state == SR_FAILED;
    again |= which[i];
  }
  if (st == MM_OK && again && !is_cancelled(q)) {
    if (read_all(q, key, 0, NULL, 0) == MM_OK) {
      for (size_t i = 0; i < q->n; i++) which[i] = holds(&q->servers[i], token);
      (void) delete_ours(q, key, token, which);
    }
  }
  memcpy(q->base.error, err, sizeof err);
}

/* The holder most servers name (for the lock loop's backoff and timeouts). */
static void fill_holder(q_store *q, mm_bytes token, mm_holder *holder) {
  size_t best = 0, best_i = SIZE_MAX;
  for (size_t i = 0; i < q->n; i++) {
    q_server *a = &q->servers[i];
    if (a->state != SR_DONE || !a->got_lock || holds(a, token)) continue;
    size_t c = 0;
    for (size_t j = 0; j < q->n; j++) {
      q_server *b = &q->servers[j];
      if (b->state == SR_DONE && b->got_lock && b->token_len == a->token_len && memcmp(a->token, b->token, a->token_len) == 0)
        c++;
    }
    if (c > best) best = c, best_i = i;
  }
  memset(holder, 0, sizeof *holder);
  if (best_i == SIZE_MAX) return;
  memcpy(holder->token, q->servers[best_i].token, q->servers[best_i].token_len);
  holder->token_len = q->servers[best_i].token_len;
  holder->version = mmc_fnv64(holder->token, holder->token_len) ^ q->servers[best_i].lock_cas;
}

static mm_status q_try_take(mm_store *base, mm_bytes key, mm_bytes token, uint32_t ttl, mm_lease_record *lease,
                            mm_holder *holder) {
  q_store *q = (q_store *) base;
  base->maybe_applied = 0;
  memset(holder, 0, sizeof *holder);
  double started = mmc_now();
  double valid_until = started + ttl - drift(ttl);
  char tok[MM_TOKEN_MAX + 1];
  memcpy(tok, token.ptr, token.len);
  tok[token.len] = '\0';

  mm_status st = read_all(q, key, 1, tok, ttl + Q_WIRE_MARGIN);
  if (st == MM_INTERRUPTED) return st;
  double now = mmc_now();
  size_t wins = 0, answered = count_mature_done(q, now);
  uint64_t fence = 0;
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    if (holds(s, token) && mature(q, s, now)) wins++;
    if (s->state == SR_DONE && s->got_fence && !s->fence_bad && s->fence > fence) fence = s->fence;
  }
  if (answered < q->majority) {
    no_majority(q, "take a lock", now);
    base->maybe_applied = 1;
    undo(q, key, token);
    return MM_ERR_CONNECTION;
  }
  if (wins < q->majority || now >= valid_until) {
    fill_holder(q, token, holder);
    undo(q, key, token);
    base->maybe_applied = 0;
    for (size_t i = 0; i < q->n; i++)
      if (q->servers[i].state == SR_FAILED && q->servers[i].wrote_store) base->maybe_applied = 1;
    return MM_HELD;
  }

  /* Won: the fence. */
  uint64_t t = mmc_wall_us();
  if (fence > t) t = fence;
  t += 1;
  int won[MM_QUORUM_MAX_SERVERS];
  char tv[24];
  int tl = snprintf(tv, sizeof tv, "%llu", (unsigned long long) t);
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    won[i] = holds(s, token);
    uint64_t lock_cas = s->lock_cas, fence_cas = s->fence_cas;
    int had_fence = s->got_fence;
    char saved[MM_TOKEN_MAX + 1];
    size_t saved_len = s->token_len;
    memcpy(saved, s->token, s->token_len);
    if (!won[i]) {
      s->state = SR_IDLE;
      continue;
    }
    if (!srv_begin(s, now, 1)) continue;
    if (had_fence) srv_write(s, "cas %s 0 0 %d %llu\r\n%s\r\n", q->fence_key, tl, (unsigned long long) fence_cas, tv);
    else srv_write(s, "add %s 0 0 %d\r\n%s\r\n", q->fence_key, tl, tv);
    s->wrote_store = 1;
    srv_expect(s, EX_STATUS, STORE_REPLIES);
    /* keep what the take read: undo and the lease need it */
    s->lock_cas = lock_cas;
    s->got_lock = 1;
    memcpy(s->token, saved, saved_len);
    s->token_len = saved_len;
  }
  st = run(q, 1);
  now = mmc_now();
  size_t acks = 0;
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    if (won[i] && s->state == SR_DONE && s->nstatus == 1 && s->status[0] == 0 && mature(q, s, now)) acks++;
  }
  if (st == MM_INTERRUPTED || acks < q->majority || now >= valid_until) {
    if (st != MM_INTERRUPTED && !is_cancelled(q)) {
      /* The servers won still hold K with the CAS read: remove it there. */
      for (size_t i = 0; i < q->n; i++) {
        q_server *s = &q->servers[i];
        if (won[i] && s->state != SR_FAILED) s->state = SR_DONE;
      }
      (void) delete_ours(q, key, token, won);
    }
    base->maybe_applied = 1;
    if (st == MM_INTERRUPTED) return st;
    if (acks < q->majority && count_mature_done(q, now) < q->majority) return no_majority(q, "record a fencing token", now);
    base->maybe_applied = 0;
    return MM_HELD;
  }
  memset(lease, 0, sizeof *lease);
  lease->valid_until = valid_until;
  lease->fencing_token = t;
  q->last.id = mmc_next_generation();
  memcpy(q->last.key, key.ptr, key.len);
  q->last.key_len = key.len;
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    q->last.generation[i] = won[i] && s->state == SR_DONE ? s->conn.generation : 0;
    q->last.cas[i] = s->lock_cas;
  }
  memcpy(lease->state, &q->last.id, sizeof q->last.id);
  base->maybe_applied = 0;
  return MM_OK;
}

/* The short path: the take's CAS on each server won, on the connection it
 * was read on (see q_last_take). Marks released[i] where the item was
 * ours, unchanged, and is now gone. */
static mm_status release_short(q_store *q, mm_bytes key, mm_bytes token, int *released, int *uncertain) {
  double now = mmc_now();
  int any = 0;
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    s->state = SR_IDLE;
    if (q->last.generation[i] == 0 || s->conn.generation != q->last.generation[i] || s->conn.fd < 0 || s->connecting) continue;
    if (!srv_begin(s, now, 1)) continue;
    srv_write(s, "cas %.*s 0 %lu %zu %llu\r\n%.*s\r\n", (int) key.len, key.ptr, MMC_EXPIRE_NOW, token.len,
              (unsigned long long) q->last.cas[i], (int) token.len, token.ptr);
    s->wrote_store = 1;
    srv_expect(s, EX_STATUS, STORE_REPLIES);
    any = 1;
  }
  q->last.id = 0;
  if (!any) return MM_OK;
  q->base.maybe_applied = 1;
  mm_status st = run(q, 0);
  now = mmc_now();
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    released[i] = s->state == SR_DONE && s->nstatus == 1 && s->status[0] == 0 && mature(q, s, now);
    uncertain[i] = s->state == SR_FAILED && s->wrote_store;
  }
  return st;
}

static mm_status q_release(mm_store *base, mm_bytes key, mm_bytes token, const mm_lease_record *lease, int unknown) {
  q_store *q = (q_store *) base;
  base->maybe_applied = unknown;
  int released[MM_QUORUM_MAX_SERVERS] = {0}, uncertain[MM_QUORUM_MAX_SERVERS] = {0};
  size_t done_short = 0;
  uint64_t id = 0;
  if (lease != NULL) memcpy(&id, lease->state, sizeof id);
  if (id != 0 && id == q->last.id && key.len == q->last.key_len && memcmp(key.ptr, q->last.key, key.len) == 0) {
    mm_status st = release_short(q, key, token, released, uncertain);
    if (st == MM_INTERRUPTED) return st;
    for (size_t i = 0; i < q->n; i++) done_short += (size_t) released[i];
    if (done_short >= q->majority) {
      base->maybe_applied = 0;
      return MM_OK; /* ours on a majority, now gone there; the rest expires */
    }
  }
  mm_status st = read_all(q, key, 0, NULL, 0);
  if (st == MM_INTERRUPTED) return st;
  double now = mmc_now();
  if (count_mature_done(q, now) < q->majority) return no_majority(q, "release a lock", now);
  int which[MM_QUORUM_MAX_SERVERS];
  size_t ours = done_short, others = 0;
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    which[i] = holds(s, token);
    if (which[i] && mature(q, s, now) && !released[i]) ours++;
    else if (uncertain[i] && s->state == SR_DONE && !s->got_lock && mature(q, s, now)) ours++; /* our cas took */
    else if (s->state == SR_DONE && s->got_lock && !which[i] && mature(q, s, now)) others++;
  }
  base->maybe_applied = 1;
  st = delete_ours(q, key, token, which);
  if (st == MM_INTERRUPTED) return st;
  base->maybe_applied = 0;
  if (ours >= q->majority) return MM_OK;
  if (others > 0) return MM_HELD;
  return unknown ? MM_OK : MM_ABSENT;
}

static mm_status q_refresh(mm_store *base, mm_bytes key, mm_bytes token, uint32_t ttl, mm_lease_record *lease) {
  q_store *q = (q_store *) base;
  base->maybe_applied = 0;
  double started = mmc_now();
  double valid_until = started + ttl - drift(ttl);
  mm_status st = read_all(q, key, 0, NULL, 0);
  if (st == MM_INTERRUPTED) return st;
  double now = mmc_now();
  if (count_mature_done(q, now) < q->majority) return no_majority(q, "extend a lock", now);
  size_t ours = 0, others = 0;
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    if (holds(s, token)) ours += mature(q, s, now);
    else if (s->state == SR_DONE && s->got_lock && mature(q, s, now)) others++;
  }
  if (ours < q->majority) return others > 0 ? MM_HELD : MM_ABSENT;
  if (key.len == q->last.key_len && memcmp(key.ptr, q->last.key, key.len) == 0) q->last.id = 0; /* CAS changes */
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    if (s->state != SR_DONE) {
      s->state = SR_IDLE;
      continue;
    }
    int mine = holds(s, token), missing = !s->got_lock;
    uint64_t cas = s->lock_cas;
    if (!mine && !missing) {
      s->state = SR_IDLE;
      continue;
    }
    if (!srv_begin(s, now, 1)) continue;
    if (mine)
      srv_write(s, "cas %.*s 0 %u %zu %llu\r\n%.*s\r\n", (int) key.len, key.ptr, (unsigned) (ttl + Q_WIRE_MARGIN),
                token.len, (unsigned long long) cas, (int) token.len, token.ptr);
    else
      srv_write(s, "add %.*s 0 %u %zu\r\n%.*s\r\n", (int) key.len, key.ptr, (unsigned) (ttl + Q_WIRE_MARGIN), token.len,
                (int) token.len, token.ptr);
    s->wrote_store = 1;
    srv_expect(s, EX_STATUS, STORE_REPLIES);
  }
  st = run(q, 1);
  if (st == MM_INTERRUPTED) return st;
  now = mmc_now();
  size_t kept = 0;
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    if (s->state == SR_DONE && s->nstatus == 1 && s->status[0] == 0 && mature(q, s, now)) kept++;
  }
  if (kept < q->majority || now >= valid_until) {
    if (count_mature_done(q, now) < q->majority) return no_majority(q, "extend a lock", now);
    return MM_ABSENT;
  }
  memset(lease->state, 0, sizeof lease->state);
  lease->valid_until = valid_until;
  return MM_OK;
}

/* The holder named by a majority of all servers, else nobody. */
static mm_status q_read(mm_store *base, mm_bytes key, mm_holder *holder) {
  q_store *q = (q_store *) base;
  base->maybe_applied = 0;
  mm_status st = read_all(q, key, 0, NULL, 0);
  if (st == MM_INTERRUPTED) return st;
  double now = mmc_now();
  if (count_mature_done(q, now) < q->majority) return no_majority(q, "read a lock", now);
  mm_bytes none = {"", 0};
  fill_holder(q, none, holder);
  if (holder->token_len == 0) return MM_ABSENT;
  size_t c = 0;
  mm_bytes t = {holder->token, holder->token_len};
  for (size_t i = 0; i < q->n; i++) c += holds(&q->servers[i], t);
  if (c < q->majority) {
    memset(holder, 0, sizeof *holder);
    return MM_ABSENT;
  }
  return MM_OK;
}

static mm_status q_describe(mm_store *base, mm_bytes key, mm_description *out) {
  q_store *q = (q_store *) base;
  memset(out, 0, sizeof *out);
  out->lease_left = -2;
  mm_status st = q_read(base, key, &out->holder);
  size_t len = (size_t) snprintf(out->where, sizeof out->where, "quorum:");
  for (size_t i = 0; i < q->n && len < sizeof out->where; i++)
    len += (size_t) snprintf(out->where + len, sizeof out->where - len, "%s%s", i ? "," : "", q->servers[i].conn.label);
  if (st == MM_ABSENT) st = MM_OK;
  return st;
}

static mm_status q_force_release(mm_store *base, mm_bytes key) {
  q_store *q = (q_store *) base;
  base->maybe_applied = 1;
  double now = mmc_now();
  static const char *const replies[] = {"DELETED", "NOT_FOUND", NULL};
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    if (!srv_begin(s, now, 0)) continue;
    srv_write(s, "delete %.*s\r\n", (int) key.len, key.ptr);
    s->wrote_store = 1;
    srv_expect(s, EX_STATUS, replies);
  }
  mm_status st = run(q, 0);
  if (st != MM_OK) return st;
  now = mmc_now();
  size_t done = 0;
  for (size_t i = 0; i < q->n; i++) done += q->servers[i].state == SR_DONE;
  if (done < q->majority) return no_majority(q, "remove a lock", now);
  base->maybe_applied = 0;
  return MM_OK;
}

static mm_status q_locate(mm_store *base, mm_bytes key, char *host, size_t hostlen, unsigned *port) {
  q_store *q = (q_store *) base;
  (void) key;
  snprintf(host, hostlen, "%s", q->servers[0].conn.host);
  *port = q->servers[0].conn.port;
  return MM_OK;
}

static double q_renew_after(const mm_store *base, uint32_t ttl) {
  (void) base;
  return ttl / 3.0;
}

static void q_destroy(mm_store *base) {
  q_store *q = (q_store *) base;
  for (size_t i = 0; i < q->n; i++) {
    srv_close(&q->servers[i]);
    mmc_conn_free(&q->servers[i].conn);
  }
  free(q->servers);
  free(q);
}

void mm_quorum_store_probe(mm_store *base, char *out, size_t outlen) {
  q_store *q = (q_store *) base;
  double now = mmc_now();
  size_t len = 0;
  out[0] = '\0';
  int any = 0;
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    s->state = SR_IDLE;
    if (s->probed && s->conn.fd >= 0) continue;
    if (srv_begin(s, now, 0)) any = 1;
  }
  if (any) (void) run(q, 0);
  for (size_t i = 0; i < q->n && len < outlen; i++) {
    q_server *s = &q->servers[i];
    if (s->probed && s->evicts && !s->warned) {
      s->warned = 1;
      len += (size_t) snprintf(out + len, outlen - len,
                               "%s%s may evict items (started without -M): a lock on it can vanish before its lease ends",
                               len ? "\n" : "", s->conn.label);
    }
  }
}

static const mm_store_ops quorum_ops = {
    .name = "quorum",
    .kind = MM_KIND_LEASE,
    .caps = MM_CAP_FENCING,
    .max_ttl = 0, /* each store's own: its max_ttl */
    .renew_after = q_renew_after,
    .try_take = q_try_take,
    .wait_take = NULL,
    .release = q_release,
    .refresh = q_refresh,
    .read = q_read,
    .describe = q_describe,
    .force_release = q_force_release,
    .locate = q_locate,
    .destroy = q_destroy,
    .abandon = q_destroy, /* close() only drops the child's reference: nothing is sent */
};

static mm_store *quorum_new(const mm_quorum_options *opts, size_t min, char *errbuf, size_t errlen) {
  if (opts->server_count < min || opts->server_count > MM_QUORUM_MAX_SERVERS) {
    snprintf(errbuf, errlen, "a quorum needs %zu to %d memcached servers (got %zu)", min, MM_QUORUM_MAX_SERVERS,
             opts->server_count);
    return NULL;
  }
  if (opts->max_ttl < 1 || opts->max_ttl > 2592000U - Q_WIRE_MARGIN) {
    snprintf(errbuf, errlen, "quorum max_ttl must be 1 to %u seconds (got %u)", 2592000U - Q_WIRE_MARGIN, opts->max_ttl);
    return NULL;
  }
  q_store *q = calloc(1, sizeof *q);
  if (q == NULL) {
    snprintf(errbuf, errlen, "out of memory");
    return NULL;
  }
  q->servers = calloc(opts->server_count, sizeof *q->servers);
  if (q->servers == NULL) {
    free(q);
    snprintf(errbuf, errlen, "out of memory");
    return NULL;
  }
  for (size_t i = 0; i < opts->server_count; i++) {
    const mm_server_addr *a = &opts->servers[i];
    q_server *s = &q->servers[i];
    if (mmc_conn_init(&s->conn, a) != 0) {
      q->n = i;
      q_destroy(&q->base);
      snprintf(errbuf, errlen, "out of memory");
      return NULL;
    }
  }
  q->n = opts->server_count;
  q->majority = q->n / 2 + 1;
  q->ops = quorum_ops;
  q->ops.max_ttl = opts->max_ttl;
  q->base.ops = &q->ops;
  q->base.cancel_fd = -1;
  q->base.cancelled = NULL;
  q->connect_timeout = opts->connect_timeout_ms / 1000.0;
  q->io_timeout = opts->io_timeout_ms / 1000.0;
  q->max_ttl = opts->max_ttl;
  return &q->base;
}

mm_store *mm_quorum_store_new(const mm_quorum_options *opts, char *errbuf, size_t errlen) {
  return quorum_new(opts, MM_QUORUM_MIN_SERVERS, errbuf, errlen);
}

int mm_memcached_probe_evictions(const mm_quorum_options *opts, char *out, size_t outlen) {
  mm_store *store = quorum_new(opts, 1, out, outlen);
  if (store == NULL) return -1;
  mm_quorum_store_probe(store, out, outlen);
  q_destroy(store);
  return 0;
}
