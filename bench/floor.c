/*
 * The floor: the cheapest lock cycle libmemcached can do on one connection,
 * memcached_add (take) + memcached_delete (release), with no owner check.
 * Same connection settings as MegaMutex's store (text protocol, TCP_NODELAY).
 *
 *   cc -O2 -o bench/build/floor bench/floor.c $(pkg-config --cflags --libs libmemcached)
 *   bench/build/floor HOST PORT ITERATIONS [--raw] [--warmup N] [--key KEY]
 *
 * Prints "floor n=N min=.. median=.. p99=.. mean=.. (us)"; with --raw, first
 * every cycle's time in nanoseconds, one per line. Exit status 1 on any error
 * (a failed add or delete is an error: the key is ours alone).
 */
#include <libmemcached/memcached.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return (x > y) - (x < y);
}

static int cycle(memcached_st *mc, const char *key, size_t klen) {
  memcached_return_t rc = memcached_add(mc, key, klen, "x", 1, 30, 0);
  if (rc != MEMCACHED_SUCCESS) {
    fprintf(stderr, "floor: add: %s\n", memcached_last_error_message(mc));
    return -1;
  }
  rc = memcached_delete(mc, key, klen, 0);
  if (rc != MEMCACHED_SUCCESS) {
    fprintf(stderr, "floor: delete: %s\n", memcached_last_error_message(mc));
    return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s HOST PORT ITERATIONS [--raw] [--warmup N] [--key KEY]\n", argv[0]);
    return 2;
  }
  const char *host = argv[1];
  in_port_t port = (in_port_t) atoi(argv[2]);
  long n = atol(argv[3]);
  int raw = 0;
  long warmup = 50;
  char key[200];
  snprintf(key, sizeof key, "bench:floor:%ld", (long) getpid());
  for (int i = 4; i < argc; i++) {
    if (strcmp(argv[i], "--raw") == 0) raw = 1;
    else if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc) warmup = atol(argv[++i]);
    else if (strcmp(argv[i], "--key") == 0 && i + 1 < argc) snprintf(key, sizeof key, "%s", argv[++i]);
    else {
      fprintf(stderr, "floor: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  if (n <= 0 || warmup < 0) {
    fprintf(stderr, "floor: ITERATIONS must be > 0\n");
    return 2;
  }

  memcached_st *mc = memcached_create(NULL);
  if (!mc) return 1;
  memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_TCP_NODELAY, 1);
  memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, 1000);
  memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_POLL_TIMEOUT, 1000);
  if (memcached_server_add(mc, host, port) != MEMCACHED_SUCCESS) {
    fprintf(stderr, "floor: bad server %s:%d\n", host, (int) port);
    return 1;
  }
  size_t klen = strlen(key);
  memcached_delete(mc, key, klen, 0); /* leftovers of an earlier run; connects */

  for (long i = 0; i < warmup; i++)
    if (cycle(mc, key, klen)) return 1;

  uint64_t *t = malloc(sizeof(uint64_t) * (size_t) n);
  if (!t) return 1;
  for (long i = 0; i < n; i++) {
    uint64_t a = now_ns();
    if (cycle(mc, key, klen)) return 1;
    t[i] = now_ns() - a;
  }
  memcached_free(mc);

  if (raw)
    for (long i = 0; i < n; i++) printf("%llu\n", (unsigned long long) t[i]);
  double sum = 0;
  for (long i = 0; i < n; i++) sum += (double) t[i];
  qsort(t, (size_t) n, sizeof(uint64_t), cmp_u64);
  long p99 = (long) ((double) (n - 1) * 0.99 + 0.5);
  printf("floor n=%ld min=%.1f median=%.1f p99=%.1f mean=%.1f (us)\n", n, t[0] / 1e3,
         (n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2.0) / 1e3, t[p99] / 1e3, sum / n / 1e3);
  free(t);
  return 0;
}
