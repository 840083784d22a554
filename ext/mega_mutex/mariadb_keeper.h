/*
 * mariadb_keeper.h - the MariaDB store's keeper (mariadb_keeper.c): one
 * pthread per server that sends `DO 0` on each holding session idle for
 * a third of its lock_ttl, so that wait_timeout never ends it while Ruby
 * keeps the renewer from the GVL. No Ruby API. Built only with HAVE_MARIADB.
 */
#ifndef MEGA_MUTEX_MARIADB_KEEPER_H
#define MEGA_MUTEX_MARIADB_KEEPER_H

#include "mariadb_session.h"

/* After a request (s->io held): a session that holds locks is in the
 * keeper's list (the keeper starts with the first), one that holds none is
 * not. */
void mm_mariadb_keeper_update(my_store *s);

/* Before the store is freed (s->io held): out of the keeper's list. */
void mm_mariadb_keeper_forget(my_store *s);

#endif
