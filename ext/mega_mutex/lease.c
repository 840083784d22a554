/*
 * lease.c - the Ruby-facing glue of the C renewer (renewer.c):
 * MegaMutex::Native::Lease, one held lock being kept alive.
 *
 *   Lease.start(host, port, connect_ms, io_ms, key, token, ttl, valid_until) -> Lease
 *                              (host nil: a lease in the memory store's table)
 *   lease.stop                 stop renewing (before the release)
 *   lease.lost_reason          nil while the lease is known good, else why it was lost
 *   lease.id                   names it in Lease.next_loss
 *   Lease.next_loss(seconds)   [id, reason] of the next lease found lost, or nil after `seconds`
 *   Lease.lane(client, label)  a lane of its own for client's store (taken over): a quorum's
 *   Lease.start_in(lane, key, token, ttl, valid_until) -> Lease, renewed in that lane
 */
#include <ruby.h>
#include <ruby/thread.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <string.h>

#include "lock.h"
#include "mega_mutex.h"
#include "client.h"
#include "renewer.h"

static VALUE cLease, cLane;
static VALUE eError;

static void lease_free(void *p) { mm_lease_unref(p); }

static size_t lease_size(const void *p) {
  (void) p;
  return sizeof(void *);
}

static const rb_data_type_t lease_type = {
    "MegaMutex::Native::Lease",
    {NULL, lease_free, lease_size, NULL, {NULL}},
    NULL,
    NULL,
    RUBY_TYPED_FREE_IMMEDIATELY,
};

static mm_lease *get_lease(VALUE self) {
  mm_lease *lease;
  TypedData_Get_Struct(self, mm_lease, &lease_type, lease);
  return lease;
}

static unsigned to_uint(VALUE v, const char *what, unsigned long max) {
  unsigned long n = NUM2ULONG(v);
  if (n < 1 || n > max) rb_raise(rb_eArgError, "%s out of range: %lu", what, n);
  return (unsigned) n;
}

/* What a new lease is: the key and token (pointing into the caller's
 * Strings, kept alive by it), lock_ttl and the end of the lease as taken. */
typedef struct {
  mm_bytes key, token;
  unsigned ttl;
  double valid_until;
} lease_args;

/* *key and *token become Strings (the caller keeps them alive). */
static void read_lease_args(lease_args *l, VALUE *key, VALUE *token, VALUE ttl, VALUE valid_until) {
  StringValue(*key);
  StringValue(*token);
  if (RSTRING_LEN(*key) < 1 || RSTRING_LEN(*key) > MM_KEY_MAX) rb_raise(rb_eArgError, "key must be 1 to %d bytes", MM_KEY_MAX);
  if (RSTRING_LEN(*token) < 1 || RSTRING_LEN(*token) > MM_TOKEN_MAX)
    rb_raise(rb_eArgError, "token must be 1 to %d bytes", MM_TOKEN_MAX);
  l->key = (mm_bytes){RSTRING_PTR(*key), (size_t) RSTRING_LEN(*key)};
  l->token = (mm_bytes){RSTRING_PTR(*token), (size_t) RSTRING_LEN(*token)};
  l->ttl = to_uint(ttl, "ttl", 2592000);
  l->valid_until = NUM2DBL(valid_until);
}

static VALUE lease_s_start(VALUE klass, VALUE host, VALUE port, VALUE connect_ms, VALUE io_ms, VALUE key, VALUE token,
                           VALUE ttl, VALUE valid_until) {
  (void) klass;
  mm_lane_spec spec;
  spec.memory = NIL_P(host); /* nil: the memory store's table */
  spec.host = spec.memory ? "memory" : StringValueCStr(host);
  long p = NUM2LONG(port);
  if (p < 0 || p > 65535) rb_raise(rb_eArgError, "port out of range: %ld", p);
  spec.port = (unsigned) p;
  spec.connect_timeout_ms = (int) to_uint(connect_ms, "connect timeout", 3600000);
  spec.io_timeout_ms = (int) to_uint(io_ms, "io timeout", 3600000);
  lease_args l;
  read_lease_args(&l, &key, &token, ttl, valid_until);

  char err[MM_ERROR_MAX];
  mm_lease *lease = mm_lease_start(&spec, l.key, l.token, l.ttl, l.valid_until, err, sizeof err);
  RB_GC_GUARD(host);
  RB_GC_GUARD(key);
  RB_GC_GUARD(token);
  if (lease == NULL) rb_raise(eError, "%s", err);
  return TypedData_Wrap_Struct(cLease, &lease_type, lease);
}

/* Lanes of their own (mm_lane_adopt) live as long as the process: nothing to free. */
static size_t lane_size(const void *p) {
  (void) p;
  return sizeof(void *);
}

static const rb_data_type_t lane_type = {
    "MegaMutex::Native::Lease::Lane",
    {NULL, NULL, lane_size, NULL, {NULL}},
    NULL,
    NULL,
    RUBY_TYPED_FREE_IMMEDIATELY,
};

/* Lease.lane(client, label) -> Lane: a lane of its own for the leases of
 * `client`'s store (any kind: a quorum's), which it takes over (the client
 * is closed). */
static VALUE lease_s_lane(VALUE klass, VALUE client, VALUE label) {
  (void) klass;
  const char *name = StringValueCStr(label);
  mm_store *store = mm_client_detach(client);
  char err[MM_ERROR_MAX];
  mm_lane *lane = mm_lane_adopt(store, name, err, sizeof err);
  RB_GC_GUARD(label);
  if (lane == NULL) rb_raise(eError, "%s", err);
  return TypedData_Wrap_Struct(cLane, &lane_type, lane);
}

/* Lease.start_in(lane, key, token, ttl, valid_until) -> Lease */
static VALUE lease_s_start_in(VALUE klass, VALUE lane_obj, VALUE key, VALUE token, VALUE ttl, VALUE valid_until) {
  (void) klass;
  mm_lane *lane;
  TypedData_Get_Struct(lane_obj, mm_lane, &lane_type, lane);
  lease_args l;
  read_lease_args(&l, &key, &token, ttl, valid_until);
  char err[MM_ERROR_MAX];
  mm_lease *lease = mm_lease_start_in(lane, l.key, l.token, l.ttl, l.valid_until, err, sizeof err);
  RB_GC_GUARD(key);
  RB_GC_GUARD(token);
  if (lease == NULL) rb_raise(eError, "%s", err);
  return TypedData_Wrap_Struct(cLease, &lease_type, lease);
}

static VALUE lease_stop(VALUE self) {
  mm_lease_stop(get_lease(self));
  return Qnil;
}

static VALUE lease_lost_reason(VALUE self) {
  char reason[MM_REASON_MAX];
  if (!mm_lease_lost(get_lease(self), reason, sizeof reason)) return Qnil;
  return rb_str_new_cstr(reason);
}

static VALUE lease_id(VALUE self) { return ULL2NUM(mm_lease_id(get_lease(self))); }

typedef struct {
  int loss_fd;
  mm_waker *waker;
  double seconds;
} wait_args;

/* Waits until a loss is queued, the time is up or Ruby interrupts. */
static void *wait_nogvl(void *p) {
  wait_args *a = p;
  struct pollfd fds[2] = {{a->loss_fd, POLLIN, 0}, {a->waker->fd, POLLIN, 0}};
  double until = mm_monotonic() + a->seconds;
  for (;;) {
    double left = until - mm_monotonic();
    if (left <= 0 || __atomic_load_n(&a->waker->interrupted, __ATOMIC_SEQ_CST)) break;
    int n = poll(fds, 2, (int) ceil(left * 1000));
    if (n != 0 && !(n < 0 && errno == EINTR)) break;
  }
  return NULL;
}

static VALUE lease_s_next_loss(VALUE klass, VALUE seconds) {
  (void) klass;
  double wait = NUM2DBL(seconds);
  if (!(wait >= 0)) rb_raise(rb_eArgError, "seconds must be >= 0");
  uint64_t id;
  char reason[MM_REASON_MAX];
  if (!mm_renewer_next_loss(&id, reason, sizeof reason)) {
    int fd = mm_renewer_loss_fd();
    if (fd < 0) rb_sys_fail("eventfd");
    mm_waker waker;
    if (mm_waker_init(&waker) != 0) rb_sys_fail("eventfd");
    wait_args a = {fd, &waker, wait};
    rb_thread_call_without_gvl(wait_nogvl, &a, mm_waker_wake, &waker);
    mm_waker_destroy(&waker);
    rb_thread_check_ints();
    if (!mm_renewer_next_loss(&id, reason, sizeof reason)) return Qnil;
  }
  return rb_assoc_new(ULL2NUM(id), rb_str_new_cstr(reason));
}

void mm_lease_init(VALUE mNative) {
  VALUE mMegaMutex = rb_const_get(rb_cObject, rb_intern("MegaMutex"));
  eError = rb_const_get(mMegaMutex, rb_intern("Error"));
  cLease = rb_define_class_under(mNative, "Lease", rb_cObject);
  rb_undef_alloc_func(cLease);
  rb_define_singleton_method(cLease, "start", lease_s_start, 8);
  rb_define_singleton_method(cLease, "next_loss", lease_s_next_loss, 1);
  rb_define_singleton_method(cLease, "lane", lease_s_lane, 2);
  rb_define_singleton_method(cLease, "start_in", lease_s_start_in, 5);
  cLane = rb_define_class_under(cLease, "Lane", rb_cObject);
  rb_undef_alloc_func(cLane);
  rb_define_method(cLease, "stop", lease_stop, 0);
  rb_define_method(cLease, "lost_reason", lease_lost_reason, 0);
  rb_define_method(cLease, "id", lease_id, 0);
}
