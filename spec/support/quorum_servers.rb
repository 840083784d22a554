# frozen_string_literal: true

require_relative "servers"

# Three (or more) memcached servers for the :quorum backend, started with -M
# (never evict) by spec/support/servers.rb's manager, and made "mature": the
# quorum store counts a server only once it has kept its items for longer
# than quorum_max_ttl + 5 s (see docs/quorum.md), so a suite that starts
# fresh servers seeds each one's sentinel itself and waits, once, until the
# servers are old enough.
module QuorumServers
  # The quorum_max_ttl the suite's quorum configurations use.
  MAX_TTL = 2
  # Seconds a server must have kept its items before it counts.
  MATURE_AFTER = MAX_TTL + 5
  # The store's sentinel key (store_quorum.c).
  SENTINEL = "~mm:epoch"

  class << self
    # @return [Array<Servers::Memcached>] the suite's shared quorum servers, started and mature
    def shared
      @shared ||= start(3)
    end

    # Starts `count` memcached servers with -M and waits until they count.
    # @return [Array<Servers::Memcached>]
    def start(count, args: %w[-M -m 64])
      start_sets(1, count, args: args).first
    end

    # Starts `sets` groups of `count` servers at once (they grow old
    # together: one wait for all).
    # @return [Array<Array<Servers::Memcached>>]
    def start_sets(sets, count, args: %w[-M -m 64])
      groups = Array.new(sets) { Array.new(count) { Servers::Memcached.new(args: args).start } }
      groups.flatten.each { |server| seed(server) }
      groups.flatten.each { |server| wait_mature(server) }
      groups
    end

    # Creates the sentinel as the store would (its value: the server's uptime).
    # @return [void]
    def seed(server)
      uptime = server.stats.fetch("uptime")
      server.command("add #{SENTINEL} 0 0 #{uptime.bytesize}\r\n#{uptime}")
    end

    # The server's uptime and its sentinel's age, in seconds (nil: no sentinel).
    def ages(server)
      uptime = server.stats.fetch("uptime").to_i
      sentinel = server.get(SENTINEL)
      [uptime, sentinel && uptime - sentinel.to_i]
    end

    # Waits until the store would count `server` (up, and its sentinel kept,
    # for longer than {MATURE_AFTER}); seeds the sentinel when missing.
    # @return [void]
    def wait_mature(server, timeout: MATURE_AFTER + 10)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      loop do
        uptime, age = ages(server)
        seed(server) if age.nil?
        return if uptime > MATURE_AFTER + 1 && age && age > MATURE_AFTER + 1
        raise "#{server.inspect} not mature after #{timeout} s" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        sleep 0.2
      end
    end

    # Configures the :quorum backend on `servers`, with lock_ttl and
    # quorum_max_ttl {MAX_TTL}.
    def configure(config, servers = shared)
      config.backend = :quorum
      config.memcache_servers = servers.map(&:address)
      config.quorum_max_ttl = MAX_TTL
      config.lock_ttl = MAX_TTL
    end
  end
end
