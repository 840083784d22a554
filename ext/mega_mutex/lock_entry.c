/*
 * lock_entry.c - MegaMutex::Lock#lock and #try_lock enter through C.
 *
 * A call that raises must leave nothing held. Ruby checks for interrupts
 * (Timeout, Thread#raise, Ctrl-C) at every method return and every taken
 * branch, so a Ruby method that has just taken the lock can still be
 * interrupted on its way out, with the lock kept and an exception in the
 * caller's hands. A C function returns without such a check: here the Ruby
 * body (_lock / _try_lock in lib/mega_mutex/lock.rb) runs under rb_ensure,
 * and when it did not return normally - an exception, a throw (Timeout), a
 * kill - Lock#_undo_take gives back what it took before the exit goes on.
 * An interrupt that arrives once the body has returned is delivered in the
 * caller's code, where the caller holds the lock it was given.
 *
 * Lock#unlock too: the caller's `ensure lock.unlock` must give the lock
 * back even when an interrupt lands inside unlock before its mask (then the
 * lock stayed held, and renewed, for the life of the process). Its body
 * (_unlock) runs under rb_ensure; when it did not return and gave nothing
 * back, Lock#_unlock_cut_short gives back the share this call was asked to
 * give, with interrupts deferred, before the interrupt goes on.
 */
#include <ruby.h>
#include <string.h>

#include "mega_mutex.h"

static ID id_lock_body, id_try_lock_body, id_undo_take, id_iv_depth, id_unlock_body, id_unlock_cut_short, id_iv_hold,
    id_iv_fiber, id_taking;

/* This fiber's shares of the Lock (Lock#own_depth): @depth while its hold
 * is this fiber's, else 0 - a Lock object shared by threads counts another
 * thread's hold in @depth while this call waits. */
static VALUE own_depth(VALUE self) {
  VALUE hold = rb_ivar_get(self, id_iv_hold);
  if (NIL_P(hold) || rb_ivar_get(hold, id_iv_fiber) != rb_fiber_current()) return INT2FIX(0);
  return rb_ivar_get(self, id_iv_depth);
}

typedef struct {
  VALUE self;
  ID body;
  int argc;
  const VALUE *argv;
  int kw_splat;
  VALUE depth;
  VALUE outer_taking; /* the fiber's take record before this call (a nested call's caller) */
  int returned;
} entry_args;

static VALUE entry_body(VALUE p) {
  entry_args *a = (entry_args *) p;
  VALUE result = rb_funcallv_kw(a->self, a->body, a->argc, a->argv, a->kw_splat);
  a->returned = 1; /* no interrupt check between the body's return and here */
  return result;
}

static VALUE entry_ensure(VALUE p) {
  entry_args *a = (entry_args *) p;
  if (!a->returned) rb_funcall(a->self, id_undo_take, 1, a->depth);
  rb_thread_local_aset(rb_thread_current(), id_taking, a->outer_taking);
  return Qnil;
}

static VALUE enter(int argc, VALUE *argv, VALUE self, ID body) {
  entry_args a;
  a.self = self;
  a.body = body;
  a.argc = argc;
  a.argv = argv;
  a.kw_splat = rb_keyword_given_p();
  a.depth = own_depth(self);
  /* Lock::TAKING, fiber-local: this call's take record starts empty. */
  a.outer_taking = rb_thread_local_aref(rb_thread_current(), id_taking);
  rb_thread_local_aset(rb_thread_current(), id_taking, Qnil);
  a.returned = 0;
  return rb_ensure(entry_body, (VALUE) &a, entry_ensure, (VALUE) &a);
}

static VALUE unlock_body(VALUE p) {
  entry_args *a = (entry_args *) p;
  VALUE result = rb_funcall(a->self, id_unlock_body, 0);
  a->returned = 1;
  return result;
}

static VALUE unlock_ensure(VALUE p) {
  entry_args *a = (entry_args *) p;
  if (!a->returned) rb_funcall(a->self, id_unlock_cut_short, 1, a->depth);
  return Qnil;
}

/* unlock -> true | false; see lib/mega_mutex/lock.rb */
static VALUE lock_unlock(VALUE self) {
  entry_args a;
  memset(&a, 0, sizeof a);
  a.self = self;
  a.depth = rb_ivar_get(self, id_iv_depth);
  return rb_ensure(unlock_body, (VALUE) &a, unlock_ensure, (VALUE) &a);
}

/* lock(timeout: @timeout) -> true; see lib/mega_mutex/lock.rb */
static VALUE lock_lock(int argc, VALUE *argv, VALUE self) { return enter(argc, argv, self, id_lock_body); }

/* try_lock -> true | false; see lib/mega_mutex/lock.rb */
static VALUE lock_try_lock(int argc, VALUE *argv, VALUE self) { return enter(argc, argv, self, id_try_lock_body); }

void mm_lock_entry_init(VALUE mMegaMutex) {
  VALUE cLock = rb_define_class_under(mMegaMutex, "Lock", rb_cObject);
  id_lock_body = rb_intern("_lock");
  id_try_lock_body = rb_intern("_try_lock");
  id_undo_take = rb_intern("_undo_take");
  id_iv_depth = rb_intern("@depth");
  id_unlock_body = rb_intern("_unlock");
  id_unlock_cut_short = rb_intern("_unlock_cut_short");
  id_iv_hold = rb_intern("@hold");
  id_iv_fiber = rb_intern("@fiber");
  id_taking = rb_intern("__mega_mutex_taking"); /* Lock::TAKING */
  rb_define_method(cLock, "lock", lock_lock, -1);
  rb_define_method(cLock, "try_lock", lock_try_lock, -1);
  rb_define_method(cLock, "unlock", lock_unlock, 0);
}
