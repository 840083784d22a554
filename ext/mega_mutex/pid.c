/*
 * pid.c - the cached process id (see pid.h).
 */
#include "pid.h"

#include <pthread.h>
#include <unistd.h>

static pid_t g_pid; /* 0 until first asked; written by the fork handler in a child */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void renew_in_child(void) { __atomic_store_n(&g_pid, getpid(), __ATOMIC_SEQ_CST); }

static void setup(void) {
  /* Without the handler a child would take itself for its parent: then
   * never cache (a system call each time, still right). */
  if (pthread_atfork(NULL, NULL, renew_in_child) == 0) __atomic_store_n(&g_pid, getpid(), __ATOMIC_SEQ_CST);
}

pid_t mm_getpid(void) {
  pthread_once(&g_once, setup);
  pid_t pid = __atomic_load_n(&g_pid, __ATOMIC_SEQ_CST);
  return pid != 0 ? pid : getpid();
}
