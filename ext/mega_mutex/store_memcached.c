/*
 * store_memcached.c - the lock store over memcached's text protocol.
 *
 * libmemcached keeps the server list and picks the server of a key (its
 * ketama continuum, so every libmemcached client agrees on it); the
 * requests themselves are ours, on our own sockets: written here, sent and
 * waited for by memcached_call.c, their replies parsed by memcached_conn.c
 * (the connection layer store_quorum.c shares). Three reasons, each a defect of libmemcached 1.1.4's reply
 * parser that no behaviour flag avoids (text and binary alike):
 *   - it trusts the lengths a server sends: "VALUE k 0 -1 5" makes it write
 *     before its buffer, a bare "VERSION" dereferences NULL, and over binary
 *     a key length above 250 overflows the result's key buffer;
 *   - its I/O timeout bounds each poll, not a request: a server trickling a
 *     byte at a time holds a call (and Ruby's interrupts) indefinitely;
 *   - it reads a SERVER_ERROR from gets as the end of the reply ("absent").
 * Here every reply is checked against the one reply its request allows;
 * anything else is an error and the connection is closed. Each request
 * (one store call) has one deadline, and the wait also watches the waker's
 * eventfd, so Thread#raise, Timeout and Ctrl-C end it at once.
 *
 * A lock is one item: key = the lock's key, value = the holder's token, with
 * the lease as its expiry. The protocol, per MEMCACHED_NOTES.md:
 *
 *   take     "add key 0 ttl n noreply" then "gets key", in one write: one
 *            round trip. The item read back is the truth: my token means I
 *            hold it, and its CAS lets me release it atomically later.
 *   release  "cas key 0 <a date in 1970> n cas": stored only if nobody
 *            changed the item since, and expired at once - an atomic
 *            compare-and-delete, one round trip. Only when the CAS is proven
 *            current (see "witness" below); otherwise gets, compare the
 *            token, then that cas.
 *   poll     a waiter's next attempt after two that found the same holder:
 *            "gets key" alone first (1 request instead of 3); still held
 *            by another token: held, holder filled as by a take; absent
 *            (or our own token): the full take, in the same call. See
 *            "The probe" above mc_try_take.
 *   refresh  gets, compare token, "cas key 0 ttl n cas".
 *   describe "mg key v t": the holder and the seconds left.
 *
 * The witness. A restarted server counts CAS from 0 again, so an old CAS
 * can match a new holder's item: a CAS alone is no proof of ownership. But
 * a TCP (or unix socket) connection cannot outlive the server process it
 * was opened to. So a CAS read on a connection, then used on that same
 * connection, is a CAS of the same server process - unique for its
 * lifetime - and the 1-round-trip cas is safe. Each connection we open gets
 * a generation number from one process-wide counter, and any failure closes
 * it: try_take puts the generation with the CAS in the lease record, and
 * release takes the short path only when the same connection is still open.
 *
 * Outcomes. A request that fails after a store command (add, cas, delete)
 * was written has an unknown outcome: it may have been applied. The store
 * says so in base.maybe_applied; a release whose cas may have been applied
 * and whose key is then absent was released by it (not lost); held by
 * another token, it is lost.
 *
 * All functions here run without the GVL and use no Ruby API.
 */
#include "memcached_call.h"
#include "store.h"

#include <libmemcached/memcached.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MM_RELEASE_TRIES 5
/* The lease rules. memcached's clock ticks once a second, can lag real time
 * by up to a second and then jump (a late tick, a paused server): a lease
 * sent as lock_ttl + 2 lasts at least lock_ttl (chaos/run.rb measured
 * lock_ttl 1 leases cut to half a second with a 1 s margin). Above 30 days
 * memcached reads an expiry as a Unix time, so lock_ttl stops 2 s short. */
#define MM_WIRE_MARGIN 2
#define MM_MAX_EXPIRY 2592000U
#define MM_MAX_TTL (MM_MAX_EXPIRY - MM_WIRE_MARGIN)

/* What a memcached lease record's state holds: the CAS read at take time
 * and the connection it was read on (see "The witness"). */
typedef struct {
  uint64_t version, witness;
} mc_lease_state;

typedef struct {
  mm_store base;
  memcached_st *mc; /* the server list and the continuum; never does I/O */
  mmc_conn *conns;
  size_t nconns;
  mmc_call call; /* the request in progress: its deadline, grace, retryability */
} mm_memcached_store;

/* ---- requests ---------------------------------------------------------- */

/* The server of `key` (libmemcached's continuum: pure computation). A
 * connection with something to read between requests - bytes left over
 * from an earlier reply, bytes that arrived after it (a server answering
 * twice, or late), or the server's close - is closed (and reopened on use),
 * so those bytes can never be read as the reply to the next request. */
static mmc_conn *conn_for(mm_memcached_store *s, mm_bytes key) {
  uint32_t i = s->nconns == 1 ? 0 : memcached_generate_hash(s->mc, key.ptr, key.len);
  if (i >= s->nconns) i = 0; /* cannot happen: the continuum only names our servers */
  mmc_conn *c = &s->conns[i];
  if (c->fd >= 0 && (mmc_conn_stray(c) || mmc_conn_readable(c))) mmc_conn_close(c);
  return c;
}

/* Starts a request on the server of `key`: the deadline, the connection. */
static mm_status begin(mm_memcached_store *s, mm_bytes key, mmc_conn **c, const char *doing) {
  mmc_call_start(&s->call);
  *c = conn_for(s, key);
  return mmc_open(&s->call, *c, doing);
}

/* A retry of a whole request on a fresh connection, after one that broke
 * while idle. */
static mm_status again(mm_memcached_store *s, mm_bytes key, mmc_conn **c, const char *doing) {
  s->call.retryable = 0;
  *c = conn_for(s, key);
  return mmc_open(&s->call, *c, doing);
}

/* gets: MM_OK with holder filled, MM_ABSENT, or an error. */
static mm_status gets_key(mm_memcached_store *s, mmc_conn *c, mm_bytes key, mm_holder *holder, const char *doing) {
  char req[MM_KEY_MAX + 16];
  int n = snprintf(req, sizeof req, "gets %.*s\r\n", (int) key.len, key.ptr);
  mm_status st = mmc_send_all(&s->call, c, req, (size_t) n, doing);
  if (st != MM_OK) return st;
  return mmc_read_gets(&s->call, c, key, holder, doing);
}

/* cas with `exptime`: MM_OK (stored), MM_HELD (EXISTS: changed since),
 * MM_ABSENT (NOT_FOUND), or an error (then maybe applied). */
static mm_status cas(mm_memcached_store *s, mmc_conn *c, mm_bytes key, mm_bytes token, unsigned long exptime,
                     uint64_t version, const char *doing) {
  char req[MM_KEY_MAX + MM_TOKEN_MAX + 96];
  int n = snprintf(req, sizeof req, "cas %.*s 0 %lu %zu %llu\r\n%.*s\r\n", (int) key.len, key.ptr, exptime,
                   token.len, (unsigned long long) version, (int) token.len, token.ptr);
  s->base.maybe_applied = 1;
  mm_status st = mmc_send_all(&s->call, c, req, (size_t) n, doing);
  if (st != MM_OK) return st;
  static const char *const accepted[] = {"STORED", "EXISTS", "NOT_FOUND", NULL};
  switch (mmc_read_status(&s->call, c, doing, accepted, &st)) {
  case 0: return MM_OK;
  case 1: return MM_HELD;
  case 2: return MM_ABSENT;
  default: return st;
  }
}

static int holder_is(const mm_holder *holder, mm_bytes token) {
  return holder->token_len == token.len && memcmp(holder->token, token.ptr, token.len) == 0;
}

static mm_status require_cas(mm_memcached_store *s, mmc_conn *c, const mm_holder *holder) {
  if (holder->version != 0) return MM_OK;
  mmc_conn_close(c);
  snprintf(s->base.error, sizeof s->base.error,
           "memcached %s returned CAS 0 (server started with -C?): "
           "MegaMutex needs CAS for an atomic, owner-checked release", c->label);
  return MM_ERR_SERVER;
}

/* ---- fencing tokens ------------------------------------------------------ */

/* The fence of a lock: "~f" + its key (a key longer than 248 bytes: "~f",
 * its first 232 bytes and a 64-bit hash - two ids sharing a fence only makes
 * their tokens grow faster), a counter with no expiry on the lock's own
 * server. Every full take increments it in the same write, after the add
 * and before the gets ("incr <fence> 1"; a waiter's probe does not, see "The
 * probe"): a holder's value comes after its predecessor's release, so it is
 * larger. A fence that is missing (first use, or the server restarted, was
 * flushed or evicted it) is created by the
 * winner of the take from its wall clock in microseconds ("ma <fence> N0
 * J<now>", which no other counter notices), then incremented: across a
 * restart of the lock's server, tokens keep growing only while the clients'
 * clocks are right (to within the time the server was down) - the weaker
 * guarantee of a lock on one server. A server that knows neither command
 * answers ERROR: no token (0). */
/* "incr <fence> 1\r\n" into buf; its length. */
static int fence_request(mm_bytes key, char *buf, size_t buflen) {
  char fk[MM_KEY_MAX + 1];
  size_t fl = mmc_fence_key(key, fk, sizeof fk);
  return snprintf(buf, buflen, "incr %.*s 1\r\n", (int) fl, fk);
}

/* The reply to the fence's incr: the new value (MM_OK, *token), NOT_FOUND
 * (MM_OK, *missing), or ERROR from a server without it (MM_OK, token 0). */
static mm_status read_fence_reply(mm_memcached_store *s, mmc_conn *c, const char *doing, uint64_t *token, int *missing) {
  char *line;
  size_t len;
  *token = 0;
  *missing = 0;
  mm_status st = mmc_read_line(&s->call, c, doing, &line, &len);
  if (st != MM_OK) return st;
  if (mmc_word_is(line, len, "ERROR")) return MM_OK;
  if (mmc_word_is(line, len, "NOT_FOUND")) {
    *missing = 1;
    return MM_OK;
  }
  if (!mmc_number(line, len, UINT64_MAX, token) || *token == 0) return mmc_reject(&s->call, c, doing, line, len);
  return MM_OK;
}

/* The winner's fence: created if missing, then incremented (one round trip
 * more, at the first take of an id and after the server lost its fence). */
static mm_status fence_seed(mm_memcached_store *s, mmc_conn *c, mm_bytes key, const char *doing, uint64_t *token) {
  char fk[MM_KEY_MAX + 1];
  size_t fl = mmc_fence_key(key, fk, sizeof fk);
  char req[2 * MM_KEY_MAX + 64];
  int n = snprintf(req, sizeof req, "ma %.*s N0 J%llu\r\nincr %.*s 1\r\n", (int) fl, fk,
                   (unsigned long long) mmc_wall_us(), (int) fl, fk);
  mm_status st = mmc_send_all(&s->call, c, req, (size_t) n, doing);
  if (st != MM_OK) return st;
  char *line;
  size_t len;
  if ((st = mmc_read_line(&s->call, c, doing, &line, &len)) != MM_OK) return st;
  if (!mmc_word_is(line, len, "HD") && !mmc_word_is(line, len, "ERROR")) return mmc_reject(&s->call, c, doing, line, len);
  int missing;
  return read_fence_reply(s, c, doing, token, &missing); /* still missing (evicted at once): no token */
}

/* The fence for a take won on the slow path: one more round trip. */
static mm_status fence_next(mm_memcached_store *s, mmc_conn *c, mm_bytes key, const char *doing, uint64_t *token) {
  char req[MM_KEY_MAX + 48];
  int n = fence_request(key, req, sizeof req);
  mm_status st = mmc_send_all(&s->call, c, req, (size_t) n, doing);
  if (st != MM_OK) return st;
  int missing;
  if ((st = read_fence_reply(s, c, doing, token, &missing)) != MM_OK) return st;
  return missing ? fence_seed(s, c, key, doing, token) : MM_OK;
}

/* ---- acquire ------------------------------------------------------------- */

/* The slow path: an add whose reply we wait for, then a read. Used when the
 * fast path read back no item at all - either the holder released between
 * our add and our read, or the server would not store the lock. */
static mm_status acquire_confirmed(mm_memcached_store *s, mmc_conn *c, mm_bytes key, mm_bytes token, uint32_t ttl,
                                   mm_holder *holder, uint64_t *fence) {
  const char *doing = "store a lock";
  char req[MM_KEY_MAX + MM_TOKEN_MAX + 64];
  int n = snprintf(req, sizeof req, "add %.*s 0 %u %zu\r\n%.*s\r\n", (int) key.len, key.ptr, (unsigned) ttl,
                   token.len, (int) token.len, token.ptr);
  mm_status st = mmc_send_all(&s->call, c, req, (size_t) n, doing);
  if (st != MM_OK) return st;
  static const char *const accepted[] = {"STORED", "NOT_STORED", "EXISTS", NULL};
  int r = mmc_read_status(&s->call, c, doing, accepted, &st);
  if (r < 0) return st;
  st = gets_key(s, c, key, holder, doing);
  if (r == 0) {
    if (st == MM_ABSENT)
      return mmc_fail(&s->call, c, MM_ERR_SERVER, doing,
                       "it stored the lock but lost it at once (evicted? run a dedicated memcached with -M)");
    if (st != MM_OK) return st;
    if (!holder_is(holder, token)) return MM_HELD;
    if ((st = require_cas(s, c, holder)) != MM_OK) return st;
    return fence_next(s, c, key, doing, fence);
  }
  if (st == MM_ABSENT) { /* released again in between: let the caller retry */
    holder->token_len = 0;
    holder->token[0] = '\0';
    holder->version = 0;
    return MM_HELD;
  }
  if (st != MM_OK) return st;
  if (!holder_is(holder, token)) return MM_HELD;
  if ((st = require_cas(s, c, holder)) != MM_OK) return st;
  return fence_next(s, c, key, doing, fence);
}

static mm_status acquire_once(mm_memcached_store *s, mmc_conn *c, mm_bytes key, mm_bytes token, uint32_t ttl,
                              mm_holder *holder, uint64_t *fence) {
  const char *doing = "store a lock";
  char req[3 * MM_KEY_MAX + MM_TOKEN_MAX + 120];
  /* add, then the fence's incr (after the add: a winner's value comes after
   * its predecessor's release), then the read: one write, one round trip. */
  int n = snprintf(req, sizeof req, "add %.*s 0 %u %zu noreply\r\n%.*s\r\n", (int) key.len, key.ptr, (unsigned) ttl,
                   token.len, (int) token.len, token.ptr);
  n += fence_request(key, req + n, sizeof req - (size_t) n);
  n += snprintf(req + n, sizeof req - (size_t) n, "gets %.*s\r\n", (int) key.len, key.ptr);
  s->base.maybe_applied = 1;
  mm_status st = mmc_send_all(&s->call, c, req, (size_t) n, doing);
  if (st != MM_OK) return st;
  int fence_missing = 0;
  if ((st = read_fence_reply(s, c, doing, fence, &fence_missing)) != MM_OK) return st;
  st = mmc_read_gets(&s->call, c, key, holder, doing);
  if (st == MM_ABSENT) return acquire_confirmed(s, c, key, token, ttl, holder, fence);
  if (st != MM_OK) return st;
  if (!holder_is(holder, token)) return MM_HELD;
  if (fence_missing && holder->version != 0 && (st = fence_seed(s, c, key, doing, fence)) != MM_OK) return st;
  if ((st = require_cas(s, c, holder)) != MM_OK) {
    /* Ours, but not safely releasable later: give it back now (it is ours
     * this instant; a plain delete is the best a CAS-less server allows).
     * The CAS error is what the caller must see, whatever this does. */
    char err[MM_ERROR_MAX];
    memcpy(err, s->base.error, sizeof err);
    if (mmc_open(&s->call, c, doing) == MM_OK) {
      char del[MM_KEY_MAX + 16];
      n = snprintf(del, sizeof del, "delete %.*s\r\n", (int) key.len, key.ptr);
      static const char *const accepted[] = {"DELETED", "NOT_FOUND", NULL};
      mm_status ignored;
      if (mmc_send_all(&s->call, c, del, (size_t) n, doing) == MM_OK) (void) mmc_read_status(&s->call, c, doing, accepted, &ignored);
    }
    memcpy(s->base.error, err, sizeof err);
    mmc_conn_close(c);
  }
  return st;
}

static void lease_set(mm_lease_record *lease, uint64_t version, uint64_t witness, double valid_until) {
  mc_lease_state st = {version, witness};
  memset(lease, 0, sizeof *lease);
  memcpy(lease->state, &st, sizeof st);
  lease->valid_until = valid_until;
  lease->fencing_token = 0;
}

static mc_lease_state lease_get(const mm_lease_record *lease) {
  mc_lease_state st = {0, 0};
  if (lease != NULL) memcpy(&st, lease->state, sizeof st);
  return st;
}

static double mc_renew_after(const mm_store *base, uint32_t ttl) {
  (void) base;
  return ttl / 3.0;
}

/* The probe. A waiter polls while one holder keeps the lock, often for
 * many polls: a full take (add, incr of the fence, gets) costs the server 3
 * requests each time, of which only the gets tells it anything. So a take
 * that returns MM_HELD, and finds the same item (token and CAS) as the
 * attempt before it, leaves a hint in the holder's scratch (witness): the
 * key, the connection the holder was read on, and a flag bit that no
 * connection generation has (a plain witness is a generation, below 2^63).
 * lock.c hands the same mm_holder to every attempt of one acquisition and
 * client.c zeroes it first, so the first attempt of an acquisition never
 * sees a hint and stays the one-round-trip take, and so does the second.
 *
 * The next attempt, on that same connection still open, sends "gets key"
 * alone: held by another token, it returns MM_HELD with the holder filled
 * as a take fills it; absent, or our own token (an add of ours?), it goes
 * on with the full take on the same connection, within the same deadline -
 * the probe never grants anything, only the add does. A connection that
 * broke while idle is retried with the full take on a new one; any other
 * error is an error, as the take's own gets would report it (nothing was
 * written: maybe_applied stays 0). A hint is only ever a reason to read
 * first: a stale one costs one request, never a wrong answer (the probe
 * reads the item at that instant, as the take's own gets would). The fence
 * needs no incr from a loser: the winner's incr comes after its add, hence
 * after its predecessor's take and incr.
 *
 * Why a holder seen twice: a lock changing hands between polls is better
 * polled with full takes, each of which may win it at the instant it
 * arrives; a probe that finds the key free needs a second round trip to
 * take it, and the lock stays free meanwhile. Probing after every attempt
 * that found the lock held cost about a third of the throughput with 32
 * processes on 2 cores at hold 1 ms (rake bench:quick, docs/benchmarks.md). */
#define MM_PROBE_HINT (1ULL << 63)

static uint64_t probe_hint(mm_bytes key, uint64_t generation) {
  uint64_t h = 1469598103934665603ULL ^ (generation * 0x9E3779B97F4A7C15ULL);
  for (size_t i = 0; i < key.len; i++) {
    h ^= (unsigned char) key.ptr[i];
    h *= 1099511628211ULL;
  }
  return h | MM_PROBE_HINT;
}

/* Whether `holder` carries the hint of an attempt on `key` that found it
 * held by another token, read on `c` as it is now open. */
static int probe_due(const mm_holder *holder, mm_bytes key, const mmc_conn *c) {
  return c->fd >= 0 && c->generation != 0 && holder->token_len > 0 && holder->version != 0 &&
         holder->witness == probe_hint(key, c->generation);
}

/* "gets key" alone: MM_HELD (another token holds it; holder filled), MM_OK
 * (take in full: absent, or our own token), or an error. Writes nothing
 * that changes the server. */
static mm_status probe_once(mm_memcached_store *s, mmc_conn *c, mm_bytes key, mm_bytes token, mm_holder *holder) {
  mm_holder seen;
  memset(&seen, 0, sizeof seen);
  mm_status st = gets_key(s, c, key, &seen, "store a lock");
  if (st == MM_ABSENT) return MM_OK;
  if (st != MM_OK) return st;
  if (holder_is(&seen, token) || seen.version == 0) return MM_OK;
  *holder = seen;
  return MM_HELD;
}

/* Taking is idempotent (the token decides), so a retry is always safe. The
 * lease is known good from before the add was sent: valid_until counts from
 * then. */
static mm_status mc_try_take(mm_store *base, mm_bytes key, mm_bytes token, uint32_t ttl, mm_lease_record *lease,
                             mm_holder *holder) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  const char *doing = "store a lock";
  mmc_conn *c;
  base->maybe_applied = 0;
  uint32_t wire = ttl + MM_WIRE_MARGIN;
  double started = mmc_now();
  uint64_t fence = 0;
  int retried = 0;
  const mm_holder before = *holder; /* the holder the last attempt found */
  mm_status st = begin(s, key, &c, doing);
  if (st == MM_OK && probe_due(holder, key, c)) {
    st = probe_once(s, c, key, token, holder);
    if (st == MM_ERR_CONNECTION && s->call.retryable) {
      retried = 1;
      st = again(s, key, &c, doing); /* a new connection: the full take */
    }
  }
  if (st == MM_OK) {
    started = mmc_now(); /* the lease counts from the add */
    st = acquire_once(s, c, key, token, wire, holder, &fence);
    if (st == MM_ERR_CONNECTION && s->call.retryable && !retried && (st = again(s, key, &c, doing)) == MM_OK)
      st = acquire_once(s, c, key, token, wire, holder, &fence);
  }
  if (st == MM_OK) {
    lease_set(lease, holder->version, holder->witness, started + ttl);
    lease->fencing_token = fence;
  } else if (st == MM_HELD && holder->token_len > 0 && holder->version != 0 && holder->witness != 0 &&
             (holder->witness & MM_PROBE_HINT) == 0 && holder->version == before.version &&
             holder_is(holder, (mm_bytes){before.token, before.token_len})) {
    /* Held by another token - the very item the last attempt found (same
     * token, same CAS) - read (by the take or the probe) on the connection
     * holder->witness names: the next attempt may probe. */
    holder->witness = probe_hint(key, holder->witness);
  } else {
    holder->witness = 0; /* no hint: the next attempt takes in full */
  }
  return st;
}

/* ---- release, extend, read, force_release -------------------------------- */

/* The long path: read the owner and the current CAS on this connection,
 * compare the token, then cas. A restart between that read and the cas
 * breaks the connection, so the pair is safe. `unknown`: an earlier cas of
 * this release may have been applied - then "absent" means released. */
static mm_status release_checked(mm_memcached_store *s, mm_bytes key, mm_bytes token, int unknown) {
  const char *doing = "release a lock";
  mm_holder holder;
  mmc_conn *c = conn_for(s, key);
  int retried = 0;
  for (int attempt = 0; attempt < MM_RELEASE_TRIES; attempt++) {
    mm_status st = mmc_open(&s->call, c, doing);
    if (st == MM_OK) st = gets_key(s, c, key, &holder, doing);
    if (st == MM_ABSENT) return unknown ? MM_OK : MM_ABSENT;
    if (st == MM_OK) {
      if (!holder_is(&holder, token)) return MM_HELD;
      if ((st = require_cas(s, c, &holder)) != MM_OK) return st;
      st = cas(s, c, key, token, MMC_EXPIRE_NOW, holder.version, doing);
      if (st == MM_OK) return MM_OK;
      if (st == MM_ABSENT) return unknown ? MM_OK : MM_ABSENT;
      if (st == MM_HELD) continue; /* changed since we read it (renewed meanwhile): look again */
      if (st == MM_ERR_CONNECTION) unknown = 1;
    }
    if (st == MM_ERR_CONNECTION && s->call.retryable && !retried) {
      retried = 1; /* once, on a fresh connection */
      s->call.retryable = 0;
      continue;
    }
    return st;
  }
  mmc_conn_close(c);
  snprintf(s->base.error, sizeof s->base.error, "memcached %s: the lock kept changing while being released",
           c->label);
  return MM_ERR_SERVER;
}

static mm_status mc_release(mm_store *base, mm_bytes key, mm_bytes token, const mm_lease_record *lease,
                            int unknown) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  mc_lease_state held = lease_get(lease);
  uint64_t version = held.version, witness = held.witness;
  mmc_conn *c;
  base->maybe_applied = unknown;
  mmc_call_start(&s->call);
  c = conn_for(s, key);
  if (version == 0 || witness == 0 || c->fd < 0 || witness != c->generation)
    return release_checked(s, key, token, unknown);

  /* The short path: `version` was read on this very connection, still open,
   * so it is a CAS of this server process. */
  mm_status st = cas(s, c, key, token, MMC_EXPIRE_NOW, version, "release a lock");
  if (st == MM_OK) return MM_OK;
  if (st == MM_ABSENT) return unknown ? MM_OK : MM_ABSENT; /* expired: nobody holds it */
  if (st == MM_HELD) return release_checked(s, key, token, unknown); /* renewed, or taken over */
  /* The connection broke with the cas sent (a restarted server, or a reply
   * lost with the connection): ask again on a fresh connection - unless it
   * merely timed out, which a second request would only repeat. */
  if (st == MM_ERR_CONNECTION && s->call.retryable) return release_checked(s, key, token, 1);
  return st;
}

static mm_status extend_once(mm_memcached_store *s, mmc_conn *c, mm_bytes key, mm_bytes token, uint32_t ttl) {
  const char *doing = "extend a lock";
  mm_holder holder;
  for (int attempt = 0; attempt < MM_RELEASE_TRIES; attempt++) {
    mm_status st = gets_key(s, c, key, &holder, doing);
    if (st != MM_OK) return st;
    if (!holder_is(&holder, token)) return MM_HELD;
    if ((st = require_cas(s, c, &holder)) != MM_OK) return st;
    st = cas(s, c, key, token, (unsigned long) ttl, holder.version, doing);
    if (st != MM_HELD) return st; /* MM_HELD: changed since we read it: look again */
  }
  mmc_conn_close(c);
  snprintf(s->base.error, sizeof s->base.error, "memcached %s: the lock kept changing while being extended",
           c->label);
  return MM_ERR_SERVER;
}

/* Extending is idempotent (owner-checked each time): a retry is safe. The
 * new CAS is not returned by a cas: the record's CAS is dropped, and a
 * release reads the owner first. */
static mm_status mc_refresh(mm_store *base, mm_bytes key, mm_bytes token, uint32_t ttl, mm_lease_record *lease) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  mmc_conn *c;
  base->maybe_applied = 0;
  uint32_t wire = ttl + MM_WIRE_MARGIN;
  double started = mmc_now();
  mm_status st = begin(s, key, &c, "extend a lock");
  if (st == MM_OK) st = extend_once(s, c, key, token, wire);
  if (st == MM_ERR_CONNECTION && s->call.retryable && (st = again(s, key, &c, "extend a lock")) == MM_OK)
    st = extend_once(s, c, key, token, wire);
  if (st == MM_OK) lease_set(lease, 0, 0, started + ttl);
  return st;
}

static mm_status mc_read(mm_store *base, mm_bytes key, mm_holder *holder) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  mmc_conn *c;
  base->maybe_applied = 0;
  mm_status st = begin(s, key, &c, "read a lock");
  if (st == MM_OK) st = gets_key(s, c, key, holder, "read a lock");
  if (st == MM_ERR_CONNECTION && s->call.retryable && (st = again(s, key, &c, "read a lock")) == MM_OK)
    st = gets_key(s, c, key, holder, "read a lock");
  return st;
}

/* "mg <key> v t": the holder and the seconds left, in one round trip
 * ("VA <bytes> t<secs>" + the value, or "EN"). A server without meta
 * commands answers an error line: then gets, with the lease unknown. */
static mm_status describe_once(mm_memcached_store *s, mmc_conn *c, mm_bytes key, mm_description *out) {
  const char *doing = "describe a lock";
  char req[MM_KEY_MAX + 16];
  int n = snprintf(req, sizeof req, "mg %.*s v t\r\n", (int) key.len, key.ptr);
  mm_status st = mmc_send_all(&s->call, c, req, (size_t) n, doing);
  if (st != MM_OK) return st;
  char *line;
  size_t len;
  if ((st = mmc_read_line(&s->call, c, doing, &line, &len)) != MM_OK) return st;
  if (mmc_word_is(line, len, "EN")) return MM_ABSENT;
  if (mmc_word_is(line, len, "ERROR") || mmc_starts_with(line, len, "CLIENT_ERROR")) {
    out->lease_left = -2; /* no meta commands (memcached < 1.6) */
    return gets_key(s, c, key, &out->holder, doing);
  }
  const char *w[3];
  size_t wl[3];
  uint64_t bytes, secs;
  char ex[200];
  mmc_excerpt(line, len, ex, sizeof ex);
  int neg = 0;
  if (mmc_split(line, len, w, wl, 3) != 3 || !mmc_word_is(w[0], wl[0], "VA") ||
      !mmc_number(w[1], wl[1], MMC_VALUE_MAX, &bytes) || wl[2] < 2 || w[2][0] != 't' ||
      !((neg = (wl[2] == 3 && w[2][1] == '-' && w[2][2] == '1')) || mmc_number(w[2] + 1, wl[2] - 1, UINT32_MAX, &secs)))
    return mmc_fail(&s->call, c, MM_ERR_SERVER, doing, "malformed reply \"%s\" (expected VA <bytes> t<seconds>)", ex);
  size_t keep = bytes > MM_TOKEN_MAX ? MM_TOKEN_MAX : (size_t) bytes;
  if ((st = mmc_read_bytes(&s->call, c, doing, (size_t) bytes, out->holder.token, keep)) != MM_OK) return st;
  out->holder.token_len = mmc_value_token(out->holder.token, (size_t) bytes);
  if ((st = mmc_read_value_end(&s->call, c, doing, bytes)) != MM_OK) return st;
  out->lease_left = neg ? -1 : (double) secs;
  return MM_OK;
}

static mm_status mc_describe(mm_store *base, mm_bytes key, mm_description *out) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  mmc_conn *c;
  base->maybe_applied = 0;
  memset(out, 0, sizeof *out);
  out->lease_left = -2;
  mm_status st = begin(s, key, &c, "describe a lock");
  snprintf(out->where, sizeof out->where, "%s", c->label);
  if (st == MM_OK) st = describe_once(s, c, key, out);
  if (st == MM_ERR_CONNECTION && s->call.retryable && (st = again(s, key, &c, "describe a lock")) == MM_OK)
    st = describe_once(s, c, key, out);
  if (st == MM_ABSENT) {
    out->holder.token_len = 0;
    out->holder.token[0] = '\0';
    out->lease_left = -2;
    st = MM_OK;
  }
  return st;
}

static mm_status force_once(mm_memcached_store *s, mmc_conn *c, mm_bytes key) {
  const char *doing = "remove a lock";
  char req[MM_KEY_MAX + 16];
  int n = snprintf(req, sizeof req, "delete %.*s\r\n", (int) key.len, key.ptr);
  s->base.maybe_applied = 1;
  mm_status st = mmc_send_all(&s->call, c, req, (size_t) n, doing);
  if (st != MM_OK) return st;
  static const char *const accepted[] = {"DELETED", "NOT_FOUND", NULL};
  int r = mmc_read_status(&s->call, c, doing, accepted, &st);
  return r == 0 ? MM_OK : r == 1 ? MM_ABSENT : st;
}

static mm_status mc_force_release(mm_store *base, mm_bytes key) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  mmc_conn *c;
  base->maybe_applied = 0;
  mm_status st = begin(s, key, &c, "remove a lock");
  if (st == MM_OK) st = force_once(s, c, key);
  if (st == MM_ERR_CONNECTION && s->call.retryable && (st = again(s, key, &c, "remove a lock")) == MM_OK) {
    st = force_once(s, c, key);
    if (st == MM_ABSENT) st = MM_OK; /* the first delete may have removed it */
  }
  return st;
}

static mm_status mc_locate(mm_store *base, mm_bytes key, char *host, size_t hostlen, unsigned *port) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  mmc_conn *c = conn_for(s, key);
  snprintf(host, hostlen, "%s", c->host);
  *port = c->port;
  return MM_OK;
}

static void free_conns(mm_memcached_store *s) {
  for (size_t i = 0; i < s->nconns; i++) mmc_conn_free(&s->conns[i]);
  free(s->conns);
  s->conns = NULL;
  s->nconns = 0;
}

/* Closes the sockets without a "quit": the server notices the close. */
static void mc_destroy(mm_store *base) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  free_conns(s);
  memcached_free(s->mc);
  free(s);
}

/* In a forked child: the sockets are the parent's too. close() only drops
 * the child's reference (no shutdown, nothing sent), so the parent's
 * connections are untouched. memcached_free does no I/O here: libmemcached
 * never opened a connection of this handle. */
static void mc_abandon(mm_store *base) { mc_destroy(base); }

static const mm_store_ops memcached_ops = {
    .name = "memcached",
    .kind = MM_KIND_LEASE,
    .caps = MM_CAP_FENCING,
    .max_ttl = MM_MAX_TTL,
    .renew_after = mc_renew_after,
    .try_take = mc_try_take,
    .wait_take = NULL,
    .release = mc_release,
    .refresh = mc_refresh,
    .read = mc_read,
    .describe = mc_describe,
    .force_release = mc_force_release,
    .locate = mc_locate,
    .destroy = mc_destroy,
    .abandon = mc_abandon,
};

#define SET_BEHAVIOR(flag, value)                                                                \
  do {                                                                                           \
    memcached_return_t brc = memcached_behavior_set(mc, (flag), (uint64_t) (value));             \
    if (memcached_failed(brc)) {                                                                 \
      snprintf(errbuf, errlen, "could not set %s: %s", #flag, memcached_strerror(mc, brc));     \
      goto error;                                                                                \
    }                                                                                            \
  } while (0)

mm_store *mm_memcached_store_new(const mm_memcached_options *opts, char *errbuf, size_t errlen) {
  mm_memcached_store *s = calloc(1, sizeof *s);
  if (s == NULL) {
    snprintf(errbuf, errlen, "out of memory");
    return NULL;
  }
  memcached_st *mc = memcached_create(NULL);
  if (mc == NULL) {
    free(s);
    snprintf(errbuf, errlen, "memcached_create failed");
    return NULL;
  }

  /* One server per key, by ketama; a failing server is never ejected, or its
   * locks would move to another server and be granted twice. */
  SET_BEHAVIOR(MEMCACHED_BEHAVIOR_DISTRIBUTION, MEMCACHED_DISTRIBUTION_CONSISTENT_KETAMA);
  SET_BEHAVIOR(MEMCACHED_BEHAVIOR_REMOVE_FAILED_SERVERS, 0);

  s->conns = calloc(opts->server_count, sizeof *s->conns);
  if (s->conns == NULL) {
    snprintf(errbuf, errlen, "out of memory");
    goto error;
  }
  for (size_t i = 0; i < opts->server_count; i++) {
    const mm_server_addr *a = &opts->servers[i];
    memcached_return_t rc = a->port == 0 ? memcached_server_add_unix_socket(mc, a->host)
                                         : memcached_server_add(mc, a->host, (in_port_t) a->port);
    if (memcached_failed(rc)) {
      snprintf(errbuf, errlen, "could not add memcached server %s:%u: %s", a->host, a->port,
               memcached_strerror(mc, rc));
      goto error;
    }
    if (mmc_conn_init(&s->conns[s->nconns], a) != 0) {
      snprintf(errbuf, errlen, "out of memory");
      goto error;
    }
    s->nconns++;
  }
  /* conns[i] must be the continuum's server i. */
  if (memcached_server_count(mc) != s->nconns) {
    snprintf(errbuf, errlen, "libmemcached lists %u servers, not %zu", memcached_server_count(mc), s->nconns);
    goto error;
  }
  for (size_t i = 0; i < s->nconns; i++) {
    const memcached_instance_st *in = memcached_server_instance_by_position(mc, (uint32_t) i);
    if (in == NULL || strcmp(memcached_server_name(in), s->conns[i].host) != 0 ||
        (s->conns[i].port != 0 && memcached_server_port(in) != s->conns[i].port)) {
      snprintf(errbuf, errlen, "libmemcached reordered the server list");
      goto error;
    }
  }

  s->base.ops = &memcached_ops;
  s->base.cancel_fd = -1;
  s->base.cancelled = NULL;
  s->mc = mc;
  s->call.store = &s->base;
  s->call.connect_timeout = opts->connect_timeout_ms / 1000.0;
  s->call.io_timeout = opts->io_timeout_ms / 1000.0;
  s->call.retry_timeout = opts->retry_timeout_s;
  return &s->base;

error:
  free_conns(s);
  memcached_free(mc);
  free(s);
  return NULL;
}
