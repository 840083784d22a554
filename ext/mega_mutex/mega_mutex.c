/*
 * mega_mutex.c - entry point. Reads as a table of contents: one *_init per
 * Ruby-facing file. The error classes are defined in Ruby
 * (lib/mega_mutex/errors.rb) before this library is loaded.
 */
#include "mega_mutex.h"
#include "pid.h"

/* Native.pid -> this process's id, from pid.c's cache, which a
 * pthread_atfork handler keeps right in every child - one forked from C by
 * another extension too, which Ruby's fork hooks never see. No system call. */
static VALUE native_pid(VALUE self) {
  (void) self;
  return INT2NUM((int) mm_getpid());
}

RUBY_FUNC_EXPORTED void Init_mega_mutex(void) {
  VALUE mMegaMutex = rb_define_module("MegaMutex");
  VALUE mNative = rb_define_module_under(mMegaMutex, "Native");
  rb_define_module_function(mNative, "pid", native_pid, 0);
  mm_client_init(mNative); /* client.c: MegaMutex::Native::Client */
  mm_lease_init(mNative);  /* lease.c: MegaMutex::Native::Lease (the C renewer, renewer.c) */
  mm_memory_glue_init(mNative); /* memory_glue.c: MegaMutex::Native::MemoryTable (store_memory.c) */
  mm_lock_entry_init(mMegaMutex); /* lock_entry.c: MegaMutex::Lock#lock and #try_lock */
}
