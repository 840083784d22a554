/*
 * quorum_servers.h - the servers of a quorum store (store_quorum.c): who
 * each one is (its process, its age, whether it may evict), and one request
 * to all of them at once (quorum_servers.c). Each server's request is
 * built in its write buffer with the replies it allows; q_run writes them
 * all, then one ppoll over every socket (and the waker) feeds each reply,
 * as it arrives, to the strict parsers of memcached_conn.c. A server that
 * answers anything else, or nothing in time, fails this request alone.
 *
 * Without the GVL; no Ruby API.
 */
#ifndef MEGA_MUTEX_QUORUM_SERVERS_H
#define MEGA_MUTEX_QUORUM_SERVERS_H

#include "memcached_conn.h"
#include "store_quorum.h"

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
#define Q_FENCE_MAX (UINT64_MAX / 4) /* largest fence read or written: a take that read it
                                        cannot issue a larger token, and refuses */

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
  size_t same_as;         /* 1 + the index of an earlier server this one is the same
                             process as (the same sentinel): it never counts; 0: none */
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
  uint32_t read_sentinel_tag; /* the sentinel's flags: a random tag (0: none) */
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

/* Whether the waker asked the request in progress to stop. */
int q_cancelled(const q_store *q);
/* Whether `s` counts toward a majority: probed, it has kept its items
 * (not restarted, not flushed) for longer than the longest lease, and it
 * is not an earlier server listed again under another name. */
int q_mature(const q_store *q, const q_server *s, double now);

/* Closes s's connection: the next request opens (and probes) a new one. */
void q_srv_close(q_server *s);
/* `s` fails this request, with the message; its connection is closed. */
void q_srv_fail(q_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Makes `s` part of the next request: connects when needed, and prefixes
 * the probe ("stats", "stats settings") on a new connection and the
 * sentinel's add when it was found missing. 1 when it is in.
 * `same_connection`: a second step that uses a CAS read by the first, on
 * the connection it was read on: without it, the server is out. */
int q_srv_begin(q_server *s, double now, int same_connection);
/* Appends to s's request (a request too long fails the server). */
void q_srv_write(q_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The reply that comes next: EX_GETS (q->key, its fence and the sentinel,
 * each at most once), or EX_STATUS, one of the words in `accepted`. */
void q_srv_expect(q_server *s, int kind, const char *const *accepted);

/* Runs the request every SR_ACTIVE server has in its buffer. MM_OK (each
 * server is SR_DONE or SR_FAILED), or MM_INTERRUPTED. `quorum_early`:
 * once a majority of servers that count has answered, the others get a
 * short grace, then are dropped from this request. */
mm_status q_run(q_store *q, int quorum_early);
/* After a request that read the sentinel: a server whose sentinel is gone
 * or new forgot its items, and does not count until a lease has passed; a
 * server whose sentinel is an earlier server's (its tag, CAS and value) is
 * that server again, and never counts (same_as). */
void q_after_gets(q_store *q, double now);

#endif
