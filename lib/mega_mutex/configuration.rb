# frozen_string_literal: true

module MegaMutex
  # The :memory backend's store, loaded on first use (see {Configuration#backend=}).
  autoload :MemoryStore, File.expand_path("memory_store", __dir__)

  # The settings MegaMutex runs with. Every setter validates its value at
  # once and raises ArgumentError naming the setting, so a bad setting fails
  # inside MegaMutex.configure, not at the first lock.
  #
  # @example
  #   MegaMutex.configure do |config|
  #     config.memcache_servers = ["mc1", "mc2:11212"]
  #     config.namespace = "myapp"
  #     config.lock_ttl = 30
  #   end
  class Configuration
    # memcached's default port.
    DEFAULT_PORT = 11_211
    # Longest lease: memcached reads expiries above 30 days as dates, and
    # 2 s are added on the wire.
    MAX_TTL = 2_592_000 - 2
    # The lock stores {#backend=} accepts.
    BACKENDS = %i[memcached memory].freeze

    # Every setting but memcache_servers, and its default value.
    DEFAULTS = {
      backend: :memcached,
      namespace: "mega_mutex",
      lock_ttl: 30,
      default_timeout: nil,
      connect_timeout: 1.0,
      io_timeout: 1.0,
      backoff_min: 0.002,
      backoff_max: 0.05,
      on_lock_lost: :raise,
      logger: nil
    }.freeze

    # @return [Array<String>] the servers, normalised to "host:port" (or a socket path)
    attr_reader :memcache_servers
    # @return [String] prefix of every key (default "mega_mutex")
    attr_reader :namespace
    # @return [Integer] lease length in seconds: a lock whose holder vanishes is free after this
    attr_reader :lock_ttl
    # @return [Numeric, nil] how long with_distributed_mutex waits by default; nil waits forever
    attr_reader :default_timeout
    # @return [Float] seconds to wait for a TCP connection to memcached
    attr_reader :connect_timeout
    # @return [Float] seconds to wait for memcached to answer a request
    attr_reader :io_timeout
    # @return [Float] first pause, in seconds, after finding the lock taken
    attr_reader :backoff_min
    # @return [Float] longest pause, in seconds, between attempts
    attr_reader :backoff_max
    # @return [#debug, #info, #warn, #error, nil] where MegaMutex logs; nil for silence
    attr_reader :logger
    # @return [Symbol] :raise (LockLostError after the block) or :log (error log only)
    attr_reader :on_lock_lost
    # @return [Symbol] where locks are kept: :memcached (the default) or
    #   :memory (one process only, for test suites; see {MemoryStore})
    attr_reader :backend

    # A configuration with the defaults; servers from ENV["MEMCACHE_SERVERS"]
    # (comma-separated) when set, else localhost:11211.
    # @return [Configuration]
    def initialize
      env = ENV["MEMCACHE_SERVERS"].to_s.strip
      self.memcache_servers = env.empty? ? ["localhost:#{DEFAULT_PORT}"] : env.split(",")
      DEFAULTS.each { |name, value| public_send("#{name}=", value) }
    end

    # @param servers [Array<String>, String] "host", "host:port", "[v6addr]:port" or "/path/to.sock";
    #   a String may list several, comma-separated
    # @raise [ArgumentError] for an empty list or a bad entry
    def memcache_servers=(servers)
      list = servers.is_a?(String) ? servers.split(",") : servers
      unless list.is_a?(Array)
        raise ArgumentError, "memcache_servers must be an Array of \"host:port\" strings (got #{servers.class})"
      end
      raise ArgumentError, "memcache_servers must not be empty" if list.empty?

      @server_addresses = list.map { |entry| self.class.parse_server(entry) }.uniq.freeze
      @memcache_servers = @server_addresses.map { |host, port| format_server(host, port) }.freeze
    end

    # @param value [String, Symbol] 1 to 100 characters of A-Z a-z 0-9 _ . - / : @ = +
    def namespace=(value)
      str = value.is_a?(Symbol) ? value.to_s : value
      unless str.is_a?(String) && Key::SAFE_NAMESPACE.match?(str.b)
        raise ArgumentError, "namespace must be 1 to 100 characters of A-Z a-z 0-9 _ . - / : @ = + (got #{value.inspect})"
      end

      @namespace = str.dup.freeze
    end

    # @param value [Integer] seconds, 1 to 30 days; a Float is rounded up
    def lock_ttl=(value)
      @lock_ttl = self.class.ttl_value(value, :lock_ttl)
    end

    # @param value [Numeric, nil] seconds; nil (or Float::INFINITY) waits forever, 0 tries once
    def default_timeout=(value)
      @default_timeout = self.class.timeout_value(value, :default_timeout)
    end

    # @param value [Numeric] seconds, more than 0 and at most 60
    def connect_timeout=(value)
      @connect_timeout = bounded(:connect_timeout, value, 0.001, 60.0)
    end

    # @param value [Numeric] seconds, more than 0 and at most 60
    def io_timeout=(value)
      @io_timeout = bounded(:io_timeout, value, 0.001, 60.0)
    end

    # @param value [Numeric] seconds, more than 0 and at most 10
    def backoff_min=(value)
      @backoff_min = bounded(:backoff_min, value, 0.000001, 10.0)
    end

    # @param value [Numeric] seconds, more than 0 and at most 10
    def backoff_max=(value)
      @backoff_max = bounded(:backoff_max, value, 0.000001, 10.0)
    end

    # @param value [Symbol] :raise or :log: what a lease lost while the block ran does
    def on_lock_lost=(value)
      raise ArgumentError, "on_lock_lost must be :raise or :log (got #{value.inspect})" unless %i[raise log].include?(value)

      @on_lock_lost = value
    end

    # Where locks are kept.
    #
    # - `:memcached` (default): in the memcache_servers, across processes and machines.
    # - `:memory`: in this process only, for test suites. The same semantics
    #   between threads (exclusion, reentrancy, timeouts, leases, lost
    #   leases, interrupts) with no memcached: memcache_servers is ignored and
    #   no connection is attempted. The locks are shared by every `:memory`
    #   configuration of the process; {MemoryStore.reset!} clears them.
    #
    # @example In spec/spec_helper.rb
    #   MegaMutex.configure { |config| config.backend = :memory }
    # @param value [Symbol, String] :memcached or :memory
    # @raise [ArgumentError] naming the setting and the backends there are
    def backend=(value)
      sym = value.is_a?(String) ? value.to_sym : value
      unless BACKENDS.include?(sym)
        raise ArgumentError, "backend must be #{BACKENDS.map(&:inspect).join(' or ')} (got #{value.inspect})"
      end

      # Loaded here, not at the first lock, where a Timeout could cut the load short.
      require_relative "memory_store" if sym == :memory
      @backend = sym
    end

    # @param value [Logger, nil] anything with debug/info/warn/error
    def logger=(value)
      unless value.nil? || %i[debug info warn error].all? { |m| value.respond_to?(m) }
        raise ArgumentError, "logger must respond to debug, info, warn and error (got #{value.class})"
      end

      @logger = value
    end

    # Checks the settings that depend on each other.
    # @raise [ArgumentError]
    # @return [self]
    def validate!
      if backoff_min > backoff_max
        raise ArgumentError, "backoff_min (#{backoff_min}) must not exceed backoff_max (#{backoff_max})"
      end

      self
    end

    # @return [Array<Array(String, Integer)>] [host, port] pairs; port 0 for a unix socket
    # @api private
    def server_addresses
      @server_addresses
    end

    # A copy with the same settings, ready to be changed (what dup and clone call).
    # @param other [Configuration] the configuration copied
    # @return [void]
    def initialize_copy(other)
      super
      @server_addresses = other.server_addresses
    end

    # @api private
    # @return [Array(String, Integer)]
    def self.parse_server(entry)
      unless entry.is_a?(String)
        raise ArgumentError, "memcache_servers: each server must be a String like \"host:port\" (got #{entry.inspect})"
      end

      str = entry.strip
      bad = ->(why) { raise ArgumentError, "memcache_servers: bad server #{entry.inspect}: #{why}" }
      bad.call("empty") if str.empty?
      return [str, 0] if str.start_with?("/") && !str.match?(/[\s\x00]/)

      host, port = case str
                   when /\A\[([0-9A-Fa-f:.]+)\](?::(.*))?\z/ then [Regexp.last_match(1), Regexp.last_match(2)]
                   when /\A([^:\s\[\]]+)(?::(.*))?\z/ then [Regexp.last_match(1), Regexp.last_match(2)]
                   else bad.call("expected host, host:port, [ipv6]:port or /path/to.sock")
                   end
      bad.call("host #{host.inspect} has characters a host name cannot have") unless host.match?(/\A[A-Za-z0-9.\-_:]+\z/)
      return [host, DEFAULT_PORT] if port.nil?

      bad.call("port #{port.inspect} is not a number") unless port.match?(/\A\d{1,6}\z/)
      bad.call("port #{port} is out of range 1-65535") unless (1..65_535).cover?(port.to_i)
      [host, port.to_i]
    end

    # @api private
    # @return [Integer] a validated lease length in whole seconds
    def self.ttl_value(value, name)
      unless value.is_a?(Numeric) && value.real? && value.to_f.finite? && value >= 1 && value <= MAX_TTL
        raise ArgumentError, "#{name} must be a number of seconds between 1 and #{MAX_TTL} (got #{value.inspect})"
      end

      value.ceil
    end

    # @api private
    # @return [Numeric, nil] a validated timeout; nil waits forever
    def self.timeout_value(value, name)
      return nil if value.nil?
      raise ArgumentError, "#{name} must be a number of seconds or nil (got #{value.inspect})" unless value.is_a?(Numeric) && value.real?

      float = value.to_f
      raise ArgumentError, "#{name} must not be NaN" if float.nan?
      raise ArgumentError, "#{name} must not be negative (got #{value})" if float.negative?
      return nil if float.infinite?

      value
    end

    private

    def format_server(host, port)
      return host if port.zero?

      host.include?(":") ? "[#{host}]:#{port}" : "#{host}:#{port}"
    end

    def number(name, value)
      unless value.is_a?(Numeric) && value.real? && value.to_f.finite?
        raise ArgumentError, "#{name} must be a finite number (got #{value.inspect})"
      end

      value
    end

    def bounded(name, value, min, max)
      float = number(name, value).to_f
      raise ArgumentError, "#{name} must be between #{min} and #{max} seconds (got #{value.inspect})" unless float >= min && float <= max

      float
    end
  end
end
