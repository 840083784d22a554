# frozen_string_literal: true

module MegaMutex
  # The settings MegaMutex runs with. Every setter validates its value at
  # once and raises ArgumentError naming the setting, so a bad setting fails
  # inside MegaMutex.configure, not at the first lock.
  #
  # This file holds what every backend shares: the lock's own settings, the
  # validation helpers and the choice of backend. Each backend's own settings
  # and rules live in a file of their own, lib/mega_mutex/configuration/NAME.rb
  # (memcached.rb: memcache_servers; memory.rb), which reopens this class and
  # registers its hooks with {.store_settings}. A new backend is one more
  # name in {BACKENDS} and one more file.
  #
  # @example
  #   MegaMutex.configure do |config|
  #     config.memcache_servers = ["mc1", "mc2:11212"]
  #     config.namespace = "myapp"
  #     config.lock_ttl = 30
  #   end
  class Configuration
    # Longest lease: memcached reads expiries above 30 days as dates, and
    # 2 s are added on the wire. Every backend takes the same range, so a
    # configuration means the same thing whichever backend runs it.
    MAX_TTL = 2_592_000 - 2
    # The lock stores {#backend=} accepts; each one's settings are in
    # lib/mega_mutex/configuration/NAME.rb.
    BACKENDS = %i[memcached memory mysql quorum].freeze

    # Every setting this file defines, and its default value (a backend's
    # own settings get theirs from its file; memcache_servers from the
    # environment).
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

    # What a backend's settings file asks of the core, each a private method
    # of Configuration (or nil): `defaults` sets the backend's settings to
    # their defaults (from {#initialize}, for every backend, chosen or not);
    # `selected` runs when {#backend=} chooses the backend; `validate` checks
    # its settings against each other (from {#validate!}, only when it is the
    # backend); `client` opens a new Native::Client of the store (required).
    # And two facts about the store: `c_leases`, its leases are renewed by
    # the C renewer's lane for their server (memcached; the memory store's
    # lane for its table); `session`, a lock
    # lives as long as the connection that took it, so a hold keeps its
    # client until the release (MariaDB).
    # @api private
    StoreSettings = Struct.new(:defaults, :selected, :validate, :client, :c_leases, :session, keyword_init: true)

    @stores = {}

    class << self
      # Registers a backend's hooks (see {StoreSettings}); called once by
      # each file under lib/mega_mutex/configuration/.
      # @api private
      # @param name [Symbol] one of {BACKENDS}
      # @param hooks [Hash{Symbol => Symbol, Boolean, nil}] :defaults, :selected, :validate, :client,
      #   :c_leases, :session
      # @return [StoreSettings]
      def store_settings(name, **hooks)
        raise ArgumentError, "#{name.inspect} is not one of #{BACKENDS.inspect}" unless BACKENDS.include?(name)
        raise ArgumentError, "#{name.inspect}: a store needs a client hook" unless hooks[:client]

        @stores[name] = StoreSettings.new(**hooks).freeze
      end

      # @api private
      # @return [Hash{Symbol => StoreSettings}] the backends' hooks, by name
      attr_reader :stores
    end

    # @return [String] prefix of every key (default "mega_mutex")
    attr_reader :namespace
    # @return [Integer] lease length in seconds: a lock whose holder vanishes is free after this
    attr_reader :lock_ttl
    # @return [Numeric, nil] how long with_distributed_mutex waits by default; nil waits forever
    attr_reader :default_timeout
    # @return [Float] seconds to wait for a connection to a lock server
    attr_reader :connect_timeout
    # @return [Float] seconds to wait for a lock server to answer a request
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
      Configuration.stores.each_value { |store| send(store.defaults) if store.defaults }
      DEFAULTS.each { |name, value| public_send("#{name}=", value) }
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
        raise ArgumentError, "backend must be one of #{BACKENDS.map(&:inspect).join(', ')} (got #{value.inspect})"
      end

      selected = Configuration.stores.fetch(sym).selected
      send(selected) if selected
      @backend = sym
    end

    # @param value [Logger, nil] anything with debug/info/warn/error
    def logger=(value)
      unless value.nil? || %i[debug info warn error].all? { |m| value.respond_to?(m) }
        raise ArgumentError, "logger must respond to debug, info, warn and error (got #{value.class})"
      end

      @logger = value
    end

    # @api private
    # @return [StoreSettings] the chosen backend's hooks and facts
    def store
      Configuration.stores.fetch(backend)
    end

    # @api private
    # @return [Native::Client] a new client of the chosen backend's store
    def new_client
      __send__(store.client)
    end

    # Checks the settings that depend on each other: the shared ones, then
    # the chosen backend's own.
    # @raise [ArgumentError]
    # @return [self]
    def validate!
      if backoff_min > backoff_max
        raise ArgumentError, "backoff_min (#{backoff_min}) must not exceed backoff_max (#{backoff_max})"
      end

      validate = Configuration.stores.fetch(backend).validate
      send(validate) if validate
      self
    end

    # @api private
    # @param value [Numeric] seconds
    # @param name [Symbol] the setting or option, named in the error
    # @return [Integer] a validated lease length in whole seconds
    # @raise [ArgumentError] naming `name`, unless 1 <= value <= {MAX_TTL}
    def self.ttl_value(value, name)
      unless value.is_a?(Numeric) && value.real? && value.to_f.finite? && value >= 1 && value <= MAX_TTL
        raise ArgumentError, "#{name} must be a number of seconds between 1 and #{MAX_TTL} (got #{value.inspect})"
      end

      value.ceil
    end

    # @api private
    # @param value [Numeric, nil] seconds
    # @param name [Symbol] the setting or option, named in the error
    # @return [Numeric, nil] a validated timeout; nil waits forever
    # @raise [ArgumentError] naming `name`, for anything but a non-negative real number or nil
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

    # @return [Numeric] value, if a finite real number
    # @raise [ArgumentError] naming the setting
    def number(name, value)
      unless value.is_a?(Numeric) && value.real? && value.to_f.finite?
        raise ArgumentError, "#{name} must be a finite number (got #{value.inspect})"
      end

      value
    end

    # @return [Float] value, if a number of seconds within min..max
    # @raise [ArgumentError] naming the setting and the range
    def bounded(name, value, min, max)
      float = number(name, value).to_f
      raise ArgumentError, "#{name} must be between #{min} and #{max} seconds (got #{value.inspect})" unless float >= min && float <= max

      float
    end
  end
end

# Each backend's settings and rules.
MegaMutex::Configuration::BACKENDS.each { |name| require_relative "configuration/#{name}" }
unless (missing = MegaMutex::Configuration::BACKENDS - MegaMutex::Configuration.stores.keys).empty?
  raise LoadError, "MegaMutex: no settings registered for backend(s) #{missing.inspect}"
end
