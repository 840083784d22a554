/*
 * mariadb_glue.c - Client.mysql: the MariaDB/MySQL GET_LOCK store
 * (store_mariadb.c). Placeholder until that store lands.
 */
#include "client.h"

void mm_mariadb_glue_init(VALUE cClient) { (void) cClient; }
