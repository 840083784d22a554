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
} quorum_open_args;

static void *quorum_open_nogvl(void *p) {
  quorum_open_args *a = p;
  a->result = mm_quorum_store_new(&a->opts, a->error, sizeof a->error);
  if (a->result != NULL) mm_quorum_store_probe(a->result, a->warnings, sizeof a->warnings);
  return NULL;
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
  Check_Type(servers, T_ARRAY);
  long n = RARRAY_LEN(servers);
  if (n < MM_QUORUM_MIN_SERVERS || n > MM_QUORUM_MAX_SERVERS)
    rb_raise(rb_eArgError, "a quorum needs %d to %d memcached servers (got %ld)", MM_QUORUM_MIN_SERVERS,
             MM_QUORUM_MAX_SERVERS, n);
  quorum_open_args *a = ALLOC(quorum_open_args);
  memset(a, 0, sizeof *a);
  mm_server_addr addrs[MM_QUORUM_MAX_SERVERS];
  VALUE hosts = rb_ary_new_capa(n);
  for (long i = 0; i < n; i++) {
    VALUE pair = rb_ary_entry(servers, i);
    if (!RB_TYPE_P(pair, T_ARRAY) || RARRAY_LEN(pair) != 2) {
      xfree(a);
      rb_raise(rb_eArgError, "server must be [host, port]");
    }
    VALUE host = rb_ary_entry(pair, 0);
    long port = NUM2LONG(rb_ary_entry(pair, 1));
    if (!RB_TYPE_P(host, T_STRING) || port < 0 || port > 65535 || memchr(RSTRING_PTR(host), 0, (size_t) RSTRING_LEN(host))) {
      xfree(a);
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
    xfree(a);
    rb_raise(rb_eArgError, "timeouts must be positive and max_ttl 1 to %ld seconds", 2592000L - 2);
  }
  a->opts.max_ttl = (uint32_t) ttl;

  rb_thread_call_without_gvl(quorum_open_nogvl, a, RUBY_UBF_IO, NULL);
  RB_GC_GUARD(hosts);
  mm_store *store = a->result;
  if (store == NULL) {
    VALUE msg = rb_str_new_cstr(a->error);
    xfree(a);
    rb_exc_raise(rb_exc_new_str(rb_path2class("MegaMutex::Error"), msg));
  }
  VALUE warnings = a->warnings[0] ? rb_str_split(rb_str_new_cstr(a->warnings), "\n") : rb_ary_new();
  xfree(a);
  return rb_assoc_new(mm_client_wrap(klass, store), warnings);
}

void mm_quorum_glue_init(VALUE cClient) { rb_define_singleton_method(cClient, "_quorum_open", quorum_open, 4); }
