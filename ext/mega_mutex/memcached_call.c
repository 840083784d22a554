/*
 * memcached_call.c - one request at a time on one memcached connection,
 * waited for in the calling thread (see memcached_call.h).
 */
#define _GNU_SOURCE /* ppoll */
#include "memcached_call.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void mmc_call_start(mmc_call *r) {
  r->deadline = mmc_now() + r->io_timeout;
  r->grace_until = 0;
  r->retryable = 0;
}

mm_status mmc_fail(mmc_call *r, mmc_conn *c, mm_status st, const char *doing, const char *fmt, ...) {
  char why[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  mmc_conn_close(c);
  if (st != MM_INTERRUPTED)
    snprintf(r->store->error, sizeof r->store->error, "memcached %s failed to %.40s: %s", c->label, doing, why);
  return st;
}

/* ---- waiting ------------------------------------------------------------ */

static int cancelled(const mmc_call *r) {
  return r->store->cancelled != NULL && __atomic_load_n(r->store->cancelled, __ATOMIC_SEQ_CST);
}

/* Waits until `fd` is ready for `events`: MM_OK, MM_TIMEOUT at `deadline`,
 * or MM_INTERRUPTED when the waker fires (see MMC_INTERRUPT_GRACE). */
static mm_status wait_fd(mmc_call *r, int fd, short events, double deadline) {
  struct pollfd pfd[2] = {{fd, events, 0}, {r->store->cancel_fd, POLLIN, 0}};
  for (;;) {
    int cancel = cancelled(r);
    double now = mmc_now(), until = deadline;
    if (cancel) {
      if (!r->store->maybe_applied) return MM_INTERRUPTED;
      if (r->grace_until == 0) r->grace_until = now + MMC_INTERRUPT_GRACE;
      if (r->grace_until < until) until = r->grace_until;
    }
    double left = until - now;
    if (left <= 0) return cancel ? MM_INTERRUPTED : MM_TIMEOUT;
    struct timespec ts;
    ts.tv_sec = (time_t) left;
    ts.tv_nsec = (long) ((left - (double) ts.tv_sec) * 1e9);
    /* Once interrupted, the waker stays readable: watch the socket only. */
    nfds_t n = (!cancel && r->store->cancel_fd >= 0) ? 2 : 1;
    int rc = ppoll(pfd, n, &ts, NULL);
    if (rc < 0 && errno != EINTR) return MM_ERR_CONNECTION;
    if (rc > 0 && pfd[0].revents != 0) return MM_OK;
  }
}

/* ---- connecting ------------------------------------------------------------ */

/* Connects to one address, waiting until `deadline`. 0 with *fd open, or an
 * errno (ETIMEDOUT at the deadline, EINTR when interrupted) with nothing open. */
static int connect_wait(mmc_call *r, const struct addrinfo *ai, int *fd, double deadline) {
  int in_progress;
  int err = mmc_connect_start(ai, fd, &in_progress);
  if (err != 0 || !in_progress) return err;
  mm_status st = wait_fd(r, *fd, POLLOUT, deadline);
  if (st == MM_TIMEOUT) err = ETIMEDOUT;
  else if (st == MM_INTERRUPTED) err = EINTR;
  else err = mmc_connect_result(*fd);
  if (err != 0) {
    close(*fd);
    *fd = -1;
  }
  return err;
}

static mm_status connect_failed(mmc_call *r, mmc_conn *c, const char *doing, const char *why) {
  snprintf(c->connect_error, sizeof c->connect_error, "%s", why);
  c->retry_at = mmc_now() + r->retry_timeout;
  return mmc_fail(r, c, MM_ERR_CONNECTION, doing, "%s", why);
}

mm_status mmc_open(mmc_call *r, mmc_conn *c, const char *doing) {
  if (c->fd >= 0) return MM_OK;
  double start = mmc_now();
  if (start < c->retry_at)
    return mmc_fail(r, c, MM_ERR_CONNECTION, doing, "%s (not retried for another %.1f s)", c->connect_error,
                    c->retry_at - start);
  double deadline = start + r->connect_timeout;
  char why[256];
  int fd = -1, err = ENOENT;
  /* The cached addresses first; when none of them takes the connection,
   * the name once more (the server may have moved), within the same
   * connect_timeout. */
  for (int round = 0; round < 2; round++) {
    mmc_addresses addrs;
    if (mmc_addresses_get(c, &addrs, why, sizeof why) != 0) {
      if (round == 0) return connect_failed(r, c, doing, why);
      break; /* the name no longer resolves: report the first round's failure */
    }
    for (const struct addrinfo *ai = addrs.first; ai != NULL; ai = ai->ai_next) {
      err = connect_wait(r, ai, &fd, deadline);
      if (err == 0 || err == EINTR) break;
    }
    int fresh = addrs.fresh;
    mmc_addresses_free(&addrs);
    if (err == 0 || err == EINTR || err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) break;
    mmc_addresses_stale(c); /* the server did not answer there: look it up again */
    if (fresh || mmc_now() >= deadline) break;
  }
  if (err != 0) {
    if (err == EINTR) return MM_INTERRUPTED;
    if (err == ETIMEDOUT)
      snprintf(why, sizeof why, "could not connect: timed out after %.3g s (connect_timeout)", r->connect_timeout);
    else if (err == EMFILE || err == ENFILE)
      snprintf(why, sizeof why, "could not open a socket: %s", strerror(err));
    else
      snprintf(why, sizeof why, "could not connect: %s", strerror(err));
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM)
      return mmc_fail(r, c, MM_ERR_CONNECTION, doing, "%s", why); /* ours, not the server's: no retry delay */
    return connect_failed(r, c, doing, why);
  }
  mmc_conn_opened(c, fd);
  c->retry_at = 0;
  /* Time spent connecting is not taken from the request's own budget. */
  r->deadline += mmc_now() - start;
  return MM_OK;
}

/* ---- bytes ------------------------------------------------------------------ */

/* A failed read or write on an open connection. */
static mm_status io_failed(mmc_call *r, mmc_conn *c, mm_status st, const char *doing, int err, int eof) {
  if (st == MM_INTERRUPTED) return mmc_fail(r, c, MM_INTERRUPTED, doing, "interrupted");
  if (st == MM_TIMEOUT)
    return mmc_fail(r, c, MM_ERR_CONNECTION, doing, "timed out after %.3g s (io_timeout)", r->io_timeout);
  /* A connection that broke while idle (server restarted, idle timeout):
   * worth one more try on a new one. */
  r->retryable = 1;
  if (eof) return mmc_fail(r, c, MM_ERR_CONNECTION, doing, "the server closed the connection");
  return mmc_fail(r, c, MM_ERR_CONNECTION, doing, "%s", strerror(err));
}

mm_status mmc_send_all(mmc_call *r, mmc_conn *c, const char *buf, size_t len, const char *doing) {
  /* Every reply asked for so far was read: anything the socket has now is
   * the server's close, or bytes nobody asked for. */
  if (!mmc_conn_stray(c) && mmc_conn_readable(c)) {
    ssize_t n = mmc_recv(c);
    if (n == 0) return io_failed(r, c, MM_ERR_CONNECTION, doing, 0, 1);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return io_failed(r, c, MM_ERR_CONNECTION, doing, errno, 0);
  }
  if (mmc_conn_stray(c)) {
    char ex[100];
    mmc_excerpt(c->rbuf + c->rpos, c->rlen - c->rpos, ex, sizeof ex);
    return mmc_fail(r, c, MM_ERR_SERVER, doing, "unexpected reply \"%s\" (sent before it was asked for)", ex);
  }
  while (len > 0) {
    ssize_t n = mmc_send(c, buf, len);
    if (n > 0) {
      buf += n;
      len -= (size_t) n;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      mm_status st = wait_fd(r, c->fd, POLLOUT, r->deadline);
      if (st != MM_OK) return io_failed(r, c, st, doing, errno, 0);
      continue;
    }
    return io_failed(r, c, MM_ERR_CONNECTION, doing, errno, 0);
  }
  return MM_OK;
}

/* Reads more bytes into c->rbuf, waiting for them until the deadline. */
static mm_status fill(mmc_call *r, mmc_conn *c, const char *doing) {
  for (;;) {
    ssize_t n = mmc_recv(c);
    if (n > 0) return MM_OK;
    if (n == 0) return io_failed(r, c, MM_ERR_CONNECTION, doing, 0, 1);
    if (errno != EAGAIN && errno != EWOULDBLOCK) return io_failed(r, c, MM_ERR_CONNECTION, doing, errno, 0);
    mm_status st = wait_fd(r, c->fd, POLLIN, r->deadline);
    if (st != MM_OK) return io_failed(r, c, st, doing, errno, 0);
  }
}

mm_status mmc_read_line(mmc_call *r, mmc_conn *c, const char *doing, char **line, size_t *len) {
  for (;;) {
    char why[MMC_WHY_MAX];
    switch (mmc_next_line(c, line, len, why, sizeof why)) {
    case MMC_LINE: return MM_OK;
    case MMC_BAD: return mmc_fail(r, c, MM_ERR_SERVER, doing, "%s", why);
    case MMC_MORE: break;
    }
    mm_status st = fill(r, c, doing);
    if (st != MM_OK) return st;
  }
}

mm_status mmc_read_bytes(mmc_call *r, mmc_conn *c, const char *doing, size_t n, char *out, size_t keep) {
  size_t done = 0;
  while (done < n) {
    if (c->rpos == c->rlen) {
      mm_status st = fill(r, c, doing);
      if (st != MM_OK) return st;
    }
    size_t take = c->rlen - c->rpos;
    if (take > n - done) take = n - done;
    if (done < keep) memcpy(out + done, c->rbuf + c->rpos, (keep - done) < take ? keep - done : take);
    c->rpos += take;
    done += take;
  }
  return MM_OK;
}

mm_status mmc_read_value_end(mmc_call *r, mmc_conn *c, const char *doing, uint64_t bytes) {
  char *line;
  size_t len;
  mm_status st = mmc_read_line(r, c, doing, &line, &len);
  if (st != MM_OK) return st;
  if (len != 0)
    return mmc_fail(r, c, MM_ERR_SERVER, doing, "malformed reply (the value is longer than the %llu bytes announced)",
                    (unsigned long long) bytes);
  return MM_OK;
}

/* ---- replies ---------------------------------------------------------------- */

mm_status mmc_reject(mmc_call *r, mmc_conn *c, const char *doing, const char *line, size_t len) {
  char why[MMC_WHY_MAX];
  mmc_unexpected(line, len, why, sizeof why);
  return mmc_fail(r, c, MM_ERR_SERVER, doing, "%s", why);
}

int mmc_read_status(mmc_call *r, mmc_conn *c, const char *doing, const char *const *accepted, mm_status *st) {
  char *line;
  size_t len;
  *st = mmc_read_line(r, c, doing, &line, &len);
  if (*st != MM_OK) return -1;
  int i = mmc_status(line, len, accepted);
  if (i < 0) *st = mmc_reject(r, c, doing, line, len);
  return i;
}

mm_status mmc_read_gets(mmc_call *r, mmc_conn *c, mm_bytes key, mm_holder *holder, const char *doing) {
  char *line;
  size_t len;
  mm_status st = mmc_read_line(r, c, doing, &line, &len);
  if (st != MM_OK) return st;
  if (mmc_word_is(line, len, "END")) return MM_ABSENT;
  if (!mmc_starts_with(line, len, "VALUE ")) return mmc_reject(r, c, doing, line, len);

  mm_bytes got;
  uint64_t bytes, cas;
  char ex[200];
  mmc_excerpt(line, len, ex, sizeof ex);
  if (!mmc_value_header(line, len, MMC_VALUE_MAX, &got, &bytes, &cas) || !mmc_bytes_is(got.ptr, got.len, key))
    return mmc_fail(r, c, MM_ERR_SERVER, doing, "malformed reply \"%s\" (expected VALUE %.*s <flags> <bytes> <cas>)",
                    ex, (int) key.len, key.ptr);
  size_t keep = bytes > MM_TOKEN_MAX ? MM_TOKEN_MAX : (size_t) bytes;
  st = mmc_read_bytes(r, c, doing, (size_t) bytes, holder->token, keep);
  if (st != MM_OK) return st;
  holder->token_len = mmc_value_token(holder->token, (size_t) bytes);
  holder->version = cas;
  holder->witness = c->generation;
  if ((st = mmc_read_value_end(r, c, doing, bytes)) != MM_OK) return st;
  st = mmc_read_line(r, c, doing, &line, &len);
  if (st != MM_OK) return st;
  if (!mmc_word_is(line, len, "END")) {
    mmc_excerpt(line, len, ex, sizeof ex);
    return mmc_fail(r, c, MM_ERR_SERVER, doing, "malformed reply \"%s\" after the value (expected END)", ex);
  }
  return MM_OK;
}
