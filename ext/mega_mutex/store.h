/*
 * store.h - the interface every lock store implements (version 2).
 *
 * The lock logic (lock.c), the renewer (renewer.c) and the Ruby glue speak
 * only to this interface. A store says what it is - a lease store or a
 * session store, whether it can wait in the server, whether it gives
 * fencing tokens - and knows how to take, wait for, release, refresh, read
 * and describe one named lock, with its own lease rules. Stores:
 * store_memcached.c (leases in memcached), store_quorum.c (a lease on a
 * majority of independent memcached servers, with fencing tokens),
 * store_mariadb.c (MariaDB/MySQL named locks: the session is the lease) and
 * store_memory.c (this process only, for test suites).
 *
 * Every function here runs WITHOUT the Ruby GVL: no Ruby API may be used.
 * Errors are reported through mm_status plus a message in store->error.
 *
 * Each call is one request, bounded as a whole by the store's I/O timeout
 * (plus the connect timeout when it must connect), and ends at once with
 * MM_INTERRUPTED when store->cancel_fd becomes readable / *cancelled is set
 * (the client's waker). A call that ends in an error or MM_INTERRUPTED after
 * writing a store command (add, cas, delete) sets store->maybe_applied: its
 * outcome is unknown, never "not done".
 */
#ifndef MEGA_MUTEX_STORE_H
#define MEGA_MUTEX_STORE_H

#include <stddef.h>
#include <stdint.h>

#define MM_KEY_MAX 250   /* longest key a store must accept */
#define MM_TOKEN_MAX 200 /* longest owner token */
#define MM_ERROR_MAX 1024

typedef enum {
  MM_OK = 0,         /* taken / released / extended / found */
  MM_HELD,           /* someone else holds the lock */
  MM_ABSENT,         /* nobody holds the lock */
  MM_TIMEOUT,        /* (lock.c) gave up waiting */
  MM_INTERRUPTED,    /* Ruby asked the thread to stop (waiting, or a request
                        in progress: see maybe_applied) */
  MM_ERR_CONNECTION, /* server unreachable, timed out, failed mid-request */
  MM_ERR_SERVER,     /* server refused: out of memory, no CAS, protocol */
  MM_ERR_DEADLOCK    /* (a take on a session store) the server refused the wait:
                        it would deadlock with another session (MariaDB
                        ER_LOCK_DEADLOCK); the locks this session holds stay held */
} mm_status;

typedef struct {
  const char *ptr;
  size_t len;
} mm_bytes;

/* Who holds a lock, as read back from the store. */
typedef struct {
  char token[MM_TOKEN_MAX + 1];
  size_t token_len;
  uint64_t version; /* the store's own scratch (memcached: the item's CAS) */
  uint64_t witness; /* the store's own scratch (memcached: the connection it was read on) */
} mm_holder;

/* What kind of lock a store keeps. */
typedef enum {
  MM_KIND_LEASE,  /* the store expires a lock unless it is refreshed (memcached, a quorum) */
  MM_KIND_SESSION /* a lock lives as long as the connection that took it (MariaDB GET_LOCK) */
} mm_store_kind;

/* What else a store can do (mm_store_ops.caps). */
#define MM_CAP_WAIT 0x1u    /* wait_take: waits in the store, woken by a release and by the waker */
#define MM_CAP_FENCING 0x2u /* try_take / wait_take fill mm_lease_record.fencing_token */

#define MM_LEASE_STATE_MAX 48

/* One held lock as its store keeps it: filled by try_take / wait_take,
 * updated by refresh, handed back to release. Plain bytes, so a caller may
 * copy it anywhere (a Ruby String, the renewer). */
typedef struct {
  unsigned char state[MM_LEASE_STATE_MAX]; /* the store's own (memcached: CAS + connection witness) */
  double valid_until;                       /* CLOCK_MONOTONIC seconds: known held until then
                                               (a session store: INFINITY while its session lives) */
  uint64_t fencing_token;                   /* grows across holders of a key; 0 when the store gives none */
} mm_lease_record;

/* What describe reports about one key, for `mega_mutex status`. */
typedef struct {
  mm_holder holder;   /* token_len 0: nobody holds it */
  double lease_left;  /* seconds the store keeps it; -1 no expiry; -2 unknown */
  char where[320];    /* the server that keeps it: "127.0.0.1:11211", a socket path, "memory" */
} mm_description;

typedef struct mm_store mm_store;

/*
 * The operations. `ttl` is always the caller's lock_ttl in seconds: each
 * store applies its own lease rules (memcached: a margin on the wire for its
 * one-second clock, the 30-day limit) and says when a lease must be renewed.
 */
typedef struct {
  const char *name;
  mm_store_kind kind;
  unsigned caps; /* MM_CAP_* */
  /* Longest lock_ttl the store accepts. */
  uint32_t max_ttl;
  /* Seconds after a take or refresh at which the lease should be refreshed. */
  double (*renew_after)(const mm_store *, uint32_t ttl);
  /* Try once to take `key` for `token`. MM_OK: taken, *lease filled.
   * MM_HELD: someone else holds it (holder filled when known). */
  mm_status (*try_take)(mm_store *, mm_bytes key, mm_bytes token, uint32_t ttl, mm_lease_record *lease,
                        mm_holder *holder);
  /* (MM_CAP_WAIT only; NULL otherwise) Wait up to `timeout` seconds (< 0:
   * for ever) for `key`, in the store. MM_OK, MM_TIMEOUT (holder filled when
   * known), MM_INTERRUPTED (the waker), or an error. */
  mm_status (*wait_take)(mm_store *, mm_bytes key, mm_bytes token, uint32_t ttl, double timeout,
                         mm_lease_record *lease, mm_holder *holder);
  /* Give `key` back if `token` still holds it. `lease`: what the take
   * returned (hints a store may use to save a round trip when it can prove
   * them still valid), or NULL when unknown. `unknown`: an earlier try of
   * this release may have been applied (then "gone" means released). MM_OK,
   * or MM_HELD (someone else holds it: lost) / MM_ABSENT (gone, not by this
   * release: lost). */
  mm_status (*release)(mm_store *, mm_bytes key, mm_bytes token, const mm_lease_record *lease, int unknown);
  /* Keep the lock: extend a lease for another `ttl`, or check that a
   * session still holds it. Updates lease->valid_until. MM_OK, MM_HELD or
   * MM_ABSENT (lost). */
  mm_status (*refresh)(mm_store *, mm_bytes key, mm_bytes token, uint32_t ttl, mm_lease_record *lease);
  /* Read the holder: MM_OK with holder filled, or MM_ABSENT. */
  mm_status (*read)(mm_store *, mm_bytes key, mm_holder *holder);
  /* The holder, the lease left and the server (for `mega_mutex status`). */
  mm_status (*describe)(mm_store *, mm_bytes key, mm_description *out);
  /* Remove `key` whoever holds it (operator's escape hatch). */
  mm_status (*force_release)(mm_store *, mm_bytes key);
  /* The server that keeps `key`: host (or socket path) into host[hostlen],
   * port (0 for a unix socket or a store without servers). No I/O. */
  mm_status (*locate)(mm_store *, mm_bytes key, char *host, size_t hostlen, unsigned *port);
  /* Close connections and free. */
  void (*destroy)(mm_store *);
  /* Free what is ours alone, touching no socket: used in a forked child,
   * whose sockets are shared with the parent. */
  void (*abandon)(mm_store *);
} mm_store_ops;

struct mm_store {
  const mm_store_ops *ops;
  char error[MM_ERROR_MAX]; /* message for the last MM_ERR_* */
  int cancel_fd;            /* readable when the call must stop; -1: none */
  const int *cancelled;     /* set (read atomically) when it must stop; may be NULL */
  int maybe_applied;        /* the last call wrote a store command whose
                               outcome it does not know */
};

/* Server address for mm_memcached_store_new: port 0 means `host` is a
 * unix socket path. */
typedef struct {
  const char *host;
  unsigned port;
} mm_server_addr;

typedef struct {
  const mm_server_addr *servers;
  size_t server_count;
  int connect_timeout_ms;
  int io_timeout_ms;
  int retry_timeout_s;
} mm_memcached_options;

/* Returns NULL and fills errbuf on failure. May be called without the GVL. */
mm_store *mm_memcached_store_new(const mm_memcached_options *opts, char *errbuf, size_t errlen);

/* Keys and tokens every store takes: 1 to MM_KEY_MAX (tokens: MM_TOKEN_MAX)
 * bytes of printable ASCII without spaces. */
static inline int mm_key_valid(mm_bytes key) {
  if (key.len == 0 || key.len > MM_KEY_MAX) return 0;
  for (size_t i = 0; i < key.len; i++) {
    unsigned char c = (unsigned char) key.ptr[i];
    if (c <= 0x20 || c >= 0x7f) return 0;
  }
  return 1;
}

static inline int mm_token_valid(mm_bytes token) { return token.len <= MM_TOKEN_MAX && mm_key_valid(token); }

#endif
