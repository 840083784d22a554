#ifndef MEGA_MUTEX_H
#define MEGA_MUTEX_H
#include <ruby.h>
void mm_client_init(VALUE mNative);
void mm_lease_init(VALUE mNative);
void mm_memory_glue_init(VALUE mNative);
void mm_lock_entry_init(VALUE mMegaMutex);
#endif
