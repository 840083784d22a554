/*
 * memcached_conn.c - one connection to a memcached server and the strict
 * reading of its replies, shared by store_memcached.c and store_quorum.c
 * (see memcached_conn.h). No waiting here: the stores wait their own way.
 */
#define _GNU_SOURCE
#include "memcached_conn.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- the connection -------------------------------------------------------- */

/* Generations are unique across the stores of a process, so a witness from
 * one store (or one connection) never matches another's. Never 0 (0 means
 * "unknown"). */
static uint64_t generation_counter;

uint64_t mmc_next_generation(void) { return __atomic_add_fetch(&generation_counter, 1, __ATOMIC_RELAXED); }

int mmc_conn_init(mmc_conn *c, const mm_server_addr *a) {
  memset(c, 0, sizeof *c);
  c->fd = -1;
  c->port = a->port;
  c->host = strdup(a->host);
  if (c->host == NULL) return -1;
  if (a->port == 0) snprintf(c->label, sizeof c->label, "%s", a->host);
  else if (strchr(a->host, ':') != NULL) snprintf(c->label, sizeof c->label, "[%s]:%u", a->host, a->port);
  else snprintf(c->label, sizeof c->label, "%s:%u", a->host, a->port);
  return 0;
}

void mmc_conn_close(mmc_conn *c) {
  if (c->fd >= 0) {
    close(c->fd);
    if (!c->answered) c->addrs_stale = 1; /* connected, or not even that: look the name up again */
  }
  c->fd = -1;
  c->generation = 0;
  c->answered = 0;
  c->rpos = c->rlen = 0;
}

void mmc_conn_free(mmc_conn *c) {
  mmc_conn_close(c);
  if (c->addrs != NULL) freeaddrinfo(c->addrs);
  c->addrs = NULL;
  free(c->host);
  c->host = NULL;
}

int mmc_conn_stray(const mmc_conn *c) { return c->rpos != c->rlen; }

int mmc_conn_readable(const mmc_conn *c) {
  if (c->fd < 0) return 0;
  struct pollfd p = {c->fd, POLLIN, 0};
  int rc;
  do rc = poll(&p, 1, 0);
  while (rc < 0 && errno == EINTR);
  return rc > 0; /* POLLIN, POLLHUP or POLLERR: something to read, or a broken connection */
}

/* ---- connecting ------------------------------------------------------------ */

static uint64_t resolution_counter;

int mmc_addresses_get(mmc_conn *c, mmc_addresses *out, char *why, size_t whylen) {
  memset(out, 0, sizeof *out);
  if (c->port == 0) {
    size_t n = strlen(c->host);
    if (n >= sizeof out->sun.sun_path) {
      snprintf(why, whylen, "socket path too long");
      return MMC_ADDR_BAD_PATH;
    }
    out->sun.sun_family = AF_UNIX;
    memcpy(out->sun.sun_path, c->host, n + 1);
    out->unix_ai.ai_family = AF_UNIX;
    out->unix_ai.ai_socktype = SOCK_STREAM;
    out->unix_ai.ai_addr = (struct sockaddr *) &out->sun;
    out->unix_ai.ai_addrlen = sizeof out->sun;
    out->first = &out->unix_ai;
    out->fresh = 1; /* nothing cached: a path is its own address */
    return 0;
  }
  if (c->addrs == NULL || c->addrs_stale) {
    struct addrinfo hints, *list = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    char port[16];
    snprintf(port, sizeof port, "%u", c->port);
    __atomic_add_fetch(&resolution_counter, 1, __ATOMIC_RELAXED);
    int gai = getaddrinfo(c->host, port, &hints, &list);
    if (gai != 0 && c->addrs == NULL) {
      snprintf(why, whylen, "could not resolve host: %s", gai == EAI_SYSTEM ? strerror(errno) : gai_strerror(gai));
      return MMC_ADDR_RESOLVE;
    }
    if (gai != 0) { /* the name server is away: the old list once more, still stale (looked up next time) */
      out->first = c->addrs;
      return 0;
    }
    if (c->addrs != NULL) freeaddrinfo(c->addrs);
    c->addrs = list;
    c->addrs_stale = 0;
    out->fresh = 1;
  }
  out->first = c->addrs;
  return 0;
}

void mmc_addresses_stale(mmc_conn *c) { c->addrs_stale = 1; }

uint64_t mmc_resolutions(void) { return __atomic_load_n(&resolution_counter, __ATOMIC_RELAXED); }

void mmc_addresses_free(mmc_addresses *a) {
  if (a->resolved != NULL) freeaddrinfo(a->resolved);
  a->resolved = NULL;
  a->first = NULL;
}

int mmc_connect_start(const struct addrinfo *ai, int *fd, int *in_progress) {
  *fd = -1;
  *in_progress = 0;
  int s = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) return errno;
  int err = 0;
  if (ai->ai_family != AF_UNIX) {
    int one = 1;
    if (setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) err = errno;
  }
  if (err == 0 && connect(s, ai->ai_addr, ai->ai_addrlen) != 0) {
    if (errno == EINPROGRESS) *in_progress = 1;
    else err = errno; /* a unix socket's full backlog (EAGAIN) too */
  }
  if (err != 0) {
    close(s);
    return err;
  }
  *fd = s;
  return 0;
}

int mmc_connect_result(int fd) {
  int err = 0;
  socklen_t elen = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0) return errno;
  return err;
}

void mmc_conn_opened(mmc_conn *c, int fd) {
  c->fd = fd;
  c->answered = 0;
  c->generation = mmc_next_generation();
  c->rpos = c->rlen = 0;
}

/* ---- bytes ------------------------------------------------------------------ */

ssize_t mmc_send(mmc_conn *c, const char *buf, size_t len) {
  for (;;) {
    ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0 || errno != EINTR) return n;
  }
}

ssize_t mmc_recv(mmc_conn *c) {
  if (c->rpos > 0) {
    memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
    c->rlen -= c->rpos;
    c->rpos = 0;
  }
  if (c->rlen == sizeof c->rbuf) { /* cannot happen: a line or a value is at most half of it */
    errno = EMSGSIZE;
    return -1;
  }
  for (;;) {
    ssize_t n = recv(c->fd, c->rbuf + c->rlen, sizeof c->rbuf - c->rlen, 0);
    if (n > 0) {
      c->rlen += (size_t) n;
      c->answered = 1;
    }
    if (n >= 0 || errno != EINTR) return n;
  }
}

mmc_line_status mmc_next_line(mmc_conn *c, char **line, size_t *len, char *why, size_t whylen) {
  char *start = c->rbuf + c->rpos;
  size_t avail = c->rlen - c->rpos;
  char *nl = memchr(start, '\n', avail);
  char ex[100];
  if (nl == NULL) {
    if (avail < MMC_LINE_MAX) return MMC_MORE;
    mmc_excerpt(start, avail, ex, sizeof ex);
    snprintf(why, whylen, "malformed reply (a line longer than %d bytes): \"%s\"", MMC_LINE_MAX, ex);
    return MMC_BAD;
  }
  size_t n = (size_t) (nl - start);
  if (n == 0 || start[n - 1] != '\r') {
    mmc_excerpt(start, n, ex, sizeof ex);
    snprintf(why, whylen, "malformed reply (a line not ended by CRLF): \"%s\"", ex);
    return MMC_BAD;
  }
  start[n - 1] = '\0';
  *line = start;
  *len = n - 1;
  c->rpos += n + 1;
  return MMC_LINE;
}

/* ---- replies ---------------------------------------------------------------- */

int mmc_number(const char *p, size_t n, uint64_t max, uint64_t *out) {
  if (n == 0 || n > 20) return 0;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9') return 0;
    uint64_t d = (uint64_t) (p[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return 0;
    v = v * 10 + d;
  }
  if (v > max) return 0;
  *out = v;
  return 1;
}

size_t mmc_split(const char *line, size_t len, const char **words, size_t *lens, size_t max) {
  size_t n = 0, i = 0;
  for (;;) {
    size_t j = i;
    while (j < len && line[j] != ' ') j++;
    if (n < max) {
      words[n] = line + i;
      lens[n] = j - i;
    }
    n++;
    /* Every space separates two words: one at the end leaves an empty
     * word after it, which no reply has. */
    if (j >= len || n > max) return n;
    i = j + 1;
  }
}

int mmc_word_is(const char *w, size_t n, const char *lit) { return strlen(lit) == n && memcmp(w, lit, n) == 0; }

int mmc_bytes_is(const char *w, size_t n, mm_bytes b) { return n == b.len && memcmp(w, b.ptr, n) == 0; }

int mmc_starts_with(const char *line, size_t len, const char *lit) {
  size_t n = strlen(lit);
  return len >= n && memcmp(line, lit, n) == 0;
}

void mmc_excerpt(const char *p, size_t n, char *out, size_t outlen) {
  size_t j = 0;
  for (size_t i = 0; i < n && j + 5 < outlen; i++) {
    unsigned char ch = (unsigned char) p[i];
    if (ch == '\r' || ch == '\n') break;
    if (ch >= 0x20 && ch < 0x7f) out[j++] = (char) ch;
    else j += (size_t) snprintf(out + j, outlen - j, "\\x%02x", ch);
  }
  if (n > 80 && j + 4 < outlen) {
    memcpy(out + j, "...", 3);
    j += 3;
  }
  out[j] = '\0';
}

size_t mmc_value_token(char *token, size_t value_len) {
  if (value_len == 0) { /* someone's item all the same: never "nobody" */
    static const char empty[] = MMC_EMPTY_VALUE;
    memcpy(token, empty, sizeof empty);
    return sizeof empty - 1;
  }
  if (value_len <= MM_TOKEN_MAX) {
    token[value_len] = '\0';
    return value_len;
  }
  memcpy(token + MM_TOKEN_MAX - 4, " ...", 4);
  token[MM_TOKEN_MAX] = '\0';
  return MM_TOKEN_MAX;
}

int mmc_status(const char *line, size_t len, const char *const *accepted) {
  for (int i = 0; accepted[i] != NULL; i++)
    if (mmc_word_is(line, len, accepted[i])) return i;
  return -1;
}

void mmc_unexpected(const char *line, size_t len, char *why, size_t whylen) {
  char ex[200];
  mmc_excerpt(line, len, ex, sizeof ex);
  if (mmc_starts_with(line, len, "SERVER_ERROR") || mmc_starts_with(line, len, "CLIENT_ERROR"))
    snprintf(why, whylen, "%s", ex);
  else if (mmc_word_is(line, len, "ERROR"))
    snprintf(why, whylen, "ERROR (the server does not know the command: is it a memcached?)");
  else
    snprintf(why, whylen, "unexpected reply \"%s\"", ex);
}

int mmc_value_header(const char *line, size_t len, uint64_t value_max, mm_bytes *key, uint64_t *bytes,
                     uint64_t *cas) {
  const char *w[5];
  size_t wl[5];
  uint64_t flags;
  if (mmc_split(line, len, w, wl, 5) != 5 || !mmc_word_is(w[0], wl[0], "VALUE") ||
      !mmc_number(w[2], wl[2], UINT32_MAX, &flags) || !mmc_number(w[3], wl[3], value_max, bytes) ||
      !mmc_number(w[4], wl[4], UINT64_MAX, cas))
    return 0;
  key->ptr = w[1];
  key->len = wl[1];
  return 1;
}

int mmc_stat_line(const char *line, size_t len, mm_bytes *name, mm_bytes *value) {
  const char *w[3];
  size_t wl[3];
  if (!mmc_starts_with(line, len, "STAT ") || mmc_split(line, len, w, wl, 3) != 3) return 0;
  name->ptr = w[1];
  name->len = wl[1];
  value->ptr = w[2];
  value->len = wl[2];
  return 1;
}

/* ---- keys both stores use ----------------------------------------------------- */

uint64_t mmc_fnv64(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char) p[i];
    h *= 1099511628211ULL;
  }
  return h;
}

size_t mmc_fence_key(mm_bytes key, char *out, size_t outlen) {
  if (key.len <= MM_KEY_MAX - 2) return (size_t) snprintf(out, outlen, "~f%.*s", (int) key.len, key.ptr);
  return (size_t) snprintf(out, outlen, "~f%.*s%016llx", MM_KEY_MAX - 18, key.ptr,
                           (unsigned long long) mmc_fnv64(key.ptr, key.len));
}

double mmc_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

uint64_t mmc_wall_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}
