/*
 * client.h - what a store's Ruby glue needs from client.c: each store kind
 * has its own constructor (Client.memory, Client.mysql, Client.quorum) that
 * builds its store without the GVL and hands it to mm_client_wrap.
 */
#ifndef MEGA_MUTEX_CLIENT_H
#define MEGA_MUTEX_CLIENT_H

#include <ruby.h>
#include "store.h"

/* A new MegaMutex::Native::Client of `klass` that owns `store` (destroyed
 * with the client; abandoned in a forked child). */
VALUE mm_client_wrap(VALUE klass, mm_store *store);

/* Takes the store away from a Native::Client of this process, not in use
 * (raises otherwise): the caller owns it now, and the client is closed. */
mm_store *mm_client_detach(VALUE client);

/* Each defines its constructor on Native::Client (cClient). */
void mm_mariadb_glue_init(VALUE cClient); /* mariadb_glue.c */
void mm_quorum_glue_init(VALUE cClient);  /* quorum_glue.c */

#endif
