/*
 * memory_glue.c - MegaMutex::Native::MemoryTable: the memory store's table
 * (store_memory.c) as Ruby sees it, for MegaMutex::MemoryStore's class
 * methods (lib/mega_mutex/memory_store.rb, where they are documented).
 *
 *   MemoryTable.reset!          forget every lock, undo every advance, wake every waiter
 *   MemoryTable.advance(secs)   move the lease clock forward, wake every waiter
 *   MemoryTable.locks           [[key, token, seconds_left, renewals], ...]
 *
 * They run with the GVL: each only takes the table's mutex for a moment,
 * and no Ruby object is made while it is held.
 */
#include <errno.h>
#include <stdlib.h>

#include "mega_mutex.h"
#include "store_memory.h"

static VALUE mMegaMutex;
static ID id_real_p;

NORETURN(static void raise_table_error(int rc, const char *msg));
static void raise_table_error(int rc, const char *msg) {
  if (rc == EINVAL) rb_raise(rb_eArgError, "%s", msg);
  rb_raise(rb_const_get(mMegaMutex, rb_intern("Error")), "%s", msg);
}

/* reset! -> nil */
static VALUE table_reset(VALUE self) {
  (void) self;
  char err[MM_ERROR_MAX];
  int rc = mm_memory_table_reset(err, sizeof err);
  if (rc != 0) raise_table_error(rc, err);
  return Qnil;
}

/* advance(seconds) -> nil; seconds: a real, finite, non-negative Numeric */
static VALUE table_advance(VALUE self, VALUE seconds) {
  (void) self;
  if (!rb_obj_is_kind_of(seconds, rb_cNumeric) || !RTEST(rb_funcall(seconds, id_real_p, 0))) {
    VALUE shown = rb_inspect(seconds);
    rb_raise(rb_eArgError, "advance takes a non-negative number of seconds (got %s)", StringValueCStr(shown));
  }
  char err[MM_ERROR_MAX];
  int rc = mm_memory_table_advance(NUM2DBL(seconds), err, sizeof err);
  if (rc != 0) raise_table_error(rc, err);
  return Qnil;
}

typedef struct {
  const mm_memory_lock *locks;
  size_t count;
} snapshot;

static VALUE build_locks(VALUE arg) {
  const snapshot *s = (const snapshot *) arg;
  VALUE out = rb_ary_new_capa((long) s->count);
  for (size_t i = 0; i < s->count; i++) {
    const mm_memory_lock *l = &s->locks[i];
    VALUE row = rb_ary_new_capa(4);
    rb_ary_push(row, rb_obj_freeze(rb_usascii_str_new(l->key, (long) l->key_len)));
    rb_ary_push(row, rb_usascii_str_new(l->token, (long) l->token_len));
    rb_ary_push(row, DBL2NUM(l->seconds_left));
    rb_ary_push(row, ULL2NUM(l->renewals));
    rb_ary_push(out, row);
  }
  return out;
}

/* locks -> [[key, token, seconds_left, renewals], ...]: the live locks;
 * seconds_left until each ends unless renewed, renewals since its take. */
static VALUE table_locks(VALUE self) {
  (void) self;
  char err[MM_ERROR_MAX];
  mm_memory_lock *locks;
  size_t count;
  int rc = mm_memory_table_snapshot(&locks, &count, err, sizeof err);
  if (rc != 0) raise_table_error(rc, err);
  snapshot s = {locks, count};
  int state = 0;
  VALUE out = rb_protect(build_locks, (VALUE) &s, &state);
  free(locks);
  if (state != 0) rb_jump_tag(state);
  return out;
}

void mm_memory_glue_init(VALUE mNative) {
  mMegaMutex = rb_define_module("MegaMutex");
  id_real_p = rb_intern("real?");
  VALUE mTable = rb_define_module_under(mNative, "MemoryTable");
  rb_define_singleton_method(mTable, "reset!", table_reset, 0);
  rb_define_singleton_method(mTable, "advance", table_advance, 1);
  rb_define_singleton_method(mTable, "locks", table_locks, 0);
}
