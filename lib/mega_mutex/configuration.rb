# frozen_string_literal: true

require "ipaddr"

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
    # Most servers one configuration may list (the C client's MM_MAX_SERVERS).
    MAX_SERVERS = 64
    # Longest host name: what DNS allows (253 characters; libmemcached itself
    # would take 1,024 and fail at the first lock).
    MAX_HOST = 253
    # Longest unix socket path, in bytes: sockaddr_un's 108-byte sun_path
    # less its NUL (libmemcached fails at connect beyond it).
    MAX_SOCKET_PATH = 107
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

    # @return [Array<String>] the servers in canonical form, "host:port", "[v6addr]:port" or a
    #   socket path (see {.parse_server}), in the order given
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

    # The servers the locks are kept on. Each lock lives on one of them,
    # chosen by hashing its key against the servers' canonical names (see
    # {.parse_server}): every process sharing locks must list the same
    # servers, in any order, under names that are equal once canonical.
    # Duplicates (after canonicalisation) count once.
    #
    # @param servers [Array<String>, String] "host", "host:port", "[v6addr]", "[v6addr]:port" or
    #   "/path/to.sock"; a String may list several, comma-separated
    # @raise [ArgumentError] for an empty list, more than {MAX_SERVERS} servers, or a bad entry
    def memcache_servers=(servers)
      list = servers.is_a?(String) ? servers.split(",") : servers
      unless list.is_a?(Array)
        raise ArgumentError, "memcache_servers must be an Array of \"host:port\" strings (got #{servers.class})"
      end
      raise ArgumentError, "memcache_servers must not be empty" if list.empty?

      addresses = list.map { |entry| self.class.parse_server(entry) }.uniq
      if addresses.size > MAX_SERVERS
        raise ArgumentError, "memcache_servers: at most #{MAX_SERVERS} servers (got #{addresses.size})"
      end

      @memcache_servers = addresses.map { |host, port| format_server(host, port).freeze }.freeze
      # Sorted: libmemcached breaks ties between equal hash points by list
      # position, so the order must not depend on how the list was written.
      @server_addresses = addresses.sort_by { |host, port| [host.b, port] }.map { |pair| pair.map(&:freeze).freeze }.freeze
    end

    # @param value [String, Symbol] 1 to 100 characters of A-Z a-z 0-9 _ . - / @ = +; not ":",
    #   which ends the namespace in a key (so "app" + "jobs:42" and "app:jobs" + "42" stay two locks)
    def namespace=(value)
      str = value.is_a?(Symbol) ? value.to_s : value
      unless str.is_a?(String) && Key::SAFE_NAMESPACE.match?(str.b)
        colon = str.is_a?(String) && str.b.include?(":") ? "; no \":\", which ends the namespace in a key" : ""
        raise ArgumentError, "namespace must be 1 to 100 characters of A-Z a-z 0-9 _ . - / @ = +#{colon} (got #{value.inspect})"
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

    # Parses one server and puts it in its canonical form, so that the same
    # server written two ways is one server: libmemcached places each lock by
    # hashing the "host:port" text, and two processes that spelled a server
    # differently would look for the same lock on different servers.
    #
    # - host names are lowercased and lose a trailing dot; `localhost` is
    #   127.0.0.1; other names are kept as written (never resolved);
    # - an IPv4 address must be four decimal numbers without leading zeros
    #   (127.1, 0x7f.0.0.1 or 0127.0.0.1 raise: the C resolver reads them
    #   as other spellings of an address);
    # - an IPv6 address goes in brackets and is compressed and lowercased
    #   ([0:0::1] is [::1]); an IPv4-mapped one ([::ffff:10.0.0.1]) is the
    #   IPv4 address;
    # - a missing port is 11211;
    # - a socket path loses repeated slashes and "." components.
    #
    # @api private
    # @param entry [String] "host", "host:port", "[v6addr]", "[v6addr]:port" or "/path/to.sock"
    # @return [Array(String, Integer)] [host, port]; port 0 for a unix socket
    # @raise [ArgumentError] naming memcache_servers and what is wrong with the entry
    def self.parse_server(entry)
      unless entry.is_a?(String)
        raise ArgumentError, "memcache_servers: each server must be a String like \"host:port\" (got #{entry.inspect})"
      end

      str = entry.b.strip
      shown = entry.bytesize > 80 ? "#{entry.byteslice(0, 60).scrub.inspect[0..-2]}...\" (#{entry.bytesize} bytes)" : entry.inspect
      bad = ->(why) { raise ArgumentError, "memcache_servers: bad server #{shown}: #{why}" }
      bad.call("empty") if str.empty?
      return [socket_path(str, bad).force_encoding(entry.encoding), 0] if str.start_with?("/")

      host, port = case str
                   when /\A\[([^\]]*)\](?::(.*))?\z/ then [ipv6_host(Regexp.last_match(1), bad), Regexp.last_match(2)]
                   when /\A[0-9A-Fa-f]*:[0-9A-Fa-f]*:/
                     bad.call("write an IPv6 address in brackets, as [::1] or [::1]:11211")
                   when /\A([^:\[\]]+)(?::(.*))?\z/ then [host_name(Regexp.last_match(1), bad), Regexp.last_match(2)]
                   else bad.call("expected host, host:port, [ipv6]:port or /path/to.sock")
                   end
      return [host, DEFAULT_PORT] if port.nil?

      bad.call("port #{port.inspect} is not a number") unless port.match?(/\A\d{1,6}\z/)
      bad.call("port #{port} is out of range 1-65535") unless (1..65_535).cover?(port.to_i)
      [host, port.to_i]
    end

    # @api private
    # @return [String] a canonical host name or IPv4 address (US-ASCII)
    def self.host_name(host, bad)
      bad.call("host #{host.inspect} has characters a host name cannot have") unless host.match?(/\A[A-Za-z0-9.\-_]+\z/)
      name = host.downcase.chomp(".")
      if name.bytesize > MAX_HOST
        bad.call("host name is #{name.bytesize} characters, longer than the #{MAX_HOST} a DNS name can have")
      end
      labels = name.split(".", -1)
      bad.call("host #{host.inspect} has an empty label") if name.empty? || labels.any?(&:empty?)
      bad.call("host #{host.inspect} has a label longer than 63 characters") if labels.any? { |l| l.bytesize > 63 }
      return ipv4_host(name, host, bad) if labels.all? { |l| l.match?(/\A(?:\d+|0x\h*)\z/) }

      name == "localhost" ? "127.0.0.1" : name.encode(Encoding::US_ASCII)
    end

    # @api private
    # @return [String] an IPv4 address in dotted-quad form
    def self.ipv4_host(name, host, bad)
      parts = name.split(".")
      unless parts.size == 4 && parts.all? { |p| p.match?(/\A(?:0|[1-9]\d{0,2})\z/) && p.to_i <= 255 }
        bad.call("#{host.inspect} is not an IPv4 address as four decimal numbers 0-255 without leading zeros")
      end

      parts.join(".").encode(Encoding::US_ASCII)
    end

    # @api private
    # @return [String] a compressed, lowercased IPv6 address, or the IPv4
    #   address an IPv4-mapped one stands for
    def self.ipv6_host(text, bad)
      bad.call("#{text.inspect} is not an IPv6 address") unless text.match?(/\A[0-9A-Fa-f:.]+\z/) && text.include?(":")
      addr = begin
        IPAddr.new(text)
      rescue IPAddr::Error
        bad.call("#{text.inspect} is not an IPv6 address")
      end
      addr = addr.native if addr.ipv4_mapped?
      addr.to_s.encode(Encoding::US_ASCII)
    end

    # @api private
    # @return [String] the path with repeated slashes and "." components removed
    def self.socket_path(str, bad)
      bad.call("a socket path cannot contain whitespace or NUL") if str.match?(/[\s\x00]/n)
      path = str.squeeze("/").gsub(%r{/\.(?=/|\z)}, "")
      path = "/" if path.empty?
      if path.bytesize > MAX_SOCKET_PATH
        bad.call("socket path is #{path.bytesize} bytes, longer than the #{MAX_SOCKET_PATH} a unix socket address holds")
      end

      path
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
