/*
 * mariadb_names.c - the names the MariaDB store gives the server: a key's
 * lock name and its holder's companion lock (store_mariadb.c's header says
 * why and how they are made). No I/O; no Ruby API.
 */
#ifdef HAVE_MARIADB
#include <string.h>

#include "sha256.h"
#include "store_mariadb.h"

static int plain_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-' || c == '/' ||
         c == ':' || c == '@' || c == '=' || c == '+';
}

void mm_mariadb_lock_name(mm_bytes key, char out[65]) {
  int plain = key.len >= 1 && key.len <= 61;
  for (size_t i = 0; plain && i < key.len; i++) plain = plain_char((unsigned char) key.ptr[i]);
  if (plain) {
    memcpy(out, "mm=", 3);
    memcpy(out + 3, key.ptr, key.len);
    out[3 + key.len] = '\0';
    return;
  }
  size_t n = 0;
  memcpy(out, "mm#", 3);
  n = 3;
  for (size_t i = 0; i < key.len && i < 28; i++) {
    unsigned char c = (unsigned char) key.ptr[i];
    if (c >= 'A' && c <= 'Z') c = (unsigned char) (c - 'A' + 'a');
    out[n++] = plain_char(c) ? (char) c : '_';
  }
  out[n++] = '#';
  unsigned char digest[32];
  mm_sha256(key.ptr, key.len, digest);
  mm_hex(digest, 16, out + n); /* 32 hex digits, NUL-terminated */
}

int mm_mariadb_companion_name(const char *name, mm_bytes token, char *out, char *prefix) {
  unsigned char digest[32];
  mm_sha256(name, strlen(name), digest);
  memcpy(prefix, "mm~", 3);
  mm_hex(digest, 8, prefix + 3);
  prefix[19] = '~';
  prefix[20] = '\0';
  if (20 + token.len > MM_MARIADB_COMPANION_MAX) return 0;
  memcpy(out, prefix, 20);
  memcpy(out + 20, token.ptr, token.len);
  out[20 + token.len] = '\0';
  return 1;
}

#else
/* Built without libmariadb: mariadb_glue.c says so when Client.mysql is called. */
typedef int mm_mariadb_names_not_built;
#endif
