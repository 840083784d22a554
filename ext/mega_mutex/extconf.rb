# frozen_string_literal: true

# Builds the MegaMutex extension against the system libmemcached.
require "mkmf"

HELP = <<~MSG
  MegaMutex needs libmemcached (the "awesome" fork, 1.1 or later) and its headers.
    Debian/Ubuntu: apt-get install libmemcached-dev
    Elsewhere:     gem install mega_mutex -- --with-libmemcached-dir=/path/to/prefix
MSG

# The Linux (glibc) calls the extension is built on, each probed as the
# extension uses it: declared by its header with _GNU_SOURCE (an implicit
# declaration is an error here, so a header that lacks it fails the probe
# rather than linking by luck), and linked. Any missing one stops the build
# with one message that names them all.
LINUX_CALLS = {
  "eventfd" => {
    headers: %w[sys/eventfd.h],
    use: "return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);",
    why: "the waker that ends a wait or a request at once"
  },
  "ppoll" => {
    headers: %w[poll.h time.h],
    use: "struct pollfd pfd = { 0, POLLIN, 0 }; struct timespec ts = { 0, 0 }; return ppoll(&pfd, 1, &ts, NULL);",
    why: "waiting on a socket and the waker with a nanosecond deadline"
  },
  "pthread_setname_np" => {
    headers: %w[pthread.h],
    use: "return pthread_setname_np(pthread_self(), \"mm renewer\");",
    why: "naming the renewer's threads"
  },
  "pthread_condattr_setclock" => {
    headers: %w[pthread.h time.h],
    use: "pthread_condattr_t a; pthread_condattr_init(&a); return pthread_condattr_setclock(&a, CLOCK_MONOTONIC);",
    why: "the renewer's monotonic-clock waits"
  }
}.freeze

# @return [Boolean] whether `func` compiles and links as LINUX_CALLS describes it
def linux_call?(func, headers:, use:, **)
  src = <<~C
    #pragma GCC diagnostic error "-Wimplicit-function-declaration"
    #{headers.map { |h| "#include <#{h}>" }.join("\n")}
    int main(void) { #{use} }
  C
  # _GNU_SOURCE goes before every header, Ruby's too (mkmf puts ruby.h first).
  checking_for(checking_message("#{func}()", headers, "_GNU_SOURCE")) do
    try_link(src) { |source| "#define _GNU_SOURCE 1\n#{source}" }
  end
end

# glibc before 2.34 keeps the pthread calls in libpthread.
have_library("pthread")
missing = LINUX_CALLS.reject { |func, probe| linux_call?(func, **probe) }
unless missing.empty?
  abort <<~MSG

    MegaMutex needs Linux (glibc): this system lacks
    #{missing.map { |func, probe| "  #{func}() (#{probe[:headers].first}, with _GNU_SOURCE): #{probe[:why]}" }.join("\n")}
    See mkmf.log for the compiler's messages.
  MSG
end

dir_config("libmemcached")
found = pkg_config("libmemcached") ||
        (have_header("libmemcached/memcached.h") && have_library("memcached", "memcached_create"))
abort "\n#{HELP}" unless found
# libmemcached keeps the server list and picks each key's server (ketama);
# the requests themselves are the extension's own (store_memcached.c).
%w[memcached_generate_hash memcached_server_instance_by_position].each do |func|
  abort "\nlibmemcached headers found but unusable (no #{func}).\n#{HELP}" unless have_func(func, "libmemcached/memcached.h")
end
have_library("m")

# The MariaDB/MySQL store (store_mariadb.c, config.backend = :mysql): built
# when libmariadb (MariaDB Connector/C, with its non-blocking API) is found;
# without it the rest builds, and Client.mysql raises naming the package.
dir_config("libmariadb")
if (pkg_config("libmariadb") || have_library("mariadb", "mysql_init", "mysql.h")) &&
   have_header("mysql.h") && have_func("mysql_real_connect_start", "mysql.h")
  $defs << "-DHAVE_MARIADB"
else
  message("libmariadb not found: backend :mysql will not be available (Debian/Ubuntu: apt-get install libmariadb-dev)\n")
end

# Ruby's own headers are not -Wextra clean (unused parameters in inline
# functions), so mkmf would find -Wextra "not accepted" and drop it: include
# them as system headers, and the warnings apply to this extension's code.
$INCFLAGS = $INCFLAGS.gsub(/-I(\$\((?:arch_hdrdir|hdrdir)\)\S*)/) { "-isystem #{Regexp.last_match(1)}" }
append_cflags(%w[-std=gnu99 -Wall -Wextra -fvisibility=hidden])
append_cflags("-Werror") if ENV["CI"] == "true" || ENV["MEGA_MUTEX_WERROR"] == "1"
append_cflags(%w[-O0 -g3]) if ENV["MEGA_MUTEX_DEBUG"] == "1"

create_makefile("mega_mutex/mega_mutex")
