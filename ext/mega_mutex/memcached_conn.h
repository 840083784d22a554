/*
 * memcached_conn.h - one connection to a memcached server and the strict
 * reading of its text-protocol replies: what store_memcached.c (one request
 * at a time, waiting on one socket) and store_quorum.c (one request to every
 * server, one poll over all their sockets) share.
 *
 * The layer does no waiting of its own: every socket is non-blocking, and
 * each store waits its own way (its deadline, its waker, its grace). Here:
 * the server's address and label, a connection's identity (a generation
 * number unique in the process: a CAS read on a connection is only ever
 * used on that same connection), starting a connect, one send, one recv
 * into the connection's buffer, and cutting the buffer into reply lines.
 * Then the replies, each parsed exactly: a line is what its request allows
 * or it is not, and every "not" has a message (mmc_unexpected) that the
 * store reports as a ServerError after closing the connection.
 *
 * Everything here runs without the GVL and uses no Ruby API.
 */
#ifndef MEGA_MUTEX_MEMCACHED_CONN_H
#define MEGA_MUTEX_MEMCACHED_CONN_H

#include "store.h"

#include <netdb.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/un.h>

#define MMC_LINE_MAX 1024 /* longest reply line accepted */
#define MMC_RBUF 4096     /* a connection's read buffer (holds a line, or a value up to 1 KiB, whole) */
#define MMC_LABEL_MAX 300
#define MMC_WHY_MAX 400   /* room for the message of a failure */

/* An absolute expiry in 1970 (anything above 30 days is a Unix time): a
 * cas with it stores nothing lasting - the item is gone at once. */
#define MMC_EXPIRE_NOW 2592001UL

typedef struct {
  char *host;                 /* host name or address, or a unix socket path */
  unsigned port;              /* 0: unix socket */
  char label[MMC_LABEL_MAX];  /* "host:port", "[v6]:port" or the path, for messages */
  struct addrinfo *addrs;     /* the host's addresses, resolved once and reused by every
                                 reconnect (NULL: not resolved yet, or a unix socket) */
  int addrs_stale;            /* resolve again before the next connect: a connect to
                                 them failed, or a connection closed before answering */
  int answered;               /* the open connection has received bytes */
  int fd;                     /* -1 when closed */
  uint64_t generation;        /* of the open connection (unique in the process); 0 when closed */
  double retry_at;            /* after a failed connect: fail at once until then (monotonic s) */
  char connect_error[MMC_WHY_MAX]; /* why the last connect failed */
  char rbuf[MMC_RBUF];
  size_t rpos, rlen;          /* unread bytes: rbuf[rpos, rlen) */
} mmc_conn;

/* ---- the connection -------------------------------------------------------- */

/* Fills `c` for the server `a`, closed. 0, or -1 (out of memory). */
int mmc_conn_init(mmc_conn *c, const mm_server_addr *a);
/* Closes the socket (no "quit": the server notices the close) and forgets
 * what was buffered. In a forked child close() only drops the child's
 * reference: the parent's connection is untouched. A connection that never
 * received a byte marks the addresses stale (see mmc_addresses). */
void mmc_conn_close(mmc_conn *c);
/* Closes and frees what mmc_conn_init and mmc_addresses_get allocated. */
void mmc_conn_free(mmc_conn *c);
/* Whether bytes are buffered that no request asked for. */
int mmc_conn_stray(const mmc_conn *c);
/* Whether the open connection's socket has something to read right now (bytes
 * or the server's close), without waiting. Between requests - or between
 * two writes of one request, once every reply asked for was read - that is
 * either a server that closed the connection or bytes nobody asked for,
 * which must never be read as the reply to the next request. */
int mmc_conn_readable(const mmc_conn *c);
/* A number unique in the process, never 0: connections' generations, and
 * whatever else must never match a number taken elsewhere. */
uint64_t mmc_next_generation(void);

/* ---- connecting ------------------------------------------------------------ */

/* The addresses of a server: a unix socket's one, or getaddrinfo's list.
 *
 * A host name is resolved once per connection entry (mmc_conn) and the list
 * kept for every reconnect: a reconnect pays no DNS round trip, and a
 * process forked while another thread reconnects does not inherit a
 * getaddrinfo in flight (its memory then lost in the child). The list is
 * resolved again before the next connect only once it failed: a connect to
 * it failed (mmc_addresses_stale), or a connection to it closed before it
 * answered anything (mmc_conn_close) - a server that moved to a new address
 * is found again. When the name no longer resolves (the name server away),
 * the old list is used meanwhile, and the name looked up again next time. */
typedef struct {
  struct addrinfo *first;
  struct addrinfo *resolved; /* to free (never the connection's cached list) */
  struct addrinfo unix_ai;
  struct sockaddr_un sun;
  int fresh;                 /* resolved by this call (not from the cache) */
} mmc_addresses;

#define MMC_ADDR_BAD_PATH -1 /* the socket path does not fit a sockaddr_un */
#define MMC_ADDR_RESOLVE -2  /* the host name did not resolve */

/* 0 with `out` filled (free it with mmc_addresses_free; out->first is
 * valid until then, and until the next mmc_addresses_get on c), or
 * MMC_ADDR_* with the cause in why[whylen]. Resolves (getaddrinfo) only
 * when c has no list yet or its list is stale. */
int mmc_addresses_get(mmc_conn *c, mmc_addresses *out, char *why, size_t whylen);
void mmc_addresses_free(mmc_addresses *a);
/* The cached list failed: resolve again before the next connect. */
void mmc_addresses_stale(mmc_conn *c);
/* How many times this process resolved a server's name (getaddrinfo). */
uint64_t mmc_resolutions(void);

/* Opens a non-blocking socket to `ai` and starts connecting (TCP_NODELAY
 * on a TCP socket). 0 with *fd set and *in_progress (1: wait until it is
 * writable, then mmc_connect_result), or an errno with nothing left open. */
int mmc_connect_start(const struct addrinfo *ai, int *fd, int *in_progress);
/* The outcome of a connect that was in progress: 0 or an errno. */
int mmc_connect_result(int fd);
/* `fd` is c's connection now: a new generation, an empty buffer. */
void mmc_conn_opened(mmc_conn *c, int fd);

/* ---- bytes ------------------------------------------------------------------ */

/* One send (MSG_NOSIGNAL, EINTR retried): the bytes sent, or -1 with errno
 * (EAGAIN: the socket is full). */
ssize_t mmc_send(mmc_conn *c, const char *buf, size_t len);
/* Moves the unread bytes to the front and reads what the socket has, after
 * them (EINTR retried): the bytes read, 0 when the server closed the
 * connection, or -1 with errno (EAGAIN: nothing yet). */
ssize_t mmc_recv(mmc_conn *c);

typedef enum {
  MMC_LINE, /* a line: consumed */
  MMC_MORE, /* not all of it is buffered yet */
  MMC_BAD   /* not a reply line (no CRLF, or longer than MMC_LINE_MAX): why filled */
} mmc_line_status;

/* The next reply line buffered in `c`, without its "\r\n", NUL-terminated in
 * *line (valid until the next mmc_recv). */
mmc_line_status mmc_next_line(mmc_conn *c, char **line, size_t *len, char *why, size_t whylen);

/* ---- replies ---------------------------------------------------------------- */

/* A decimal number of at most `max`: all digits (1 to 20 of them), nothing else. */
int mmc_number(const char *p, size_t n, uint64_t max, uint64_t *out);
/* Splits `line` at single spaces into at most `max` words; the number of
 * words there are (max + 1 when there are more). Each space separates two
 * words: "a  b" and "a b " have an empty word. */
size_t mmc_split(const char *line, size_t len, const char **words, size_t *lens, size_t max);
int mmc_word_is(const char *w, size_t n, const char *lit);
int mmc_bytes_is(const char *w, size_t n, mm_bytes b);
int mmc_starts_with(const char *line, size_t len, const char *lit);
/* A printable excerpt of a reply, for messages: up to its first CR/LF,
 * other bytes as \xNN, "..." after more than 80 bytes. */
void mmc_excerpt(const char *p, size_t n, char *out, size_t outlen);

/* A value read as a lock's holder: token[] holds its first
 * min(value_len, MM_TOKEN_MAX) bytes. A value longer than any token ends
 * in " ..." instead (a space: no token has one), so that it names a holder
 * for messages and never equals a token - not even the one it starts with.
 * An empty value reads as MMC_EMPTY_VALUE: an item is a holder, and a
 * holder of no bytes would read as "nobody holds it" while every take
 * fails. NUL-terminates token (MM_TOKEN_MAX + 1 bytes); returns its length. */
#define MMC_EMPTY_VALUE "(an empty value)"

size_t mmc_value_token(char *token, size_t value_len);
/* The index of `line` in `accepted` (NULL-terminated status words: STORED,
 * NOT_STORED, EXISTS, NOT_FOUND, DELETED, HD...), or -1. */
int mmc_status(const char *line, size_t len, const char *const *accepted);
/* The message for a line that is not the reply expected: a server's own
 * "SERVER_ERROR ..." / "CLIENT_ERROR ..." as it is, "ERROR" as a command
 * it does not know, anything else as an unexpected reply. */
void mmc_unexpected(const char *line, size_t len, char *why, size_t whylen);
/* "VALUE <key> <flags> <bytes> <cas>" (a gets reply's header): 1 with the
 * key, the length (at most value_max) and the CAS; 0 when it is anything
 * else. The caller matches the key against what it asked for. */
int mmc_value_header(const char *line, size_t len, uint64_t value_max, mm_bytes *key, uint64_t *bytes,
                     uint64_t *cas);
/* "STAT <name> <value>" (a stats reply's line): 1 with name and value, or 0. */
int mmc_stat_line(const char *line, size_t len, mm_bytes *name, mm_bytes *value);

/* ---- keys both stores use ----------------------------------------------------- */

/* The fence of a lock: "~f" + its key, or for a key longer than 248 bytes
 * "~f", its first 232 bytes and a 64-bit FNV-1a hash of it (two ids sharing
 * a fence only makes their tokens grow faster). Its length; out needs
 * MM_KEY_MAX + 1 bytes. */
size_t mmc_fence_key(mm_bytes key, char *out, size_t outlen);
uint64_t mmc_fnv64(const char *p, size_t n);
/* CLOCK_MONOTONIC seconds. */
double mmc_now(void);
/* CLOCK_REALTIME microseconds (a fence's seed). */
uint64_t mmc_wall_us(void);

#endif
