/*
 * memcached_call.h - one request at a time on one memcached connection,
 * waited for in the calling thread: store_memcached.c's I/O.
 *
 * A call has one deadline (io_timeout from its start, plus the time spent
 * connecting) however slowly the reply trickles in, and every wait also
 * watches the store's waker (cancel_fd / cancelled), so Thread#raise,
 * Timeout and Ctrl-C end it at once - unless a store command was written
 * (store->maybe_applied): then the reply gets MMC_INTERRUPT_GRACE to arrive,
 * so that a take or release cut short still has a known outcome.
 *
 * Every failure closes the connection (its replies may be out of step) and
 * leaves "memcached <server> failed to <doing>: <why>" in store->error.
 * Every reply is read strictly (memcached_conn.h): anything but what the
 * request allows is MM_ERR_SERVER.
 *
 * Without the GVL; no Ruby API.
 */
#ifndef MEGA_MUTEX_MEMCACHED_CALL_H
#define MEGA_MUTEX_MEMCACHED_CALL_H

#include "memcached_conn.h"

/* Once interrupted after a store command was written: how long the reply
 * may still take (normally well under a millisecond). Only a server that
 * answers slower than this leaves the outcome unknown. */
#define MMC_INTERRUPT_GRACE 0.02
/* The longest value a reply may announce: it is drained, only a token's
 * worth kept. */
#define MMC_VALUE_MAX (1024 * 1024)

typedef struct {
  mm_store *store;                                   /* its error, waker and maybe_applied */
  double connect_timeout, io_timeout, retry_timeout; /* seconds */
  double deadline;    /* of the request in progress */
  double grace_until; /* once interrupted: when to give up; 0 before */
  int retryable;      /* the last failure: a connection that broke while idle (worth one retry) */
} mmc_call;

/* A new request: its deadline, no grace, nothing to retry. */
void mmc_call_start(mmc_call *r);

/* Closes `c` and records "memcached <c> failed to <doing>: <why>" (nothing
 * for MM_INTERRUPTED). Returns st. */
mm_status mmc_fail(mmc_call *r, mmc_conn *c, mm_status st, const char *doing, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Opens c's connection if it is closed, trying each address of the server
 * until connect_timeout: the addresses resolved before (see mmc_addresses),
 * and when none of them connects, those the name resolves to now, once.
 * A failed connect is remembered: for retry_timeout seconds calls fail at
 * once, with the same cause. */
mm_status mmc_open(mmc_call *r, mmc_conn *c, const char *doing);

/* Writes all of buf (one request batch: one write when the socket takes
 * it). Bytes that no request asked for, buffered or waiting in the socket:
 * MM_ERR_SERVER; the server's close: MM_ERR_CONNECTION (retryable). */
mm_status mmc_send_all(mmc_call *r, mmc_conn *c, const char *buf, size_t len, const char *doing);

/* One reply line, without its "\r\n", NUL-terminated in *line (valid until
 * the next read). */
mm_status mmc_read_line(mmc_call *r, mmc_conn *c, const char *doing, char **line, size_t *len);

/* Reads `n` bytes of a value, keeping the first `keep` in out. */
mm_status mmc_read_bytes(mmc_call *r, mmc_conn *c, const char *doing, size_t n, char *out, size_t keep);

/* The CRLF that ends a value of `bytes` bytes. */
mm_status mmc_read_value_end(mmc_call *r, mmc_conn *c, const char *doing, uint64_t bytes);

/* A line that is not the reply expected (mmc_unexpected's message):
 * MM_ERR_SERVER, the connection closed. */
mm_status mmc_reject(mmc_call *r, mmc_conn *c, const char *doing, const char *line, size_t len);

/* One reply line to a store command, matched against `accepted` (a
 * NULL-terminated list): its index, or -1 with the error in *st. */
int mmc_read_status(mmc_call *r, mmc_conn *c, const char *doing, const char *const *accepted, mm_status *st);

/* The reply to "gets key": MM_OK with holder filled (its token - empty when
 * the value is longer than any token -, version = the CAS, witness = c's
 * generation), MM_ABSENT, or an error. Exactly
 * "VALUE <key> <flags> <bytes> <cas>\r\n<bytes>\r\nEND\r\n" or "END\r\n"
 * is accepted. */
mm_status mmc_read_gets(mmc_call *r, mmc_conn *c, mm_bytes key, mm_holder *holder, const char *doing);

#endif
