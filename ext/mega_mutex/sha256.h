/*
 * sha256.h - SHA-256 (FIPS 180-4) and lowercase hex, for the MariaDB
 * store's lock names (mariadb_names.c). No Ruby API.
 */
#ifndef MEGA_MUTEX_SHA256_H
#define MEGA_MUTEX_SHA256_H

#include <stddef.h>

/* The digest of `len` bytes at `data` into out. */
void mm_sha256(const void *data, size_t len, unsigned char out[32]);

/* `n` bytes as 2n lowercase hex digits into out, NUL-terminated (2n + 1). */
void mm_hex(const unsigned char *bytes, size_t n, char *out);

#endif
