# frozen_string_literal: true

require_relative "servers"

# A real memcached on a free loopback port, started and stopped by pid (never
# a fixed port, never killall): Servers::Memcached (spec/support/servers.rb,
# the one server manager of the suite, the bench, the chaos suite and the
# demo), under the name the specs and scripts have always used.
#
#   server = MemcachedServer.new(args: ["-M", "-m", "1"]).start
#   server.address # => "127.0.0.1:40123"
#   server.stop
MemcachedServer = Servers::Memcached unless defined?(MemcachedServer)
