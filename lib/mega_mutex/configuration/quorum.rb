# frozen_string_literal: true

require "set"

module MegaMutex
  # The :quorum backend's settings: a lock held on a majority of independent
  # memcached servers (the Redlock scheme, every request sent to all servers
  # in parallel), with fencing tokens (see docs/quorum.md).
  #
  # It uses {#memcache_servers} - at least 3 independent servers (an odd
  # number: 3 survive the loss of one, 5 of two), each started with -M so
  # that it never evicts a lock - and one setting of its own,
  # {#quorum_max_ttl}.
  #
  # @example
  #   MegaMutex.configure do |config|
  #     config.backend = :quorum
  #     config.memcache_servers = %w[mc1:11211 mc2:11211 mc3:11211]
  #     config.lock_ttl = 30
  #     config.quorum_max_ttl = 60 # the longest ttl any process passes
  #   end
  class Configuration
    # Fewest servers a quorum takes: with 2, losing either stops every lock.
    QUORUM_MIN_SERVERS = 3
    # Most servers a quorum takes (the C store's MM_QUORUM_MAX_SERVERS).
    QUORUM_MAX_SERVERS = 15

    store_settings :quorum, defaults: :quorum_defaults, validate: :validate_quorum, client: :quorum_client

    # The longest lease any process sharing these servers asks for, in
    # seconds; nil means {#lock_ttl}. Defaults to
    # ENV["MEGA_MUTEX_QUORUM_MAX_TTL"] when set (so `mega_mutex exec
    # --backend quorum` can be told), else nil.
    #
    # A server that restarted, was flushed or evicted the store's sentinel
    # may have forgotten a lock someone still holds: it does not count toward
    # a majority until it has kept its items for longer than this (plus 5 s
    # for memcached's one-second clock), so every lease it may have forgotten
    # has run out. A lock asked with a longer ttl (its ttl: option, or
    # {#lock_ttl}) raises ArgumentError when it is taken.
    # Every process sharing the servers must use the same value or a larger
    # one.
    #
    # @return [Integer, nil]
    attr_reader :quorum_max_ttl

    # @param value [Numeric, nil] seconds, 1 to {MAX_TTL}; nil: {#lock_ttl}
    # @raise [ArgumentError]
    def quorum_max_ttl=(value)
      @quorum_max_ttl = value.nil? ? nil : self.class.ttl_value(value, :quorum_max_ttl)
    end

    # The servers already reported as evicting, by name (once per process).
    @quorum_warned = Set.new
    @quorum_warned_mutex = Mutex.new

    # @api private
    # @param line [String] "host:port may evict items ..."
    # @return [Boolean] true the first time a server is reported in this process
    def self.quorum_first_warning?(line)
      server = line.split(" ", 2).first
      @quorum_warned_mutex.synchronize { @quorum_warned.add?(server) ? true : false }
    end

    private

    def quorum_defaults
      env = ENV.fetch("MEGA_MUTEX_QUORUM_MAX_TTL", "").strip
      self.quorum_max_ttl = env.empty? ? nil : Float(env, exception: false) || env
    rescue ArgumentError => e
      raise ArgumentError, e.message.sub("quorum_max_ttl", "MEGA_MUTEX_QUORUM_MAX_TTL")
    end

    # @raise [ArgumentError] fewer than 3 or more than 15 servers
    def validate_quorum
      count = memcache_servers.size
      if count < QUORUM_MIN_SERVERS || count > QUORUM_MAX_SERVERS
        raise ArgumentError,
              "backend :quorum needs #{QUORUM_MIN_SERVERS} to #{QUORUM_MAX_SERVERS} independent memcache_servers " \
              "(got #{count}: #{memcache_servers.join(', ')}); an odd number is best"
      end
    end

    # @return [Native::Client] a client of the quorum; servers that may
    #   evict are logged at warn level, once per process
    def quorum_client
      client, warnings = Native::Client._quorum_open(server_addresses, (connect_timeout * 1000).ceil,
                                                     (io_timeout * 1000).ceil, quorum_max_ttl || lock_ttl)
      warnings.each do |line|
        logger&.warn("MegaMutex: memcached #{line}") if Configuration.quorum_first_warning?(line)
      end
      client
    end
  end
end
