/*
 * client.c - the Ruby-facing glue: MegaMutex::Native::Client wraps one store
 * (one set of connections) for use by one thread at a time.
 *
 * Methods are private-by-convention (_acquire, _release, ...): validation,
 * defaults and docs live in Ruby (the files under lib/mega_mutex). Here each method
 * copies its arguments into C memory, releases the GVL for the store call,
 * and converts the result once the GVL is back.
 */
#include <ruby.h>
#include <ruby/thread.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "lock.h"
#include "pid.h"
#include "mega_mutex.h"
#include "store.h"
#include "store_memory.h"

#define MM_MAX_SERVERS 64
#define MM_TTL_MAX 2592000 /* no store keeps a lease longer (each says its own limit: max_ttl) */

static VALUE cClient;
static VALUE eError, eConnectionError, eServerError, eDeadlockError;
static ID id_iv_id, id_iv_version, id_iv_attempts, id_iv_waited, id_iv_holder, id_iv_outcome_unknown, id_iv_fencing_token,
    id_iv_valid_until;

typedef struct {
  mm_store *store;
  mm_waker waker; /* wakes this client's waits */
  pid_t pid;      /* the process that opened the connections */
  int in_use;     /* guarded by the GVL: one thread at a time */
} mm_client;

static void client_close_store(mm_client *c) {
  mm_store *s = c->store;
  c->store = NULL;
  if (s == NULL) return;
  if (c->pid == mm_getpid()) s->ops->destroy(s);
  else s->ops->abandon(s); /* forked child: the sockets are the parent's too */
}

static void client_free(void *p) {
  mm_client *c = p;
  client_close_store(c);
  mm_waker_destroy(&c->waker);
  xfree(c);
}

static size_t client_size(const void *p) {
  (void) p;
  return sizeof(mm_client);
}

/* No RUBY_TYPED_FREE_IMMEDIATELY: destroy says "quit" to the server. */
static const rb_data_type_t client_type = {
    "MegaMutex::Native::Client",
    {NULL, client_free, client_size, NULL, {NULL}},
    NULL,
    NULL,
    0,
};

static VALUE client_alloc(VALUE klass) {
  mm_client *c;
  VALUE obj = TypedData_Make_Struct(klass, mm_client, &client_type, c);
  c->store = NULL;
  c->waker.fd = -1;
  c->pid = mm_getpid();
  c->in_use = 0;
  return obj;
}

/* The one accessor: raises on a closed handle, a handle from the parent
 * process, or a handle some other thread is using. */
static mm_client *client_take(VALUE self) {
  mm_client *c;
  TypedData_Get_Struct(self, mm_client, &client_type, c);
  if (c->store == NULL) rb_raise(eError, "MegaMutex client is closed");
  if (c->pid != mm_getpid()) rb_raise(eError, "MegaMutex client was opened by process %d, not this one", (int) c->pid);
  if (c->in_use) rb_raise(eError, "MegaMutex client is in use by another thread");
  c->in_use = 1;
  return c;
}

static void client_give_back(mm_client *c) { c->in_use = 0; }

typedef struct {
  char buf[MM_KEY_MAX + 1];
  mm_bytes bytes;
} key_buf;

static void copy_key(VALUE str, key_buf *out, size_t max, const char *what) {
  StringValue(str);
  long len = RSTRING_LEN(str);
  if (len <= 0 || (size_t) len > max) rb_raise(rb_eArgError, "%s must be 1 to %zu bytes (got %ld)", what, max, len);
  memcpy(out->buf, RSTRING_PTR(str), (size_t) len);
  out->buf[len] = '\0';
  out->bytes.ptr = out->buf;
  out->bytes.len = (size_t) len;
  int ok = max == MM_TOKEN_MAX ? mm_token_valid(out->bytes) : mm_key_valid(out->bytes);
  if (!ok) rb_raise(rb_eArgError, "%s must be printable ASCII without spaces", what);
  RB_GC_GUARD(str);
}

static unsigned to_ttl(VALUE ttl) {
  long v = NUM2LONG(ttl);
  if (v < 1 || v > MM_TTL_MAX) rb_raise(rb_eArgError, "ttl must be 1 to %d seconds (got %ld)", MM_TTL_MAX, v);
  return (unsigned) v;
}

static double to_seconds(VALUE v, const char *what, int nil_means_forever) {
  if (NIL_P(v) && nil_means_forever) return -1;
  double d = NUM2DBL(v);
  if (isnan(d) || d < 0) rb_raise(rb_eArgError, "%s must be a non-negative number", what);
  return d;
}

/* The lease a caller keeps between _acquire and _release: the store's
 * mm_lease_record as an opaque, frozen String. Anything else given back to
 * _release (nil, an Integer) means "unknown": the release then checks the
 * owner first. */
static VALUE pack_lease(const mm_lease_record *lease) {
  return rb_obj_freeze(rb_str_new((const char *) lease, (long) sizeof *lease));
}

/* 1 with *lease filled when `v` is a packed lease, else 0. */
static int unpack_lease(VALUE v, mm_lease_record *lease) {
  if (!RB_TYPE_P(v, T_STRING) || RSTRING_LEN(v) != (long) sizeof *lease) return 0;
  memcpy(lease, RSTRING_PTR(v), sizeof *lease);
  return 1;
}

/* A ttl the client's store accepts (its own limit). */
static void check_ttl(const mm_store *store, unsigned ttl) {
  if (ttl > store->ops->max_ttl)
    rb_raise(rb_eArgError, "ttl must be 1 to %u seconds for %s (got %u)", store->ops->max_ttl, store->ops->name, ttl);
}

/* Raise the store's last error; the client must have been given back.
 * MM_ERR_DEADLOCK is DeadlockError (a ServerError) naming the mutex id:
 * `state`'s @id when it has one (a Lock's hold does), else nil. */
static void raise_store_error(mm_store *s, mm_status st, VALUE state) {
  if (st == MM_ERR_DEADLOCK) {
    VALUE kw = rb_hash_new();
    rb_hash_aset(kw, ID2SYM(rb_intern("id")), NIL_P(state) ? Qnil : rb_attr_get(state, id_iv_id));
    VALUE args[2] = {rb_str_new_cstr(s->error), kw};
    rb_exc_raise(rb_funcallv_kw(eDeadlockError, rb_intern("new"), 2, args, RB_PASS_KEYWORDS));
  }
  rb_raise(st == MM_ERR_CONNECTION ? eConnectionError : eServerError, "%s", s->error);
}

/* Gives a fresh client its store, with the waker wired in. */
static void client_attach(mm_client *c, mm_store *store) {
  if (mm_waker_init(&c->waker) != 0) {
    store->ops->destroy(store);
    rb_sys_fail("eventfd");
  }
  c->store = store;
  /* The waker ends a request in progress, not only a wait. */
  c->store->cancel_fd = c->waker.fd;
  c->store->cancelled = &c->waker.interrupted;
  c->pid = mm_getpid();
}

/* ---- initialize -------------------------------------------------------- */

typedef struct {
  mm_memcached_options opts;
  mm_store *result;
  char error[MM_ERROR_MAX];
} open_args;

static void *open_nogvl(void *p) {
  open_args *a = p;
  a->result = mm_memcached_store_new(&a->opts, a->error, sizeof a->error);
  return NULL;
}

/*
 * initialize(servers, connect_timeout_ms, io_timeout_ms, retry_timeout_s)
 * servers: [[host, port], ...]; port 0 means host is a unix socket path.
 */
static VALUE client_initialize(VALUE self, VALUE servers, VALUE connect_ms, VALUE io_ms, VALUE retry_s) {
  mm_client *c;
  TypedData_Get_Struct(self, mm_client, &client_type, c);
  if (c->store != NULL) rb_raise(eError, "MegaMutex client already initialized");
  Check_Type(servers, T_ARRAY);
  long n = RARRAY_LEN(servers);
  if (n < 1 || n > MM_MAX_SERVERS) rb_raise(rb_eArgError, "need 1 to %d memcached servers (got %ld)", MM_MAX_SERVERS, n);

  open_args a;
  memset(&a, 0, sizeof a);
  mm_server_addr addrs[MM_MAX_SERVERS];
  VALUE hosts = rb_ary_new_capa(n); /* keeps the host strings alive */
  for (long i = 0; i < n; i++) {
    VALUE pair = rb_ary_entry(servers, i);
    Check_Type(pair, T_ARRAY);
    if (RARRAY_LEN(pair) != 2) rb_raise(rb_eArgError, "server must be [host, port]");
    VALUE host = rb_ary_entry(pair, 0);
    StringValue(host);
    host = rb_str_new_frozen(host);
    rb_ary_push(hosts, host);
    long port = NUM2LONG(rb_ary_entry(pair, 1));
    if (port < 0 || port > 65535) rb_raise(rb_eArgError, "port out of range: %ld", port);
    addrs[i].host = StringValueCStr(host);
    addrs[i].port = (unsigned) port;
  }
  a.opts.servers = addrs;
  a.opts.server_count = (size_t) n;
  a.opts.connect_timeout_ms = NUM2INT(connect_ms);
  a.opts.io_timeout_ms = NUM2INT(io_ms);
  a.opts.retry_timeout_s = NUM2INT(retry_s);
  if (a.opts.connect_timeout_ms < 1 || a.opts.io_timeout_ms < 1 || a.opts.retry_timeout_s < 0)
    rb_raise(rb_eArgError, "timeouts must be positive");

  rb_thread_call_without_gvl(open_nogvl, &a, RUBY_UBF_IO, NULL);
  RB_GC_GUARD(hosts);
  if (a.result == NULL) rb_raise(eError, "%s", a.error);
  client_attach(c, a.result);
  return self;
}

/* A new Client (of `klass`) over `store`, which it now owns: the door for
 * each store's constructor (Client.memory here, Client.mysql in
 * mariadb_glue.c, Client.quorum in quorum_glue.c). */
VALUE mm_client_wrap(VALUE klass, mm_store *store) {
  VALUE self;
  mm_client *c;
  self = TypedData_Make_Struct(klass, mm_client, &client_type, c);
  c->store = NULL;
  c->waker.fd = -1;
  c->in_use = 0;
  client_attach(c, store);
  return self;
}

/* Client.memory -> a client over the memory store (store_memory.c): this
 * process's table, for test suites (config.backend = :memory). The same
 * lock loop, waits and interrupts as for memcached. */
static VALUE client_s_memory(VALUE klass) {
  char err[MM_ERROR_MAX];
  mm_store *store = mm_memory_store_new(err, sizeof err);
  if (store == NULL) rb_raise(eError, "%s", err);
  return mm_client_wrap(klass, store);
}

/* ---- _acquire ------------------------------------------------------------ */

typedef struct {
  mm_store *store;
  mm_bytes key, token;
  unsigned ttl;
  mm_wait_policy policy;
  mm_waker *waker;
  mm_lease_record lease;
  mm_holder holder;
  mm_acquire_stats stats;
  mm_status status;
  int ran;
} acquire_args;

static void *acquire_nogvl(void *p) {
  acquire_args *a = p;
  a->ran = 1;
  a->status =
      mm_lock_acquire(a->store, a->key, a->token, a->ttl, &a->policy, a->waker, &a->lease, &a->holder, &a->stats);
  return NULL;
}

/* The owner-checked release of a take, on `self` (not in use): a grant
 * given back (see _acquire). Raises on an error or an interrupt. */
static mm_status release_taken(VALUE self, mm_bytes key, mm_bytes token, const mm_lease_record *lease);

/*
 * _acquire(state, key, token, ttl, timeout, backoff_min, backoff_max) -> true | false
 *
 * ttl: the lock_ttl; the store applies its own lease rules (a margin on the
 * wire, its limit). true: taken; state's @version holds the lease record.
 * true: taken; state's @version is set before anything can interrupt this
 * thread, so an `ensure` that checks it always releases what was taken;
 * state's @valid_until is when the lease as granted ends (CLOCK_MONOTONIC
 * seconds). A grant whose lease had already run out when the GVL came back
 * is never returned: it is given back and the wait goes on.
 * false: timed out; state's @holder names the holder seen last.
 * @attempts and @waited are set in both cases.
 * When an error (ConnectionError, ServerError) or an interrupt
 * (Thread#raise, Timeout, a signal) ends a take after its add was written,
 * state's @outcome_unknown is set to true before anything is raised: the
 * lock may be ours although @version is nil, and the caller must have it
 * cleaned up (Renewer#release_later).
 */
static VALUE client_acquire(VALUE self, VALUE state, VALUE key, VALUE token, VALUE ttl, VALUE timeout,
                            VALUE bmin, VALUE bmax) {
  key_buf k, t;
  copy_key(key, &k, MM_KEY_MAX, "key");
  copy_key(token, &t, MM_TOKEN_MAX, "token");
  acquire_args a;
  memset(&a, 0, sizeof a);
  a.key = k.bytes;
  a.token = t.bytes;
  a.ttl = to_ttl(ttl);
  double total = to_seconds(timeout, "timeout", 1);
  a.policy.backoff_min = to_seconds(bmin, "backoff_min", 0);
  a.policy.backoff_max = to_seconds(bmax, "backoff_max", 0);
  if (a.policy.backoff_min <= 0 || a.policy.backoff_max < a.policy.backoff_min)
    rb_raise(rb_eArgError, "backoff bounds must satisfy 0 < min <= max");

  mm_client *c = client_take(self);
  a.store = c->store;
  if (a.ttl > c->store->ops->max_ttl) client_give_back(c);
  check_ttl(c->store, a.ttl);
  double start = mm_monotonic();
  unsigned long attempts = 0;
  a.waker = &c->waker;
  for (;;) {
    mm_waker_reset(&c->waker);
    a.ran = 0;
    double elapsed = mm_monotonic() - start;
    a.policy.timeout = total < 0 ? -1 : (elapsed >= total ? 0 : total - elapsed);
    /* INTR_FAIL: no interrupt is raised between the wait ending and this
     * code seeing its result, so a lock just taken is never forgotten.
     * UBF_ASYNC_SAFE: the waker may be called from a signal handler. */
    rb_nogvl(acquire_nogvl, &a, mm_waker_wake, &c->waker, RB_NOGVL_INTR_FAIL | RB_NOGVL_UBF_ASYNC_SAFE);
    if (a.ran) attempts += a.stats.attempts;
    if (a.ran && a.status == MM_OK && a.lease.valid_until <= mm_monotonic()) {
      /* Taken, but the GVL came back after the lease had run out: not
       * ours to enter. Given back, then the wait goes on (a new take). */
      rb_ivar_set(state, id_iv_outcome_unknown, Qtrue); /* until the give-back is known */
      /* An error or an interrupt raises, @outcome_unknown set: the take's
       * undo hands the token to the clean-up (never taken again with it). */
      client_give_back(c);
      release_taken(self, a.key, a.token, &a.lease); /* gone or someone else's: fine too */
      c = client_take(self);
      rb_ivar_set(state, id_iv_outcome_unknown, Qnil);
      memset(&a.lease, 0, sizeof a.lease);
      memset(&a.holder, 0, sizeof a.holder); /* no hint from a grant given back */
      continue;
    }
    if (a.ran && a.status != MM_INTERRUPTED) break;
    if (a.ran && c->store->maybe_applied) rb_ivar_set(state, id_iv_outcome_unknown, Qtrue);
    /* Interrupted: raise the pending exception, if any, with the client
     * given back first; a spurious wake-up goes round again. */
    client_give_back(c);
    rb_thread_check_ints();
    c = client_take(self);
  }
  client_give_back(c);

  double waited = mm_monotonic() - start;
  switch (a.status) {
  case MM_OK:
    /* The lease as the store granted it (CLOCK_MONOTONIC): its renewal and
     * lost? count from the take, not from when Ruby got here. */
    rb_ivar_set(state, id_iv_valid_until, DBL2NUM(a.lease.valid_until));
    rb_ivar_set(state, id_iv_version, pack_lease(&a.lease));
    /* Only stores with MM_CAP_FENCING give one (an Integer: no allocation
     * below 2**62). */
    if (a.lease.fencing_token) rb_ivar_set(state, id_iv_fencing_token, ULL2NUM(a.lease.fencing_token));
    rb_ivar_set(state, id_iv_attempts, ULONG2NUM(attempts));
    rb_ivar_set(state, id_iv_waited, DBL2NUM(waited));
    return Qtrue;
  case MM_TIMEOUT:
    rb_ivar_set(state, id_iv_attempts, ULONG2NUM(attempts));
    rb_ivar_set(state, id_iv_waited, DBL2NUM(waited));
    rb_ivar_set(state, id_iv_holder,
                a.holder.token_len ? rb_str_new(a.holder.token, (long) a.holder.token_len) : Qnil);
    return Qfalse;
  default:
    /* The add may have landed although the reply was an error. */
    if (c->store->maybe_applied) rb_ivar_set(state, id_iv_outcome_unknown, Qtrue);
    raise_store_error(c->store, a.status, state);
    return Qnil; /* not reached */
  }
}

/* ---- the short calls: release, extend, read, force_release ------------ */

enum short_op { OP_RELEASE, OP_EXTEND, OP_READ, OP_DESCRIBE, OP_FORCE };

typedef struct {
  enum short_op op;
  mm_store *store;
  mm_waker *waker;
  mm_bytes key, token;
  unsigned ttl;
  mm_lease_record lease;
  int have_lease; /* lease holds what the take returned */
  int unknown;    /* an earlier, interrupted try may have been applied */
  mm_holder holder;
  mm_description description;
  mm_status status;
  int ran;
} short_args;

static void *short_nogvl(void *p) {
  short_args *a = p;
  mm_store *s = a->store;
  a->ran = 1;
  switch (a->op) {
  case OP_RELEASE:
    a->status = s->ops->release(s, a->key, a->token, a->have_lease ? &a->lease : NULL, a->unknown);
    break;
  case OP_EXTEND: a->status = s->ops->refresh(s, a->key, a->token, a->ttl, &a->lease); break;
  case OP_READ: a->status = s->ops->read(s, a->key, &a->holder); break;
  case OP_DESCRIBE: a->status = s->ops->describe(s, a->key, &a->description); break;
  case OP_FORCE: a->status = s->ops->force_release(s, a->key); break;
  }
  return NULL;
}

static VALUE short_body(VALUE p) {
  short_args *a = (short_args *) p;
  /* The waker ends the request at once (the store closes the connection, so
   * nothing is left out of step), then the interrupt is raised. Under
   * Thread.handle_interrupt(... => :never) nothing is raised: the call is
   * made again, knowing an earlier try may have been applied. INTR_FAIL: an
   * interrupt is never raised after the call has run, so its result is
   * never lost. */
  for (;;) {
    mm_waker_reset(a->waker);
    a->ran = 0;
    rb_nogvl(short_nogvl, a, mm_waker_wake, a->waker, RB_NOGVL_INTR_FAIL | RB_NOGVL_UBF_ASYNC_SAFE);
    if (a->ran && a->status != MM_INTERRUPTED) break;
    if (a->ran && a->store->maybe_applied) a->unknown = 1;
    rb_thread_check_ints();
  }
  return Qnil;
}

static VALUE short_give_back(VALUE p) {
  client_give_back((mm_client *) p);
  return Qnil;
}

/* Runs one short call without the GVL. Ruby may raise a pending interrupt
 * as the GVL comes back: the client is given back whatever happens. */
static mm_status run_short(VALUE self, short_args *a) {
  mm_client *c = client_take(self);
  a->store = c->store;
  a->waker = &c->waker;
  rb_ensure(short_body, (VALUE) a, short_give_back, (VALUE) c);
  if (a->status == MM_ERR_CONNECTION || a->status == MM_ERR_SERVER || a->status == MM_ERR_DEADLOCK)
    raise_store_error(c->store, a->status, Qnil);
  return a->status;
}

/* _release(key, token, version) -> true if our lock was removed, false if
 * it was gone or held by someone else (lost). `version` is what _acquire
 * left in @version (nil when unknown). A cas whose reply was lost with its
 * connection, after which the key is gone, counts as removed. */
static VALUE client_release(VALUE self, VALUE key, VALUE token, VALUE version) {
  key_buf k, t;
  copy_key(key, &k, MM_KEY_MAX, "key");
  copy_key(token, &t, MM_TOKEN_MAX, "token");
  short_args a;
  memset(&a, 0, sizeof a);
  a.op = OP_RELEASE;
  a.key = k.bytes;
  a.token = t.bytes;
  a.have_lease = unpack_lease(version, &a.lease);
  return run_short(self, &a) == MM_OK ? Qtrue : Qfalse;
}

static mm_status release_taken(VALUE self, mm_bytes key, mm_bytes token, const mm_lease_record *lease) {
  short_args a;
  memset(&a, 0, sizeof a);
  a.op = OP_RELEASE;
  a.key = key;
  a.token = token;
  a.lease = *lease;
  a.have_lease = 1;
  return run_short(self, &a);
}

/* _extend(key, token, ttl) -> true if still ours and renewed for another
 * lock_ttl `ttl` (the store's lease rules apply). */
static VALUE client_extend(VALUE self, VALUE key, VALUE token, VALUE ttl) {
  key_buf k, t;
  copy_key(key, &k, MM_KEY_MAX, "key");
  copy_key(token, &t, MM_TOKEN_MAX, "token");
  short_args a;
  memset(&a, 0, sizeof a);
  a.op = OP_EXTEND;
  a.key = k.bytes;
  a.token = t.bytes;
  a.ttl = to_ttl(ttl);
  mm_client *c;
  TypedData_Get_Struct(self, mm_client, &client_type, c);
  if (c->store != NULL) check_ttl(c->store, a.ttl);
  return run_short(self, &a) == MM_OK ? Qtrue : Qfalse;
}

/* _describe(key) -> [holder token or nil, seconds left (Float; -1.0 no
 * expiry; nil unknown), where (the server, or "memory")]. For `mega_mutex
 * status`; any error raises. */
static VALUE client_describe(VALUE self, VALUE key) {
  key_buf k;
  copy_key(key, &k, MM_KEY_MAX, "key");
  short_args a;
  memset(&a, 0, sizeof a);
  a.op = OP_DESCRIBE;
  a.key = k.bytes;
  run_short(self, &a);
  const mm_description *d = &a.description;
  VALUE holder = d->holder.token_len ? rb_str_new(d->holder.token, (long) d->holder.token_len) : Qnil;
  VALUE left = d->lease_left < -1.5 ? Qnil : DBL2NUM(d->lease_left);
  return rb_ary_new_from_args(3, holder, left, rb_str_new_cstr(d->where));
}

/* _read(key) -> the holder's token, or nil when nobody holds it. Any error
 * (SERVER_ERROR, a malformed reply, a timeout) raises: never nil. */
static VALUE client_read(VALUE self, VALUE key) {
  key_buf k;
  copy_key(key, &k, MM_KEY_MAX, "key");
  short_args a;
  memset(&a, 0, sizeof a);
  a.op = OP_READ;
  a.key = k.bytes;
  if (run_short(self, &a) != MM_OK) return Qnil;
  return rb_str_new(a.holder.token, (long) a.holder.token_len);
}

/* _force_release(key) -> true if a lock was removed. */
static VALUE client_force_release(VALUE self, VALUE key) {
  key_buf k;
  copy_key(key, &k, MM_KEY_MAX, "key");
  short_args a;
  memset(&a, 0, sizeof a);
  a.op = OP_FORCE;
  a.key = k.bytes;
  return run_short(self, &a) == MM_OK ? Qtrue : Qfalse;
}

/* _server_for(key) -> [host, port]: the server that keeps `key` (port 0:
 * host is a unix socket path). Pure computation over the server list (the
 * consistent hash): no I/O, so the GVL stays. */
static VALUE client_server_for(VALUE self, VALUE key) {
  key_buf k;
  copy_key(key, &k, MM_KEY_MAX, "key");
  mm_client *c = client_take(self);
  char host[1024];
  unsigned port = 0;
  mm_status st = c->store->ops->locate(c->store, k.bytes, host, sizeof host, &port);
  client_give_back(c);
  if (st != MM_OK) raise_store_error(c->store, st, Qnil);
  return rb_assoc_new(rb_str_new_cstr(host), UINT2NUM(port));
}

mm_store *mm_client_detach(VALUE self) {
  if (!rb_typeddata_is_kind_of(self, &client_type)) rb_raise(rb_eTypeError, "not a MegaMutex::Native::Client");
  mm_client *c = client_take(self);
  mm_store *store = c->store;
  c->store = NULL;
  store->cancel_fd = -1; /* the waker stays (and goes) with the client */
  store->cancelled = NULL;
  mm_waker_destroy(&c->waker);
  client_give_back(c);
  return store;
}

/* close -> nil. Closes the connections; later calls raise. */
static VALUE client_close(VALUE self) {
  mm_client *c = client_take(self);
  client_close_store(c);
  mm_waker_destroy(&c->waker); /* its eventfd too, not only the sockets (a closed client is never used again) */
  client_give_back(c);
  return Qnil;
}

/* _session? -> true when the store is a session store (a lock lives as
 * long as the connection that took it: the hold keeps this client). */
static VALUE client_session_p(VALUE self) {
  mm_client *c;
  TypedData_Get_Struct(self, mm_client, &client_type, c);
  if (c->store == NULL) rb_raise(eError, "MegaMutex client is closed");
  return c->store->ops->kind == MM_KIND_SESSION ? Qtrue : Qfalse;
}

static VALUE client_closed_p(VALUE self) {
  mm_client *c;
  TypedData_Get_Struct(self, mm_client, &client_type, c);
  return c->store == NULL ? Qtrue : Qfalse;
}

void mm_client_init(VALUE mNative) {
  VALUE mMegaMutex = rb_const_get(rb_cObject, rb_intern("MegaMutex"));
  eError = rb_const_get(mMegaMutex, rb_intern("Error"));
  eConnectionError = rb_const_get(mMegaMutex, rb_intern("ConnectionError"));
  eServerError = rb_const_get(mMegaMutex, rb_intern("ServerError"));
  eDeadlockError = rb_const_get(mMegaMutex, rb_intern("DeadlockError"));
  rb_gc_register_mark_object(eError);
  rb_gc_register_mark_object(eConnectionError);
  rb_gc_register_mark_object(eServerError);
  rb_gc_register_mark_object(eDeadlockError);
  id_iv_id = rb_intern("@id");
  id_iv_version = rb_intern("@version");
  id_iv_attempts = rb_intern("@attempts");
  id_iv_waited = rb_intern("@waited");
  id_iv_holder = rb_intern("@holder");
  id_iv_outcome_unknown = rb_intern("@outcome_unknown");
  id_iv_fencing_token = rb_intern("@fencing_token");
  id_iv_valid_until = rb_intern("@valid_until");

  cClient = rb_define_class_under(mNative, "Client", rb_cObject);
  rb_define_alloc_func(cClient, client_alloc);
  rb_define_singleton_method(cClient, "memory", client_s_memory, 0);
  rb_define_method(cClient, "initialize", client_initialize, 4);
  rb_define_method(cClient, "_acquire", client_acquire, 7);
  rb_define_method(cClient, "_release", client_release, 3);
  rb_define_method(cClient, "_extend", client_extend, 3);
  rb_define_method(cClient, "_describe", client_describe, 1);
  rb_define_method(cClient, "_read", client_read, 1);
  rb_define_method(cClient, "_force_release", client_force_release, 1);
  rb_define_method(cClient, "_server_for", client_server_for, 1);
  rb_define_method(cClient, "close", client_close, 0);
  rb_define_method(cClient, "closed?", client_closed_p, 0);
  rb_define_method(cClient, "_session?", client_session_p, 0);
  mm_mariadb_glue_init(cClient); /* mariadb_glue.c: Client.mysql (store_mariadb.c) */
  mm_quorum_glue_init(cClient);  /* quorum_glue.c: Client.quorum (store_quorum.c) */
}
