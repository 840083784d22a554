/*
 * pid.h - this process's id, cached: getpid() is a system call (on this VM a
 * costly one), and a lock cycle asked it some seven times to tell a forked
 * child's handles from its parent's.
 */
#ifndef MEGA_MUTEX_PID_H
#define MEGA_MUTEX_PID_H

#include <sys/types.h>

/* getpid(), read from a cache that a pthread_atfork child handler renews
 * in every child forked through libc (Ruby's fork, Process.daemon, a C
 * extension's fork()). Safe without the GVL. */
pid_t mm_getpid(void);

#endif
