/*
 * quorum_glue.c - Client._quorum_open: a client over a lock held on a
 * majority of independent memcached servers (store_quorum.c).
 */
#include <ruby.h>
#include <ruby/thread.h>
#include <string.h>

#include "client.h"
#include "store_quorum.h"

typedef struct {
  mm_quorum_options opts;
  mm_store *result;
  char error[MM_ERROR_MAX];
  char warnings[MM_QUORUM_WARNINGS_MAX];
  int probe_only;
} quorum_open_args;

static void *quorum_open_nogvl(void *p) {
  quorum_open_args *a = p;
  if (a->probe_only) {
    if (mm_memcached_probe_evictions(&a->opts, a->warnings, sizeof a->warnings) != 0) {
      memcpy(a->error, a->warnings, sizeof a->error);
      a->error[sizeof a->error - 1] = '\0';
      a->warnings[0] = '\0';
    }
    return NULL;
  }
  a->result = mm_quorum_store_new(&a->opts, a->error, sizeof a->error);
  if (a->result != NULL) mm_quorum_store_probe(a->result, a->warnings, sizeof a->warnings);
  return NULL;
}

/* Parses the arguments, then builds (and probes) the store without the GVL. */
static VALUE open_or_probe(VALUE klass, VALUE servers, VALUE connect_ms, VALUE io_ms, VALUE max_ttl, int probe_only) {
  Check_Type(servers, T_ARRAY);
  long n = RARRAY_LEN(servers), min = probe_only ? 1 : MM_QUORUM_MIN_SERVERS;
  if (n < min || n > MM_QUORUM_MAX_SERVERS)
    rb_raise(rb_eArgError, "%s needs %ld to %d memcached servers (got %ld)", probe_only ? "a probe" : "a quorum", min,
             MM_QUORUM_MAX_SERVERS, n);
  quorum_open_args args, *a = &args;
  memset(a, 0, sizeof *a);
  a->probe_only = probe_only;
  mm_server_addr addrs[MM_QUORUM_MAX_SERVERS];
  VALUE hosts = rb_ary_new_capa(n);
  for (long i = 0; i < n; i++) {
    VALUE pair = rb_ary_entry(servers, i);
    if (!RB_TYPE_P(pair, T_ARRAY) || RARRAY_LEN(pair) != 2) {
      rb_raise(rb_eArgError, "server must be [host, port]");
    }
    VALUE host = rb_ary_entry(pair, 0);
    long port = NUM2LONG(rb_ary_entry(pair, 1));
    if (!RB_TYPE_P(host, T_STRING) || port < 0 || port > 65535 || memchr(RSTRING_PTR(host), 0, (size_t) RSTRING_LEN(host))) {
      rb_raise(rb_eArgError, "server must be [host String, port 0-65535]");
    }
    host = rb_str_new_frozen(host);
    rb_ary_push(hosts, host);
    addrs[i].host = RSTRING_PTR(host); /* a frozen copy: NUL-terminated */
    addrs[i].port = (unsigned) port;
  }
  a->opts.servers = addrs;
  a->opts.server_count = (size_t) n;
  a->opts.connect_timeout_ms = NUM2INT(connect_ms);
  a->opts.io_timeout_ms = NUM2INT(io_ms);
  long ttl = NUM2LONG(max_ttl);
  if (a->opts.connect_timeout_ms < 1 || a->opts.io_timeout_ms < 1 || ttl < 1 || ttl > 2592000L - 2) {
    rb_raise(rb_eArgError, "timeouts must be positive and max_ttl 1 to %ld seconds", 2592000L - 2);
  }
  a->opts.max_ttl = (uint32_t) ttl;

  rb_thread_call_without_gvl(quorum_open_nogvl, a, RUBY_UBF_IO, NULL);
  RB_GC_GUARD(hosts);
  mm_store *store = a->result;
  if (probe_only && a->error[0] == '\0') {
    return a->warnings[0] ? rb_str_split(rb_str_new_cstr(a->warnings), "\n") : rb_ary_new();
  }
  if (store == NULL) {
    rb_exc_raise(rb_exc_new_str(rb_path2class("MegaMutex::Error"), rb_str_new_cstr(a->error)));
  }
  /* The client first: it owns the store from here on, whatever raises. */
  VALUE client = mm_client_wrap(klass, store);
  VALUE warnings = a->warnings[0] ? rb_str_split(rb_str_new_cstr(a->warnings), "\n") : rb_ary_new();
  return rb_assoc_new(client, warnings);
}

/*
 * Client._quorum_open(servers, connect_timeout_ms, io_timeout_ms, max_ttl) -> [client, warnings]
 * servers: [[host, port], ...] (3 to 15; port 0: a unix socket path).
 * max_ttl: the longest lock_ttl in use (seconds): a restarted or flushed
 * server counts toward a majority only once it has been up that long, and
 * no longer ttl is accepted. Connects to every server once (one round
 * trip, without the GVL); warnings: one String per server that may evict.
 */
static VALUE quorum_open(VALUE klass, VALUE servers, VALUE connect_ms, VALUE io_ms, VALUE max_ttl) {
  return open_or_probe(klass, servers, connect_ms, io_ms, max_ttl, 0);
}

/*
 * Client._evicting_servers(servers, connect_timeout_ms, io_timeout_ms) -> [String, ...]
 * Connects once to each of 1 to 15 memcached servers (in parallel, without
 * the GVL) and names those that may evict items (started without -M), one
 * line each, for the :memcached store's warn log. A server that does not
 * answer is left out (its first request will say why).
 */
static VALUE evicting_servers(VALUE klass, VALUE servers, VALUE connect_ms, VALUE io_ms) {
  return open_or_probe(klass, servers, connect_ms, io_ms, INT2FIX(1), 1);
}

void mm_quorum_glue_init(VALUE cClient) {
  rb_define_singleton_method(cClient, "_quorum_open", quorum_open, 4);
  rb_define_singleton_method(cClient, "_evicting_servers", evicting_servers, 3);
}
