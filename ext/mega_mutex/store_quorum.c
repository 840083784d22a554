/*
 * store_quorum.c - a lock held on a majority of N >= 3 independent memcached
 * servers (the Redlock scheme, asked in parallel), with fencing tokens.
 *
 * Every request goes to all servers at once (quorum_servers.c): each
 * server's request is written, then one poll over all the sockets reads
 * the replies as they come. Replies are parsed by the connection layer store_memcached.c uses
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
 * take     one round trip: on every server "add K" + "gets K ~fK
 *          ~mm:epoch". Won on a server = K holds our token there (where the
 *          add did not store it, an earlier attempt's lock: it counts only
 *          once the second round trip has renewed it). With wins on
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
 *          was read on). Left standing (on more than n - majority servers,
 *          the removal failed): an error, and the caller cleans up.
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
#include "quorum_servers.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    if (q->servers[i].state == SR_DONE && q_mature(q, &q->servers[i], now)) n++;
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
    else if (s->state == SR_DONE && s->same_as)
      len += (size_t) snprintf(q->base.error + len, sizeof q->base.error - len, "; %s is %s again (listed twice)",
                               s->conn.label, q->servers[s->same_as - 1].conn.label);
    else if (s->state == SR_DONE && !q_mature(q, s, now))
      len += (size_t) snprintf(q->base.error + len, sizeof q->base.error - len,
                               "; %s restarted or forgot its items recently: counts in %.0f s (quorum_max_ttl)",
                               s->conn.label, s->young_until - now);
  }
  return MM_ERR_CONNECTION;
}

/* ---- operations ----------------------------------------------------------- */

static double drift(uint32_t ttl) { return ttl * 0.01 + 0.002; }

static const char *const ADD_REPLIES[] = {"STORED", "NOT_STORED", NULL};

/* Reads K (and the fence, with `fence`) and the sentinel on every server;
 * with `add_token`, adds K for it first (its reply is status[0]: whether
 * this request stored it). */
static mm_status read_all(q_store *q, mm_bytes key, int fence, const char *add_token, uint32_t add_wire) {
  double now = mmc_now();
  set_key(q, key);
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    if (!q_srv_begin(s, now, 0)) continue;
    if (add_token != NULL) {
      q_srv_write(s, "add %.*s 0 %u %zu\r\n%s\r\n", (int) key.len, key.ptr, (unsigned) add_wire, strlen(add_token),
                add_token);
      s->wrote_store = 1;
      q_srv_expect(s, EX_STATUS, ADD_REPLIES);
    }
    if (fence) q_srv_write(s, "gets %.*s %s " Q_SENTINEL "\r\n", (int) key.len, key.ptr, q->fence_key);
    else q_srv_write(s, "gets %.*s " Q_SENTINEL "\r\n", (int) key.len, key.ptr);
    q_srv_expect(s, EX_GETS, NULL);
  }
  mm_status st = q_run(q, 1);
  q_after_gets(q, mmc_now());
  return st;
}

static const char *const STORE_REPLIES[] = {"STORED", "EXISTS", "NOT_FOUND", "NOT_STORED", NULL};
#define Q_RELEASE_ROUNDS 3 /* removals tried on a lock that keeps changing (renewals in flight) */

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
    if (!q_srv_begin(s, now, 1)) continue;
    q_srv_write(s, "cas %.*s 0 %lu %zu %llu\r\n%.*s\r\n", (int) key.len, key.ptr, MMC_EXPIRE_NOW, token.len,
              (unsigned long long) cas, (int) token.len, token.ptr);
    s->wrote_store = 1;
    s->lock_cas = cas;
    q_srv_expect(s, EX_STATUS, STORE_REPLIES);
    any = 1;
  }
  if (!any) return MM_OK;
  return q_run(q, 0);
}

/* Whether a cas or delete sent by delete_ours was answered: whatever the
 * answer (removed, gone, changed), the lock is not ours there any more. */
static int answered_removal(const q_server *s) { return s->state == SR_DONE && s->nstatus == 1; }

/* A server that counted before this request failed (its connection is
 * closed, so q_mature says no): it may still carry the lock. */
static int counted_before(const q_server *s, double now) { return s->young_until <= now && !s->same_as; }

/* The lock is still ours on `left` servers that count, where removing it
 * failed: too many for anyone else to win a majority until its lease ends.
 * An error (the caller has the lock removed once the servers take it),
 * naming every server's trouble. */
static mm_status left_ours(q_store *q, const char *doing, size_t left) {
  q->base.maybe_applied = 1;
  size_t len = (size_t) snprintf(q->base.error, sizeof q->base.error,
                                 "quorum of %zu memcached servers failed to %s: the lock is still ours on %zu of the %zu "
                                 "servers, where removing it failed (it is retried; its lease ends it anyway)",
                                 q->n, doing, left, q->n);
  for (size_t i = 0; i < q->n && len < sizeof q->base.error; i++) {
    q_server *s = &q->servers[i];
    if (s->state == SR_FAILED && s->error[0])
      len += (size_t) snprintf(q->base.error + len, sizeof q->base.error - len, "; %s: %s", s->conn.label, s->error);
  }
  return MM_ERR_CONNECTION;
}

/* Undoes a take that did not count: on every server it may have reached,
 * K is read and removed where ours. Returns on how many servers that
 * counted the lock may still be ours (a removal that failed, or a server
 * whose add went out and that could not be read back): what it cannot
 * reach expires with the lease - unless that is a majority's worth. */
static size_t undo(q_store *q, mm_bytes key, mm_bytes token) {
  char err[MM_ERROR_MAX];
  memcpy(err, q->base.error, sizeof err);
  double now = mmc_now();
  int which[MM_QUORUM_MAX_SERVERS], maybe[MM_QUORUM_MAX_SERVERS], failed[MM_QUORUM_MAX_SERVERS];
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    which[i] = holds(s, token);
    /* A server whose reply was lost after the add went out may have stored it. */
    failed[i] = s->state == SR_FAILED && s->wrote_store && s->wpos > 0;
    maybe[i] = counted_before(s, now) && (which[i] || failed[i]);
  }
  mm_status st = delete_ours(q, key, token, which);
  int again = 0;
  for (size_t i = 0; i < q->n; i++) {
    if (which[i] && answered_removal(&q->servers[i])) maybe[i] = 0;
    /* Those, and those whose removal failed: read afresh. */
    failed[i] |= which[i] && !answered_removal(&q->servers[i]);
    again |= failed[i];
  }
  if (st == MM_OK && again && !q_cancelled(q)) {
    if (read_all(q, key, 0, NULL, 0) == MM_OK) {
      for (size_t i = 0; i < q->n; i++) {
        which[i] = failed[i] && holds(&q->servers[i], token);
        if (failed[i] && q->servers[i].state == SR_DONE && !which[i]) maybe[i] = 0; /* not ours there */
      }
      (void) delete_ours(q, key, token, which);
      for (size_t i = 0; i < q->n; i++)
        if (which[i] && answered_removal(&q->servers[i])) maybe[i] = 0;
    }
  }
  memcpy(q->base.error, err, sizeof err);
  size_t left = 0;
  for (size_t i = 0; i < q->n; i++) left += (size_t) maybe[i];
  return left;
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

/* One server listed twice under two names (q_after_gets found it): a
 * configuration error, said at every take (its vote is never counted
 * twice, but the quorum is not what the settings say). */
static int listed_twice(q_store *q) {
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    if (s->state != SR_DONE || !s->same_as) continue;
    snprintf(q->base.error, sizeof q->base.error,
             "%s is the same memcached server as %s (both read one sentinel " Q_SENTINEL
             "): a quorum needs %zu independent servers, each listed once (backend :quorum, memcache_servers)",
             s->conn.label, q->servers[s->same_as - 1].conn.label, q->n);
    return 1;
  }
  return 0;
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
  if (listed_twice(q)) {
    (void) undo(q, key, token);
    base->maybe_applied = 1;
    return MM_ERR_SERVER;
  }
  double now = mmc_now();
  size_t wins = 0, answered = count_mature_done(q, now);
  uint64_t fence = 0;
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    if (holds(s, token) && q_mature(q, s, now)) wins++;
    if (s->state == SR_DONE && s->got_fence && !s->fence_bad && s->fence > fence) fence = s->fence;
  }
  if (answered < q->majority) {
    no_majority(q, "take a lock", now);
    base->maybe_applied = 1;
    (void) undo(q, key, token);
    return MM_ERR_CONNECTION;
  }
  if (wins < q->majority || now >= valid_until) {
    fill_holder(q, token, holder);
    size_t left = undo(q, key, token);
    if (left > q->n - q->majority) {
      if (q_cancelled(q)) {
        base->maybe_applied = 1; /* the undo was cut short: the caller cleans up */
        return MM_INTERRUPTED;
      }
      return left_ours(q, "take a lock (and give back what it won)", left);
    }
    base->maybe_applied = 0;
    for (size_t i = 0; i < q->n; i++)
      if (q->servers[i].state == SR_FAILED && q->servers[i].wrote_store) base->maybe_applied = 1;
    return MM_HELD;
  }

  /* Won: the fence. A token must be larger than every fence read and
   * readable back (at most Q_FENCE_MAX): at the limit, no take can issue
   * one (a server that answers such a fence is broken or hostile). */
  if (fence >= Q_FENCE_MAX) {
    (void) undo(q, key, token);
    snprintf(base->error, sizeof base->error,
             "quorum of %zu memcached servers: the fence of this lock is at its limit (%llu): no larger fencing token "
             "can be given (delete its fence key, ~f + the key, on every server, once no process holds it)",
             q->n, (unsigned long long) fence);
    base->maybe_applied = 1;
    return MM_ERR_SERVER;
  }
  uint64_t t = mmc_wall_us();
  if (fence > t) t = fence;
  t += 1;
  /* A server won without this request's add storing K holds an earlier
   * attempt's lock (a wait retries with the same token) with the expiry
   * that attempt gave it - possibly sooner than this lease ends: it counts
   * only once the second round trip has renewed it (a cas on the CAS read). */
  int won[MM_QUORUM_MAX_SERVERS], fresh[MM_QUORUM_MAX_SERVERS], stale = 0;
  char tv[24];
  int tl = snprintf(tv, sizeof tv, "%llu", (unsigned long long) t);
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    won[i] = holds(s, token);
    fresh[i] = won[i] && s->nstatus >= 1 && s->status[0] == 0;
    stale |= won[i] && !fresh[i];
    uint64_t lock_cas = s->lock_cas, fence_cas = s->fence_cas;
    int had_fence = s->got_fence;
    char saved[MM_TOKEN_MAX + 1];
    size_t saved_len = s->token_len;
    memcpy(saved, s->token, s->token_len);
    if (!won[i]) {
      s->state = SR_IDLE;
      continue;
    }
    if (!q_srv_begin(s, now, 1)) continue;
    if (had_fence) q_srv_write(s, "cas %s 0 0 %d %llu\r\n%s\r\n", q->fence_key, tl, (unsigned long long) fence_cas, tv);
    else q_srv_write(s, "add %s 0 0 %d\r\n%s\r\n", q->fence_key, tl, tv);
    q_srv_expect(s, EX_STATUS, STORE_REPLIES);
    if (!fresh[i]) {
      q_srv_write(s, "cas %.*s 0 %u %zu %llu\r\n%.*s\r\n", (int) key.len, key.ptr, (unsigned) (ttl + Q_WIRE_MARGIN),
                  token.len, (unsigned long long) lock_cas, (int) token.len, token.ptr);
      q_srv_expect(s, EX_STATUS, STORE_REPLIES);
    }
    s->wrote_store = 1;
    /* keep what the take read: undo and the lease need it */
    s->lock_cas = lock_cas;
    s->got_lock = 1;
    memcpy(s->token, saved, saved_len);
    s->token_len = saved_len;
  }
  st = q_run(q, 1);
  now = mmc_now();
  size_t acks = 0;
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    int renewed = fresh[i] || (s->nstatus == 2 && s->status[1] == 0);
    if (won[i] && s->state == SR_DONE && s->nstatus >= 1 && s->status[0] == 0 && renewed && q_mature(q, s, now)) acks++;
  }
  if (st == MM_INTERRUPTED || acks < q->majority || now >= valid_until) {
    if (st != MM_INTERRUPTED && !q_cancelled(q)) {
      /* The servers won still hold K with the CAS read: remove it there. */
      for (size_t i = 0; i < q->n; i++) {
        q_server *s = &q->servers[i];
        if (won[i] && s->state != SR_FAILED) s->state = SR_DONE;
      }
      (void) delete_ours(q, key, token, won);
    }
    base->maybe_applied = 1;
    if (st == MM_INTERRUPTED) return st;
    mm_status failed = MM_HELD;
    if (acks < q->majority && count_mature_done(q, now) < q->majority) failed = no_majority(q, "record a fencing token", now);
    /* A renewed lock has a CAS this take did not read: read it, remove it. */
    if (stale && !q_cancelled(q) && read_all(q, key, 0, NULL, 0) == MM_OK) (void) undo(q, key, token);
    if (q_cancelled(q)) return MM_INTERRUPTED; /* the clean-up was cut short: the caller's (maybe_applied) */
    if (failed == MM_HELD) base->maybe_applied = 0;
    return failed;
  }
  memset(lease, 0, sizeof *lease);
  lease->valid_until = valid_until;
  lease->fencing_token = t;
  q->last.id = mmc_next_generation();
  memcpy(q->last.key, key.ptr, key.len);
  q->last.key_len = key.len;
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    /* (a renewed lock's CAS was not read: its release reads it first) */
    q->last.generation[i] = won[i] && fresh[i] && s->state == SR_DONE ? s->conn.generation : 0;
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
    if (!q_srv_begin(s, now, 1)) continue;
    q_srv_write(s, "cas %.*s 0 %lu %zu %llu\r\n%.*s\r\n", (int) key.len, key.ptr, MMC_EXPIRE_NOW, token.len,
              (unsigned long long) q->last.cas[i], (int) token.len, token.ptr);
    s->wrote_store = 1;
    q_srv_expect(s, EX_STATUS, STORE_REPLIES);
    any = 1;
  }
  q->last.id = 0;
  if (!any) return MM_OK;
  q->base.maybe_applied = 1;
  mm_status st = q_run(q, 0);
  now = mmc_now();
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    released[i] = s->state == SR_DONE && s->nstatus == 1 && s->status[0] == 0 && q_mature(q, s, now);
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
  int which[MM_QUORUM_MAX_SERVERS], counted[MM_QUORUM_MAX_SERVERS];
  size_t ours = done_short, others = 0;
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    which[i] = holds(s, token);
    counted[i] = q_mature(q, s, now);
    if (which[i] && counted[i] && !released[i]) ours++;
    else if (uncertain[i] && s->state == SR_DONE && !s->got_lock && counted[i]) ours++; /* our cas took */
    else if (s->state == SR_DONE && s->got_lock && !which[i] && counted[i]) others++;
  }
  base->maybe_applied = 1;
  /* A renewal in flight (the renewer's thread) may land between the read
   * and the removal: the cas answers EXISTS, the lock still ours with a new
   * CAS. Those servers are read again and the removal retried. */
  int gone[MM_QUORUM_MAX_SERVERS], ours_read[MM_QUORUM_MAX_SERVERS];
  memcpy(ours_read, which, sizeof ours_read);
  memset(gone, 0, sizeof gone);
  for (int round = 0;; round++) {
    st = delete_ours(q, key, token, which);
    if (st == MM_INTERRUPTED) return st;
    int changed = 0;
    for (size_t i = 0; i < q->n; i++) {
      q_server *s = &q->servers[i];
      if (!which[i] || !answered_removal(s)) continue;
      if (s->status[0] == 1) changed = 1; /* EXISTS */
      else gone[i] = 1;                   /* removed, or gone already */
    }
    if (!changed || round == Q_RELEASE_ROUNDS - 1) break;
    for (size_t i = 0; i < q->n; i++) which[i] = which[i] && answered_removal(&q->servers[i]) && !gone[i];
    st = read_all(q, key, 0, NULL, 0);
    if (st == MM_INTERRUPTED) return st;
    for (size_t i = 0; i < q->n; i++) {
      q_server *s = &q->servers[i];
      if (which[i] && s->state == SR_DONE && !holds(s, token)) gone[i] = 1; /* not ours any more */
      which[i] = which[i] && holds(s, token);
    }
  }
  /* Still ours where the removal failed: more than n - majority such
   * servers and nobody else can win a majority until the lease ends - the
   * lock is not released, and the caller must know it (it has it removed
   * once the servers take it). */
  size_t left = 0;
  for (size_t i = 0; i < q->n; i++) left += (size_t) (ours_read[i] && counted[i] && !gone[i]);
  if (left > q->n - q->majority) return left_ours(q, "release a lock", left);
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
    if (holds(s, token)) ours += q_mature(q, s, now);
    else if (s->state == SR_DONE && s->got_lock && q_mature(q, s, now)) others++;
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
    if (!q_srv_begin(s, now, 1)) continue;
    if (mine)
      q_srv_write(s, "cas %.*s 0 %u %zu %llu\r\n%.*s\r\n", (int) key.len, key.ptr, (unsigned) (ttl + Q_WIRE_MARGIN),
                token.len, (unsigned long long) cas, (int) token.len, token.ptr);
    else
      q_srv_write(s, "add %.*s 0 %u %zu\r\n%.*s\r\n", (int) key.len, key.ptr, (unsigned) (ttl + Q_WIRE_MARGIN), token.len,
                (int) token.len, token.ptr);
    s->wrote_store = 1;
    q_srv_expect(s, EX_STATUS, STORE_REPLIES);
  }
  st = q_run(q, 1);
  if (st == MM_INTERRUPTED) return st;
  now = mmc_now();
  size_t kept = 0;
  for (size_t i = 0; i < q->n; i++) {
    q_server *s = &q->servers[i];
    if (s->state == SR_DONE && s->nstatus == 1 && s->status[0] == 0 && q_mature(q, s, now)) kept++;
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
    if (!q_srv_begin(s, now, 0)) continue;
    q_srv_write(s, "delete %.*s\r\n", (int) key.len, key.ptr);
    s->wrote_store = 1;
    q_srv_expect(s, EX_STATUS, replies);
  }
  mm_status st = q_run(q, 0);
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
    q_srv_close(&q->servers[i]);
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
    if (q_srv_begin(s, now, 0)) any = 1;
  }
  if (any) (void) q_run(q, 0);
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
