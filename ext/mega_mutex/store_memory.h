/*
 * store_memory.h - the memory store: locks in one table per process, for
 * test suites (config.backend = :memory). See store_memory.c.
 *
 * No Ruby API here or in store_memory.c; memory_glue.c is the Ruby side of
 * the table operations (MegaMutex::Native::MemoryTable).
 */
#ifndef MEGA_MUTEX_STORE_MEMORY_H
#define MEGA_MUTEX_STORE_MEMORY_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* Longest lock_ttl the memory store accepts (30 days, as memcached). */
#define MM_MEMORY_MAX_TTL 2592000u

/* Furthest the table's clock may be moved by mm_memory_table_advance, in
 * total since the last reset (100 years): keeps the clock's nanoseconds far
 * from overflowing. */
#define MM_MEMORY_MAX_OFFSET 3155760000.0

/* A store over the process's one table. Cheap (one allocation, no file
 * descriptor): a client per thread is fine. Returns NULL and fills errbuf
 * on failure. No GVL needed. */
mm_store *mm_memory_store_new(char *errbuf, size_t errlen);

/* ---- the table, for memory_glue.c (each takes the table's mutex briefly) -- */

/* One live lock, as mm_memory_table_snapshot reports it. */
typedef struct {
  char key[MM_KEY_MAX + 1];
  char token[MM_TOKEN_MAX + 1];
  size_t key_len, token_len;
  double seconds_left; /* until it ends unless renewed (advance counted) */
  uint64_t renewals;   /* refreshes since it was taken */
} mm_memory_lock;

/* Forgets every lock, undoes every advance and wakes every waiter.
 * 0, or an errno-style code (errbuf filled). */
int mm_memory_table_reset(char *errbuf, size_t errlen);

/* Moves the table's clock `seconds` (finite, >= 0) forward and wakes every
 * waiter. 0; EINVAL for a bad number or past MM_MEMORY_MAX_OFFSET; or an
 * errno-style code. errbuf filled on error. */
int mm_memory_table_advance(double seconds, char *errbuf, size_t errlen);

/* The live locks: *out gets a malloc'd array (free() it; NULL when none) and
 * *count its length. 0, or an errno-style code (errbuf filled). */
int mm_memory_table_snapshot(mm_memory_lock **out, size_t *count, char *errbuf, size_t errlen);

#endif
