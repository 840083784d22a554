/*
 * mariadb_glue.c - Client.mysql: a client over the MariaDB/MySQL named-lock
 * store (store_mariadb.c), built when extconf found libmariadb.
 *
 *   Client.mysql(host, port, socket, user, password, database,
 *                connect_timeout_ms, io_timeout_ms, ttl)   -> Client
 *   Client._mysql_lock_name(key)                          -> the name MariaDB sees
 *
 * The arguments are validated in Ruby (lib/mega_mutex/configuration/mysql.rb);
 * here they are only copied. The store connects at its first request, so
 * making a client does no I/O and a bad password shows up as a
 * ConnectionError from the first lock call, naming the server.
 */
#include <string.h>

#include "client.h"
#include "mega_mutex.h"

#ifdef HAVE_MARIADB
#include "store_mariadb.h"

static VALUE eError;

/* A String argument as a C string (NUL-free), or NULL for nil. */
static const char *opt_cstr(VALUE v, const char *what) {
  if (NIL_P(v)) return NULL;
  if (!RB_TYPE_P(v, T_STRING)) rb_raise(rb_eArgError, "%s must be a String or nil", what);
  return StringValueCStr(v);
}

static VALUE client_s_mysql(VALUE klass, VALUE host, VALUE port, VALUE socket, VALUE user, VALUE password,
                            VALUE database, VALUE connect_ms, VALUE io_ms, VALUE ttl) {
  mm_mariadb_options o;
  memset(&o, 0, sizeof o);
  o.host = opt_cstr(host, "host");
  long p = NIL_P(port) ? 0 : NUM2LONG(port);
  if (p < 0 || p > 65535) rb_raise(rb_eArgError, "port out of range: %ld", p);
  o.port = (unsigned) p;
  o.socket = opt_cstr(socket, "socket");
  o.user = opt_cstr(user, "user");
  o.password = opt_cstr(password, "password");
  o.database = opt_cstr(database, "database");
  o.connect_timeout_ms = NUM2INT(connect_ms);
  o.io_timeout_ms = NUM2INT(io_ms);
  long t = NUM2LONG(ttl);
  if (o.connect_timeout_ms < 1 || o.io_timeout_ms < 1) rb_raise(rb_eArgError, "timeouts must be positive");
  if (t < 1 || t > 2592000) rb_raise(rb_eArgError, "ttl must be 1 to 2592000 seconds (got %ld)", t);
  o.ttl = (unsigned) t;
  char err[MM_ERROR_MAX];
  /* No I/O: the store only copies its options. */
  mm_store *store = mm_mariadb_store_new(&o, err, sizeof err);
  RB_GC_GUARD(host);
  RB_GC_GUARD(socket);
  RB_GC_GUARD(user);
  RB_GC_GUARD(password);
  RB_GC_GUARD(database);
  if (store == NULL) rb_raise(eError, "%s", err);
  return mm_client_wrap(klass, store);
}

static VALUE client_s_mysql_lock_name(VALUE klass, VALUE key) {
  (void) klass;
  StringValue(key);
  mm_bytes k = {RSTRING_PTR(key), (size_t) RSTRING_LEN(key)};
  if (!mm_key_valid(k)) rb_raise(rb_eArgError, "key must be 1 to %d bytes of printable ASCII without spaces", MM_KEY_MAX);
  char name[65];
  mm_mariadb_lock_name(k, name);
  RB_GC_GUARD(key);
  return rb_usascii_str_new_cstr(name);
}

void mm_mariadb_glue_init(VALUE cClient) {
  eError = rb_const_get(rb_const_get(rb_cObject, rb_intern("MegaMutex")), rb_intern("Error"));
  rb_gc_register_mark_object(eError);
  if (mm_mariadb_library_init() != 0) rb_raise(eError, "libmariadb failed to initialise (mysql_library_init)");
  rb_define_singleton_method(cClient, "mysql", client_s_mysql, 9);
  rb_define_singleton_method(cClient, "_mysql_lock_name", client_s_mysql_lock_name, 1);
  rb_define_const(cClient, "MYSQL", Qtrue);
}

#else

static VALUE client_s_mysql_missing(int argc, VALUE *argv, VALUE klass) {
  (void) argc;
  (void) argv;
  (void) klass;
  VALUE eError = rb_const_get(rb_const_get(rb_cObject, rb_intern("MegaMutex")), rb_intern("Error"));
  rb_raise(eError, "backend :mysql needs libmariadb, which was not found when MegaMutex was built: install the "
                   "Debian/Ubuntu package libmariadb-dev (MariaDB Connector/C) and reinstall the gem");
  return Qnil;
}

void mm_mariadb_glue_init(VALUE cClient) {
  rb_define_singleton_method(cClient, "mysql", client_s_mysql_missing, -1);
  rb_define_const(cClient, "MYSQL", Qfalse);
}

#endif
