/*
 * store_mariadb.h - the MariaDB/MySQL named-lock store (store_mariadb.c):
 * a session store (GET_LOCK) that waits in the server.
 */
#ifndef MEGA_MUTEX_STORE_MARIADB_H
#define MEGA_MUTEX_STORE_MARIADB_H

#include "store.h"

/* Where and how to connect. Strings may be NULL; each is copied. A socket
 * path wins over host and port. */
typedef struct {
  const char *host;     /* NULL: "localhost" */
  unsigned port;        /* 0: 3306 */
  const char *socket;   /* unix socket path, or NULL */
  const char *user;     /* NULL: the library's default */
  const char *password; /* NULL: none */
  const char *database; /* NULL: none (named locks need no database) */
  int connect_timeout_ms;
  int io_timeout_ms;
  unsigned ttl; /* the session's wait_timeout until a take asks for another */
} mm_mariadb_options;

/* A store that has not connected yet: it connects at its first request.
 * Returns NULL and fills errbuf on failure. No I/O; no Ruby API. */
mm_store *mm_mariadb_store_new(const mm_mariadb_options *opts, char *errbuf, size_t errlen);

/* The lock name MariaDB sees for `key` (at most 64 bytes + NUL);
 * mariadb_names.c. */
void mm_mariadb_lock_name(mm_bytes key, char out[65]);

#define MM_MARIADB_COMPANION_MAX 192 /* MariaDB's limit on a lock name */

/* The companion of lock `name` for `token` into out (MM_MARIADB_COMPANION_MAX
 * + 1); its LIKE prefix ("mm~" + 16 hex + "~") into prefix (21 bytes). 0
 * when the token is too long for one (prefix is filled all the same). */
int mm_mariadb_companion_name(const char *name, mm_bytes token, char *out, char *prefix);

/* Once per process, with the GVL, before any store is made. 0 on success. */
int mm_mariadb_library_init(void);

/* How the message of a deadlock (ER_LOCK_DEADLOCK, 1213) starts. A take
 * that would deadlock returns MM_ERR_DEADLOCK, which client.c raises as
 * MegaMutex::DeadlockError: nothing needs to match this text. */
#define MM_MARIADB_DEADLOCK "MariaDB deadlock"

#endif
