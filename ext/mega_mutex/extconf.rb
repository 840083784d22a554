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
abort "\nlibmemcached headers found but unusable.\n#{HELP}" unless have_func("memcached_last_error_message", "libmemcached/memcached.h")
have_library("pthread")
have_library("m")

append_cflags(%w[-std=gnu99 -Wall -Wextra -fvisibility=hidden])
append_cflags("-Werror") if ENV["CI"] == "true" || ENV["MEGA_MUTEX_WERROR"] == "1"
append_cflags(%w[-O0 -g3]) if ENV["MEGA_MUTEX_DEBUG"] == "1"

create_makefile("mega_mutex/mega_mutex")
