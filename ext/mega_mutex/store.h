/*
 * store.h - the interface every lock store implements.
 *
 * The lock logic (lock.c) speaks only to this interface; a store knows how
 * to take, release, extend and read one named lease on its backend. The
 * memcached store (store_memcached.c) is the first; a MySQL GET_LOCK store
 * or a quorum over several independent servers can sit beside it.
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
  MM_ERR_SERVER      /* server refused: out of memory, no CAS, protocol */
} mm_status;

typedef struct {
  const char *ptr;
  size_t len;
} mm_bytes;

/* Who holds a lock, as read back from the store. */
typedef struct {
  char token[MM_TOKEN_MAX + 1];
  size_t token_len;
  uint64_t version; /* memcached: the item's CAS; used for atomic release */
  uint64_t witness; /* names the connection `version` was read on, unchanged
                       since (see store_memcached.c); 0 when unknown */
} mm_holder;

typedef struct mm_store mm_store;

typedef struct {
  const char *name;
  /* Take `key` for `token` with a lease of at least `ttl` seconds. MM_OK when
   * taken (holder->version set for release), MM_HELD when someone else holds
   * it (holder filled when known). */
  mm_status (*acquire)(mm_store *, mm_bytes key, mm_bytes token, uint32_t ttl, mm_holder *holder);
  /* Remove `key` only if `token` still holds it. `version` and `witness`
   * are what acquire returned (0 when unknown): hints a store may use to
   * save a round trip when it can prove them still valid. `unknown`: an
   * earlier try of this release may have been applied (then "gone" means
   * released). MM_OK, or MM_HELD (someone else holds it now: lost) /
   * MM_ABSENT (gone, and not by this release: lost). */
  mm_status (*release)(mm_store *, mm_bytes key, mm_bytes token, uint64_t version, uint64_t witness,
                       int unknown);
  /* Renew the lease of `key` to `ttl` seconds if `token` holds it; the new
   * version goes to *version. MM_OK, MM_HELD or MM_ABSENT. */
  mm_status (*extend)(mm_store *, mm_bytes key, mm_bytes token, uint32_t ttl, uint64_t *version);
  /* Read the holder: MM_OK with holder filled, or MM_ABSENT. */
  mm_status (*read)(mm_store *, mm_bytes key, mm_holder *holder);
  /* Remove `key` whoever holds it (operator's escape hatch). */
  mm_status (*force_release)(mm_store *, mm_bytes key);
  /* The server that keeps `key`: host (or socket path) into host[hostlen],
   * port (0 for a unix socket). MM_OK or MM_ERR_SERVER. No I/O. */
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

int mm_key_valid(mm_bytes key);
int mm_token_valid(mm_bytes token);

#endif
