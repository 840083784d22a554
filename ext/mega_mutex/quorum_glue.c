/*
 * quorum_glue.c - Client.quorum: a lock over a majority of independent
 * memcached servers (store_quorum.c). Placeholder until that store lands.
 */
#include "client.h"

void mm_quorum_glue_init(VALUE cClient) { (void) cClient; }
