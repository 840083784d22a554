/*
 * store_quorum.h - a lock held on a majority of independent memcached
 * servers, with fencing tokens (store_quorum.c).
 */
#ifndef MEGA_MUTEX_STORE_QUORUM_H
#define MEGA_MUTEX_STORE_QUORUM_H

#include "store.h"

#define MM_QUORUM_MIN_SERVERS 3
#define MM_QUORUM_MAX_SERVERS 15
#define MM_QUORUM_WARNINGS_MAX 2048

typedef struct {
  const mm_server_addr *servers;
  size_t server_count; /* MM_QUORUM_MIN_SERVERS to MM_QUORUM_MAX_SERVERS */
  int connect_timeout_ms;
  int io_timeout_ms;
  /* The longest lock_ttl any client of these servers uses, in seconds: a
   * server counts toward a majority only once it has kept its items (not
   * restarted, not flushed) for longer than a lease of this length. Also
   * the longest ttl this store accepts. */
  uint32_t max_ttl;
} mm_quorum_options;

/* Returns NULL and fills errbuf on failure. No I/O. May run without the GVL. */
mm_store *mm_quorum_store_new(const mm_quorum_options *opts, char *errbuf, size_t errlen);

/* Connects to every server once and reads who it is (a failure is not an
 * error here: the server is asked again at the next request). Fills `out`
 * with one line per server that may evict items (started without -M), for
 * the log. Without the GVL. */
void mm_quorum_store_probe(mm_store *store, char *out, size_t outlen);

/* For any memcached servers (1 to MM_QUORUM_MAX_SERVERS; max_ttl unused but
 * 1 to 30 days): connects to each once and fills `out` as
 * mm_quorum_store_probe does. 0, or -1 with the error in `out`. */
int mm_memcached_probe_evictions(const mm_quorum_options *opts, char *out, size_t outlen);

#endif
