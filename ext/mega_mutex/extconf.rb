# frozen_string_literal: true

# Builds the MegaMutex extension against the system libmemcached.
require "mkmf"

HELP = <<~MSG
  MegaMutex needs libmemcached (the "awesome" fork, 1.1 or later) and its headers.
    Debian/Ubuntu: apt-get install libmemcached-dev
    Elsewhere:     gem install mega_mutex -- --with-libmemcached-dir=/path/to/prefix
MSG

dir_config("libmemcached")
found = pkg_config("libmemcached") ||
        (have_header("libmemcached/memcached.h") && have_library("memcached", "memcached_create"))
abort "\n#{HELP}" unless found
# libmemcached keeps the server list and picks each key's server (ketama);
# the requests themselves are the extension's own (store_memcached.c).
%w[memcached_generate_hash memcached_server_instance_by_position].each do |func|
  abort "\nlibmemcached headers found but unusable (no #{func}).\n#{HELP}" unless have_func(func, "libmemcached/memcached.h")
end
have_library("pthread")
have_library("m")

# Ruby's own headers are not -Wextra clean (unused parameters in inline
# functions), so mkmf would find -Wextra "not accepted" and drop it: include
# them as system headers, and the warnings apply to this extension's code.
$INCFLAGS = $INCFLAGS.gsub(/-I(\$\((?:arch_hdrdir|hdrdir)\)\S*)/) { "-isystem #{Regexp.last_match(1)}" }
append_cflags(%w[-std=gnu99 -Wall -Wextra -fvisibility=hidden])
append_cflags("-Werror") if ENV["CI"] == "true" || ENV["MEGA_MUTEX_WERROR"] == "1"
append_cflags(%w[-O0 -g3]) if ENV["MEGA_MUTEX_DEBUG"] == "1"

create_makefile("mega_mutex/mega_mutex")
