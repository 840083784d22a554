/*
 * quorum_servers.c - the servers of a quorum store and one request to all
 * of them at once (see quorum_servers.h; what the requests are and how the
 * answers count: store_quorum.c).
 */
#define _GNU_SOURCE /* ppoll */
#include "quorum_servers.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

int q_cancelled(const q_store *q) {
  return q->base.cancelled != NULL && __atomic_load_n(q->base.cancelled, __ATOMIC_SEQ_CST);
}

/* The seconds a server must have kept its items before its vote counts. */
static double mature_after(const q_store *q) { return (double) q->max_ttl + Q_WIRE_MARGIN + Q_MATURE_SLACK; }

int q_mature(const q_store *q, const q_server *s, double now) {
  (void) q;
  return s->probed && now >= s->young_until && !s->same_as;
}

/* ---- connections ----------------------------------------------------------- */

void q_srv_close(q_server *s) {
  mmc_conn_close(&s->conn);
  s->connecting = 0;
  s->probed = 0;
}

void q_srv_fail(q_server *s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->error, sizeof s->error, fmt, ap);
  va_end(ap);
  q_srv_close(s);
  s->state = SR_FAILED;
}

/* Starts a non-blocking connect (to the server's first address). 0, or -1
 * with the server failed. */
static int srv_connect(q_server *s, double now) {
  mmc_conn *c = &s->conn;
  if (now < c->retry_at) {
    q_srv_fail(s, "%s (not retried for another %.2f s)", c->connect_error, c->retry_at - now);
    return -1;
  }
  mmc_addresses addrs;
  char why[MMC_WHY_MAX];
  int rc = mmc_addresses_get(c, &addrs, why, sizeof why);
  if (rc != 0) {
    q_srv_fail(s, "%s", why);
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
    q_srv_fail(s, "could not connect: %s", strerror(err));
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

void q_srv_write(q_server *s, const char *fmt, ...) {
  if (s->state != SR_ACTIVE) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(s->wbuf + s->wlen, sizeof s->wbuf - s->wlen, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t) n >= sizeof s->wbuf - s->wlen) {
    q_srv_fail(s, "request too long");
    return;
  }
  s->wlen += (size_t) n;
}

void q_srv_expect(q_server *s, int kind, const char *const *accepted) {
  if (s->state != SR_ACTIVE || s->nexpect >= Q_MAX_EXPECT) return;
  s->accepted[s->nexpect] = accepted;
  s->expect[s->nexpect++] = kind;
}

/* The sentinel's value: the server's uptime now, as this client reckons it. */
static uint64_t srv_uptime_now(const q_server *s, double now) {
  double up = (double) s->uptime + (now - s->probe_mono);
  return up < 0 ? 0 : (uint64_t) up;
}

/* A random tag, never 0, for the flags of a sentinel this client adds: the
 * same tag, CAS and value read through two names means one server listed
 * twice (see q_after_gets). */
static uint32_t sentinel_tag(void) {
  uint32_t tag = 0;
  if (getrandom(&tag, sizeof tag, GRND_NONBLOCK) != (ssize_t) sizeof tag) {
    char seed[48];
    int n = snprintf(seed, sizeof seed, "%llu/%llu", (unsigned long long) mmc_wall_us(),
                     (unsigned long long) mmc_next_generation());
    tag = (uint32_t) mmc_fnv64(seed, (size_t) n);
  }
  return tag ? tag : 1;
}

/* Makes `s` part of the next request: connects when needed, and prefixes
 * the probe ("stats", "stats settings") on a new connection and the
 * sentinel's add when it was found missing. Returns 1 when it is in.
 * `same_connection`: a second step that uses a CAS read by the first, on
 * the connection it was read on (a CAS from another server process could
 * match a stranger's item): without it, the server is out of this request. */
int q_srv_begin(q_server *s, double now, int same_connection) {
  s->state = SR_ACTIVE;
  s->wlen = s->wpos = 0;
  s->nexpect = s->cur = 0;
  s->value_left = 0;
  s->wrote_store = 0;
  s->got_lock = s->got_fence = s->got_sentinel = 0;
  s->token_len = 0;
  s->lock_cas = s->fence = s->fence_cas = s->sentinel_uptime = s->read_sentinel_cas = 0;
  s->read_sentinel_tag = 0;
  s->fence_bad = 0;
  s->nstatus = 0;
  s->answered_at = 0;
  if (s->conn.fd >= 0 && mmc_conn_stray(&s->conn)) q_srv_close(s); /* bytes nobody asked for */
  if (s->conn.fd >= 0 && !s->connecting && !same_connection) {
    /* An idle connection with something to read has been closed by its
     * server (restarted, idle timeout) or sent what nobody asked: a new one,
     * rather than a failed request. */
    struct pollfd p = {s->conn.fd, POLLIN, 0};
    if (poll(&p, 1, 0) != 0) q_srv_close(s);
  }
  if (s->conn.fd < 0 && same_connection) {
    q_srv_fail(s, "the connection was lost between two steps of the request");
    return 0;
  }
  if (s->conn.fd < 0 && srv_connect(s, now) != 0) return 0;
  s->error[0] = '\0';
  if (!s->probed) {
    q_srv_write(s, "stats\r\nstats settings\r\n");
    q_srv_expect(s, EX_STATS, NULL);
    q_srv_expect(s, EX_SETTINGS, NULL);
  } else if (s->need_sentinel) {
    unsigned long long up = (unsigned long long) srv_uptime_now(s, now);
    q_srv_write(s, "add " Q_SENTINEL " %lu 0 %d noreply\r\n%llu\r\n", (unsigned long) sentinel_tag(),
                snprintf(NULL, 0, "%llu", up), up);
    s->need_sentinel = 0;
  }
  return s->state == SR_ACTIVE;
}

/* ---- parsing replies ------------------------------------------------------- */

/* A line that is not the reply expected: the server fails this request. */
static void unexpected(q_server *s, const char *line, size_t len) {
  char why[MMC_WHY_MAX];
  mmc_unexpected(line, len, why, sizeof why);
  q_srv_fail(s, "%s", why);
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
    q_srv_fail(s, "malformed reply \"%s\" (expected VALUE <key> <flags> <bytes> <cas>, at most %d bytes)", ex, Q_VALUE_MAX);
    return 0;
  }
  int which;
  if (mmc_bytes_is(key.ptr, key.len, q->key) && !s->got_lock) which = 0;
  else if (mmc_bytes_is(key.ptr, key.len, (mm_bytes){q->fence_key, q->fence_len}) && !s->got_fence) which = 1;
  else if (mmc_word_is(key.ptr, key.len, Q_SENTINEL) && !s->got_sentinel) which = 2;
  else {
    q_srv_fail(s, "unexpected reply \"%s\" (a key not asked for, or twice)", ex);
    return 0;
  }
  if (cas == 0) {
    q_srv_fail(s, "returned CAS 0 (server started with -C?): MegaMutex needs CAS");
    return 0;
  }
  if (which == 2) {
    /* The sentinel's tag: its flags (0 when it has none). */
    const char *w[5];
    size_t wl[5];
    uint64_t tag;
    (void) mmc_split(line, len, w, wl, 5);
    s->read_sentinel_tag = mmc_number(w[2], wl[2], UINT32_MAX, &tag) ? (uint32_t) tag : 0;
  }
  s->value_which = which;
  s->value_cas = cas;
  s->value_left = (size_t) bytes + 1; /* +1: a 0-byte value is still pending */
  return 0;
}

/* A VALUE's data (complete, with its CRLF, in p[0..n+2)). */
static void on_value(q_server *s, const char *p, size_t n) {
  if (p[n] != '\r' || p[n + 1] != '\n') {
    q_srv_fail(s, "malformed reply (the value is longer than announced)");
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
    /* Above Q_FENCE_MAX: no token this store wrote - ignored. */
    if (!mmc_number(p, n, Q_FENCE_MAX, &s->fence)) s->fence_bad = 1;
  } else {
    s->got_sentinel = 1;
    s->read_sentinel_cas = s->value_cas;
    /* Not a number: it makes no sense, so it is new (check_sentinel). */
    if (!mmc_number(p, n, UINT64_MAX, &s->sentinel_uptime)) s->sentinel_uptime = UINT64_MAX;
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
     * server's own clock; a value that makes no sense - not a number, or
     * later than now - new). */
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
        q_srv_fail(s, "unexpected reply \"%s\" (sent before it was asked for)", ex);
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
      q_srv_fail(s, "%s", why);
      return;
    }
    if (on_line(q, s, line, len, now)) s->cur++;
  }
}

/* ---- one request to many servers ------------------------------------------ */

/* Runs the request every SR_ACTIVE server has in its buffer. Returns
 * MM_OK (each server is SR_DONE or SR_FAILED), or MM_INTERRUPTED. */
mm_status q_run(q_store *q, int quorum_early) {
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
          q_srv_fail(s, "could not connect: timed out after %.3g s (connect_timeout)", q->connect_timeout);
          s->conn.retry_at = now + Q_RETRY_TIMEOUT;
          memcpy(s->conn.connect_error, s->error, sizeof s->conn.connect_error);
        } else if (!s->connecting && now > deadline) {
          q_srv_fail(s, "timed out after %.3g s (io_timeout)", q->io_timeout);
        } else if (straggle_until != 0 && now > straggle_until) {
          q_srv_fail(s, "too slow: dropped %.0f ms after a majority had answered", (now - straggle_from) * 1000);
          s->conn.retry_at = now + Q_STRAGGLER_SKIP;
          memcpy(s->conn.connect_error, s->error, sizeof s->conn.connect_error);
        }
      }
      if (s->state == SR_ACTIVE) active++;
      else if (s->state == SR_DONE && q_mature(q, s, now)) done++;
    }
    if (active == 0) return MM_OK;
    if (quorum_early && straggle_until == 0 && done >= q->majority) {
      double wait = 2 * (now - start);
      straggle_until = now + (wait > Q_STRAGGLER_MIN ? wait : Q_STRAGGLER_MIN);
      straggle_from = now;
    }
    int cancel = q_cancelled(q);
    if (cancel) {
      int wrote = 0;
      for (size_t i = 0; i < q->n; i++)
        if (q->servers[i].state == SR_ACTIVE && q->servers[i].wrote_store && q->servers[i].wpos > 0) wrote = 1;
      if (!wrote) {
        for (size_t i = 0; i < q->n; i++)
          if (q->servers[i].state == SR_ACTIVE) q_srv_fail(&q->servers[i], "interrupted");
        return MM_INTERRUPTED;
      }
      q->base.maybe_applied = 1;
      if (grace_until == 0) grace_until = now + Q_INTERRUPT_GRACE;
      if (now >= grace_until) {
        for (size_t i = 0; i < q->n; i++)
          if (q->servers[i].state == SR_ACTIVE) q_srv_fail(&q->servers[i], "interrupted");
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
        if (q->servers[i].state == SR_ACTIVE) q_srv_fail(&q->servers[i], "poll: %s", strerror(err));
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
          q_srv_fail(s, "could not connect: %s", strerror(err));
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
        else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) q_srv_fail(s, "%s", strerror(errno));
        continue;
      }
      ssize_t got = mmc_recv(&s->conn);
      if (got == 0) {
        q_srv_fail(s, "the server closed the connection");
        continue;
      }
      if (got < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) q_srv_fail(s, "%s", strerror(errno));
        continue;
      }
      srv_consume(q, s, now);
    }
  }
}

/* Ends a request's use of the sentinel and the stats. Two servers that
 * read one sentinel - the same tag, CAS and value - are one server listed
 * under two names (an alias, a proxy): the later one never counts (its
 * vote would be the first one's again). */
void q_after_gets(q_store *q, double now) {
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    if (s->state != SR_DONE) continue;
    check_sentinel(q, s, now);
    if (!s->got_sentinel) continue;
    s->same_as = 0;
    for (size_t j = 0; j < i && !s->same_as; j++) {
      q_server *o = &q->servers[j];
      if (o->state == SR_DONE && o->got_sentinel && s->read_sentinel_tag != 0 && o->read_sentinel_tag == s->read_sentinel_tag &&
          o->read_sentinel_cas == s->read_sentinel_cas && o->sentinel_uptime == s->sentinel_uptime)
        s->same_as = j + 1;
    }
  }
}

