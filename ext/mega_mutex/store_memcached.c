/*
 * store_memcached.c - the lock store over libmemcached.
 *
 * A lock is one item: key = the lock's key, value = the holder's token, with
 * the lease as its expiry. The protocol, per MEMCACHED_NOTES.md:
 *
 *   take     add(key, token, ttl) without waiting for its reply (NOREPLY),
 *            then gets(key) on the same connection: one round trip. The item
 *            read back is the truth: my token means I hold it, and its CAS
 *            lets me release it atomically later.
 *   release  cas(key, token, exptime = a date in 1970, cas): stored only if
 *            nobody changed the item since, and expired at once - an atomic
 *            compare-and-delete, one round trip. Only when the CAS is proven
 *            current (see "witness" below); otherwise gets(key), compare the
 *            token, then that cas.
 *   extend   gets, compare token, cas(key, token, new ttl, cas).
 *
 * The witness. A restarted server counts CAS from 0 again, so an old CAS
 * can match a new holder's item: a CAS alone is no proof of ownership. But
 * a TCP (or unix socket) connection cannot outlive the server process it
 * was opened to. So a CAS read on a connection, then used on that same
 * connection, with no failure on it in between, is a CAS of the same server
 * process - unique for its lifetime - and the 1-round-trip cas is safe.
 * libmemcached reconnects only after closing a connection, and it closes
 * one only on a failure it reports (or on quit/free, which we never call on
 * a live store). Each store therefore carries an epoch, drawn from one
 * process-wide counter and renewed on every failure: acquire returns it
 * with the CAS (holder->witness), and release takes the short path only
 * when it finds the same epoch on the same store. Anything else - another
 * connection, a failure since, a renewal by another connection (its cas
 * changed the CAS: EXISTS) - takes the long path, which compares the token.

 * All functions here run without the GVL and use no Ruby API.
 */
#include "store.h"

#include <libmemcached/memcached.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An absolute expiry in the past (anything above 30 days is a Unix time):
 * a cas with it stores nothing lasting - the item is gone at once. */
#define MM_EXPIRE_NOW ((time_t) 2592001)
#define MM_RELEASE_TRIES 5

typedef struct {
  mm_store base;
  memcached_st *mc;
  memcached_result_st result;
  memcached_return_t last_rc; /* of the last failure */
  uint64_t epoch;             /* renewed on every failure: see "witness" above */
} mm_memcached_store;

/* Epochs are unique across the stores of a process, so a witness from one
 * store never matches another's. Never 0 (0 means "unknown"). */
static uint64_t epoch_counter;

static uint64_t next_epoch(void) { return __atomic_add_fetch(&epoch_counter, 1, __ATOMIC_RELAXED); }

/* Any failure may have closed a connection: nothing read before it is
 * witnessed any more. */
static void connection_suspect(mm_memcached_store *s) { s->epoch = next_epoch(); }

int mm_key_valid(mm_bytes key) {
  if (key.len == 0 || key.len > MM_KEY_MAX) return 0;
  for (size_t i = 0; i < key.len; i++) {
    unsigned char c = (unsigned char) key.ptr[i];
    if (c <= 0x20 || c >= 0x7f) return 0;
  }
  return 1;
}

int mm_token_valid(mm_bytes token) {
  return token.len <= MM_TOKEN_MAX && mm_key_valid(token);
}

static int is_connection_failure(memcached_return_t rc) {
  switch (rc) {
  case MEMCACHED_FAILURE: /* what mget returns after a broken pipe */
  case MEMCACHED_HOST_LOOKUP_FAILURE:
  case MEMCACHED_CONNECTION_FAILURE:
  case MEMCACHED_CONNECTION_BIND_FAILURE:
  case MEMCACHED_WRITE_FAILURE:
  case MEMCACHED_READ_FAILURE:
  case MEMCACHED_UNKNOWN_READ_FAILURE:
  case MEMCACHED_PARTIAL_READ:
  case MEMCACHED_NO_SERVERS:
  case MEMCACHED_ERRNO:
  case MEMCACHED_FAIL_UNIX_SOCKET:
  case MEMCACHED_TIMEOUT:
  case MEMCACHED_SERVER_MARKED_DEAD:
  case MEMCACHED_SERVER_TEMPORARILY_DISABLED:
  case MEMCACHED_IN_PROGRESS:
    return 1;
  default:
    return 0;
  }
}

/* Record the error of `rc` for `key` and classify it. */
static mm_status fail(mm_memcached_store *s, memcached_return_t rc, mm_bytes key, const char *doing) {
  connection_suspect(s);
  memcached_return_t lookup_rc = MEMCACHED_SUCCESS;
  const memcached_instance_st *server = memcached_server_by_key(s->mc, key.ptr, key.len, &lookup_rc);
  const char *detail = memcached_last_error_message(s->mc);
  if (detail == NULL || *detail == '\0' || memcached_last_error(s->mc) != rc)
    detail = memcached_strerror(s->mc, rc); /* no message recorded for this one */
  s->last_rc = rc;
  /* libmemcached's message reads "(0x<address>) WHAT(why),  host: h:p ->
   * file:line": keep "WHAT(why)". */
  if (detail[0] == '(' && detail[1] == '0' && detail[2] == 'x') {
    const char *end = strstr(detail, ") ");
    if (end != NULL) detail = end + 2;
  }
  char what[256];
  size_t n = strcspn(detail, ",");
  if (n >= sizeof what) n = sizeof what - 1;
  memcpy(what, detail, n);
  what[n] = '\0';
  while (n > 0 && what[n - 1] == ' ') what[--n] = '\0';
  detail = what;
  if (server != NULL && memcached_success(lookup_rc)) {
    snprintf(s->base.error, sizeof s->base.error, "memcached %s:%u failed to %s: %s",
             memcached_server_name(server), (unsigned) memcached_server_port(server), doing, detail);
  } else {
    snprintf(s->base.error, sizeof s->base.error, "memcached failed to %s: %s", doing, detail);
  }
  return is_connection_failure(rc) ? MM_ERR_CONNECTION : MM_ERR_SERVER;
}

static mm_status fail_msg(mm_memcached_store *s, const char *msg) {
  connection_suspect(s);
  snprintf(s->base.error, sizeof s->base.error, "%s", msg);
  return MM_ERR_SERVER;
}

/* gets: MM_OK with holder filled, MM_ABSENT, or an error. Always drains the
 * replies so the connection stays in step. */
static mm_status read_holder(mm_memcached_store *s, mm_bytes key, mm_holder *holder) {
  const char *keys[1] = {key.ptr};
  size_t lens[1] = {key.len};
  memcached_return_t rc = memcached_mget(s->mc, keys, lens, 1);
  if (memcached_failed(rc)) return fail(s, rc, key, "read a lock");

  int found = 0;
  memcached_return_t fetch_rc = MEMCACHED_SUCCESS;
  memcached_result_st *res;
  while ((res = memcached_fetch_result(s->mc, &s->result, &fetch_rc)) != NULL) {
    if (found) continue; /* one key asked for; drain anything else */
    size_t len = memcached_result_length(res);
    if (len > MM_TOKEN_MAX) len = MM_TOKEN_MAX; /* cannot be one of our tokens */
    memcpy(holder->token, memcached_result_value(res), len);
    holder->token[len] = '\0';
    holder->token_len = len;
    holder->version = memcached_result_cas(res);
    holder->witness = s->epoch;
    found = 1;
  }
  if (fetch_rc != MEMCACHED_END && fetch_rc != MEMCACHED_NOTFOUND && memcached_failed(fetch_rc))
    return fail(s, fetch_rc, key, "read a lock");
  return found ? MM_OK : MM_ABSENT;
}

static int holder_is(const mm_holder *holder, mm_bytes token) {
  return holder->token_len == token.len && memcmp(holder->token, token.ptr, token.len) == 0;
}

static mm_status require_cas(mm_memcached_store *s, const mm_holder *holder) {
  if (holder->version == 0)
    return fail_msg(s, "memcached returned CAS 0 (server started with -C?): "
                       "MegaMutex needs CAS for an atomic, owner-checked release");
  return MM_OK;
}

static mm_status set_noreply(mm_memcached_store *s, int on, mm_bytes key) {
  memcached_return_t rc = memcached_behavior_set(s->mc, MEMCACHED_BEHAVIOR_NOREPLY, (uint64_t) on);
  return memcached_failed(rc) ? fail(s, rc, key, "configure the connection") : MM_OK;
}

/* The slow path: an add whose reply we wait for, then a read. Used when the
 * fast path read back no item at all - either the holder released between
 * our add and our read, or the server would not store the lock. */
static mm_status acquire_confirmed(mm_memcached_store *s, mm_bytes key, mm_bytes token,
                                   uint32_t ttl, mm_holder *holder) {
  memcached_return_t rc = memcached_add(s->mc, key.ptr, key.len, token.ptr, token.len, (time_t) ttl, 0);
  mm_status st;
  if (rc == MEMCACHED_SUCCESS) {
    st = read_holder(s, key, holder);
    if (st == MM_ABSENT)
      return fail_msg(s, "memcached stored the lock but lost it at once (evicted? "
                         "run a dedicated memcached with -M)");
    if (st != MM_OK) return st;
    if (!holder_is(holder, token)) return MM_HELD;
    return require_cas(s, holder);
  }
  if (rc == MEMCACHED_NOTSTORED || rc == MEMCACHED_DATA_EXISTS) {
    st = read_holder(s, key, holder);
    if (st == MM_ABSENT) { /* released again in between: let the caller retry */
      holder->token_len = 0;
      holder->token[0] = '\0';
      holder->version = 0;
      return MM_HELD;
    }
    if (st != MM_OK) return st;
    return holder_is(holder, token) ? require_cas(s, holder) : MM_HELD;
  }
  return fail(s, rc, key, "store a lock");
}

/* A connection that broke while idle (server restarted, idle timeout)
 * fails once and is reconnected by the next call: worth one more try.
 * A timeout or a server marked dead is not. */
static int worth_retrying(mm_memcached_store *s, mm_status st) {
  if (st != MM_ERR_CONNECTION) return 0;
  switch (s->last_rc) {
  case MEMCACHED_TIMEOUT:
  case MEMCACHED_SERVER_MARKED_DEAD:
  case MEMCACHED_SERVER_TEMPORARILY_DISABLED:
  case MEMCACHED_CONNECTION_FAILURE:
  case MEMCACHED_HOST_LOOKUP_FAILURE:
  case MEMCACHED_NO_SERVERS:
    return 0;
  default:
    return 1;
  }
}

static mm_status acquire_once(mm_memcached_store *s, mm_bytes key, mm_bytes token, uint32_t ttl,
                              mm_holder *holder) {
  mm_status st = set_noreply(s, 1, key);
  if (st != MM_OK) return st;
  memcached_return_t rc = memcached_add(s->mc, key.ptr, key.len, token.ptr, token.len, (time_t) ttl, 0);
  st = set_noreply(s, 0, key);
  if (memcached_failed(rc) && rc != MEMCACHED_NOTSTORED && rc != MEMCACHED_DATA_EXISTS)
    return fail(s, rc, key, "store a lock");
  if (st != MM_OK) return st;

  st = read_holder(s, key, holder);
  if (st == MM_ABSENT) return acquire_confirmed(s, key, token, ttl, holder);
  if (st != MM_OK) return st;
  if (!holder_is(holder, token)) return MM_HELD;
  if ((st = require_cas(s, holder)) != MM_OK) {
    /* Ours, but not safely releasable later: give it back now (it is ours
     * this instant; a plain delete is the best a CAS-less server allows). */
    memcached_return_t rc = memcached_delete(s->mc, key.ptr, key.len, 0);
    (void) rc; /* the CAS error is what the caller must see (require_cas
                  has already renewed the epoch) */
  }
  return st;
}

/* Taking is idempotent (the token decides), so a retry is always safe. */
static mm_status mc_acquire(mm_store *base, mm_bytes key, mm_bytes token, uint32_t ttl, mm_holder *holder) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  mm_status st = acquire_once(s, key, token, ttl, holder);
  if (worth_retrying(s, st)) st = acquire_once(s, key, token, ttl, holder);
  return st;
}

/* The long path: read the owner and the current CAS on this connection,
 * compare the token, then cas. A restart between that read and the cas
 * breaks the connection, so the pair is safe. */
static mm_status release_checked(mm_memcached_store *s, mm_bytes key, mm_bytes token) {
  mm_holder holder;
  for (int attempt = 0; attempt < MM_RELEASE_TRIES; attempt++) {
    mm_status st = read_holder(s, key, &holder);
    if (st != MM_OK) return st;
    if (!holder_is(&holder, token)) return MM_HELD;
    if ((st = require_cas(s, &holder)) != MM_OK) return st;
    memcached_return_t rc =
        memcached_cas(s->mc, key.ptr, key.len, token.ptr, token.len, MM_EXPIRE_NOW, 0, holder.version);
    if (rc == MEMCACHED_SUCCESS) return MM_OK;
    if (rc == MEMCACHED_NOTFOUND) return MM_ABSENT;
    if (rc != MEMCACHED_DATA_EXISTS) return fail(s, rc, key, "release a lock");
    /* changed since we read it (renewed meanwhile): look again */
  }
  return fail_msg(s, "the lock kept changing while being released");
}

static mm_status mc_release(mm_store *base, mm_bytes key, mm_bytes token, uint64_t version, uint64_t witness) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  if (version == 0 || witness == 0 || witness != s->epoch) return release_checked(s, key, token);

  /* The short path: `version` was read on this very connection, which has
   * not failed since, so it is a CAS of this server process. */
  memcached_return_t rc = memcached_cas(s->mc, key.ptr, key.len, token.ptr, token.len, MM_EXPIRE_NOW, 0, version);
  if (rc == MEMCACHED_SUCCESS) return MM_OK;
  if (rc == MEMCACHED_NOTFOUND) return MM_ABSENT; /* expired: nobody holds it */
  if (rc == MEMCACHED_DATA_EXISTS) return release_checked(s, key, token); /* renewed, or taken over */
  mm_status st = fail(s, rc, key, "release a lock");
  /* The connection failed (a restarted server: the cas went to a socket
   * nobody reads, and libmemcached has already reconnected). Ask the server
   * on a fresh connection - unless it merely timed out, which a second
   * request would only repeat. */
  if (st == MM_ERR_CONNECTION && s->last_rc != MEMCACHED_TIMEOUT) return release_checked(s, key, token);
  return st;
}

static mm_status mc_extend(mm_store *base, mm_bytes key, mm_bytes token, uint32_t ttl, uint64_t *version) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  mm_holder holder;
  for (int attempt = 0; attempt < MM_RELEASE_TRIES; attempt++) {
    mm_status st = read_holder(s, key, &holder);
    if (st != MM_OK) return st;
    if (!holder_is(&holder, token)) return MM_HELD;
    if ((st = require_cas(s, &holder)) != MM_OK) return st;
    memcached_return_t rc =
        memcached_cas(s->mc, key.ptr, key.len, token.ptr, token.len, (time_t) ttl, 0, holder.version);
    if (rc == MEMCACHED_SUCCESS) {
      *version = 0; /* the new CAS is not returned by a cas: release re-reads */
      return MM_OK;
    }
    if (rc == MEMCACHED_NOTFOUND) return MM_ABSENT;
    if (rc != MEMCACHED_DATA_EXISTS) return fail(s, rc, key, "extend a lock");
  }
  return fail_msg(s, "the lock kept changing while being extended");
}

static mm_status mc_read(mm_store *base, mm_bytes key, mm_holder *holder) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  mm_status st = read_holder(s, key, holder);
  if (worth_retrying(s, st)) st = read_holder(s, key, holder);
  return st;
}

static mm_status mc_force_release(mm_store *base, mm_bytes key) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  memcached_return_t rc = memcached_delete(s->mc, key.ptr, key.len, 0);
  if (rc == MEMCACHED_SUCCESS || rc == MEMCACHED_DELETED) return MM_OK;
  if (rc == MEMCACHED_NOTFOUND) return MM_ABSENT;
  return fail(s, rc, key, "remove a lock");
}

static mm_status mc_locate(mm_store *base, mm_bytes key, char *host, size_t hostlen, unsigned *port) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  memcached_return_t rc = MEMCACHED_SUCCESS;
  const memcached_instance_st *server = memcached_server_by_key(s->mc, key.ptr, key.len, &rc);
  if (server == NULL || memcached_failed(rc)) return fail(s, rc, key, "find the server of a lock");
  snprintf(host, hostlen, "%s", memcached_server_name(server));
  *port = memcached_server_type(server) != NULL && strcmp(memcached_server_type(server), "SOCKET") == 0
              ? 0
              : (unsigned) memcached_server_port(server);
  return MM_OK;
}

static void mc_destroy(mm_store *base) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  memcached_result_free(&s->result);
  memcached_free(s->mc);
  free(s);
}

/* Handles abandoned in forked children: kept reachable, never freed. */
static memcached_st **abandoned;
static size_t abandoned_count, abandoned_cap;

/* In a forked child: the sockets belong to the parent too. memcached_free
 * would send "quit" and shutdown() them, breaking the parent's connection,
 * so the handle is deliberately left alone (a small, one-off cost per fork)
 * and kept on a list. The result buffer needs no I/O to free. Called with
 * the GVL (from GC or close), so the list needs no lock. */
static void mc_abandon(mm_store *base) {
  mm_memcached_store *s = (mm_memcached_store *) base;
  memcached_result_free(&s->result);
  if (abandoned_count == abandoned_cap) {
    size_t cap = abandoned_cap ? abandoned_cap * 2 : 8;
    memcached_st **grown = realloc(abandoned, cap * sizeof *grown);
    if (grown != NULL) {
      abandoned = grown;
      abandoned_cap = cap;
    }
  }
  if (abandoned_count < abandoned_cap) abandoned[abandoned_count++] = s->mc;
  s->mc = NULL;
  free(s);
}

static const mm_store_ops memcached_ops = {
    "memcached", mc_acquire, mc_release, mc_extend,  mc_read,
    mc_force_release, mc_locate, mc_destroy, mc_abandon,
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
  if (memcached_result_create(mc, &s->result) == NULL) {
    snprintf(errbuf, errlen, "memcached_result_create failed");
    memcached_free(mc);
    free(s);
    return NULL;
  }

  /* One server per key, by ketama; a failing server is never ejected, or its
   * locks would move to another server and be granted twice. */
  SET_BEHAVIOR(MEMCACHED_BEHAVIOR_DISTRIBUTION, MEMCACHED_DISTRIBUTION_CONSISTENT_KETAMA);
  SET_BEHAVIOR(MEMCACHED_BEHAVIOR_REMOVE_FAILED_SERVERS, 0);
  SET_BEHAVIOR(MEMCACHED_BEHAVIOR_SUPPORT_CAS, 1);
  SET_BEHAVIOR(MEMCACHED_BEHAVIOR_TCP_NODELAY, 1);
  SET_BEHAVIOR(MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, opts->connect_timeout_ms);
  SET_BEHAVIOR(MEMCACHED_BEHAVIOR_POLL_TIMEOUT, opts->io_timeout_ms);
  SET_BEHAVIOR(MEMCACHED_BEHAVIOR_RETRY_TIMEOUT, opts->retry_timeout_s);

  for (size_t i = 0; i < opts->server_count; i++) {
    const mm_server_addr *a = &opts->servers[i];
    memcached_return_t rc = a->port == 0 ? memcached_server_add_unix_socket(mc, a->host)
                                         : memcached_server_add(mc, a->host, (in_port_t) a->port);
    if (memcached_failed(rc)) {
      snprintf(errbuf, errlen, "could not add memcached server %s:%u: %s", a->host, a->port,
               memcached_strerror(mc, rc));
      goto error;
    }
  }

  s->base.ops = &memcached_ops;
  s->mc = mc;
  s->epoch = next_epoch();
  return &s->base;

error:
  memcached_result_free(&s->result);
  memcached_free(mc);
  free(s);
  return NULL;
}
